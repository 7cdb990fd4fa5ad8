"""Lower a traced rule to Triton kernels: the fused path on GPUs.

The same graph and the same pass plan as the C kernel (`cgen.plan`): one kernel per pass over memory,
launched once over a table of every tensor of a dtype group (multi-tensor apply). Each program takes
one chunk of BLOCK elements of one tensor, found in a chunk table; pointers come from a table of
`data_ptr()`s, cast in the kernel to the storage type.

* Dynamic scalars (lr, bias corrections, …) are kernel arguments: a changing lr never recompiles.
  Scalar nodes are evaluated once per call in double precision, as the eager path computes them.
* Per-tensor reductions (LAMB's norms) are deterministic and two-stage: each program writes its
  chunk's partial sum, then one program per tensor adds its chunks' partials in chunk order, in
  float64. No atomics, so the result does not depend on scheduling.
* Per-tensor values derived from reductions (a trust ratio) are computed by each program from the
  per-tensor table, in float64.
* bf16/fp16 parameters compute in float32 and round once when storing, like the other paths.

Kernels are written to a file in the kernel cache and imported (Triton reads a kernel's source),
keyed by the generated source. Under `TRITON_INTERPRET=1` they run on CPU tensors, which is how the
tests check them on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os

import torch

from . import cgen
from .caches import BoundedCache
from .graph import ELEMENT, PER_TENSOR, REDUCTIONS, SCALAR, Graph, Sym, scalar_value

BLOCK = 1024  # elements per program: one chunk


STORAGE = {torch.float32: "tl.float32", torch.float64: "tl.float64", torch.bfloat16: "tl.bfloat16",
           torch.float16: "tl.float16"}

# Each op once: its Triton expression over operand expressions (the C and numpy backends have theirs;
# tests/test_triton.py checks that every op of the graph has an entry in every backend).
OPS = {
    "neg": "(-{0})", "abs": "tl.abs({0})", "square": "({0} * {0})", "not": "({0} == 0)",
    "sqrt": "{sqrt}({0})", "rsqrt": "{div}(1.0, {sqrt}({0}))",
    "sign": "(tl.where({0} > 0, 1.0, 0.0) - tl.where({0} < 0, 1.0, 0.0)).to({real})",
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "{div}({0}, {1})",
    "pow": "libdevice.pow({0}, {1})",
    "maximum": "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "minimum": "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "gt": "({0} > {1})", "ge": "({0} >= {1})", "lt": "({0} < {1})", "le": "({0} <= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "and": "({0} & {1})", "or": "({0} | {1})",
    "where": "tl.where({0}, {1}, {2})",
}


def available() -> bool:
    """Whether Triton can be imported here."""
    return importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclasses.dataclass
class Emitter:
    """What one generated module needs to know while writing expressions."""

    graph: Graph
    plan: cgen.Plan
    real: str  # compute type: tl.float32 or tl.float64
    index: dict  # id(node) -> its number in graph.nodes
    slot: dict  # id(per-tensor node) -> its column in the per-tensor table
    scalars: list  # the non-constant scalar nodes: kernel arguments, in order

    def expr(self, op: str, args: list[str], real: str) -> str:
        exact = real == "tl.float32"  # IEEE-rounded sqrt and division, as torch's kernels
        # float64 division and sqrt are IEEE-rounded already; float32 ones are approximate unless asked
        if not exact and op in ("div", "rsqrt"):  # float64: `/` is IEEE-rounded already
            return f"({args[0]} / {args[1]})" if op == "div" else f"(1.0 / tl.sqrt({args[0]}))"
        return OPS[op].format(*args, real=real, sqrt="tl.sqrt_rn" if exact else "tl.sqrt", div="tl.div_rn")

    def ref(self, n: Sym) -> str:
        if n.op == "const":
            return str(int(n.value)) if n.is_bool else repr(float(n.value))
        return {SCALAR: "s", PER_TENSOR: "q", ELEMENT: "x"}[n.kind] + str(self.index[id(n)])


def generate(graph: Graph, dtype: torch.dtype, title: str = "") -> str:
    """Python source of a module with `pass_0 … pass_{k-1}` and `combine` Triton kernels."""
    p = cgen.plan(graph)
    per_tensor = [n for n in graph.nodes if n.kind == PER_TENSOR]
    em = Emitter(graph=graph, plan=p, real="tl.float64" if dtype == torch.float64 else "tl.float32",
                 index={id(n): i for i, n in enumerate(graph.nodes)},
                 slot={id(n): j for j, n in enumerate(per_tensor)},
                 scalars=[n for n in graph.nodes if n.kind == SCALAR and n.op != "const"])
    out = [f'"""optimlab Triton kernels: {title} ({dtype})"""', "import triton",
           "import triton.language as tl", "from triton.language.extra import libdevice", ""]
    for k in range(p.passes):
        out += _element_pass(em, k, STORAGE[dtype], len(per_tensor))
    out += _combine(em, len(per_tensor))
    return "\n".join(out) + "\n"


def _signature(em: Emitter) -> str:
    return "ptrs, chunk_t, chunk_lo, numel, pt, part, sc, NA: tl.constexpr, NPT: tl.constexpr"


def _per_tensor_lines(em: Emitter, k: int) -> list[str]:
    """Per-tensor values ready before pass k, computed by each program from the table, in float64."""
    lines = []
    for n in em.graph.nodes:
        if n.kind != PER_TENSOR or em.plan.stage[id(n)] > k:
            continue
        name = em.ref(n)
        if n.op in REDUCTIONS:
            lines.append(f"    {name} = tl.load(pt + t * NPT + {em.slot[id(n)]})")
        elif n.op == "numel":
            lines.append(f"    {name} = n.to(tl.float64)")
        else:
            lines.append(f"    {name} = {em.expr(n.op, [em.ref(a) for a in n.args], 'tl.float64')}")
    return lines


def _element_pass(em: Emitter, k: int, storage: str, npt: int) -> list[str]:
    graph, p, real = em.graph, em.plan, em.real
    nodes, loads = cgen._pass_nodes(graph, p.stage, p.write_pass, k)
    stores = [name for name, w in p.write_pass.items() if w == k]
    reduce_here = [r for r in graph.reductions if p.stage[id(r.args[0])] == k]
    lines = ["@triton.jit", f"def pass_{k}({_signature(em)}, NR: tl.constexpr, BLOCK: tl.constexpr):",
             "    c = tl.program_id(0)",
             "    t = tl.load(chunk_t + c)",
             "    n = tl.load(numel + t)",
             "    offs = tl.load(chunk_lo + c) + tl.arange(0, BLOCK)",
             "    mask = offs < n"]
    lines += [f"    s{em.index[id(n)]} = tl.load(sc + {j})" for j, n in enumerate(em.scalars)]
    lines += _per_tensor_lines(em, k)
    touched = sorted(set(loads.values()) | set(stores), key=graph.arrays.index)
    for name in touched:
        a = graph.arrays.index(name)
        lines.append(f"    a{a} = tl.load(ptrs + t * NA + {a}).to(tl.pointer_type({storage}))  # {name}")

    def ref(n: Sym) -> str:
        if n.kind == SCALAR and n.op != "const":
            return f"(s{em.index[id(n)]} != 0)" if n.is_bool else f"s{em.index[id(n)]}.to({real})"
        if n.kind == PER_TENSOR and not n.is_bool:
            return f"{em.ref(n)}.to({real})"
        return em.ref(n)

    for n in nodes:
        if id(n) in loads:
            value = f"tl.load(a{graph.arrays.index(loads[id(n)])} + offs, mask=mask, other=0).to({real})"
        elif n.op == "div" and n.args[0].kind == SCALAR and n.args[1].kind == ELEMENT:
            # a number over a tensor: torch computes tensor.reciprocal() * number
            value = f"({em.expr('div', ['1.0', ref(n.args[1])], real)} * {ref(n.args[0])})"
        else:
            value = em.expr(n.op, [ref(a) for a in n.args], real)
        lines.append(f"    {em.ref(n)} = {value}")
    for r in reduce_here:
        x = ref(r.args[0])
        term = f"{x} * {x}" if r.op == "sumsq" else x
        lines.append(f"    tl.store(part + c * NR + {graph.reductions.index(r)}, "
                     f"tl.sum(tl.where(mask, {term}, 0.0), axis=0).to(tl.float64))")
    for name in stores:
        a = graph.arrays.index(name)
        value = ref(graph.outputs[name])
        if storage == "tl.bfloat16":  # round to nearest even in integer ops, as torch does (the
            # interpreter's cast truncates); a NaN stays a NaN
            lines += [f"    u{a} = {value}.to(tl.uint32, bitcast=True)",
                      f"    r{a} = ((u{a} + 0x7FFF + ((u{a} >> 16) & 1)) >> 16).to(tl.uint16)",
                      f"    r{a} = tl.where({value} != {value}, 0x7FC0, r{a}).to(tl.uint16)"]
            value = f"r{a}.to(tl.bfloat16, bitcast=True)"
        else:
            value = f"{value}.to({storage})"
        lines.append(f"    tl.store(a{a} + offs, {value}, mask=mask)")
    return lines + [""]


def _combine(em: Emitter, npt: int) -> list[str]:
    """One program per tensor adds its chunks' partial sums in chunk order (deterministic)."""
    lines = ["@triton.jit", "def combine(first, part, pt, NR: tl.constexpr, NPT: tl.constexpr):",
             "    t = tl.program_id(0)", "    lo = tl.load(first + t)", "    hi = tl.load(first + t + 1)"]
    for j, r in enumerate(em.graph.reductions):
        lines += [f"    acc{j} = tl.zeros((), tl.float64)",
                  "    for c in range(lo, hi):",
                  f"        acc{j} += tl.load(part + c * NR + {j})",
                  f"    tl.store(pt + t * NPT + {em.slot[id(r)]}, acc{j})"]
    if not em.graph.reductions:
        lines.append("    pass")
    return lines + [""]


class Kernel:
    """The Triton kernels of one traced rule and storage dtype, and how to launch them on a call."""

    def __init__(self, graph: Graph, dtype: torch.dtype, title: str, folder):
        self.graph, self.plan = graph, cgen.plan(graph)
        self.compute = torch.float64 if dtype == torch.float64 else torch.float32
        self.source = generate(graph, dtype, title)
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:24]
        path = folder / f"triton-{digest}.py"
        if not path.exists() or path.read_text() != self.source:
            path.write_text(self.source)
        spec = importlib.util.spec_from_file_location(f"optimlab_triton_{digest}", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.scalars = [n for n in graph.nodes if n.kind == SCALAR and n.op != "const"]
        self.per_tensor = sum(n.kind == PER_TENSOR for n in graph.nodes)

    def __call__(self, arrays: list[list[torch.Tensor]], h) -> None:
        device = arrays[0][0].device
        sizes = tuple(x.numel() for x in arrays[0])
        chunk_t, chunk_lo, first = _chunks(sizes, device)
        nt, na, nc = len(sizes), len(arrays), chunk_t.numel()
        if nc == 0:
            return
        ptrs = torch.tensor([x.data_ptr() for row in zip(*arrays) for x in row], dtype=torch.int64).to(device)
        numel = torch.tensor(sizes, dtype=torch.int64).to(device)
        npt, nr = max(self.per_tensor, 1), max(len(self.graph.reductions), 1)
        pt = torch.zeros(nt * npt, dtype=torch.float64, device=device)
        part = torch.empty(nc * nr, dtype=torch.float64, device=device)
        values = _scalar_values(self.graph, h, self.compute)
        # Per-step numbers in a small device array: arguments that never recompile a kernel.
        numbers = [float(values[id(n)]) for n in self.scalars] or [0.0]
        sc = torch.tensor(numbers, dtype=torch.float64).to(device)
        for k in range(self.plan.passes):
            getattr(self.module, f"pass_{k}")[(nc,)](ptrs, chunk_t, chunk_lo, numel, pt, part, sc,
                                                     NA=na, NPT=npt, NR=nr, BLOCK=BLOCK)
            if any(self.plan.stage[id(r.args[0])] == k for r in self.graph.reductions):
                self.module.combine[(nt,)](first, part, pt, NR=nr, NPT=npt)


def _scalar_values(graph: Graph, h, compute: torch.dtype) -> dict:
    """Every scalar node's value for this call, in double (booleans as 0/1)."""
    values = {}
    for n in graph.nodes:
        if n.kind == SCALAR:
            values[id(n)] = float(scalar_value(n, [values[id(a)] for a in n.args], h, compute))
    return values


_chunk_tables = BoundedCache(64)


def _chunks(sizes: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunk table of a layout (tensor, first element) and each tensor's first chunk, on the device."""
    def make():
        chunk_t, chunk_lo, first = [], [], []
        for t, size in enumerate(sizes):
            first.append(len(chunk_t))
            for lo in range(0, size, BLOCK):
                chunk_t.append(t)
                chunk_lo.append(lo)
        first.append(len(chunk_t))
        return tuple(torch.tensor(x, dtype=torch.int64).to(device) for x in (chunk_t, chunk_lo, first))

    return _chunk_tables.get((sizes, str(device)), make)
