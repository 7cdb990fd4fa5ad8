"""Launch the Triton kernels that `tritongen` writes: the fused path on GPUs.

Kernels are written to a file in the kernel cache and imported (Triton reads a kernel's source), keyed
by the generated source. Each call builds (or finds) the small device tables a launch needs: the
pointer table, the chunk or tile table, the per-step numbers. A table is made once per content, so a
step with the same tensors and numbers copies nothing to the device, and a CUDA graph replays the
tables of its warm-up step. With `capturable=True` the rule's per-step scalars are traced too
(`counting_on_device`) and computed by the kernels from each tensor's step count on the device.
8-bit states (`coded`) are passed as their codes and block scales; their maps as one float32 table.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import operator
from types import SimpleNamespace

import torch

from . import cgen
from .caches import BoundedCache
from .graph import COL, PER_TENSOR, ROW, SCALAR, Graph, Sym, TraceError, scalar_value
from .rule import Rule
from .tritongen import BLOCK, BR, BC, LB, generate, line_sums, qmap_codecs


# --- the step count on the device (capturable=True) ---------------------------------------------------


class _Count(Sym):
    """The step count while a rule's per-step scalars are traced: comparing it is branching on it."""

    __slots__ = ()
    __hash__ = Sym.__hash__

    def __eq__(self, other):
        raise TraceError("the per-step scalars compare the step count (a branch on a dynamic value)")

    __ne__ = __eq__


_counting = BoundedCache(64)


def counting_on_device(rule: Rule) -> Rule:
    """The rule with its per-step scalars traced too, from a dynamic `h.step`: the kernels compute them
    from each tensor's step count on the device. A TraceError says where a rule's scalars cannot be
    traced (a `min` or an `if` on the step count)."""
    def make():
        if rule.scalar_state:
            raise TraceError(f"it carries scalar state from step to step ({', '.join(rule.scalar_state)})")

        def update(h, θ, g, *states):
            t = h.step
            t.__class__ = _Count  # only while the rule's scalars are computed from it
            try:
                scalars = rule.step_scalars(h, t, {})
            finally:
                t.__class__ = Sym
            return rule.update(SimpleNamespace(**{**vars(h), **scalars}), θ, g, *states)

        return dataclasses.replace(rule, update=update, scalars=None)

    return _counting.get((rule.update, rule.update.__code__), make)


# --- launching ---------------------------------------------------------------------------------------

# No a·b + c contracted into one fused multiply-add (Triton's default on GPUs): the kernels round each
# operation as the tensor path and the C kernel (-ffp-contract=off) do, so the paths agree to the ulp
# (and 8-bit states get the same codes on every path: the encoder's float32 arithmetic is exact).
OPTIONS = {"enable_fp_fusion": False}


def launch(kernel_of, arrays: list[list[torch.Tensor]], h, shapes=None, steps=None, amp=None) -> None:
    """One step: the tensors of each combination of storage dtypes (bf16 parameters with fp32 state, as
    torch's fused kernels take them, beside all-bf16 ones) through `kernel_of(dtypes)`, in one launch
    per pass. See Kernel.__call__ for the arguments."""
    columns = [[x.dtype for x in xs] for xs in arrays]
    groups: dict[tuple, list[int]] = {}
    if all(len(set(column)) == 1 for column in columns):  # one dtype per array: the usual case
        groups[tuple(column[0] for column in columns)] = list(range(len(arrays[0])))
    else:
        for i, dtypes in enumerate(zip(*columns)):
            groups.setdefault(dtypes, []).append(i)
    for dtypes, idx in groups.items():
        def pick(xs, idx=idx):
            return xs if xs is None or len(groups) == 1 else [xs[i] for i in idx]

        kernel_of(dtypes)([pick(xs) for xs in arrays], h, pick(shapes), pick(steps), amp)


class Kernel:
    """The Triton kernels of one traced rule and storage dtypes, and how to launch them on a call."""

    def __init__(self, graph: Graph, storage: dict, title: str, folder, device_step: bool = False,
                 coded: dict | None = None):
        """`storage`: each array's dtype (a coded state's codes: uint8, then its `cgen.absmax_array`:
        float32); `coded`: the states stored by a codec (symbol -> codec)."""
        self.graph, self.plan, self.device_step = graph, cgen.plan(graph), device_step
        self.coded = coded or {}
        # the maps a coded kernel decodes with, made once: the step only looks up their device table
        self.qmap_values = [float(v) for m in qmap_codecs(self.coded) for v in m.table]
        self.qmaps: dict[torch.device, torch.Tensor] = {}
        self.compute = torch.float64 if storage["θ"] == torch.float64 else torch.float32
        self.source = generate(graph, storage, self.compute, title, device_step, self.coded)
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:24]
        path = folder / f"triton-{digest}.py"
        if not path.exists() or path.read_text() != self.source:
            path.write_text(self.source)
        spec = importlib.util.spec_from_file_location(f"optimlab_triton_{digest}", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.scalars = [n for n in graph.nodes if n.kind == SCALAR and n.op != "const"]
        if device_step:
            self.scalars = [n for n in self.scalars if n.op == "scalar" and n.name != "step"]
        self.per_tensor = sum(n.kind == PER_TENSOR for n in graph.nodes)

    def __call__(self, arrays: list[list[torch.Tensor]], h, shapes=None, steps=None, amp=None) -> None:
        """One step over `arrays` (one list of tensors per kernel array: the graph's, then the block
        scales of coded states, whose own lists hold their codes); `shapes`: each tensor's matrix
        view (rows, columns) for a matrix graph; `steps`: each tensor's step count on the device
        (incremented already); `amp`: GradScaler's (scale, found_inf) tensors."""
        device = arrays[0][0].device
        sizes = tuple(x.numel() for x in arrays[0])
        nt, na = len(sizes), len(arrays)
        pointers = [x.data_ptr() for row in zip(*arrays) for x in row]
        ptrs = _device_table(pointers, device)
        npt, nr = max(self.per_tensor, 1), max(len(self.graph.reductions), 1)
        values = _scalar_values(self.graph, h, self.compute, self.scalars, self.device_step)
        # Per-step numbers in a small device array: arguments that never recompile a kernel.
        sc = _device_table([float(values[id(n)]) for n in self.scalars] or [0.0], device, torch.float64)
        stp = _device_table([x.data_ptr() for x in steps] if steps is not None else [0], device)
        scale, found_inf = amp if amp is not None else (_one(device), _zero(device))
        common = dict(NA=na, NPT=npt, NR=nr, AMP=amp is not None, **OPTIONS)
        if self.graph.matrix:
            return self._matrix(ptrs, sc, stp, scale, found_inf, tuple(shapes), device, common)
        chunk_t, chunk_lo, first, tail, numel, full = _chunks(sizes, device)
        nc = chunk_t.numel()
        if nc == 0:
            return
        pt = torch.zeros(nt * npt, dtype=torch.float64, device=device)
        part = torch.empty(nc * nr, dtype=torch.float64, device=device)
        unused = pt  # the matrix graphs' arguments (geo, lines, lpart, L)
        qmap = self._qmap(device) if self.coded else unused
        args = (ptrs, unused, pt, part, unused, unused, 0, sc, stp, scale, found_inf, chunk_t, chunk_lo,
                numel, qmap)
        aligned = functools.reduce(operator.or_, pointers, 0) % 16 == 0  # every pointer a multiple of 16
        for k in range(self.plan.passes):
            kernel = getattr(self.module, f"pass_{k}")
            for c0, count, whole in ((0, full, True), (full, nc - full, False)):  # whole chunks, then tails
                if count:
                    kernel[(count,)](*args, c0, **common, BLOCK=BLOCK, FULL=whole, ALIGNED=aligned)
            if any(self.plan.stage[id(r.args[0])] == k for r in self.graph.reductions):
                self.module.combine[(nt,)](first, tail, part, pt, NR=nr, NPT=npt, **OPTIONS)

    def _qmap(self, device: torch.device) -> torch.Tensor:
        """The kernel's maps on `device` (tritongen.qmap_codecs' order, 256 float32 values each)."""
        if device not in self.qmaps:
            self.qmaps[device] = _device_table(self.qmap_values, device, torch.float32)
        return self.qmaps[device]

    def _matrix(self, ptrs, sc, stp, scale, found_inf, shapes, device, common) -> None:
        row_sums, col_sums = line_sums(self.graph)
        geo, tiles, sizes = _tiles(shapes, device, len(row_sums), len(col_sums))
        nt, nc = len(shapes), tiles.shape[0]
        nodes = sum(n.kind in (ROW, COL) for n in self.graph.nodes)
        lines = torch.empty(max(nodes * sizes["lines"], 1), dtype=self.compute, device=device)
        lpart = torch.empty(max(sizes["partials"], 1), dtype=torch.float64, device=device)
        pt = torch.zeros(nt * common["NPT"], dtype=torch.float64, device=device)
        part = torch.empty(max(nc, 1) * common["NR"], dtype=torch.float64, device=device)
        args = (ptrs, geo, pt, part, lines, lpart, sizes["lines"], sc, stp, scale, found_inf)
        for k in range(self.plan.passes + 1):
            getattr(self.module, f"lines_{k}")[(nt,)](*args, **common, LB=LB)
            if k < self.plan.passes and nc:
                getattr(self.module, f"pass_{k}")[(nc,)](*args, tiles, **common, BR=BR, BC=BC)


def _scalar_values(graph: Graph, h, compute: torch.dtype, wanted: list, device_step: bool) -> dict:
    """The value of each scalar node the kernels read from `sc`, in double (booleans as 0/1)."""
    if device_step:  # the rest is computed in the kernel from the step count
        return {id(n): float(getattr(h, n.name)) for n in wanted}
    values = {}
    for n in graph.nodes:
        if n.kind == SCALAR:
            values[id(n)] = float(scalar_value(n, [values[id(a)] for a in n.args], h, compute))
    return values


_tables = BoundedCache(256)


def _device_table(values: list, device: torch.device, dtype=torch.int64) -> torch.Tensor:
    """A small table on the device, made once per content: a step under a CUDA graph replays the one made
    while warming up, and steps with the same tensors and numbers copy nothing to the device. A new one
    (a new lr) is copied from pinned memory without waiting: no host synchronisation."""
    def make():
        table = torch.tensor(values, dtype=dtype)
        if device.type != "cuda":
            return table.to(device)
        return table.pin_memory().to(device, non_blocking=True)

    return _tables.get((tuple(values), str(device), dtype), make)


def _one(device) -> torch.Tensor:
    return _device_table([1.0], device, torch.float32)


def _zero(device) -> torch.Tensor:
    return _device_table([0.0], device, torch.float32)


_chunk_tables = BoundedCache(64)


def _chunks(sizes: tuple, device: torch.device) -> tuple:
    """The chunk table of a layout (tensor, first element): every whole chunk, in tensor order, then each
    tensor's last, partial chunk; each tensor's first whole chunk, its partial chunk's number (-1: none)
    and its size, on the device; and the number of whole chunks."""
    def make():
        whole = [(t, lo) for t, size in enumerate(sizes) for lo in range(0, size - size % BLOCK, BLOCK)]
        first = [0]
        for size in sizes:
            first.append(first[-1] + size // BLOCK)
        tails = [(t, size - size % BLOCK) for t, size in enumerate(sizes) if size % BLOCK]
        tail = [-1] * len(sizes)
        for j, (t, _) in enumerate(tails):
            tail[t] = len(whole) + j
        table = whole + tails
        columns = ([t for t, _ in table], [lo for _, lo in table], first, tail, sizes)
        return (*(torch.tensor(x, dtype=torch.int64).to(device) for x in columns), len(whole))

    return _chunk_tables.get((sizes, str(device)), make)


def _tiles(shapes: tuple, device: torch.device, row_sums: int, col_sums: int):
    """The tile table (tensor, tile row, tile column) of matrix views, the per-tensor geometry (its
    columns: tritongen.GEO) and the sizes of the line buffer (rows and columns of all tensors) and of the
    line partial sums."""
    def make():
        geo, tiles, loff, lpb = [], [], 0, 0
        for t, (rows, cols) in enumerate(shapes):
            nti, ntj = -(-rows // BR), -(-cols // BC)
            geo += [rows, cols, loff, nti, ntj, lpb, len(tiles)]
            tiles += [(t, i, j) for i in range(nti) for j in range(ntj)]
            loff += rows + cols
            lpb += row_sums * rows * ntj + col_sums * cols * nti
        table = torch.tensor(tiles or [(0, 0, 0)], dtype=torch.int64)[:len(tiles)].to(device)
        return torch.tensor(geo, dtype=torch.int64).to(device), table, {"lines": loff, "partials": lpb}

    return _chunk_tables.get((shapes, str(device), row_sums, col_sums), make)
