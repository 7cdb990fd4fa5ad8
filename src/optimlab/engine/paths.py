"""The three ways to run one rule, and the one place that chooses between them.

    tensor   the rule itself, eagerly, one parameter at a time: the readable reference path
    foreach  the traced rule, each node one `torch._foreach_*` call over all parameters (any device)
    fused    the traced rule compiled to one C kernel (CPU): one pass over memory, bandwidth-bound

All three compute in float32 for bf16/fp16 parameters and round once when storing, and in the
parameter's own dtype otherwise. A kernel or graph is made once per rule, static flags and dtype;
float hyperparameters are arguments, so changing them never recompiles.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import torch

from . import cgen, foreach, lowprec, matrix, native, tritongen
from .caches import BoundedCache
from .graph import Graph, static_key, trace
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


def graph_of(rule: Rule, h: SimpleNamespace, static: tuple | None = None, kept: tuple | None = None) -> Graph:
    """The traced graph; `kept`: the states the parameters have (default: all the flags in h keep)."""
    kept = tuple(rule.kept(h)) if kept is None else kept
    key = (_rule_key(rule), static_key(h) if static is None else static, kept)
    return _graphs.get(key, lambda: trace(rule, h, list(kept)))


def kernel_of(rule: Rule, h: SimpleNamespace, dtype: torch.dtype, static: tuple | None = None,
              kept: tuple | None = None, rounding: tuple[bool, bool] = (False, False)) -> native.Kernel:
    static = static_key(h) if static is None else static
    kept = tuple(rule.kept(h)) if kept is None else kept

    def build():
        graph = graph_of(rule, h, static, kept)
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        source = cgen.generate(graph, dtype, title=f"{rule.name}({flags})", rounding=rounding)
        return native.Kernel(source, len(graph.arrays), graph.scalars)

    return _kernels.get((_rule_key(rule), static, dtype, kept, rounding), build)


def validate(path: str, rule: Rule, owner: str = "") -> None:
    """The one check of a requested path, at construction and again at each step (it may be reassigned)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    if path in ("foreach", "fused", "triton") and not rule.traceable:
        raise ValueError(f"{owner or rule.name} is not elementwise: it runs on path='tensor' only, "
                         f"not {path!r}")


def run(path: str, rule: Rule, h: SimpleNamespace, params, grads, states: dict[str, list],
        rounding: lowprec.Rounding | None = None) -> None:
    """Apply one step of `rule` to `params` in place (and to their `states`, symbol -> tensors).

    Gradients and states have passed `boundary.admit`: they match their parameters. Only plain dense
    tensors reach the fused kernel; a tensor subclass runs its local data (DTensor shards, for rules
    that are elementwise) or the rule as written, whose torch ops the subclass implements. `rounding`:
    stochastic rounding and Kahan buffers for bf16/fp16 parameters (lowprec.py; a no-op on others).
    """
    validate(path, rule)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if p.numel() == 0:  # nothing to update (and an empty matrix's row means would be 0/0)
            continue
        has = tuple(sym for sym, xs in states.items() if xs[i] is not None)  # per-parameter states
        plain = type(p) in PLAIN
        dense = plain and p.is_contiguous() and one_matrix(rule, h, p, has)
        groups[(p.device, p.dtype, dense, has, plain)].append(i)
    for (device, dtype, dense, has, plain), idx in groups.items():
        pick = [params[i] for i in idx], [grads[i] for i in idx], {k: [states[k][i] for i in idx]
                                                                   for k in has}
        if not plain:
            if rounding is not None and dtype in lowprec.LOW:  # shards would index their elements locally
                kind = type(params[idx[0]]).__name__
                raise ValueError(f"stochastic_rounding and kahan_summation do not support {kind} parameters "
                                 "(FSDP2's DTensor, other tensor subclasses) yet: use plain tensors")
            _run_subclass(path, rule, h, *pick)
            continue
        chosen = choose(path, rule, device, dense)
        if not dense and rule.matrix and any(rule.state[sym].per != "element" for sym in has):
            chosen = "tensor"  # row and column values on the fast paths: one dense matrix per tensor
        if chosen == "triton" and rule.matrix:
            if path == "triton":
                raise ValueError(f"{rule.name} keeps row and column statistics, which the Triton backend "
                                 "does not generate yet: use path='foreach' (or 'auto') on the GPU")
            chosen = "foreach"
        low = rounding.pick(idx) if rounding is not None and dtype in lowprec.LOW else None
        if low is not None:
            chosen = _rounding_path(path, chosen)
            if chosen != "fused":
                lowprec.via_float32(RUNNERS[chosen], rule, h, *pick, low)
                continue
        if chosen == "fused":
            try:
                run_fused(rule, h, *pick, rounding=low)
                continue
            except native.CompilerUnavailable as err:
                if path == "fused":
                    raise
                _warn_once(f"optimlab: fused path unavailable, using foreach ({err})")
                chosen = "foreach"
        if low is not None:  # the C compiler was missing: the same rounding on the foreach path
            lowprec.via_float32(run_foreach, rule, h, *pick, low)
            continue
        RUNNERS[chosen](rule, h, *pick)


def _rounding_path(path: str, chosen: str) -> str:
    """The Triton backend does not generate stochastic rounding or Kahan buffers (yet): refused when
    asked for by name, the foreach path under path='auto'."""
    if chosen != "triton":
        return chosen
    if path == "triton":
        raise ValueError("stochastic_rounding and kahan_summation are not generated by the Triton backend: "
                         "use path='foreach' (or 'auto', which falls back to it) for these options")
    return "foreach"


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


def one_matrix(rule: Rule, h: SimpleNamespace, p: torch.Tensor, has: tuple) -> bool:
    """Whether p's matrix view is one matrix (not a batch of them), where the rule keeps row or
    column values for p: the fast paths reduce a row and column statistic over the whole tensor (an
    empty one never gets here: see `run`)."""
    if not rule.matrix or all(rule.state[sym].per == "element" for sym in has):
        return True
    return rule.matrix(p, h).shape[:-2].numel() == 1


def matrix_shapes(rule: Rule, h: SimpleNamespace, params) -> list[tuple[int, int]]:
    """Each parameter's matrix view as (rows, columns)."""
    return [tuple(rule.matrix(p, h).shape[-2:]) for p in params]


def choose(path: str, rule: Rule, device: torch.device, dense: bool) -> str:
    """The path for plain parameters on `device`: the requested one where it applies, else the fastest
    that does.

    auto: the C kernel on the CPU, Triton kernels on CUDA (where Triton is importable), foreach elsewhere;
    a strided parameter (rare) takes the rule as written.
    """
    if not rule.traceable:
        return "tensor"
    if path == "fused" and device.type != "cpu":
        raise ValueError("the fused path runs on the CPU; use path='triton' or 'foreach' "
                         f"for {device.type} tensors")
    if path == "triton":
        if device.type != "cuda" and not (device.type == "cpu" and tritongen.interpreted()):
            raise ValueError("the triton path runs on CUDA tensors "
                             "(on the CPU only under TRITON_INTERPRET=1, "
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


# --- foreach: the traced graph, one multi-tensor call per node (engine/foreach.py) -----------------


def run_foreach(rule: Rule, h, params, grads, states) -> None:
    graph = graph_of(rule, h, kept=tuple(states))
    shapes = matrix_shapes(rule, h, params) if graph.matrix else None
    foreach.run(graph, h, {"θ": params, "g": grads, **states}, shapes)


# --- fused: the traced graph as one C kernel -----------------------------------------------------


def run_fused(rule: Rule, h, params, grads, states, rounding: lowprec.Rounding | None = None) -> None:
    static, kept = static_key(h), tuple(states)
    flags = rounding.flags if rounding is not None else (False, False)
    kernel = kernel_of(rule, h, params[0].dtype, static, kept, flags)
    graph = graph_of(rule, h, static, kept)
    arrays = {"θ": params, "g": [g.contiguous() for g in grads], **states}
    extents = [x for xs in zip(*matrix_shapes(rule, h, params)) for x in xs] if graph.matrix else []
    extra = []
    if rounding is not None:  # keys per tensor: one per array, then the Kahan buffer's (cgen reads [t][k])
        names = [name if name in ("θ", "g") else rule.state[name].key for name in graph.arrays]
        extents += [key or 0 for t in range(len(params))
                    for key in [*(rounding.key(t, name) for name in names), rounding.comp_key(t)]]
    if rounding is not None and rounding.kahan:
        extra = list(rounding.comps)
    kernel([arrays[name] for name in graph.arrays], h, extents or None, extra)


# --- triton: the traced graph as Triton kernels (CUDA; CPU tensors under TRITON_INTERPRET=1) ---------


def run_triton(rule: Rule, h, params, grads, states) -> None:
    static, kept, dtype = static_key(h), tuple(states), params[0].dtype

    def build():
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        folder = native.usable_cache_dir(native.cache_dir())
        return tritongen.Kernel(graph_of(rule, h, static, kept), dtype, f"{rule.name}({flags})", folder)

    kernel = _kernels.get(("triton", _rule_key(rule), static, dtype, kept, tritongen.interpreted()), build)
    arrays = {"θ": params, "g": [g.contiguous() for g in grads], **states}
    kernel([arrays[name] for name in kernel.graph.arrays], h)


RUNNERS = {"foreach": run_foreach, "tensor": run_tensor, "triton": run_triton}
