"""The three ways to run one rule, and the one place that chooses between them.

    tensor   the rule itself, eagerly, one parameter at a time: the readable reference path
    foreach  the traced rule, each node one `torch._foreach_*` call over all parameters (any device)
    fused    the traced rule compiled to one C kernel (CPU): one pass over memory, bandwidth-bound
    triton   the traced rule as Triton kernels (CUDA): the fused path on GPUs

All three compute in float32 for bf16/fp16 parameters and round once when storing, and in the
parameter's own dtype otherwise. A kernel or graph is made once per rule, static flags and dtype;
float hyperparameters are arguments, so changing them never recompiles.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import torch

from . import cgen, codec, foreach, lowprec, matrix, native, sharded, tritongen, tritonrun
from .caches import BoundedCache
from .graph import Graph, TraceError, static_key, trace
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
              kept: tuple | None = None, coded: dict | None = None,
              rounding: tuple[bool, bool] = (False, False)) -> native.Kernel:
    """The fused kernel; `coded`: states stored by a codec (symbol -> codec), read and written as codes;
    `rounding`: (stochastic, kahan) stores for bf16 parameters (engine/lowprec.py)."""
    static = static_key(h) if static is None else static
    kept = tuple(rule.kept(h)) if kept is None else kept
    coded = coded or {}

    def build():
        graph = graph_of(rule, h, static, kept)
        flags = ", ".join(f"{k}={v}" for k, v in static if isinstance(v, bool))
        source = cgen.generate(graph, dtype, title=f"{rule.name}({flags})", coded=coded, rounding=rounding)
        return native.Kernel(source, len(kernel_arrays(graph, coded)), graph.scalars)

    return _kernels.get((_rule_key(rule), static, dtype, kept, tuple(coded.items()), rounding), build)


def validate(path: str, rule: Rule, owner: str = "") -> None:
    """The one check of a requested path, at construction and again at each step (it may be reassigned)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    if path in ("foreach", "fused", "triton") and not rule.traceable:
        raise ValueError(f"{owner or rule.name} is not elementwise: it runs on path='tensor' only, "
                         f"not {path!r}")


def run(path: str, rule: Rule, h: SimpleNamespace, params, grads, states: dict[str, list], steps=None,
        amp=None, rounding: lowprec.Rounding | None = None) -> None:
    """Apply one step of `rule` to `params` in place (and to their `states`, symbol -> tensors).

    `steps` (capturable=True): each parameter's step count as a tensor on its device, already counted;
    the Triton kernels compute the per-step scalars from it. `amp`: GradScaler's (scale, found_inf).

    Gradients and states have passed `boundary.admit`: they match their parameters. Only plain dense
    tensors reach the fused kernel; a tensor subclass runs its local data (DTensor shards, for rules
    that are elementwise) or the rule as written, whose torch ops the subclass implements. `rounding`:
    stochastic rounding and Kahan buffers for bf16/fp16 parameters (lowprec.py; a no-op on others).
    """
    validate(path, rule)
    for (device, dtype, dense, has, plain, coded), idx in _grouped(rule, h, params, states).items():
        pick = [params[i] for i in idx], [grads[i] for i in idx], {k: [states[k][i] for i in idx]
                                                                   for k in has}
        low = rounding.pick(idx) if rounding is not None and dtype in lowprec.LOW else None
        chosen = choose(path, rule, device, dense) if plain else "tensor"
        if not dense and rule.matrix and any(rule.state[sym].per != "element" for sym in has):
            chosen = "tensor"  # row and column values on the fast paths: one dense matrix per tensor
        if steps is not None and chosen != "triton":
            raise ValueError(f"capturable=True: a {type(params[idx[0]]).__name__} parameter (a subclass, a "
                             f"strided tensor or a batch of matrices) takes path {chosen!r}, whose per-step "
                             "numbers come from the host; capturable=True runs on the triton path only")
        if coded and low is not None:
            raise ValueError(f"{rule.name}: 8-bit states with stochastic_rounding or kahan_summation are not "
                             "supported yet: use one or the other")
        if not plain:
            if coded:
                raise ValueError(f"{rule.name}: 8-bit states of {type(params[idx[0]]).__name__} parameters "
                                 "(sharded ones) are not supported; use the full-precision optimizer")
            if low is not None:  # shards would index their elements locally
                kind = type(params[idx[0]]).__name__
                raise ValueError(f"stochastic_rounding and kahan_summation do not support {kind} parameters "
                                 "(FSDP2's DTensor, other tensor subclasses) yet: use plain tensors")
            _run_subclass(path, rule, h, *pick)
            continue
        if low is not None:
            chosen = _rounding_path(path, chosen)
            if chosen != "fused":
                lowprec.via_float32(RUNNERS[chosen], rule, h, *pick, low)
                continue
        if chosen == "fused":
            try:
                if coded and not cgen.reads_codes(graph_of(rule, h, kept=has)):
                    codec.decoded(run_fused, rule, h, *pick)  # a kernel of several passes: decode around it
                else:
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
        if coded and chosen == "triton" and _triton_reads_codes(rule, h, has, steps is not None):
            step = None if steps is None else [steps[i] for i in idx]
            run_triton(rule, h, *pick, steps=step, amp=amp)  # the kernel reads and writes the codes itself
            continue
        if coded:  # the states decoded for the step and encoded again after it, in torch ops
            if steps is not None:
                raise ValueError(f"capturable=True: the 8-bit states of {rule.name} are decoded around its "
                                 "kernels by host-driven ops (it takes several passes); use capturable=False")
            codec.decoded(RUNNERS[chosen], rule, h, *pick)
            continue
        if chosen == "triton":
            run_triton(rule, h, *pick, steps=None if steps is None else [steps[i] for i in idx], amp=amp)
            continue
        RUNNERS[chosen](rule, h, *pick)


def _grouped(rule: Rule, h: SimpleNamespace, params, states: dict[str, list]) -> dict[tuple, list[int]]:
    """The parameters' indices by what decides their path and kernel: device, dtype, whether they are one
    dense matrix, which states they have (`has`), whether they are plain tensors, which states are coded.

    Run at every step over every parameter, so written for speed: which states a parameter has, and which
    are coded, follow from the types of its state values, looked up once per pattern of types."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    syms = tuple(states)
    patterns: dict[tuple, tuple] = {}
    rows = zip(*states.values()) if syms else ((),) * len(params)
    for i, (p, row) in enumerate(zip(params, rows)):
        if p.numel() == 0:  # nothing to update (and an empty matrix's row means would be 0/0)
            continue
        kinds = tuple(map(type, row))
        found = patterns.get(kinds)
        if found is None:
            has = tuple(sym for sym, kind in zip(syms, kinds) if kind is not _NONE)  # per-parameter states
            coded = tuple(sym for sym, kind in zip(syms, kinds) if kind is codec.Coded)  # engine/codec.py
            found = patterns[kinds] = has, coded
        has, coded = found
        plain = type(p) in PLAIN
        dense = plain and p.is_contiguous() and one_matrix(rule, h, p, has)
        groups[(p.device, p.dtype, dense, has, plain, coded)].append(i)
    return groups


_NONE = type(None)


def one_call_each(path: str, rule: Rule, h: SimpleNamespace, params, states: dict[str, list]) -> list | None:
    """How `run` steps these parameters where each of its groups is one call of a fast path that takes the
    states as they are stored (codes read by the kernel itself): [(path, parameter indices)]; None where
    a group would take another way (the tensor path, a subclass, states decoded around the step)."""
    calls = []
    for (device, dtype, dense, has, plain, coded), idx in _grouped(rule, h, params, states).items():
        chosen = choose(path, rule, device, dense) if plain and dense else "tensor"
        if chosen not in ("fused", "triton", "foreach"):
            return None
        if coded and (chosen == "foreach"
                      or chosen == "fused" and not cgen.reads_codes(graph_of(rule, h, kept=has))
                      or chosen == "triton" and not _triton_reads_codes(rule, h, has, False)):
            return None
        calls.append((chosen, idx))
    return calls


def _triton_reads_codes(rule: Rule, h: SimpleNamespace, has: tuple, capturable: bool) -> bool:
    """Whether the Triton kernel reads and writes the coded states itself (cgen.reads_codes): traced as
    run_triton traces it (capturable=True: with the per-step scalars)."""
    try:
        if capturable:
            rule, h = tritonrun.counting_on_device(rule), SimpleNamespace(**vars(h), step=1.0)
        return cgen.reads_codes(graph_of(rule, h, kept=has))
    except TraceError:
        if not capturable:
            raise
        return True  # run_triton says why the rule's per-step scalars cannot be computed on the device


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
    """Tensor subclasses: never a raw pointer. DTensors (FSDP2) by engine/sharded.py; any other subclass
    takes the rule as written, whose torch ops the subclass implements."""
    if sharded.is_sharded(params[0]):
        return sharded.run(path, rule, h, params, grads, states)
    try:
        run_tensor(rule, h, params, grads, states)
    except (RuntimeError, NotImplementedError) as err:
        kind = type(params[0]).__name__
        raise RuntimeError(f"{rule.name} cannot step {kind} parameters: an op of its rule is not supported "
                           f"for {kind} ({str(err).splitlines()[0]})") from err


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
    kernel, _, arrays, extents, extra = fused_arguments(rule, h, params, grads, states, rounding)
    kernel(arrays, h, extents or None, extra)


def fused_arguments(rule: Rule, h, params, grads, states, rounding: lowprec.Rounding | None = None):
    """The fused kernel for these tensors and what it takes: (kernel, array names, arrays in that order,
    extents, extra tensors); see native.Kernel.__call__."""
    static, kept = static_key(h), tuple(states)
    coded = {sym: xs[0].codec for sym, xs in states.items() if isinstance(xs[0], codec.Coded)}
    flags = rounding.flags if rounding is not None else (False, False)
    kernel = kernel_of(rule, h, params[0].dtype, static, kept, coded, flags)
    graph = graph_of(rule, h, static, kept)
    # A coded state passes its codes where the state would be, and its block scales after all arrays.
    arrays = {"θ": params, "g": [g.contiguous() for g in grads],
              **{sym: [x.codes if sym in coded else x for x in xs] for sym, xs in states.items()},
              **{cgen.absmax_array(sym): [x.absmax for x in states[sym]] for sym in coded}}
    extents = [x for xs in zip(*matrix_shapes(rule, h, params)) for x in xs] if graph.matrix else []
    extra = []
    if rounding is not None:  # keys per tensor: one per array, then the Kahan buffer's (cgen reads [t][k])
        names = [name if name in ("θ", "g") else rule.state[name].key for name in graph.arrays]
        extents += [key or 0 for t in range(len(params))
                    for key in [*(rounding.key(t, name) for name in names), rounding.comp_key(t)]]
    if rounding is not None and rounding.kahan:
        extra = list(rounding.comps)
    names = kernel_arrays(graph, coded)
    return kernel, names, [arrays[name] for name in names], extents, extra


def kernel_arrays(graph: Graph, coded: dict) -> list[str]:
    """The arrays a fused kernel takes, in order: the graph's, then the block scales of coded states."""
    return [*graph.arrays, *(cgen.absmax_array(sym) for sym in coded)]


# --- triton: the traced graph as Triton kernels (CUDA; CPU tensors under TRITON_INTERPRET=1) ---------


def run_triton(rule: Rule, h, params, grads, states, steps=None, amp=None) -> None:
    owner = rule.name
    try:
        if steps is not None:  # the per-step scalars traced too, computed in the kernels from h.step
            rule, h = tritonrun.counting_on_device(rule), SimpleNamespace(**vars(h), step=1.0)
        static, kept = static_key(h), tuple(states)
        graph = graph_of(rule, h, static, kept)
    except TraceError as err:
        if steps is None:
            raise
        raise ValueError(f"capturable=True: the per-step scalars of {owner} cannot be computed on the "
                         f"device ({err}); use capturable=False") from err
    title = f"{rule.name}({', '.join(f'{k}={v}' for k, v in static if isinstance(v, bool))})"
    coded = {sym: xs[0].codec for sym, xs in states.items() if isinstance(xs[0], codec.Coded)}
    names = kernel_arrays(graph, coded)

    def kernel_of(dtypes: tuple) -> tritonrun.Kernel:  # per storage dtypes: bf16 θ may keep fp32 state
        def build():
            folder = native.usable_cache_dir(native.cache_dir())
            return tritonrun.Kernel(graph, dict(zip(names, dtypes)), title, folder, steps is not None, coded)

        key = ("triton", _rule_key(rule), static, dtypes, kept, tuple(coded.items()), tritongen.interpreted())
        return _kernels.get(key, build)

    # A coded state passes its codes where the state would be, and its block scales after all arrays.
    arrays = {"θ": params, "g": [g.contiguous() for g in grads],
              **{sym: [x.codes if sym in coded else x for x in xs] for sym, xs in states.items()},
              **{cgen.absmax_array(sym): [x.absmax for x in states[sym]] for sym in coded}}
    shapes = matrix_shapes(rule, h, params) if graph.matrix else None
    tritonrun.launch(kernel_of, [arrays[name] for name in names], h, shapes, steps, amp)


RUNNERS = {"foreach": run_foreach, "tensor": run_tensor, "triton": run_triton}
