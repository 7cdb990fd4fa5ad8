"""Sharded parameters (DTensors, as FSDP2's `fully_shard` makes them): each rule on the right data.

FSDP2 shards every parameter on dim 0, often unevenly (5 rows on 2 ranks: 3 and 2). A rule's math
is for the whole tensor, so how a step runs depends on what the rule reads:

    elementwise         its local shards, on the fast path (the C kernel on the CPU): no communication
    per-tensor values   the traced rule on the local shards (foreach), its sums over elements made
                        global: a norm, Adafactor's column means. All the sums of one level (those that
                        do not wait for another sum) for all tensors travel in ONE all-reduce: LAMB's
                        ‖θ‖ and ‖u‖ of every tensor are one call per step. Rows of the matrix view lie
                        whole on one rank (they are dim 0), so row statistics need none.
    whole matrices      Muon, Shampoo, SOAP and anything else: the tensors are gathered (one
                        all-gather of θ, g and each state per tensor), every rank runs the rule on the
                        whole matrices, and keeps its own rows. Redundant compute, no owner to wait for.

States of a sharded parameter are DTensors too, so torch's distributed checkpoint saves and reshards
them: per-element and per-row states are sharded like the parameter, per-column ones replicated
(every rank holds the same column means after the all-reduce).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from .graph import ELEMENT, REDUCTIONS, ROW

try:  # a torch built without distributed support has no DTensor: nothing here applies
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover
    DTensor = None


def is_sharded(x) -> bool:
    return DTensor is not None and type(x) is DTensor


def _on_rows(p) -> bool:
    """Whether p is sharded on dim 0 of a one-dimensional mesh (or replicated): FSDP2's layout."""
    return p.device_mesh.ndim == 1 and all(isinstance(q, (Replicate, Shard)) and (not isinstance(q, Shard)
                                           or q.dim == 0) for q in p.placements)


def local_part(full: torch.Tensor, like) -> torch.Tensor:
    """The slice of the whole tensor `full` that this rank holds of a tensor laid out as `like`."""
    shape, offset = compute_local_shape_and_global_offset(full.shape, like.device_mesh, like.placements)
    return full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]


def create_state(s, p, h: SimpleNamespace, full: torch.Tensor) -> torch.Tensor:
    """State `s` of the sharded parameter p, made from p's whole value `full` by the rule's own init:
    split on dim 0 like p (per element, per row, and a matrix rule's factors, which it gathers anyway),
    replicated if it is per column or a number."""
    made = s.create(full, h)
    mesh = p.device_mesh
    if s.per != "col" and made.dim() and _on_rows(p):
        placements = p.placements
    else:
        placements = [Replicate()] * mesh.ndim
    like = SimpleNamespace(device_mesh=mesh, placements=placements)
    local = local_part(made, like).contiguous()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=made.shape,
                              stride=made.stride())


def run(path: str, rule, h, params, grads, states) -> None:
    """One step of `rule` on sharded parameters (and their gradients and states, DTensors too)."""
    from . import paths  # paths imports this module

    tensors = [*params, *grads, *(x for xs in states.values() for x in xs if x is not None)]
    laid_out = all(is_sharded(x) and _on_rows(x) for x in tensors)
    if laid_out and rule.traceable and _rows_are_dim0(rule, h, params, states):
        graph = paths.graph_of(rule, h, kept=tuple(states))
        local = ([p.to_local() for p in params], [g.to_local() for g in grads],
                 {k: [x.to_local() for x in xs] for k, xs in states.items()})
        if not graph.reductions:
            return paths.run(path, rule, h, *local)
        return run_reducing(rule, h, params, *local)
    run_gathered(path, rule, h, params, grads, states)


def _rows_are_dim0(rule, h, params, states) -> bool:
    """Whether the rows of each parameter's matrix view are its dim 0 (so whole rows are local)."""
    if all(rule.state[sym].per == "element" for sym in states):
        return True
    for p in params:
        view = rule.matrix(torch.empty(p.shape, device="meta"), h)
        if view.dim() != 2 or view.shape[0] != (p.shape[0] if p.dim() else 1):
            return False
    return True


def run_reducing(rule, h, params, local_params, local_grads, local_states) -> None:
    """The traced rule on the local shards, with global sums (see the module docstring)."""
    from . import foreach, paths

    graph = paths.graph_of(rule, h, kept=tuple(local_states))
    shapes = whole = None
    if graph.matrix:  # local rows, whole columns
        shapes = [(x.shape[0], _cols(p)) for x, p in zip(local_params, params)]
        whole = paths.matrix_shapes(rule, h, [torch.empty(p.shape, device="meta") for p in params])
    across = Across(params, whole)
    foreach.run(by_level(graph), h, {"θ": local_params, "g": local_grads, **local_states}, shapes, across)


def by_level(graph):
    """The graph's nodes ordered by how many reductions they wait for (a topological order still): all
    the sums of a level come before anything that needs one of them, so they share one all-reduce."""
    level: dict[int, int] = {}
    for n in graph.nodes:
        level[id(n)] = max((level[id(a)] + (a.op in REDUCTIONS) for a in n.args), default=0)
    order = sorted(range(len(graph.nodes)),
                   key=lambda i: (level[id(graph.nodes[i])], graph.nodes[i].op in REDUCTIONS, i))
    return dataclasses.replace(graph, nodes=[graph.nodes[i] for i in order])


def _cols(p) -> int:
    return p[0].numel() if p.dim() else 1


class Across:
    """What the foreach path needs to make a step on local shards global: the whole tensors' sizes and
    one all-reduce for a batch of partial sums."""

    def __init__(self, params, whole_shapes):
        self.group = params[0].device_mesh.get_group()
        self.sharded = [any(isinstance(q, Shard) for q in p.placements) for p in params]
        numel = [p.numel() for p in params]
        rows, cols = zip(*whole_shapes) if whole_shapes else (numel, numel)
        self.sizes = {"numel": numel, "nrows": list(rows), "ncols": list(cols)}

    def partial(self, op: str, kind: int) -> bool:
        """Whether a reduction `op` of a value of this kind gives a partial sum on each rank: sums over
        elements or rows (which are split across ranks), not row sums or sums of replicated columns."""
        if op == "row_sum":
            return False
        return kind in (ELEMENT, ROW) and any(self.sharded)

    def all_reduce(self, parts: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Sum each tensor of `parts` over the ranks, all in one call (one flat buffer)."""
        flat = [t for ts in parts for t in ts]
        if not flat:
            return parts
        dtype = torch.promote_types(flat[0].dtype, torch.float32)
        buffer = torch.cat([t.reshape(-1).to(dtype) for t in flat])
        dist.all_reduce(buffer, group=self.group)
        out, start = [], 0
        for ts in parts:
            row = []
            for t in ts:
                row.append(buffer[start:start + t.numel()].view(t.shape).to(t.dtype))
                start += t.numel()
            out.append(row)
        return out


def run_gathered(path: str, rule, h, params, grads, states) -> None:
    """The rule on whole tensors (gathered on every rank); each rank keeps its own slice."""
    from . import paths

    def whole(x):
        return x.full_tensor() if is_sharded(x) else x

    full_params = [whole(p.detach()) for p in params]
    full_states = {k: [None if x is None else whole(x) for x in xs] for k, xs in states.items()}
    paths.run(path, rule, h, full_params, [whole(g) for g in grads], full_states)
    targets = [*zip(params, full_params),
               *((x, f) for k in states for x, f in zip(states[k], full_states[k]))]
    for x, f in targets:
        if x is not None and is_sharded(x):
            x.to_local().copy_(local_part(f, x))


