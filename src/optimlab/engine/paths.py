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

from . import cgen, native, tritongen
from .caches import BoundedCache
from .graph import ELEMENT, REDUCTIONS, SCALAR, Graph, evaluate_numpy, static_key, trace
from .rule import Rule

PATHS = ("auto", "tensor", "foreach", "fused", "triton")

# Keyed by the rule's update function *and* its code object: a rule redefined under the same name (an
# edited notebook cell, a reloaded module) is a new key, never the old math. The function object in the
# key also keeps it alive, so its id cannot be reused while the entry exists.
_graphs = BoundedCache(512)
_kernels = BoundedCache(256)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _rule_key(rule: Rule) -> tuple:
    return (rule.update, rule.update.__code__, tuple(rule.state))


def graph_of(rule: Rule, h: SimpleNamespace, static: tuple | None = None) -> Graph:
    key = (_rule_key(rule), static_key(h) if static is None else static)
    return _graphs.get(key, lambda: trace(rule, h, list(rule.kept(h))))


def kernel_of(rule: Rule, h: SimpleNamespace, dtype: torch.dtype, static: tuple | None = None) -> native.Kernel:
    static = static_key(h) if static is None else static

    def build():
        graph = graph_of(rule, h, static)
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        source = cgen.generate(graph, dtype, title=f"{rule.name}({flags})")
        return native.Kernel(source, len(graph.arrays), graph.scalars)

    return _kernels.get((_rule_key(rule), static, dtype), build)


def validate(path: str, rule: Rule, owner: str = "") -> None:
    """The one check of a requested path, at construction and again at each step (it may be reassigned)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    if path in ("foreach", "fused", "triton") and not rule.traceable:
        raise ValueError(f"{owner or rule.name} is not elementwise: it runs on path='tensor' only, not {path!r}")


def run(path: str, rule: Rule, h: SimpleNamespace, params, grads, states: dict[str, list]) -> None:
    """Apply one step of `rule` to `params` in place (and to their `states`, symbol -> tensors).

    Gradients and states have passed `boundary.admit`: they match their parameters. Only plain dense
    tensors reach the fused kernel; a tensor subclass runs its local data (DTensor shards, for rules
    that are elementwise) or the rule as written, whose torch ops the subclass implements.
    """
    validate(path, rule)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.device, p.dtype, p.is_contiguous(), type(p) in PLAIN)].append(i)
    for (device, _, dense, plain), idx in groups.items():
        pick = [params[i] for i in idx], [grads[i] for i in idx], {k: [v[i] for i in idx] for k, v in states.items()}
        if not plain:
            _run_subclass(path, rule, h, *pick)
            continue
        chosen = choose(path, rule, device, dense)
        if chosen == "fused":
            try:
                run_fused(rule, h, *pick)
                continue
            except native.CompilerUnavailable as err:
                if path == "fused":
                    raise
                _warn_once(f"optimlab: fused path unavailable, using foreach ({err})")
                chosen = "foreach"
        {"foreach": run_foreach, "tensor": run_tensor, "triton": run_triton}[chosen](rule, h, *pick)


PLAIN = (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer)


def _run_subclass(path: str, rule: Rule, h, params, grads, states) -> None:
    """Tensor subclasses: never a raw pointer. A DTensor's elementwise update is its shards' update."""
    local = _local_view(rule, h, params, grads, states)
    if local is not None:
        return run(path, rule, h, *local)
    try:
        run_tensor(rule, h, params, grads, states)
    except (RuntimeError, NotImplementedError) as err:
        kind = type(params[0]).__name__
        raise RuntimeError(f"{rule.name} cannot step {kind} parameters: an op of its rule is not supported "
                           f"for {kind} ({str(err).splitlines()[0]})") from err


def _local_view(rule: Rule, h, params, grads, states):
    """Local shards of DTensors with one placement, for a rule with no reductions; else None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    tensors = [*params, *grads, *(x for xs in states.values() for x in xs)]
    if not rule.traceable or not all(type(x) is DTensor for x in tensors):
        return None
    if any(x.placements != params[i % len(params)].placements for i, x in enumerate(tensors)):
        return None
    if graph_of(rule, h).reductions:  # a norm of a shard is not the norm of the tensor
        return None
    return ([p.to_local() for p in params], [g.to_local() for g in grads],
            {k: [x.to_local() for x in xs] for k, xs in states.items()})


def choose(path: str, rule: Rule, device: torch.device, dense: bool) -> str:
    """The path for plain parameters on `device`: the requested one where it applies, else the fastest that does.

    auto: the C kernel on the CPU, Triton kernels on CUDA (where Triton is importable), foreach elsewhere;
    a strided parameter (rare) takes the rule as written.
    """
    if not rule.traceable:
        return "tensor"
    if path == "fused" and device.type != "cpu":
        raise ValueError(f"the fused path runs on the CPU; use path='triton' or 'foreach' for {device.type} tensors")
    if path == "triton":
        if device.type != "cuda" and not (device.type == "cpu" and tritongen.interpreted()):
            raise ValueError("the triton path runs on CUDA tensors (on the CPU only under TRITON_INTERPRET=1, "
                             f"for testing); got {device.type} tensors")
        if not tritongen.available():
            raise ValueError("path='triton' needs the triton package (it comes with CUDA builds of torch)")
    if path in ("auto", "fused", "triton") and not dense:
        return "tensor"
    if path == "auto":
        if device.type == "cpu":
            return "fused"
        return "triton" if device.type == "cuda" and tritongen.available() else "foreach"
    return path


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --- tensor: the rule as written ---------------------------------------------------------------


def run_tensor(rule: Rule, h, params, grads, states) -> None:
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


# --- triton: the traced graph as Triton kernels (CUDA; CPU tensors under TRITON_INTERPRET=1) ---------


def run_triton(rule: Rule, h, params, grads, states) -> None:
    static = static_key(h)
    dtype = params[0].dtype

    def build():
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        folder = native.usable_cache_dir(native.cache_dir())
        return tritongen.Kernel(graph_of(rule, h, static), dtype, f"{rule.name}({flags})", folder)

    kernel = _kernels.get(("triton", _rule_key(rule), static, dtype, tritongen.interpreted()), build)
    graph = kernel.graph
    arrays = {"θ": params, "g": [g.contiguous() for g in grads], **states}
    kernel([arrays[name] for name in graph.arrays], h)
