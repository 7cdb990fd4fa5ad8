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

from . import cgen, foreach, native
from .graph import Graph, trace
from .rule import Rule

PATHS = ("auto", "tensor", "foreach", "fused")

_graphs: dict[tuple, Graph] = {}
_kernels: dict[tuple, native.Kernel | None] = {}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def static_key(h: SimpleNamespace) -> tuple:
    """What a traced graph depends on: every entry of h that is not a number (bool is not a number here)."""
    return tuple(sorted((k, v) for k, v in vars(h).items() if type(v) not in (int, float)))


def graph_of(rule: Rule, h: SimpleNamespace, static: tuple | None = None, kept: tuple | None = None) -> Graph:
    """The traced graph; `kept`: the states the parameters have (default: all the flags in h keep)."""
    kept = tuple(rule.kept(h)) if kept is None else kept
    key = (rule.name, static_key(h) if static is None else static, kept)
    if key not in _graphs:
        _graphs[key] = trace(rule, h, list(kept))
    return _graphs[key]


def kernel_of(rule: Rule, h: SimpleNamespace, dtype: torch.dtype, static: tuple | None = None,
              kept: tuple | None = None) -> native.Kernel:
    static = static_key(h) if static is None else static
    kept = tuple(rule.kept(h)) if kept is None else kept
    key = (rule.name, static, dtype, kept)
    if key not in _kernels:
        graph = graph_of(rule, h, static, kept)
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
        has = tuple(sym for sym, xs in states.items() if xs[i] is not None)  # per-parameter states
        groups[(p.device, p.dtype, p.is_contiguous() and one_matrix(rule, h, p, has), has)].append(i)
    for (device, _, dense, has), idx in groups.items():
        chosen = choose(path, rule, device, dense)
        if not dense and rule.matrix and any(rule.state[sym].per != "element" for sym in has):
            chosen = "tensor"  # row and column values on the fast paths: one dense matrix per tensor
        pick = [params[i] for i in idx], [grads[i] for i in idx], {k: [states[k][i] for i in idx]
                                                                   for k in has}
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


def one_matrix(rule: Rule, h: SimpleNamespace, p: torch.Tensor, has: tuple) -> bool:
    """Whether p's matrix view is one matrix (not a batch of them), where the rule keeps row or column
    values for p: the fast paths reduce a row and column statistic over the whole tensor."""
    if not rule.matrix or all(rule.state[sym].per == "element" for sym in has):
        return True
    return rule.matrix(p, h).shape[:-2].numel() == 1


def matrix_shapes(rule: Rule, h: SimpleNamespace, params) -> list[tuple[int, int]]:
    """Each parameter's matrix view as (rows, columns)."""
    return [tuple(rule.matrix(p, h).shape[-2:]) for p in params]


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


def run_fused(rule: Rule, h, params, grads, states) -> None:
    static, kept = static_key(h), tuple(states)
    kernel = kernel_of(rule, h, params[0].dtype, static, kept)
    graph = graph_of(rule, h, static, kept)
    arrays = {"θ": params, "g": [g.contiguous() for g in grads], **states}
    extents = [x for xs in zip(*matrix_shapes(rule, h, params)) for x in xs] if graph.matrix else None
    kernel([arrays[name] for name in graph.arrays], h, extents)
