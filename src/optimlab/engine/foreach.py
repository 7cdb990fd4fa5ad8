"""The foreach path: a traced rule evaluated with torch's multi-tensor ops, on any device.

The graph is walked once per step, node by node, and kept lean the way a hand-written foreach step is:

* every intermediate is dropped at its last use, and an operation whose operand dies there writes over
  it (`torch._foreach_*_`); a state or θ that the rule overwrites anyway is such an operand once its
  old value is dead, so AdamW updates m, v and θ where they lie and keeps one temporary, as torch does;
* a product with a scalar (a hyperparameter, a bias correction) is not applied at once but carried as a
  pending factor, and taken up by the operation that consumes it: `x + s·y` is `add(x, y, alpha=s)`,
  `x + s·y·z` is `addcmul`, `x − s·y/z` is `addcdiv`, `s·(t·y)` is one multiplication by s·t (in double).
  This reassociates scalar factors, so the path agrees with the per-tensor path to a few ulps, not bit
  for bit (the fused kernel keeps the rule's exact order);
* per-tensor values (norms, trust ratios, Adafactor's row means) stay on the device as one vector per
  node, in float64 where the device has it: no `.item()`, `.tolist()` or numpy on tensor data, so a step
  never waits for the device. Numbers known on the host (hyperparameters, sizes) stay Python numbers.

Row and column values (see graph.py) are lists of (n, 1) and (1, m) tensors beside the (n, m) matrix
views of the parameters; torch broadcasts them against each other.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np
import torch

from .graph import (ELEMENT, PER_TENSOR, REDUCTIONS, ROW, SCALAR, SIZES, Graph, Sym, evaluate_numpy,
                    scalar_value)


@dataclasses.dataclass
class Values:
    """One list-valued node: `scale · xs`, with the scale still to apply (a Python number)."""

    xs: list[torch.Tensor]
    scale: float = 1.0
    owned: bool = False  # xs may be overwritten once the node is dead
    home: str | None = None  # xs are the storage of this array (a state or θ the rule overwrites)


@dataclasses.dataclass
class Product:
    """`a · b` (or `a / b`), not yet computed: its one consumer fuses it into addcmul or addcdiv."""

    op: str
    a: Values
    b: Values


@dataclasses.dataclass
class Step:
    """What evaluating a node needs besides its operands: hyperparameters, types, device and sizes."""

    h: object
    compute: torch.dtype
    device: torch.device
    per_tensor: torch.dtype  # the dtype of per-tensor vectors
    sizes: dict[str, np.ndarray]  # numel, nrows, ncols -> one number per tensor


def run(graph: Graph, h, arrays: dict[str, list[torch.Tensor]], shapes: list[tuple[int, int]] | None,
        across=None) -> None:
    """Apply one step of `graph` to `arrays` (name -> tensors) in place; `shapes`: each tensor's (n, m)
    matrix view where the graph has row or column values. `across` (engine/sharded.py): the arrays are
    local shards; sizes are the whole tensors' and sums over elements are summed over the ranks."""
    params = arrays["θ"]
    compute = torch.float32 if params[0].dtype in (torch.bfloat16, torch.float16) else params[0].dtype
    device = params[0].device
    numel = np.array([p.numel() for p in params], dtype=np.float64)
    rows, cols = (np.array(s, dtype=np.float64) for s in zip(*shapes)) if shapes else (numel, numel)
    sizes = {"numel": numel, "nrows": rows, "ncols": cols}
    if across is not None:
        sizes = {k: np.array(v, dtype=np.float64) for k, v in across.sizes.items()}
    step = Step(h=h, compute=compute, device=device,
                per_tensor=compute if device.type == "mps" else torch.float64, sizes=sizes)
    walk = Walk(graph)
    ready: dict[int, object] = {}  # reductions already made (and summed over the ranks) with their level
    for i, n in enumerate(graph.nodes):
        if n.op == "input":
            value = _input(graph, n.name, arrays[n.name], step, shapes)
        elif id(n) in ready:
            value = ready.pop(id(n))
        elif across is not None and n.op in REDUCTIONS:
            ready.update(_reduce_level(graph, i, walk, step, across, ready))
            value = ready.pop(id(n))
        else:
            value = _evaluate(n, i, walk, step)
        walk.set(n, value)
        walk.release(n, i)
    _store_all(graph, arrays, walk, shapes)


def _reduce_level(graph: Graph, i: int, walk: Walk, step: Step, across, ready: dict) -> dict[int, object]:
    """Node i, a reduction, and every later one whose operands are already computed: their local
    values, with the partial sums among them summed over the ranks in one call."""
    level = [n for n in graph.nodes[i:] if n.op in REDUCTIONS and id(n) not in ready
             and all(id(a) in walk.value for a in n.args)]
    local = {id(n): _reduce(n, walk.value[id(n.args[0])], step) for n in level}
    partial = [n for n in level if across.partial(n.op, n.args[0].kind)]
    parts = [[local[id(n)]] if isinstance(local[id(n)], torch.Tensor) else local[id(n)].xs for n in partial]
    for n, summed in zip(partial, across.all_reduce(parts)):
        v = local[id(n)]
        if isinstance(v, torch.Tensor):
            local[id(n)] = across.keep_replicated(v, summed[0])
        else:
            local[id(n)] = Values(across.keep_replicated(v.xs, summed), v.scale, owned=True)
    return local


class Walk:
    """The values of the nodes computed so far, and who may overwrite which tensors."""

    def __init__(self, graph: Graph):
        self.graph = graph
        end = len(graph.nodes)
        self.position = {id(n): i for i, n in enumerate(graph.nodes)}
        self.last = dict(self.position)
        self.users: dict[int, list[int]] = {id(n): [] for n in graph.nodes}
        for i, n in enumerate(graph.nodes):
            for a in n.args:
                self.last[id(a)] = i
                self.users[id(a)].append(i)
        for out in graph.outputs.values():
            self.last[id(out)] = end
            self.users[id(out)].append(end)
        self.value: dict[int, object] = {}
        self.holders: dict[int, list] = {}  # id(tensor list) -> [the list, live values holding it]

    def set(self, n: Sym, v) -> None:
        self.value[id(n)] = v
        for xs in _lists(v):
            self.holders.setdefault(id(xs), [xs, 0])[1] += 1

    def release(self, n: Sym, i: int) -> None:
        for a in {id(a): a for a in n.args}.values():
            if self.last[id(a)] == i:
                for xs in _lists(self.value.pop(id(a))):
                    entry = self.holders[id(xs)]
                    entry[1] -= 1
                    if not entry[1]:
                        del self.holders[id(xs)]

    def free(self, n: Sym, i: int) -> list[bool]:
        """For each operand of node n: whether n may write over its tensors (it dies here, nothing else
        holds them, and the result has its shape)."""
        out = []
        for a in n.args:
            v = self.value[id(a)]
            out.append(isinstance(v, Values) and v.owned and self.last[id(a)] == i and n.args.count(a) == 1
                       and self.holders[id(v.xs)][1] == 1 and a.kind == n.kind)
        return out

    def fused_next(self, n: Sym) -> bool:
        """Whether n's one consumer is an add or sub evaluated right after it (so it can fuse n)."""
        users = self.users[id(n)]
        if len(users) != 1 or users[0] != self.position[id(n)] + 1 or users[0] >= len(self.graph.nodes):
            return False
        return self.graph.nodes[users[0]].op in ("add", "sub")


def _lists(v) -> list:
    if isinstance(v, Values):
        return [v.xs]
    if isinstance(v, Product):
        return [v.a.xs, v.b.xs]
    return []


def _input(graph: Graph, name: str, xs: list[torch.Tensor], step: Step, shapes) -> Values:
    kind = graph.kinds[name]
    converted = xs[0].dtype != step.compute
    if converted:
        xs = [x.to(step.compute) for x in xs]
    if shapes is not None:
        view = {ELEMENT: lambda n, m: (n, m), ROW: lambda n, m: (n, 1)}.get(kind, lambda n, m: (1, m))
        xs = [x.reshape(view(*s)) for x, s in zip(xs, shapes)]
    overwritten = name in graph.outputs and name != "g"
    return Values(xs, owned=converted or overwritten, home=None if converted or not overwritten else name)


# --- one node ------------------------------------------------------------------------------------


def _evaluate(n: Sym, i: int, walk: Walk, step: Step):
    args = [walk.value[id(a)] for a in n.args]
    if n.kind == SCALAR:
        return _scalar(n, args, step)
    if n.op in SIZES:
        return step.sizes[n.op]
    if n.op in REDUCTIONS:
        return _reduce(n, args[0], step)
    if n.kind == PER_TENSOR:
        return _per_tensor_op(n.op, args, step)
    return _list_op(n, args, walk.free(n, i), walk.fused_next(n), step)


def _scalar(n: Sym, args: list, step: Step):
    return scalar_value(n, args, step.h, step.compute)


def _vector(v, step: Step) -> torch.Tensor:
    """A per-tensor value as a device vector (host numbers are moved; device values stay)."""
    if isinstance(v, torch.Tensor):
        return v
    return torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=step.per_tensor, device=step.device)


PER_TENSOR_TORCH = {
    "neg": torch.neg, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "abs": torch.abs, "sign": torch.sign,
    "square": torch.square, "not": torch.logical_not, "add": torch.add, "sub": torch.sub, "mul": torch.mul,
    "div": torch.div, "pow": torch.pow, "maximum": torch.maximum, "minimum": torch.minimum,
    "gt": torch.gt, "ge": torch.ge, "lt": torch.lt, "le": torch.le, "eq": torch.eq, "ne": torch.ne,
    "and": torch.logical_and, "or": torch.logical_or, "where": torch.where,
}


def _per_tensor_op(op: str, args: list, step: Step):
    if not any(isinstance(a, torch.Tensor) for a in args):
        return evaluate_numpy(op, args)  # sizes and hyperparameters only: known on the host
    if op == "where" and not isinstance(args[0], torch.Tensor):
        return args[1] if args[0] else args[2]
    return PER_TENSOR_TORCH[op](*(_vector(a, step) for a in args))


def _reduce(n: Sym, v, step: Step):
    xs, s = (v.xs, v.scale) if isinstance(v, Values) else (_materialize(v, False), 1.0)
    if n.op in ("row_sum", "col_sum"):
        dim = -1 if n.op == "row_sum" else -2
        return Values([x.sum(dim=dim, keepdim=True) for x in xs], s, owned=True)
    if not xs:
        return torch.zeros(0, dtype=step.per_tensor, device=step.device)
    if n.op == "sumsq":
        out = torch.stack(torch._foreach_norm(xs)).to(step.per_tensor).square()
        return out * (s * s) if s != 1 else out
    out = torch.stack([x.sum() for x in xs]).to(step.per_tensor)
    return out * s if s != 1 else out


def _materialize(v, free: bool) -> list[torch.Tensor]:
    """Tensors holding v itself (its scale applied), written over v's own where it is free."""
    if isinstance(v, Product):
        a, b = _apply(v.a, False), _apply(v.b, False)
        return torch._foreach_mul(a, b) if v.op == "mul" else torch._foreach_div(a, b)
    return _apply(v, free)


def _apply(v: Values, free: bool) -> list[torch.Tensor]:
    if v.scale == 1:
        return v.xs
    if free:
        torch._foreach_mul_(v.xs, v.scale)
        v.scale = 1.0
        return v.xs
    return torch._foreach_mul(v.xs, v.scale)


def _operand(v, count: int, step: Step):
    """A non-list operand as a foreach argument: a number, or one value per tensor."""
    if isinstance(v, torch.Tensor):
        return list(v.to(step.compute).unbind())
    if isinstance(v, np.ndarray):
        return [float(x) for x in np.broadcast_to(v, (count,))]
    return v


def _reciprocal(s) -> float:
    with np.errstate(all="ignore"):
        return float(np.float64(1.0) / np.float64(s))


def _list_op(n: Sym, args: list, free: list[bool], fused_next: bool, step: Step):
    op = n.op
    lists = [isinstance(a, (Values, Product)) for a in args]
    if op in ("mul", "div") and lists in ([True, False], [False, True]):
        j = lists.index(True)
        if n.args[1 - j].kind == SCALAR and (op == "mul" or j == 0):  # s·x, x·s, x/s: a pending factor
            v, s = args[j], args[1 - j]
            factor = s if op == "mul" else _reciprocal(s)
            if isinstance(v, Product):
                return Values(_materialize(v, False), factor, owned=True)
            return Values(v.xs, v.scale * factor, owned=free[j], home=v.home if free[j] else None)
    if op == "neg" and isinstance(args[0], Values):
        v = args[0]
        return Values(v.xs, -v.scale, owned=free[0], home=v.home if free[0] else None)
    if op in ("mul", "div") and all(lists):
        same = n.args[0].kind == n.args[1].kind == n.kind
        if fused_next and same and all(isinstance(a, Values) for a in args):
            return Product(op, args[0], args[1])  # left for the add or sub right after to fuse
        return _product(op, args, free)
    if op in ("add", "sub") and all(lists):
        return _add(op, args, free, [a.kind for a in n.args], n.kind)
    count = len(next(_materialize(a, False) if isinstance(a, Product) else a.xs
                     for a, is_list in zip(args, lists) if is_list))
    values = [_materialize(a, f) if is_list else _operand(a, count, step)
              for a, is_list, f in zip(args, lists, free)]
    # Tensors we may write over: fresh ones (a scale was applied out of place) or an operand that dies here.
    fresh = [is_list and not (isinstance(a, Values) and v is a.xs)
             for a, v, is_list in zip(args, values, lists)]
    writable = [is_list and (f or new) for is_list, f, new in zip(lists, free, fresh)]
    homes = [a.home if isinstance(a, Values) and values[k] is a.xs else None for k, a in enumerate(args)]
    return _other(op, n, values, lists, writable, homes)


def _product(op: str, args: list, free: list[bool]) -> Values:
    """a·b or a/b of two lists, their scales carried on (the result written over a free operand)."""
    a, b = args
    scale = a.scale * (b.scale if op == "mul" else _reciprocal(b.scale))
    out_of_place, in_place = FOREACH_LISTS[op]
    if free[0]:
        in_place(a.xs, b.xs)
        return Values(a.xs, scale, owned=True, home=a.home)
    if op == "mul" and free[1]:
        in_place(b.xs, a.xs)
        return Values(b.xs, scale, owned=True, home=b.home)
    return Values(out_of_place(a.xs, b.xs), scale, owned=True)


def _add(op: str, args: list, free: list[bool], kinds: list[int], kind: int) -> Values:
    """x ± y, taking y's pending factor into alpha and y's pending product into addcmul or addcdiv."""
    x, y = args
    if op == "add" and (isinstance(x, Product) or (free[1] and not free[0] and isinstance(y, Values))):
        x, y, free, kinds = y, x, free[::-1], kinds[::-1]  # accumulate into the one we may overwrite
    sign = 1.0 if op == "add" else -1.0
    if isinstance(x, Product):
        x, free = Values(_materialize(x, False), owned=True), [True, free[1]]
    xs = _apply(x, free[0])
    writable = kinds[0] == kind and (free[0] or xs is not x.xs)
    home = x.home if writable and xs is x.xs else None
    if isinstance(y, Product):
        value = sign * y.a.scale * (y.b.scale if y.op == "mul" else _reciprocal(y.b.scale))
        out_of_place, in_place = FOREACH_TERNARY[y.op]
        if writable:
            in_place(xs, y.a.xs, y.b.xs, value=value)
            return Values(xs, owned=True, home=home)
        return Values(out_of_place(xs, y.a.xs, y.b.xs, value=value), owned=True)
    if writable:
        torch._foreach_add_(xs, y.xs, alpha=sign * y.scale)
        return Values(xs, owned=True, home=home)
    return Values(torch._foreach_add(xs, y.xs, alpha=sign * y.scale), owned=True)


def _pair(name: str) -> tuple:
    """torch._foreach_<name> and its in-place variant."""
    return getattr(torch, f"_foreach_{name}"), getattr(torch, f"_foreach_{name}_")


FOREACH_LISTS = {op: _pair(op) for op in ("mul", "div")}
FOREACH_TERNARY = {"mul": _pair("addcmul"), "div": _pair("addcdiv")}
FOREACH_UNARY = {op: _pair(op) for op in ("sqrt", "abs", "sign", "rsqrt")}
FOREACH_WITH_NUMBER = {op: _pair(op) for op in ("add", "sub", "maximum", "minimum", "mul", "div")}


def _true_div(a, b):
    """A per-tensor value over a tensor: a 0-d tensor in the eager rule, so a true division."""
    return (a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=b.dtype, device=b.device)) / b


def _where(c, a, b):
    if not isinstance(c, torch.Tensor):
        return a if c else b
    return torch.where(c, a, b)


# List-valued nodes the foreach ops do not cover, applied tensor by tensor (on the device).
PER_TENSOR_OPS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
                  "eq": operator.eq, "ne": operator.ne, "and": operator.and_, "or": operator.or_,
                  "not": operator.invert, "where": _where, "square": torch.square, "div": _true_div,
                  "sub": operator.sub, "add": operator.add, "mul": operator.mul, "maximum": torch.maximum,
                  "minimum": torch.minimum, "neg": operator.neg}


def _other(op: str, n: Sym, values: list, lists: list[bool], writable: list[bool], homes: list) -> Values:
    """A list-valued node with its operands' scales applied: a foreach op where there is one."""
    if op in FOREACH_UNARY and lists == [True]:
        out_of_place, in_place = FOREACH_UNARY[op]
        if writable[0]:
            in_place(values[0])
            return Values(values[0], owned=True, home=homes[0])
        return Values(out_of_place(values[0]), owned=True)
    if op in FOREACH_WITH_NUMBER and lists == [True, False] and not n.args[1].is_bool:
        out_of_place, in_place = FOREACH_WITH_NUMBER[op]
        if writable[0]:
            in_place(values[0], values[1])
            return Values(values[0], owned=True, home=homes[0])
        return Values(out_of_place(values[0], values[1]), owned=True)
    if op in ("add", "mul", "maximum", "minimum") and lists == [False, True]:  # commutative: number second
        return _other(op, n, values[::-1], [True, False], writable[::-1], homes[::-1])
    if op == "sub" and lists == [False, True]:  # s − x == (−x) + s exactly
        xs = values[1]
        if writable[1]:
            torch._foreach_neg_(xs)
        else:
            xs = torch._foreach_neg(xs)
        torch._foreach_add_(xs, values[0])
        return Values(xs, owned=True)
    if op == "div" and lists == [False, True] and n.args[0].kind == SCALAR:  # number / x, as torch does it
        xs = torch._foreach_reciprocal(values[1])
        torch._foreach_mul_(xs, values[0])
        return Values(xs, owned=True)
    count = len(next(v for v, is_list in zip(values, lists) if is_list))
    pick = [(lambda t, v=v: v[t]) if is_list or isinstance(v, list) else (lambda t, v=v: v)
            for v, is_list in zip(values, lists)]
    return Values([PER_TENSOR_OPS[op](*(p(t) for p in pick)) for t in range(count)], owned=True)


# --- the end of a step ---------------------------------------------------------------------------


def _store_all(graph: Graph, arrays: dict, walk: Walk, shapes) -> None:
    """Write each output's value into its array, unless it was computed there."""
    pending = []
    for name, out in graph.outputs.items():
        v = walk.value[id(out)]
        if not isinstance(v, (Values, Product)):
            pending.append((name, False, v))
            continue
        xs = _materialize(v, isinstance(v, Values) and v.owned and walk.holders[id(v.xs)][1] == 1)
        home = v.home if isinstance(v, Values) and xs is v.xs else None
        if home == name:
            continue
        if home is not None:  # computed in another array that is itself about to be overwritten
            xs = [x.clone() for x in xs]
        pending.append((name, True, xs))
    for name, is_list, v in pending:
        targets = arrays[name]
        if is_list:
            torch._foreach_copy_(targets, [x.reshape(t.shape) if x.numel() == t.numel() else
                                           x.expand(*shape).reshape(t.shape)  # a row value over its row
                                           for x, t, shape in zip(v, targets, shapes or [None] * len(v))])
        else:  # a scalar or per-tensor value fills the whole array
            for t, target in enumerate(targets):
                number = v[t] if isinstance(v, (torch.Tensor, np.ndarray)) and np.ndim(v) else v
                target.fill_(number if isinstance(number, torch.Tensor) else float(number))
