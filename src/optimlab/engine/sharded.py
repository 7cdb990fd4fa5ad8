"""Sharded parameters (DTensors, as FSDP2's `fully_shard` makes them): each rule on the right data.

FSDP2 shards every parameter on dim 0, often unevenly (5 rows on 2 ranks: 3 and 2). A rule's math
is for the whole tensor, so how a step runs depends on what the rule reads:

    elementwise         its local shards, on the fast path (the C kernel on the CPU): no communication
    per-tensor values   the traced rule on the local shards (foreach), its sums over elements made
                        global: a norm, Adafactor's column means. All the sums of one level (those that
                        do not wait for another sum) for all tensors travel in ONE all-reduce: LAMB's
                        ‖θ‖ and ‖u‖ of every tensor are one call per step. Rows of the matrix view lie
                        whole on one rank (they are dim 0), so row statistics need none.
    whole matrices      Muon, Shampoo, SOAP (any rule that is not elementwise): each parameter has an
                        owner rank (the largest tensors first, each to the least loaded rank); one
                        all-to-all sends every rank's rows of θ, g and the states to the owners, each
                        owner runs the rule (batched) on its whole matrices, and a second all-to-all
                        sends the new rows of θ and the states back. Two calls per step for all tensors,
                        the matrix work divided among the ranks.

Anything else (a mesh of two dimensions, a placement other than dim 0) is gathered whole on every rank
(`full_tensor`, one all-gather per tensor), stepped there, and each rank keeps its own slice.

States of a sharded parameter are DTensors too, so torch's distributed checkpoint saves and reshards
them: per-element and per-row states are sharded like the parameter, per-column ones replicated
(every rank holds the same column means after the all-reduce).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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


def any_nonzero(tensors: list) -> bool:
    """Whether any element of the tensors is nonzero, decided alike on every rank for DTensors (their
    shards are summed up over the ranks: one all-reduce)."""
    local = [x.to_local() if is_sharded(x) else x for x in tensors]
    found = any(bool(x.any()) for x in local)
    split = next((x for x in tensors if is_sharded(x)), None)
    if split is None:
        return found
    flag = torch.tensor([int(found)], device=split.device)  # NCCL reduces tensors on the GPU only
    dist.all_reduce(flag, group=split.device_mesh.get_group())
    return bool(flag.item())


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
    if laid_out:
        return run_owned(path, rule, h, params, grads, states)
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
    return math.prod(p.shape[1:])  # the shape only: indexing a DTensor communicates


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
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in flat], torch.float32)
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

    def keep_replicated(self, local, summed):
        """A sum over ranks with the entries of replicated tensors (whole on every rank, so their local
        sums are already global) put back: one value per tensor, or a list of one tensor each."""
        if all(self.sharded):
            return summed
        if isinstance(local, torch.Tensor):
            return torch.where(torch.tensor(self.sharded, device=local.device), summed, local)
        return [s if split else x for x, s, split in zip(local, summed, self.sharded)]


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




# --- whole matrices: each owned by one rank -----------------------------------------------------------


def owners(sizes: list[int], world: int) -> list[int]:
    """The rank that steps each tensor: the largest first, each to the least loaded rank (the same on
    every rank: it depends on the shapes only)."""
    load, owner = [0] * world, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        owner[i] = min(range(world), key=lambda r: (load[r], r))
        load[owner[i]] += max(sizes[i], 1)
    return owner


def _rows(x, world: int) -> list[int] | None:
    """Rows each rank holds of x (split on dim 0 as torch.chunk does), or None if x is replicated."""
    if not any(isinstance(q, Shard) for q in x.placements):
        return None
    n = x.shape[0]
    step = -(-n // world) if n else 0
    return [max(0, min(step, n - r * step)) for r in range(world)]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def run_owned(path: str, rule, h, params, grads, states) -> None:
    """Whole matrices: each parameter is stepped by one rank, its owner (owners spread by size). Two
    all-to-alls per step for all tensors: the shards of θ, g and the states go to their owner, which
    runs the rule on the whole matrices; the new θ and states go back, each rank its rows."""
    from . import paths

    group = params[0].device_mesh.get_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    owner = owners([p.numel() for p in params], world)
    keys = [k for k in states if states[k][0] is not None]
    inputs = [[p, g, *(states[k][i] for k in keys)] for i, (p, g) in enumerate(zip(params, grads))]
    mine = [i for i in range(len(params)) if owner[i] == rank]

    # 1. every rank's rows of every split tensor to its owner (replicated ones the owner has already)
    send = [[_bytes(x.to_local()) for i in range(len(params)) if owner[i] == d for x in inputs[i]
             if _rows(x, world) is not None] for d in range(world)]
    expect = [[r[s] * _row_bytes(x) for i in mine for x in inputs[i] if (r := _rows(x, world)) is not None]
              for s in range(world)]
    received = _all_to_all(send, expect, group, params[0].device)
    whole = {}
    for i in mine:
        whole[i] = []
        for j, x in enumerate(inputs[i]):
            rows = _rows(x, world)
            if rows is None:
                whole[i].append(x.to_local().clone())
                continue
            pieces = [received[s].pop(0).view(x.dtype).view(rows[s], *x.shape[1:]) for s in range(world)]
            whole[i].append(torch.cat(pieces))
    if mine:
        full = [whole[i] for i in mine]
        paths.run(path, rule, h, [f[0] for f in full], [f[1] for f in full],
                  {k: [f[2 + n] for f in full] for n, k in enumerate(keys)})

    # 2. the new θ and states back: each rank its rows (a replicated state whole to every rank)
    send = [[_bytes(_piece(f, x, world, d)) for i in mine for f, x in _outputs(whole[i], inputs[i])]
            for d in range(world)]
    expect = [[_piece_bytes(x, world, rank) for i in range(len(params)) if owner[i] == s
               for x in inputs[i][:1] + inputs[i][2:]] for s in range(world)]
    received = _all_to_all(send, expect, group, params[0].device)
    for s in range(world):
        for i in (i for i in range(len(params)) if owner[i] == s):
            for x in inputs[i][:1] + inputs[i][2:]:
                local = x.to_local()
                local.copy_(received[s].pop(0).view(x.dtype).view(local.shape))


def _outputs(full: list, inputs: list):
    """(whole value, tensor) of what a step changes: θ and the states, not g."""
    return [(f, x) for j, (f, x) in enumerate(zip(full, inputs)) if j != 1]


def _row_bytes(x) -> int:
    return math.prod(x.shape[1:]) * x.element_size()  # the shape only: indexing a DTensor communicates


def _piece(full: torch.Tensor, x, world: int, rank: int) -> torch.Tensor:
    rows = _rows(x, world)
    if rows is None:
        return full
    start = sum(rows[:rank])
    return full[start:start + rows[rank]]


def _piece_bytes(x, world: int, rank: int) -> int:
    rows = _rows(x, world)
    return x.numel() * x.element_size() if rows is None else rows[rank] * _row_bytes(x)


def _all_to_all(send: list[list[torch.Tensor]], expect: list[list[int]], group,
                device: torch.device) -> list[list[torch.Tensor]]:
    """One all_to_all of byte buffers on `device` (the parameters': NCCL sends GPU tensors only): send[d]
    to rank d; returns what each rank s sent here, cut into the pieces of sizes expect[s]."""
    out_sizes = [sum(sizes) for sizes in expect]
    flat_in = (torch.cat([t for ts in send for t in ts]) if any(send)
               else torch.empty(0, dtype=torch.uint8, device=device))
    flat_out = torch.empty(sum(out_sizes), dtype=torch.uint8, device=device)
    dist.all_to_all_single(flat_out, flat_in, out_sizes, [sum(t.numel() for t in ts) for ts in send],
                           group=group)
    pieces, start = [], 0
    for sizes in expect:
        row = []
        for n in sizes:
            row.append(flat_out[start:start + n])
            start += n
        pieces.append(row)
    return pieces
