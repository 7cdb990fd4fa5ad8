"""Trace a rule into a graph of elementwise ops and per-tensor reductions.

The rule is called with symbolic values (`Sym`) in place of tensors and float hyperparameters. Every
operator and the few torch functions a rule may use record a node. Each node has a *kind*:

    SCALAR      the same for every tensor in the call (hyperparameters, bias corrections)
    PER_TENSOR  one value per tensor (a norm, its element count)
    ROW, COL    one value per row / per column of the tensor's matrix view (Adafactor's statistics)
    ELEMENT     one value per element (θ, g, the states and everything computed from them)

The matrix view is the rule's own (`Rule.matrix`, e.g. a conv weight as (out, in·kh·kw)); in a trace a
reshape or view moves no element, so it is the identity. A reduction turns a node into a coarser one:
`sum`/`sumsq` of an ELEMENT, ROW or COL node gives a PER_TENSOR value; `x.sum(dim=-1, keepdim=True)`
of an ELEMENT node a ROW value (`row_sum`), along `dim=-2` a COL value (`col_sum`). A ROW value meets
an ELEMENT one by broadcasting along the row, and a ROW value times a COL value (`R @ C`, the outer
product) is an ELEMENT value. The fused path runs one pass over memory for each level of reductions
over elements. Nodes are hash-consed, so a value written twice in a rule is computed once.
"""

from __future__ import annotations

import contextvars
import dataclasses
import numbers
from types import SimpleNamespace

import numpy as np
import torch

SCALAR, PER_TENSOR, ROW, COL, ELEMENT = 0, 1, 2, 3, 4
KIND_NAMES = {"element": ELEMENT, "row": ROW, "col": COL}  # State.per -> the kind of its input node

UNARY = {"neg", "sqrt", "rsqrt", "abs", "sign", "square", "not"}
BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "gt", "ge", "lt", "le", "eq", "ne", "and",
          "or"}
PREDICATES = {"gt", "ge", "lt", "le", "eq", "ne", "and", "or", "not"}
REDUCTIONS = {"sum", "sumsq", "row_sum", "col_sum"}  # sum, sumsq: to PER_TENSOR; the others: along an axis
SIZES = {"numel": "elements", "nrows": "rows", "ncols": "columns"}  # per-tensor sizes of the matrix view


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
    def __matmul__(self, o): return _outer(self, o)
    def sum(self, dim=None, keepdim=False): return _reduce("sum", self, dim, keepdim=keepdim)
    def norm(self): return _unary("sqrt", _reduce("sumsq", self))
    def mean(self, dim=None, keepdim=False): return _mean(self, dim, keepdim)
    def clamp(self, min=None, max=None): return _clamp(self, min, max)
    def abs(self): return _unary("abs", self)
    def numel(self): return _size("numel")

    # Views move no element of a traced value: the matrix view is the path's business.
    def flatten(self, *args, **kw): return self
    def reshape(self, *args, **kw): return self
    def view_as(self, other): return self

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


def _size(what: str) -> Sym:
    return _node(what, (), kind=PER_TENSOR)


def _numel() -> Sym:
    return _size("numel")


def join(*kinds: int) -> int:
    """The kind of a value computed from values of these kinds: a row meets a column in an element."""
    if ROW in kinds and COL in kinds:
        return ELEMENT
    return max(kinds)


def machine_epsilon(x):
    """torch.finfo(x.dtype).eps; in a trace, the epsilon of the type the path computes in."""
    if isinstance(x, Sym):
        return _node("eps", ())
    return torch.finfo(x.dtype).eps


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
    return _node(op, (a, b), kind=join(a.kind, b.kind), is_bool=op in PREDICATES)


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
    return _node("where", (cond, a, b), kind=join(cond.kind, a.kind, b.kind))


def _clamp(a, lo=None, hi=None) -> Sym:
    out = a
    if lo is not None:
        out = _binary("maximum", out, lo)
    if hi is not None:
        out = _binary("minimum", out, hi)
    return out


# (kind reduced, dim) -> the reduction and the kind it gives: dim -1 sums along a row, -2 along a column.
ALONG = {(ELEMENT, -1): ("row_sum", ROW), (ELEMENT, -2): ("col_sum", COL),
         (ROW, -2): ("sum", PER_TENSOR), (COL, -1): ("sum", PER_TENSOR)}


def _reduce(op, a, dim=None, keepdim=False, **kw) -> Sym:
    a = _const(a)
    if a.kind in (SCALAR, PER_TENSOR):
        raise TraceError("a reduction over a value that is not per element, row or column")
    if dim is None:
        if keepdim:
            raise TraceError("a reduction over all elements with keepdim=True; use keepdim=False")
        return _node(op, (a,), kind=PER_TENSOR)
    along = ALONG.get((a.kind, dim))
    if op != "sum" or not keepdim or along is None:
        raise TraceError(
            "a traced rule reduces along an axis only as x.sum(dim, keepdim=True) or x.mean(dim, "
            "keepdim=True), dim -1 (per row) or -2 (per column) of the rule's matrix view; otherwise mark it "
            "traceable=False"
        )
    op, kind = along
    return _node(op, (a,), kind=kind)


def _mean(a, dim=None, keepdim=False) -> Sym:
    count = {None: "numel", -1: "ncols", -2: "nrows"}.get(dim)
    if count is None:
        raise TraceError(f"mean along dim={dim!r}: a traced rule takes the mean over all, dim -1 or dim -2")
    return _binary("div", _reduce("sum", a, dim, keepdim=keepdim), _size(count))


def _outer(a, b) -> Sym:
    """R @ C for a column of row values and a row of column values: their outer product, elementwise."""
    a, b = _const(a), _const(b)
    if (a.kind, b.kind) != (ROW, COL):
        raise TraceError("a traced rule multiplies matrices only as (per-row values) @ (per-column values)")
    return _binary("mul", a, b)


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
    torch.clamp: lambda a, min=None, max=None: _clamp(a, min, max),
    torch.sum: lambda a, dim=None, **kw: _reduce("sum", a, dim, **kw),
    torch.mean: lambda a, dim=None, keepdim=False: _mean(a, dim, keepdim),
    torch.rsqrt: lambda a: _unary("rsqrt", a),
    torch.matmul: _outer,
    torch.linalg.vector_norm: _vector_norm,
    torch.norm: lambda a, p=2, dim=None, keepdim=False, **kw: _vector_norm(a, p, dim, keepdim),
}


@dataclasses.dataclass
class Graph:
    """A traced rule: live nodes in topological order and the new value of each input array."""

    nodes: list[Sym]
    arrays: list[str]  # inputs, in order: "θ", "g", then the kept states' symbols
    outputs: dict[str, Sym]  # array -> its new value, only for arrays the rule changes
    scalars: list[str]  # names of the dynamic scalar inputs, in order
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)  # array -> ELEMENT, ROW or COL

    @property
    def reductions(self) -> list[Sym]:
        return [n for n in self.nodes if n.op in REDUCTIONS]

    @property
    def matrix(self) -> bool:
        """Whether the graph has row or column values: its tensors are walked as matrices."""
        return any(n.kind in (ROW, COL) for n in self.nodes)


def trace(rule, h: SimpleNamespace, kept: list[str]) -> Graph:
    """Run the rule's update on symbols; floats in `h` become dynamic scalars, booleans stay static.

    `kept` names the states the rule keeps under h's flags; the others are passed as None.
    """
    token = _table.set({})
    try:
        arrays = ["θ", "g", *kept]
        kinds = {name: KIND_NAMES[rule.state[name].per] if name in rule.state else ELEMENT for name in arrays}
        inputs = {name: _node("input", (), kind=kinds[name], name=name) for name in arrays}
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
        if join(outputs[name].kind, kinds[name]) != kinds[name]:
            raise TraceError(f"the new value of {name!r} has more values than {name!r} (per element where "
                             "the state is per row or per column)")
    nodes = _topological(list(outputs.values()))
    scalars = [n.name for n in nodes if n.op == "scalar"]
    return Graph(nodes=nodes, arrays=arrays, outputs=outputs, scalars=scalars, kinds=kinds)


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


def scalar_value(n: Sym, args: list, h, compute: torch.dtype):
    """The value of a SCALAR node for one call, in double: the one definition the paths that evaluate
    scalars on the host share (the C kernel computes the same in its prologue)."""
    if n.op == "const":
        return n.value
    if n.op == "scalar":
        return float(getattr(h, n.name))
    if n.op == "eps":
        return torch.finfo(compute).eps
    out = evaluate_numpy(n.op, args)
    return bool(out) if n.is_bool else float(out)


def evaluate_numpy(op: str, args: list):
    """Apply op with IEEE double semantics to numbers or arrays (one entry per tensor)."""
    with np.errstate(all="ignore"):
        return NUMPY_OPS[op](*args)
