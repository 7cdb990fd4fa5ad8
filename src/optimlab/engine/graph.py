"""Trace a rule into a graph of elementwise ops and per-tensor reductions.

The rule is called with symbolic values (`Sym`) in place of tensors and float hyperparameters. Every
operator and the few torch functions a rule may use record a node. Each node has a *kind*:

    SCALAR      the same for every tensor in the call (hyperparameters, bias corrections)
    PER_TENSOR  one value per tensor (a norm, its element count)
    ELEMENT     one value per element (θ, g, the states and everything computed from them)

A reduction (`sum`, `sumsq`) turns an ELEMENT node into a PER_TENSOR one; the fused path runs one pass
over memory for each level of reductions. Nodes are hash-consed, so a value written twice in a rule
is computed once.
"""

from __future__ import annotations

import contextvars
import dataclasses
import numbers
from types import SimpleNamespace

import numpy as np
import torch

SCALAR, PER_TENSOR, ELEMENT = 0, 1, 2

UNARY = {"neg", "sqrt", "rsqrt", "abs", "sign", "square", "not"}
BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "gt", "ge", "lt", "le", "eq", "ne", "and", "or"}
PREDICATES = {"gt", "ge", "lt", "le", "eq", "ne", "and", "or", "not"}
REDUCTIONS = {"sum", "sumsq"}


class TraceError(TypeError):
    """The rule does something the graph cannot express."""


class Sym:
    """A symbolic value inside a traced rule."""

    __slots__ = ("op", "args", "kind", "name", "value", "is_bool", "__weakref__")

    def __init__(self, op, args=(), kind=SCALAR, name=None, value=None, is_bool=False):
        self.op, self.args, self.kind = op, tuple(args), kind
        self.name, self.value, self.is_bool = name, value, is_bool

    def __repr__(self):
        label = self.name if self.name is not None else self.value
        return f"Sym({self.op}{'' if label is None else ' ' + str(label)})"

    def __bool__(self):
        what = self.name or self.op
        raise TraceError(
            f"a rule cannot branch on the dynamic value {what!r}: branch on a boolean flag "
            "(declare it in the rule's `flags` or return it from its `scalars`)"
        )

    # Arithmetic: Python numbers become constants.
    def __add__(self, o): return _binary("add", self, o)
    def __radd__(self, o): return _binary("add", o, self)
    def __sub__(self, o): return _binary("sub", self, o)
    def __rsub__(self, o): return _binary("sub", o, self)
    def __mul__(self, o): return _binary("mul", self, o)
    def __rmul__(self, o): return _binary("mul", o, self)
    def __truediv__(self, o): return _binary("div", self, o)
    def __rtruediv__(self, o): return _binary("div", o, self)
    def __pow__(self, o): return _power(self, o)
    def __neg__(self): return _unary("neg", self)
    def __abs__(self): return _unary("abs", self)
    def __gt__(self, o): return _binary("gt", self, o)
    def __ge__(self, o): return _binary("ge", self, o)
    def __lt__(self, o): return _binary("lt", self, o)
    def __le__(self, o): return _binary("le", self, o)
    def __and__(self, o): return _binary("and", self, o)
    def __or__(self, o): return _binary("or", self, o)
    def __invert__(self): return _unary("not", self)

    # The tensor methods rules use.
    def sqrt(self): return _unary("sqrt", self)
    def rsqrt(self): return _unary("rsqrt", self)
    def sign(self): return _unary("sign", self)
    def square(self): return _unary("square", self)
    def sum(self): return _reduce("sum", self)
    def norm(self): return _unary("sqrt", _reduce("sumsq", self))
    def mean(self): return _binary("div", _reduce("sum", self), _numel())
    def clamp(self, min=None, max=None): return _clamp(self, min, max)
    def abs(self): return _unary("abs", self)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        handler = TORCH_FUNCTIONS.get(func)
        if handler is None:
            raise TraceError(f"torch.{getattr(func, '__name__', func)} is not supported in a traced rule")
        return handler(*args, **(kwargs or {}))


# Hash-consing table of the trace in progress: structurally equal nodes are one node. A context
# variable, so traces in two threads (or one inside another) never share a table.
_table: contextvars.ContextVar[dict | None] = contextvars.ContextVar("optimlab_trace_table", default=None)


def _node(op, args, **kw) -> Sym:
    table = _table.get()
    key = (op, tuple(id(a) for a in args), kw.get("name"), kw.get("value"))
    if table is not None and key in table:
        return table[key][0]
    sym = Sym(op, args, **kw)
    if table is not None:
        table[key] = (sym, args)  # keep args alive so their ids stay unique
    return sym


def is_dynamic(value) -> bool:
    """A number of any type (Python, numpy, a 1-element tensor) is a dynamic scalar; a bool is static."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_))


def static_key(h: SimpleNamespace) -> tuple:
    """What a traced graph depends on besides the rule: every entry of h that is not a dynamic number."""
    return tuple(sorted((k, v) for k, v in vars(h).items() if not is_dynamic(v)))


def _const(value) -> Sym:
    if isinstance(value, Sym):
        return value
    if isinstance(value, bool):
        return _node("const", (), value=value, is_bool=True)
    if isinstance(value, (int, float)):
        return _node("const", (), value=float(value))
    raise TraceError(f"cannot use {type(value).__name__} {value!r} in a traced rule")


def _numel() -> Sym:
    return _node("numel", (), kind=PER_TENSOR)


def _unary(op, a) -> Sym:
    a = _const(a)
    if op == "not" and not a.is_bool:
        raise TraceError("logical not of a non-boolean value")
    return _node(op, (a,), kind=a.kind, is_bool=op in PREDICATES)


def _binary(op, a, b) -> Sym:
    a, b = _const(a), _const(b)
    if op in {"and", "or"} and not (a.is_bool and b.is_bool):
        raise TraceError(f"logical {op} of non-boolean values")
    if op not in {"and", "or"} and (a.is_bool or b.is_bool):
        raise TraceError(f"arithmetic '{op}' on a boolean value; use torch.where")
    return _node(op, (a, b), kind=max(a.kind, b.kind), is_bool=op in PREDICATES)


def _power(a, exponent) -> Sym:
    a = _const(a)
    if a.kind == ELEMENT:  # keep elementwise code vectorisable: only the exponents that are plain ops
        if exponent == 2:
            return _unary("square", a)
        if exponent == 0.5:
            return _unary("sqrt", a)
        raise TraceError("an elementwise power other than 2 or 0.5; compute it in the rule's scalars")
    return _binary("pow", a, exponent)


def _where(cond, a, b) -> Sym:
    cond, a, b = _const(cond), _const(a), _const(b)
    if not cond.is_bool:
        raise TraceError("torch.where needs a boolean condition")
    return _node("where", (cond, a, b), kind=max(cond.kind, a.kind, b.kind))


def _clamp(a, lo=None, hi=None) -> Sym:
    out = a
    if lo is not None:
        out = _binary("maximum", out, lo)
    if hi is not None:
        out = _binary("minimum", out, hi)
    return out


def _reduce(op, a, dim=None, **kw) -> Sym:
    a = _const(a)
    if dim is not None or kw.get("keepdim"):
        raise TraceError("reductions along a dimension are not elementwise; mark the rule traceable=False")
    if a.kind != ELEMENT:
        raise TraceError("a reduction over a value that is not per element")
    return _node(op, (a,), kind=PER_TENSOR)


def _vector_norm(a, ord=2, dim=None, keepdim=False, **kw):
    if ord != 2:
        raise TraceError("only the 2-norm is supported in a traced rule")
    return _unary("sqrt", _reduce("sumsq", a, dim=dim, keepdim=keepdim))


TORCH_FUNCTIONS = {
    torch.sqrt: lambda a: _unary("sqrt", a),
    torch.rsqrt: lambda a: _unary("rsqrt", a),
    torch.abs: lambda a: _unary("abs", a),
    torch.sign: lambda a: _unary("sign", a),
    torch.square: lambda a: _unary("square", a),
    torch.neg: lambda a: _unary("neg", a),
    torch.maximum: lambda a, b: _binary("maximum", a, b),
    torch.minimum: lambda a, b: _binary("minimum", a, b),
    torch.where: _where,
    torch.clamp: _clamp,
    torch.sum: lambda a, dim=None, **kw: _reduce("sum", a, dim, **kw),
    torch.linalg.vector_norm: _vector_norm,
    torch.norm: lambda a, p=2, dim=None, keepdim=False, **kw: _vector_norm(a, p, dim, keepdim),
}


@dataclasses.dataclass
class Graph:
    """A traced rule: live nodes in topological order and the new value of each input array."""

    nodes: list[Sym]
    arrays: list[str]  # per-element inputs, in order: "θ", "g", then the kept states' symbols
    outputs: dict[str, Sym]  # array -> its new value, only for arrays the rule changes
    scalars: list[str]  # names of the dynamic scalar inputs, in order

    @property
    def reductions(self) -> list[Sym]:
        return [n for n in self.nodes if n.op in REDUCTIONS]


def trace(rule, h: SimpleNamespace, kept: list[str]) -> Graph:
    """Run the rule's update on symbols; floats in `h` become dynamic scalars, booleans stay static.

    `kept` names the states the rule keeps under h's flags; the others are passed as None.
    """
    token = _table.set({})
    try:
        arrays = ["θ", "g", *kept]
        inputs = {name: _node("input", (), kind=ELEMENT, name=name) for name in arrays}
        hs = SimpleNamespace()
        for key, value in vars(h).items():
            setattr(hs, key, _node("scalar", (), name=key) if is_dynamic(value) else value)
        states = [inputs.get(sym) for sym in rule.state]
        result = rule.apply(hs, inputs["θ"], inputs["g"], *states)
    finally:
        _table.reset(token)
    new = dict(zip(["θ", *rule.state], result))
    outputs = {}
    for name in arrays:
        value = new.get(name)
        if value is None or value is inputs.get(name):
            continue
        outputs[name] = _const(value)
    nodes = _topological(list(outputs.values()))
    scalars = [n.name for n in nodes if n.op == "scalar"]
    return Graph(nodes=nodes, arrays=arrays, outputs=outputs, scalars=scalars)


def _topological(roots: list[Sym]) -> list[Sym]:
    order, seen = [], set()

    def visit(n: Sym):
        stack = [(n, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)

    for r in roots:
        visit(r)
    return order


def _sign(a):
    return np.greater(a, 0).astype(np.float64) - np.less(a, 0)  # as torch.sign: sign(nan) = 0


NUMPY_OPS = {
    "neg": np.negative, "sqrt": np.sqrt, "rsqrt": lambda a: 1 / np.sqrt(a), "abs": np.abs,
    "sign": _sign, "square": np.square, "not": np.logical_not,
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal,
    "eq": np.equal, "ne": np.not_equal, "and": np.logical_and, "or": np.logical_or,
    "where": np.where,
}


def evaluate_numpy(op: str, args: list):
    """Apply op with IEEE double semantics to numbers or arrays (one entry per tensor)."""
    with np.errstate(all="ignore"):
        return NUMPY_OPS[op](*args)
