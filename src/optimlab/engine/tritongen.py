"""Lower a traced rule to Triton kernels: the fused path on GPUs.

The same graph and the same pass plan as the C kernel (`cgen.plan`): one kernel per pass over memory,
launched once over a table of every tensor of a dtype group (multi-tensor apply). Pointers come from a
table of `data_ptr()`s, cast in the kernel to each array's storage type.

* Elementwise rules: each program takes one chunk of BLOCK elements of one tensor, from a chunk table.
* Rules with row and column values (Adafactor): each program takes one BR×BC tile of one tensor's
  matrix view; row and column values live in a buffer of the compute type, one slot per row or column
  node, and are computed between passes by one program per tensor (`lines_k`), in graph order.
* Dynamic scalars (lr, bias corrections, …) are kernel arguments: a changing lr never recompiles.
  Scalar nodes are evaluated once per call in double precision, as the eager path computes them; with
  a step count on the device (`capturable=True`) the kernels compute them from it, per tensor.
* Reductions are deterministic and two-stage: each program writes its chunk's (tile's) partial sums,
  then they are added in chunk order, in float64, per tensor, row or column. No atomics, so the
  result does not depend on scheduling.
* Per-tensor values derived from reductions (a trust ratio) are computed by each program from the
  per-tensor table, in float64.
* bf16/fp16 arrays are computed in float32 and rounded once when stored, like the other paths; each
  array has its own storage type (bf16 parameters may keep fp32 state, as torch's fused kernels allow).
* GradScaler (`capturable=True`): the gradient is divided by the scale and nothing is stored when
  `found_inf` is set, read on the device by every program: no host synchronisation.
* 8-bit states (engine/codec.py), in a single-pass elementwise kernel (`cgen.reads_codes`): a program's
  chunk is BLOCK // 256 whole codec blocks, one row each. Codes are loaded as uint8 and decoded as
  `map[code] · absmax[block]` (the maps: a small float32 table, gathered); an output's new absmax is
  its row's max, and the row is encoded by `encode_S` / `encode_U`: codec.nearest_codes' float32
  operations in the same order, as the C kernel (the kernels are compiled without FMA contraction, as
  the C kernel is, so the codes agree bit for bit).

This module writes the kernels' source; `tritonrun` imports and launches them. Under
`TRITON_INTERPRET=1` they run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from . import cgen, codec
from .graph import COL, ELEMENT, PER_TENSOR, REDUCTIONS, ROW, SCALAR, Graph, Sym

BLOCK = 1024  # elements per program of an elementwise pass: one chunk
BR, BC = 16, 64  # a tile of a matrix pass: rows × columns (a column tile spans 64 contiguous elements)
LB = 256  # rows or columns per iteration of a between-passes loop

STORAGE = {torch.float32: "tl.float32", torch.float64: "tl.float64", torch.bfloat16: "tl.bfloat16",
           torch.float16: "tl.float16", torch.uint8: "tl.uint8"}
QB = codec.BLOCK  # elements per absmax of a coded state: a row of a coded pass's chunk
assert BLOCK % QB == 0, "a chunk holds whole codec blocks"
PREFIX = {SCALAR: "s", PER_TENSOR: "q", ROW: "y", COL: "z", ELEMENT: "x"}  # of a node's name in the kernels
# Columns of the per-tensor geometry table of a matrix graph.
GEO = ("rows", "cols", "loff", "nti", "ntj", "lpb", "first")

# Each op once: its Triton expression over operand expressions (the C and numpy backends have theirs;
# tests/test_triton.py checks that every op of the graph has an entry in every backend).
OPS = {
    "neg": "(-{0})", "abs": "tl.abs({0})", "square": "({0} * {0})", "not": "({0} == 0)",
    "sqrt": "{sqrt}({0})", "rsqrt": "{div}(1.0, {sqrt}({0}))",
    "sign": "(tl.where({0} > 0, 1.0, 0.0) - tl.where({0} < 0, 1.0, 0.0)).to({real})",
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "{div}({0}, {1})",
    "pow": "power({0}, {1})",
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
    storage: dict  # array -> its Triton storage type
    real: str  # compute type: tl.float32 or tl.float64
    index: dict  # id(node) -> its number in graph.nodes
    slot: dict  # id(per-tensor node) -> its column in the per-tensor table
    scalars: list  # scalar nodes read from the `sc` argument, in order
    device_step: bool  # scalars are computed in the kernel from each tensor's step count
    line: dict  # id(row or column node) -> its slot in the line buffer (matrix graphs)
    coded: dict = dataclasses.field(default_factory=dict)  # state array -> codec: stored as 8-bit codes
    arrays: list = dataclasses.field(default_factory=list)  # the pointer table's columns

    def expr(self, op: str, args: list[str], real: str) -> str:
        exact = real == "tl.float32"  # IEEE-rounded sqrt and division, as torch's kernels
        if op == "pow" and args[1] == "0.5":  # x ** 0.5 (an RMS's √n) is √x, correctly rounded as pow's
            op = "sqrt"
        if not exact and op in ("div", "rsqrt"):  # float64: `/` is IEEE-rounded already
            return f"({args[0]} / {args[1]})" if op == "div" else f"(1.0 / tl.sqrt({args[0]}))"
        return OPS[op].format(*args, real=real, sqrt="tl.sqrt_rn" if exact else "tl.sqrt", div="tl.div_rn")

    def ref(self, n: Sym) -> str:
        if n.op == "const":
            return str(int(n.value)) if n.is_bool else repr(float(n.value))
        return PREFIX[n.kind] + str(self.index[id(n)])

    def real_ref(self, n: Sym) -> str:
        """A node's value in the compute type (booleans as they are)."""
        if n.op == "const" or n.is_bool or n.kind in (ROW, COL, ELEMENT):
            return self.ref(n)
        return f"{self.ref(n)}.to({self.real})"

    def pointer(self, name: str) -> str:
        a = self.arrays.index(name)
        return f"tl.load(ptrs + t * NA + {a}).to(tl.pointer_type({self.storage[name]}))"

    def store(self, name: str, value: str, where: str, mask: str) -> list[str]:
        """Store `value` (compute type) into array `name` at `where`: bf16 rounds to nearest even in
        integer ops, as torch does (the interpreter's cast truncates); a NaN stays a NaN."""
        a = self.graph.arrays.index(name)
        lines = [f"    v{a} = {value}"]
        if self.storage[name] == "tl.bfloat16":
            lines += [f"    u{a} = v{a}.to(tl.float32).to(tl.uint32, bitcast=True)",
                      f"    u{a} = ((u{a} + 0x7FFF + ((u{a} >> 16) & 1)) >> 16).to(tl.uint16)",
                      f"    u{a} = tl.where(v{a} != v{a}, 0x7FC0, u{a}).to(tl.uint16)",
                      f"    tl.store(p{a} + {where}, u{a}.to(tl.bfloat16, bitcast=True), mask={mask})"]
        else:
            lines.append(f"    tl.store(p{a} + {where}, v{a}.to({self.storage[name]}), mask={mask})")
        return lines


def generate(graph: Graph, storage: dict, compute: torch.dtype, title: str = "",
             device_step: bool = False, coded: dict | None = None) -> str:
    """Python source of a module with `pass_k` kernels, and `combine` (elementwise) or `lines_k` (matrix).
    `coded`: states stored by a codec (array -> codec), read and written as codes; their block scales are
    pointer-table columns after the graph's arrays (`cgen.absmax_array`)."""
    coded = coded or {}
    if coded and not cgen.reads_codes(graph):
        raise ValueError("coded states are read by single-pass elementwise kernels only (see reads_codes)")
    p = cgen.plan(graph)
    per_tensor = [n for n in graph.nodes if n.kind == PER_TENSOR]
    scalars = [n for n in graph.nodes if n.kind == SCALAR and n.op != "const"]
    if device_step:
        scalars = [n for n in scalars if n.op == "scalar" and n.name != "step"]
    em = Emitter(graph=graph, plan=p, storage={name: STORAGE[dtype] for name, dtype in storage.items()},
                 real="tl.float64" if compute == torch.float64 else "tl.float32",
                 index={id(n): i for i, n in enumerate(graph.nodes)},
                 slot={id(n): j for j, n in enumerate(per_tensor)}, scalars=scalars, device_step=device_step,
                 line={id(n): j for j, n in enumerate(n for n in graph.nodes if n.kind in (ROW, COL))},
                 coded=coded, arrays=[*graph.arrays, *(cgen.absmax_array(sym) for sym in coded)])
    out = [f'"""optimlab Triton kernels: {title} ({", ".join(map(str, storage.values()))})"""',
           "import triton", "import triton.language as tl", "from triton.language.extra import libdevice", "",
           *UNSCALE, *POWER[interpreted()], *_encoders(set(coded.values()))]
    for k in range(p.passes):
        out += _matrix_pass(em, k) if graph.matrix else _element_pass(em, k)
    if graph.matrix:
        for k in range(p.passes + 1):
            out += _lines(em, k)
    else:
        out += _combine(em)
    return "\n".join(out) + "\n"


ARGS = "ptrs, geo, pt, part, lines, lpart, L, sc, steps, scale, found_inf"
CONSTS = "NA: tl.constexpr, NPT: tl.constexpr, NR: tl.constexpr, AMP: tl.constexpr"


def _scalar_lines(em: Emitter) -> list[str]:
    """The scalar nodes a program uses: read from `sc`, or (device step) computed here in float64."""
    lines = []
    for j, n in enumerate(em.scalars):
        lines.append(f"    {em.ref(n)} = tl.load(sc + {j})" + (" != 0" if n.is_bool else ""))
    if not em.device_step:
        return lines
    for n in em.graph.nodes:
        if n.kind != SCALAR or n.op == "const" or n in em.scalars:
            continue
        if n.op == "scalar":  # the step count, incremented on the device before the launch
            value = "tl.load(tl.load(steps + t).to(tl.pointer_type(tl.float32))).to(tl.float64)"
        elif n.op == "eps":
            value = repr(torch.finfo(torch.float64 if em.real == "tl.float64" else torch.float32).eps)
        else:
            value = em.expr(n.op, [em.ref(a) for a in n.args], "tl.float64")
        lines.append(f"    {em.ref(n)} = {value}")
    return lines


def _per_tensor_lines(em: Emitter, k: int, upto: bool = True) -> list[str]:
    """Per-tensor values ready before pass k (up to stage k; or before stage k, where the program
    computes stage k itself), computed by each program from the per-tensor table, in float64."""
    lines = []
    for n in em.graph.nodes:
        stage = em.plan.stage[id(n)]
        if n.kind != PER_TENSOR or stage > k or (not upto and stage == k):
            continue
        name = em.ref(n)
        if n.op in REDUCTIONS:
            lines.append(f"    {name} = tl.load(pt + t * NPT + {em.slot[id(n)]})")
        elif n.op in ("numel", "nrows", "ncols"):
            lines.append(f"    {name} = {dict(numel='n', nrows='rows', ncols='cols')[n.op]}.to(tl.float64)")
        else:
            lines.append(f"    {name} = {em.expr(n.op, [em.ref(a) for a in n.args], 'tl.float64')}")
    return lines


def _element_values(em: Emitter, nodes: list, loads: dict, mask: str, where: str) -> list[str]:
    """The ELEMENT nodes of a pass, in the compute type; a loaded gradient is unscaled (GradScaler)."""
    lines = []
    for n in nodes:
        if id(n) in loads and loads[id(n)] in em.coded:  # map[code] · absmax of its block, in float32
            a = em.graph.arrays.index(loads[id(n)])
            code = f"tl.load(p{a} + {where}, mask={mask}, other=0).to(tl.int32)"
            base = 256 * qmap_codecs(em.coded).index(em.coded[loads[id(n)]])
            value = f"(tl.load(qmap + {base} + {code}) * n{a}[:, None]).to({em.real})"
        elif id(n) in loads:
            name = loads[id(n)]
            value = f"tl.load(p{em.graph.arrays.index(name)} + {where}, mask={mask}, other=0).to({em.real})"
            if name == "g" and n.op == "input":
                value = f"unscale({value}, scale, AMP)"
        elif n.op == "div" and n.args[0].kind == SCALAR and n.args[1].kind == ELEMENT:
            # a number over a tensor: torch computes tensor.reciprocal() * number
            value = f"({em.expr('div', ['1.0', em.real_ref(n.args[1])], em.real)} * {em.real_ref(n.args[0])})"
        else:
            value = em.expr(n.op, [em.real_ref(a) for a in n.args], em.real)
        lines.append(f"    {em.ref(n)} = {value}")
    return lines


def _prologue(em: Emitter, nodes, loads, stores, aligned: bool = False) -> list[str]:
    graph = em.graph
    touched = sorted(set(loads.values()) | set(stores), key=graph.arrays.index)
    # GradScaler found an inf: store nothing (a where: the interpreter cannot `&` a scalar and a block)
    lines = ["    mask = tl.where(tl.load(found_inf) == 0, mask, False)"]
    lines += _scalar_lines(em)
    for name in touched:
        a = graph.arrays.index(name)
        lines.append(f"    p{a} = {em.pointer(name)}  # {name}")
        if aligned:  # every tensor of the launch starts at a multiple of 16 bytes (checked on the host)
            lines += ["    if ALIGNED:", f"        p{a} = tl.multiple_of(p{a}, 16)"]
        if name in em.coded:  # its block scales: the old ones, read before any program stores new ones
            lines += [f"    b{a} = {em.pointer(cgen.absmax_array(name))}  # {name}: absmax per block",
                      f"    n{a} = tl.load(b{a} + blocks, mask=rows_ok, other=0)"]
    return lines


def _element_pass(em: Emitter, k: int) -> list[str]:
    """An elementwise pass: one chunk of BLOCK elements per program."""
    graph, p = em.graph, em.plan
    nodes, loads = cgen._pass_nodes(graph, p.stage, p.write_pass, k)
    stores = [name for name, w in p.write_pass.items() if w == k]
    lines = ["@triton.jit",
             f"def pass_{k}({ARGS}, chunk_t, chunk_lo, numel, qmap, C0, {CONSTS}, BLOCK: tl.constexpr, "
             "FULL: tl.constexpr, ALIGNED: tl.constexpr):",
             "    c = C0 + tl.program_id(0)",
             "    t = tl.load(chunk_t + c)",
             "    n = tl.load(numel + t)",
             "    lo = tl.multiple_of(tl.load(chunk_lo + c), BLOCK)"]
    if em.coded:  # the chunk as rows of one codec block each (a tensor's last block may be short)
        shape = f"(BLOCK // {QB}, {QB})"
        lines += [f"    blocks = lo // {QB} + tl.arange(0, BLOCK // {QB})",
                  f"    offs = blocks[:, None] * {QB} + tl.arange(0, {QB})[None, :]",
                  f"    rows_ok = tl.where(tl.load(found_inf) == 0, blocks * {QB} < n, False)"]
    else:
        shape = "(BLOCK,)"
        lines.append("    offs = lo + tl.arange(0, BLOCK)")
    lines += ["    if FULL:  # a whole chunk: no lane masked off, so that loads and stores are vectorised",
              f"        mask = tl.full({shape}, 1, tl.int1)",
              "    else:",
              "        mask = offs < n"]
    lines += _prologue(em, nodes, loads, stores, aligned=True)
    lines += _per_tensor_lines(em, k)
    lines += _element_values(em, nodes, loads, "mask", "offs")
    for r in graph.reductions:
        if p.stage[id(r.args[0])] == k:
            x = em.ref(r.args[0])
            term = f"{x} * {x}" if r.op == "sumsq" else x
            lines.append(f"    tl.store(part + c * NR + {graph.reductions.index(r)}, "
                         f"tl.sum(tl.where(mask, {term}, 0.0), axis=0).to(tl.float64))")
    for name in stores:
        value = em.real_ref(graph.outputs[name])
        lines += _encode(em, name, value) if name in em.coded else em.store(name, value, "offs", "mask")
    return lines + [""]


def _encode(em: Emitter, name: str, value: str) -> list[str]:
    """Store a coded output: each row's (block's) new absmax, then its codes against it, in float32 as
    codec.encode: a NaN in a block makes its absmax NaN (a max reduction may drop NaNs: they are added
    back as a sum, which keeps them), and an all-zero block (or a NaN one) scales by 0."""
    a, x = em.graph.arrays.index(name), "S" if em.coded[name].signed else "U"
    return [f"    w{a} = {value}.to(tl.float32)",
            f"    u{a} = tl.where(mask, tl.abs(w{a}), 0.0)",
            f"    m{a} = tl.max(u{a}, axis=1) + tl.sum(tl.where(u{a} == u{a}, 0.0, u{a}), axis=1)",
            f"    tl.store(b{a} + blocks, m{a}, mask=rows_ok)",
            f"    r{a} = tl.where(m{a} > 0, tl.div_rn(1.0, tl.where(m{a} > 0, m{a}, 1.0)), 0.0)",
            f"    tl.store(p{a} + offs, encode_{x}(w{a} * r{a}[:, None]).to(tl.uint8), mask=mask)"]


def qmap_codecs(coded: dict) -> list:
    """The maps a coded kernel decodes with, in the order of its `qmap` table (256 float32 values each):
    each codec's own table, so a map of another codec (adamw8bit's v without zero) decodes as its own."""
    return list(dict.fromkeys(coded.values()))


def _encoders(codecs: set) -> list[str]:
    """Per map, codec.nearest_codes as a Triton function: the same float32 operations in the same order
    (cgen's encode_S / encode_U are the C transcription). Constants are float32 values, written exactly."""
    def f32(v) -> str:
        return repr(float(v))

    lines = []
    for c in sorted(codecs, key=lambda c: c.signed):
        d = c.decades
        lines += ["@triton.jit", f"def encode_{'S' if c.signed else 'U'}(q):",
                  "    a = tl.abs(q)",
                  "    d = " + " + ".join(f"(a > {f32(b)}).to(tl.int32)" for b in d.bounds) + " - 1",
                  f"    scale = tl.where(d >= 1, {f32(d.scale[1])}, {f32(d.scale[0])})",
                  f"    slope = tl.where(d >= 1, {f32(d.slope[1])}, {f32(d.slope[0])})",
                  f"    first = tl.where(d >= 1, {d.first[1]}, {d.first[0]})",
                  f"    last = tl.where(d >= 1, {d.last[1]}, {d.last[0]})"]
        for k in range(2, 7):
            lines += [f"    scale = tl.where(d >= {k}, {f32(d.scale[k])}, scale)",
                      f"    slope = tl.where(d >= {k}, {f32(d.slope[k])}, slope)",
                      f"    first = tl.where(d >= {k}, {d.first[k]}, first)",
                      f"    last = tl.where(d >= {k}, {d.last[k]}, last)"]
        lines += ["    u = (a * scale - 0.1) * slope",
                  "    j = tl.minimum(tl.where(u > 0, u, 0.0).to(tl.int32), last)  # truncated, in [0, last]",
                  "    rank = tl.where(d == 7, 255, first + j)"]
        if c.signed:  # the negative codes mirror the positive ones below zero (1 has no mirror)
            lines.append("    rank = tl.where(q < 0, tl.maximum(254 - rank, 0), rank)")
        lines += [f"    return tl.where(d < 0, {d.zero}, rank)", ""]
    return lines


def _combine(em: Emitter) -> list[str]:
    """One program per tensor adds its chunks' partial sums in chunk order (deterministic): its whole
    chunks, then its last, partial one (`tail`: its number, or -1)."""
    lines = ["@triton.jit", "def combine(first, tail, part, pt, NR: tl.constexpr, NPT: tl.constexpr):",
             "    t = tl.program_id(0)", "    lo = tl.load(first + t)", "    hi = tl.load(first + t + 1)",
             "    e = tl.load(tail + t)"]
    for j, r in enumerate(em.graph.reductions):
        lines += [f"    acc{j} = tl.zeros((), tl.float64)",
                  "    for c in range(lo, hi):",
                  f"        acc{j} += tl.load(part + c * NR + {j})",
                  f"    acc{j} += tl.load(part + e * NR + {j}, mask=e >= 0, other=0.0)",
                  f"    tl.store(pt + t * NPT + {em.slot[id(r)]}, acc{j})"]
    if not em.graph.reductions:
        lines.append("    pass")
    return lines + [""]


# x ** y (per tensor or per step, in float64): libdevice's pow on the GPU; Triton's interpreter has no
# libdevice, so there it is exp(y·log x), for the positive bases that rules raise to a power (within a
# few ulps of float64: far below float32's resolution).
POWER = {False: ["@triton.jit", "def power(x, y):", "    return libdevice.pow(x, y)", ""],
         True: ["@triton.jit", "def power(x, y):", "    return tl.exp(y * tl.log(x))", ""]}


# The gradient as the rule sees it: divided by GradScaler's scale where the kernel is told to (as torch's
# fused kernels do); found_inf is read once per program by the mask.
UNSCALE = ["@triton.jit", "def unscale(g, scale, AMP: tl.constexpr):", "    if AMP:",
           "        g = tl.div_rn(g, tl.load(scale).to(g.dtype))", "    return g", ""]


# --- matrix graphs: tiles of the matrix view, row and column values between passes --------------------


def _geometry(em: Emitter) -> list[str]:
    return [f"    {name} = tl.load(geo + t * {len(GEO)} + {j})" for j, name in enumerate(GEO)]


def _line_base(em: Emitter, n: Sym) -> str:
    """The first of tensor t's values of row or column node n in the line buffer."""
    return f"lines + {em.line[id(n)]} * L + loff" + (" + rows" if n.kind == COL else "")


def line_sums(graph: Graph) -> tuple[list[Sym], list[Sym]]:
    """The row sums and the column sums of elements, each with its partial sums in the kernels."""
    element = cgen.element_reductions(graph)
    return [r for r in element if r.op == "row_sum"], [r for r in element if r.op == "col_sum"]


def _matrix_pass(em: Emitter, k: int) -> list[str]:
    """A pass over tiles: row values broadcast along a tile's columns, column values along its rows."""
    graph, p = em.graph, em.plan
    nodes, loads = cgen._pass_nodes(graph, p.stage, p.write_pass, k)
    stores = [name for name, w in p.write_pass.items() if w == k]
    lines = ["@triton.jit", f"def pass_{k}({ARGS}, tiles, {CONSTS}, BR: tl.constexpr, BC: tl.constexpr):",
             "    c = tl.program_id(0)",
             "    t = tl.load(tiles + 3 * c)",
             *_geometry(em),
             "    n = rows * cols",
             "    i = tl.load(tiles + 3 * c + 1)",
             "    j = tl.load(tiles + 3 * c + 2)",
             "    r = i * BR + tl.arange(0, BR)",
             "    q = j * BC + tl.arange(0, BC)",
             "    mask = (r < rows)[:, None] & (q < cols)[None, :]",
             "    offs = r[:, None] * cols + q[None, :]"]
    lines += _prologue(em, nodes, loads, stores)
    lines += _per_tensor_lines(em, k)
    used = {id(a) for n in nodes if id(n) not in loads for a in n.args}
    used |= {id(graph.outputs[s]) for s in stores}
    for n in graph.nodes:  # row and column values of this tile, as a column and a row of it
        if id(n) in used and n.kind in (ROW, COL):
            at, shape = ("r", "[:, None]") if n.kind == ROW else ("q", "[None, :]")
            count = "rows" if n.kind == ROW else "cols"
            lines.append(f"    {em.ref(n)} = tl.load({_line_base(em, n)} + {at}, mask={at} < {count}, "
                         f"other=1){shape}")  # 1 off the matrix: no 1/0 in the lanes masked out
    lines += _element_values(em, nodes, loads, "mask", "offs")
    row_sums, col_sums = line_sums(em.graph)
    for red in graph.reductions:
        if red.args[0].kind != ELEMENT or p.stage[id(red.args[0])] != k:
            continue
        x = em.ref(red.args[0])
        term = f"tl.where(mask, {x} * {x}, 0.0)" if red.op == "sumsq" else f"tl.where(mask, {x}, 0.0)"
        if red.op in ("sum", "sumsq"):
            lines.append(f"    tl.store(part + c * NR + {graph.reductions.index(red)}, "
                         f"tl.sum(tl.sum({term}, axis=1), axis=0).to(tl.float64))")
        elif red.op == "row_sum":  # partial sums of this tile's rows: [row, column tile] of the tensor
            base = f"lpart + lpb + {row_sums.index(red)} * rows * ntj"
            lines.append(f"    tl.store({base} + r * ntj + j, tl.sum({term}, axis=1).to(tl.float64), "
                         "mask=r < rows)")
        else:  # columns: [column, row tile]
            base = f"lpart + lpb + {len(row_sums)} * rows * ntj + {col_sums.index(red)} * cols * nti"
            lines.append(f"    tl.store({base} + q * nti + i, tl.sum({term}, axis=0).to(tl.float64), "
                         "mask=q < cols)")
    for name in stores:
        lines += em.store(name, em.real_ref(graph.outputs[name]), "offs", "mask")
    return lines + [""]


def _lines(em: Emitter, k: int) -> list[str]:
    """Before pass k (after the last pass for k = passes), one program per tensor: the per-tensor, row
    and column values of stage k in graph order, each row or column node one loop over its lines in
    blocks of LB; after the last pass, the row and column states are stored."""
    graph, p = em.graph, em.plan
    row_sums, col_sums = line_sums(em.graph)
    lines = ["@triton.jit", f"def lines_{k}({ARGS}, {CONSTS}, LB: tl.constexpr):", "    t = tl.program_id(0)",
             *_geometry(em), "    n = rows * cols", "    b = tl.arange(0, LB)"]
    lines += _scalar_lines(em)
    lines += _per_tensor_lines(em, k, upto=False)
    inputs = sorted({n.name for n in graph.nodes if n.op == "input" and n.kind in (ROW, COL)
                     and p.stage[id(n)] == k}, key=graph.arrays.index)
    stored = [name for name in graph.outputs if graph.kinds[name] != ELEMENT] if k == p.passes else []
    lines += [f"    p{graph.arrays.index(name)} = {em.pointer(name)}  # {name}" for name in inputs + stored]
    if stored:
        lines.append("    ok = tl.load(found_inf) == 0  # GradScaler found an inf: store nothing")
    for n in graph.nodes:
        if p.stage[id(n)] != k or n.kind not in (PER_TENSOR, ROW, COL):
            continue
        if n.kind == PER_TENSOR and n.op in REDUCTIONS and n.args[0].kind == ELEMENT:
            lines += [f"    {em.ref(n)} = tl.zeros((), tl.float64)",  # tiles' partials in tile order
                      "    for c in range(first, first + nti * ntj):",
                      f"        {em.ref(n)} += tl.load(part + c * NR + {graph.reductions.index(n)})",
                      f"    tl.store(pt + t * NPT + {em.slot[id(n)]}, {em.ref(n)})"]
        elif n.kind == PER_TENSOR and n.op in REDUCTIONS:  # over a row or column node, in order
            x, count = n.args[0], "rows" if n.args[0].kind == ROW else "cols"
            term = "v * v" if n.op == "sumsq" else "v"
            lines += [f"    {em.ref(n)} = tl.zeros((), tl.float64)",
                      f"    for lo in range(0, {count}, LB):",
                      f"        v = tl.load({_line_base(em, x)} + lo + b, mask=lo + b < {count}, other=0)"
                      ".to(tl.float64)",
                      f"        {em.ref(n)} += tl.sum({term}, axis=0)",
                      f"    tl.store(pt + t * NPT + {em.slot[id(n)]}, {em.ref(n)})"]
        elif n.kind == PER_TENSOR:
            sizes = {"numel": "n", "nrows": "rows", "ncols": "cols"}
            value = f"{sizes[n.op]}.to(tl.float64)" if n.op in sizes else \
                em.expr(n.op, [em.ref(a) for a in n.args], "tl.float64")
            lines.append(f"    {em.ref(n)} = {value}")
        else:
            lines += _line_loop(em, n, row_sums, col_sums)
    for name in stored:
        o, count = graph.outputs[name], "rows" if graph.kinds[name] == ROW else "cols"
        lines += [f"    for lo in range(0, {count}, LB):",
                  f"        m = tl.where(ok, lo + b < {count}, False)",
                  f"        {em.ref(o)} = tl.load({_line_base(em, o)} + lo + b, mask=m, other=0)",
                  *["    " + s for s in em.store(name, em.ref(o), "lo + b", "m")]]
    return lines + ["    pass", ""]


def _line_loop(em: Emitter, n: Sym, row_sums: list, col_sums: list) -> list[str]:
    """One row or column node over all of tensor t's rows or columns, into its slot of the line buffer."""
    count, real = ("rows", em.real) if n.kind == ROW else ("cols", em.real)
    lines = [f"    for lo in range(0, {count}, LB):", f"        m = lo + b < {count}"]
    if n.op == "input":
        value = f"tl.load(p{em.graph.arrays.index(n.name)} + lo + b, mask=m, other=0).to({real})"
    elif n.op == "row_sum":  # the column tiles' partial sums of each row, in tile order
        base = f"lpart + lpb + {row_sums.index(n)} * rows * ntj + (lo + b) * ntj"
        lines += ["        acc = tl.zeros((LB,), tl.float64)", "        for jj in range(0, ntj):",
                  f"            acc += tl.load({base} + jj, mask=m, other=0)"]
        value = f"acc.to({real})"
    elif n.op == "col_sum":
        base = (f"lpart + lpb + {len(row_sums)} * rows * ntj + {col_sums.index(n)} * cols * nti"
                " + (lo + b) * nti")
        lines += ["        acc = tl.zeros((LB,), tl.float64)", "        for ii in range(0, nti):",
                  f"            acc += tl.load({base} + ii, mask=m, other=0)"]
        value = f"acc.to({real})"
    else:
        args = []
        for a in n.args:
            if a.kind in (ROW, COL):
                lines.append(f"        {em.ref(a)} = tl.load({_line_base(em, a)} + lo + b, mask=m, other=1)")
            args.append(em.real_ref(a))
        value = em.expr(n.op, args, real)
    lines += [f"        {em.ref(n)} = {value}",
              f"        tl.store({_line_base(em, n)} + lo + b, {em.ref(n)}, mask=m)",
              "    tl.debug_barrier()  # the next loop may read what another thread of the program wrote"]
    return lines
