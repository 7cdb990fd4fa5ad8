"""The three ways to run one rule, and the one place that chooses between them.

    tensor   the rule itself, eagerly, one parameter at a time: the readable reference path
    foreach  the traced rule, each node one `torch._foreach_*` call over all parameters (any device)
    fused    the traced rule compiled to one C kernel (CPU): one pass over memory, bandwidth-bound

All three compute in float32 for bf16/fp16 parameters and round once when storing, and in the
parameter's own dtype otherwise. A kernel or graph is made once per rule, static flags and dtype;
float hyperparameters are arguments, so changing them never recompiles.
"""

from __future__ import annotations

import operator
import warnings
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch

from . import cgen, matrix, native
from .graph import ELEMENT, REDUCTIONS, SCALAR, Graph, evaluate_numpy, trace
from .rule import Rule

PATHS = ("auto", "tensor", "foreach", "fused")

_graphs: dict[tuple, Graph] = {}
_kernels: dict[tuple, native.Kernel | None] = {}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def static_key(h: SimpleNamespace) -> tuple:
    """What a traced graph depends on: every entry of h that is not a number (bool is not a number here)."""
    return tuple(sorted((k, v) for k, v in vars(h).items() if type(v) not in (int, float)))


def graph_of(rule: Rule, h: SimpleNamespace, static: tuple | None = None) -> Graph:
    key = (rule.name, static_key(h) if static is None else static)
    if key not in _graphs:
        _graphs[key] = trace(rule, h, list(rule.kept(h)))
    return _graphs[key]


def kernel_of(rule: Rule, h: SimpleNamespace, dtype: torch.dtype, static: tuple | None = None) -> native.Kernel:
    static = static_key(h) if static is None else static
    key = (rule.name, static, dtype)
    if key not in _kernels:
        graph = graph_of(rule, h, static)
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        source = cgen.generate(graph, dtype, title=f"{rule.name}({flags})")
        _kernels[key] = native.Kernel(source, len(graph.arrays), graph.scalars)
    return _kernels[key]


def run(path: str, rule: Rule, h: SimpleNamespace, params, grads, states: dict[str, list]) -> None:
    """Apply one step of `rule` to `params` in place (and to their `states`, symbol -> tensors).

    States of traceable rules are contiguous (created so, and made so by load_state_dict), so only a
    parameter's own layout decides whether it can take the fused path.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.device, p.dtype, p.is_contiguous())].append(i)
    for (device, _, dense), idx in groups.items():
        chosen = choose(path, rule, device, dense)
        pick = [params[i] for i in idx], [grads[i] for i in idx], {k: [v[i] for i in idx] for k, v in states.items()}
        if chosen == "fused":
            try:
                run_fused(rule, h, *pick)
                continue
            except native.CompilerUnavailable as err:
                if path == "fused":
                    raise
                _warn_once(f"optimlab: fused path unavailable, using foreach ({err})")
                chosen = "foreach"
        (run_foreach if chosen == "foreach" else run_tensor)(rule, h, *pick)


def choose(path: str, rule: Rule, device: torch.device, dense: bool) -> str:
    """The path for parameters on `device`: the requested one where it applies, else the fastest that does."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    if not rule.traceable:
        if path in ("auto", "tensor"):
            return "tensor"
        raise ValueError(f"{rule.name} is not elementwise: it runs on the 'tensor' path only, not {path!r}")
    if path == "fused" and device.type != "cpu":
        raise ValueError(f"the fused path runs on the CPU; use path='foreach' for {device.type} tensors")
    if path in ("auto", "fused") and device.type == "cpu":
        return "fused" if dense else "tensor"  # a strided parameter is rare: take the plain path
    return "foreach" if path == "auto" else path


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --- tensor: the rule as written ---------------------------------------------------------------


def run_tensor(rule: Rule, h, params, grads, states) -> None:
    if rule.batched:  # a matrix rule: once per stack of same-shape parameters
        return matrix.run(rule, h, params, grads, states)
    for i, p in enumerate(params):
        compute = compute_dtype(p.dtype)
        targets = [p, *(states[sym][i] if sym in states else None for sym in rule.state)]
        inputs = [None if x is None else x.to(compute) for x in targets]
        new = rule.apply(h, inputs[0], grads[i].to(compute), *inputs[1:])
        for target, old, value in zip(targets, inputs, new):
            if target is not None and value is not old:
                target.copy_(value)


# --- foreach: the traced graph, one multi-tensor call per node -----------------------------------


def run_foreach(rule: Rule, h, params, grads, states) -> None:
    graph = graph_of(rule, h)
    compute = compute_dtype(params[0].dtype)
    arrays = {"θ": params, "g": grads, **states}
    inputs = {name: [x.to(compute) for x in arrays[name]] for name in graph.arrays}
    value: dict[int, object] = {}
    for n in graph.nodes:
        args = [value[id(a)] for a in n.args]
        if n.op == "input":
            value[id(n)] = inputs[n.name]
        elif n.op == "scalar":
            value[id(n)] = float(getattr(h, n.name))
        elif n.op == "const":
            value[id(n)] = n.value
        elif n.op == "numel":
            value[id(n)] = np.array([p.numel() for p in params], dtype=np.float64)
        elif n.op in REDUCTIONS:
            value[id(n)] = _reduce(n.op, args[0])
        elif n.kind == ELEMENT:
            value[id(n)] = _foreach(n, args)
        else:
            value[id(n)] = evaluate_numpy(n.op, args)
    for name, out in graph.outputs.items():
        result = value[id(out)]
        if out.kind != ELEMENT:  # a scalar or per-tensor output fills the whole tensor
            result = [torch.full_like(x, float(v)) for x, v in zip(arrays[name], _per_tensor(result, len(params)))]
        torch._foreach_copy_(arrays[name], result)


def _per_tensor(v, n: int) -> list:
    """A SCALAR value repeated, or a PER_TENSOR array, as one Python number per tensor."""
    return list(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).tolist())


def _reduce(op: str, xs: list[torch.Tensor]) -> np.ndarray:
    if op == "sumsq":
        norms = torch._foreach_norm(xs)
        return np.array(torch.stack(norms).tolist(), dtype=np.float64) ** 2 if xs else np.zeros(0)
    return np.array([float(x.sum()) for x in xs], dtype=np.float64)


FOREACH_BINARY = {"add": torch._foreach_add, "sub": torch._foreach_sub, "mul": torch._foreach_mul,
                  "div": torch._foreach_div, "maximum": torch._foreach_maximum, "minimum": torch._foreach_minimum}
FOREACH_UNARY = {"neg": torch._foreach_neg, "sqrt": torch._foreach_sqrt, "abs": torch._foreach_abs,
                 "sign": torch._foreach_sign}


def _true_div(a, b):
    """A per-tensor value over a tensor: a 0-d tensor in the eager rule, so a true division."""
    return (a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=b.dtype)) / b


def _where(c, a, b):
    if not isinstance(c, torch.Tensor):
        return a if c else b
    return torch.where(c, a, b)


# ELEMENT nodes the foreach ops do not cover, applied tensor by tensor (comparisons, where, ...).
PER_TENSOR_OPS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
                  "eq": operator.eq, "ne": operator.ne, "and": operator.and_, "or": operator.or_,
                  "not": operator.invert, "where": _where, "rsqrt": torch.rsqrt, "square": torch.square,
                  "div": _true_div, "sub": operator.sub}


def _foreach(n, args) -> list[torch.Tensor]:
    """One ELEMENT node over all tensors; other operands are numbers or per-tensor arrays."""
    kinds = [s.kind for s in n.args]
    if n.op in FOREACH_UNARY:
        return FOREACH_UNARY[n.op](args[0])
    if n.op in FOREACH_BINARY:
        a, b = args
        if kinds == [ELEMENT, ELEMENT]:
            return FOREACH_BINARY[n.op](a, b)
        if kinds[0] == ELEMENT:
            return FOREACH_BINARY[n.op](a, _scalar_arg(b))
        if n.op in ("add", "mul", "maximum", "minimum"):  # commutative: the number goes second
            return FOREACH_BINARY[n.op](b, _scalar_arg(a))
        if n.op == "sub":  # s - x == (-x) + s exactly
            return torch._foreach_add(torch._foreach_neg(b), _scalar_arg(a))
        if kinds[0] == SCALAR:  # a Python number over a tensor, which torch computes as below
            return torch._foreach_mul(torch._foreach_reciprocal(b), _scalar_arg(a))
    count = len(next(a for a, k in zip(args, kinds) if k == ELEMENT))
    per = [a if k == ELEMENT else _per_tensor(a, count) for a, k in zip(args, kinds)]
    return [PER_TENSOR_OPS[n.op](*(p[i] for p in per)) for i in range(count)]


def _scalar_arg(a):
    """A foreach Scalar (one number) or ScalarList (one per tensor)."""
    return float(a) if np.ndim(a) == 0 else [float(x) for x in a]


# --- fused: the traced graph as one C kernel -----------------------------------------------------


def run_fused(rule: Rule, h, params, grads, states) -> None:
    static = static_key(h)
    kernel = kernel_of(rule, h, params[0].dtype, static)
    graph = graph_of(rule, h, static)
    arrays = {"θ": params, "g": [g.contiguous() for g in grads], **states}
    kernel([arrays[name] for name in graph.arrays], h)
