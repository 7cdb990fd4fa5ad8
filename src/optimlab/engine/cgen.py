"""Generate one C kernel from a traced rule: the fused path.

The kernel walks all tensors of a call in fixed chunks of CHUNK elements, split over OpenMP threads
(the same libgomp pool torch uses, so no second pool spins against it). An elementwise rule is one
pass over memory: each element is loaded once, computed in registers and stored once, which is what
makes a step run at the machine's memory bandwidth. A rule with per-tensor reductions (LAMB's norms)
takes one more pass per level of reduction; a later pass reloads a state already written rather than
recomputing it from inputs that are gone.

Reductions are summed per chunk in the compute type (vector partial sums in registers, an order
fixed by the chunk and the compiled loop), then per tensor in double in chunk order, so their value
does not depend on the thread count or on the other tensors in the call.
"""

from __future__ import annotations

import dataclasses

import torch

from . import ccodec, lowprec
from .graph import COL, ELEMENT, PER_TENSOR, REDUCTIONS, ROW, SCALAR, Graph, Sym

CHUNK = 4096

# storage type, compute type, load, store
STORAGE = {
    torch.float32: ("float", "float", "{}", "{}"),
    torch.float64: ("double", "double", "{}", "{}"),
    torch.bfloat16: ("uint16_t", "float", "bf16_load({})", "bf16_store({})"),
    torch.float16: ("_Float16", "float", "(float)({})", "(_Float16)({})"),
}

PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_load(uint16_t x) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)x << 16; return v.f;
}
static inline uint16_t bf16_store(float f) {  /* round to nearest even, as torch */
    union { uint32_t u; float f; } v; v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
"""

INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "ge": ">=", "lt": "<", "le": "<=",
         "eq": "==", "ne": "!=", "and": "&&", "or": "||"}


def _expr(op: str, a: list[str], real: str, reciprocal: bool = False) -> str:
    """C for one op on operands of C type `real` (float or double).

    `reciprocal` marks a Python scalar divided by a tensor, which torch computes as
    `tensor.reciprocal() * scalar`; the kernel does the same to match it bit for bit.
    """
    f = "f" if real == "float" else ""
    if op == "div" and reciprocal:
        return f"((({real})1 / {a[1]}) * {a[0]})"
    if op in INFIX:
        return f"({a[0]} {INFIX[op]} {a[1]})"
    match op:
        case "neg":
            return f"(-{a[0]})"
        case "sqrt":
            return f"sqrt{f}({a[0]})"
        case "rsqrt":
            return f"(({real})1 / sqrt{f}({a[0]}))"
        case "abs":
            return f"fabs{f}({a[0]})"
        case "sign":
            return f"(({real})(({a[0]} > 0) - ({a[0]} < 0)))"
        case "square":
            return f"({a[0]} * {a[0]})"
        case "not":
            return f"(!{a[0]})"
        case "pow":
            return f"pow{f}({a[0]}, {a[1]})"
        # torch.maximum/minimum propagate NaN from either side
        case "maximum":
            return f"(({a[0]} > {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})"
        case "minimum":
            return f"(({a[0]} < {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})"
        case "where":
            return f"({a[0]} ? {a[1]} : {a[2]})"
    raise ValueError(f"no C for op {op}")


@dataclasses.dataclass
class Plan:
    """Which pass computes what."""

    passes: int
    stage: dict[int, int]  # id(node) -> the first pass whose values it can use
    write_pass: dict[str, int]  # array -> the pass that stores its new value


def element_outputs(graph: Graph) -> dict[str, Sym]:
    """Outputs stored by the element passes (row and column states are stored after the last pass)."""
    return {name: o for name, o in graph.outputs.items() if graph.kinds.get(name, ELEMENT) == ELEMENT}


def element_reductions(graph: Graph) -> list[Sym]:
    """Reductions summed inside an element pass (of a row or column value: between passes)."""
    return [r for r in graph.reductions if r.args[0].kind == ELEMENT]


def plan(graph: Graph) -> Plan:
    stage: dict[int, int] = {}
    for n in graph.nodes:
        if n.op in REDUCTIONS and n.args[0].kind == ELEMENT:
            stage[id(n)] = stage[id(n.args[0])] + 1
        else:
            stage[id(n)] = max((stage[id(a)] for a in n.args), default=0)
    outputs = element_outputs(graph)
    reduced = [r.args[0] for r in element_reductions(graph)]
    passes = 1 + max([stage[id(o)] for o in outputs.values()] + [stage[id(e)] for e in reduced], default=0)
    write_pass = {name: stage[id(o)] for name, o in outputs.items()}
    # An array cannot be overwritten while a later pass still reads its old value: defer the store.
    while True:
        moved = False
        for k in range(passes):
            for name in _pass_reads(graph, stage, write_pass, k):
                if name in write_pass and write_pass[name] < k:
                    write_pass[name] = k
                    moved = True
        if not moved:
            return Plan(passes=passes, stage=stage, write_pass=write_pass)


def _pass_roots(graph: Graph, stage, write_pass, k) -> list[Sym]:
    outs = [o for name, o in element_outputs(graph).items() if write_pass[name] == k]
    return outs + [r.args[0] for r in element_reductions(graph) if stage[id(r.args[0])] == k]


def _stored_before(graph: Graph, write_pass, k) -> dict[int, str]:
    """Nodes already in memory at pass k: an output stored by an earlier pass is reloaded, not recomputed."""
    return {id(o): name for name, o in element_outputs(graph).items() if write_pass[name] < k}


def _pass_nodes(graph: Graph, stage, write_pass, k) -> tuple[list[Sym], dict[int, str]]:
    """ELEMENT nodes pass k evaluates (topological) and the loads it starts from (node id -> array)."""
    stored = _stored_before(graph, write_pass, k)
    needed, loads = set(), {}
    stack = list(_pass_roots(graph, stage, write_pass, k))
    while stack:
        n = stack.pop()
        if n.kind != ELEMENT or id(n) in needed:
            continue
        needed.add(id(n))
        if id(n) in stored:
            loads[id(n)] = stored[id(n)]
        elif n.op == "input":
            loads[id(n)] = n.name
        else:
            stack.extend(n.args)
    return [n for n in graph.nodes if id(n) in needed], loads


def _pass_reads(graph: Graph, stage, write_pass, k) -> set[str]:
    stored = _stored_before(graph, write_pass, k)
    _, loads = _pass_nodes(graph, stage, write_pass, k)
    return {name for nid, name in loads.items() if nid not in stored}


def traffic(graph: Graph) -> int:
    """Arrays the fused kernel moves per element, over all passes (loads + stores); × itemsize = bytes."""
    p = plan(graph)
    total = 0
    for k in range(p.passes):
        _, loads = _pass_nodes(graph, p.stage, p.write_pass, k)
        total += len(set(loads.values())) + sum(w == k for w in p.write_pass.values())
    return total


@dataclasses.dataclass
class Emit:
    """What every emitter of one kernel needs: the graph, its plan, and the names of things in C."""

    graph: Graph
    plan: Plan
    dtype: torch.dtype
    storage: str  # the C type arrays are stored in
    real: str  # the C type elements are computed in
    load: str  # format of a load from storage to real
    store: str  # format of a store from real to storage
    index: dict[int, int]  # id(node) -> its number in the generated names
    slot: dict[int, int]  # id(per-tensor node) -> its column in pt
    npt: int  # per-tensor values per tensor
    rslot: dict[int, int]  # id(per-tensor reduction of elements) -> its column in part
    nr: int
    matrix: bool  # tensors are walked as matrices, with row and column values
    coded: dict = dataclasses.field(default_factory=dict)  # array -> codec: stored as 8-bit codes
    stride: int = 0  # arrays per tensor in the kernel's pointer table (the graph's, then block scales)
    # bf16 stores (engine/lowprec.py): per-element arrays rounded stochastically; θ with a Kahan buffer
    stochastic: bool = False
    kahan: bool = False

    def scalar_ref(self, n: Sym) -> str:
        if n.op == "const":
            return repr(float(n.value)) if not n.is_bool else str(int(n.value))
        return f"s{self.index[id(n)]}"

    def per_tensor_ref(self, n: Sym) -> str:
        return self.scalar_ref(n) if n.kind == SCALAR else f"pt[t * {self.npt} + {self.slot[id(n)]}]"

    def line_ref(self, n: Sym, at: str) -> str:
        """A row or column value (at index `at` of the tensor's rows or columns) or a coarser one, in real."""
        if n.kind == ROW:
            return f"rb{self.index[id(n)]}[roff[t] + {at}]"
        if n.kind == COL:
            return f"cb{self.index[id(n)]}[coff[t] + {at}]"
        if n.kind == PER_TENSOR:
            return f"(({self.real}){self.per_tensor_ref(n)})"
        if n.op == "const":
            return self.scalar_ref(n) if n.is_bool else f"({self.real}){float(n.value)!r}"
        return f"(({self.real})s{self.index[id(n)]})"


def generate(graph: Graph, dtype: torch.dtype, title: str = "", coded: dict | None = None,
             rounding: tuple[bool, bool] = (False, False)) -> str:
    """C source of the kernel `int step(nt, ptr, numel, sc, nthreads)` for parameters of `dtype`.

    A graph with row or column values reads each tensor's matrix view from numel[nt + t] (rows) and
    numel[2·nt + t] (columns). `coded` (state -> codec) names states stored as 8-bit codes: the kernel
    decodes them as it loads them and encodes them per block as it stores them (see _coded_pass).
    `rounding` = (stochastic, kahan) for bf16 parameters (lowprec.py): the keys of tensor t's arrays
    follow the sizes (one per array), its Kahan buffer is ptr[nt·arrays + t]. Not both (refused in paths)."""
    storage, real, load, store = STORAGE[dtype]
    p = plan(graph)
    per_tensor = [n for n in graph.nodes if n.kind == PER_TENSOR]
    reductions = element_reductions(graph)
    sums = [r for r in reductions if r.op in ("sum", "sumsq")]
    e = Emit(graph=graph, plan=p, dtype=dtype, storage=storage, real=real, load=load, store=store,
             index={id(n): i for i, n in enumerate(graph.nodes)},
             slot={id(n): j for j, n in enumerate(per_tensor)},
             npt=max(len(per_tensor), 1), rslot={id(r): j for j, r in enumerate(sums)}, nr=max(len(sums), 1),
             matrix=graph.matrix, coded=dict(coded or {}), stride=len(graph.arrays) + len(coded or {}),
             stochastic=rounding[0], kahan=rounding[1])
    if e.coded and not reads_codes(graph):
        raise ValueError("coded states are read by single-pass elementwise kernels only (see reads_codes)")
    if e.coded and any(rounding):
        raise ValueError("a kernel either reads 8-bit states or rounds bf16 stochastically, not both")
    out = [f"/* optimlab fused kernel: {title} ({dtype}) */", PRELUDE + (lowprec.C_PRELUDE if any(rounding)
                                                                          else ""), f"#define CHUNK {CHUNK}",
           f"#define BLOCK {BLOCK}", f"#define ROWS_IN_REAL {ROWS_IN_REAL}"]
    out += ccodec.functions(set(e.coded.values()))
    out.append("int step(int64_t nt, void **ptr, const int64_t *numel, const double *sc, int nthreads) {")
    # Scalars: computed once per call, in double, as the eager path computes them in Python.
    for n in graph.nodes:
        if n.kind != SCALAR or n.op == "const":
            continue
        i = e.index[id(n)]
        if n.op == "scalar":
            out.append(f"  const double s{i} = sc[{graph.scalars.index(n.name)}];  /* {n.name} */")
        elif n.op == "eps":
            out.append(f"  const double s{i} = {torch.finfo(COMPUTE[real]).eps!r};  /* machine epsilon */")
        else:
            ctype = "int" if n.is_bool else "double"
            out.append(f"  const {ctype} s{i} = {_expr(n.op, [e.scalar_ref(a) for a in n.args], 'double')};")
    out += _matrix_tables(e) if e.matrix else _chunk_table(e)
    if e.stochastic or e.kahan:
        out.append(f"  const int64_t *keys = numel + nt * {3 if e.matrix else 1};  /* [t][array, Kahan] */")
    for k in range(p.passes):
        out += _between_passes(e, k)
        out += _element_pass(e, k)
        out += _combine_reductions(e, k)
    out += _between_passes(e, p.passes)  # row or column states from the last pass's sums
    out += _store_lines(e)
    out += ["  free(chunk); free(part); free(pt);" + (" free(lines);" if e.matrix else ""),
            "  return 0;", "}"]
    return "\n".join(out) + "\n"


COMPUTE = {"float": torch.float32, "double": torch.float64}
BLOCK = 1 << 18  # elements per unit of work when tensors are walked as matrices (whole rows, at least one)
ROWS_IN_REAL = 32  # rows a column's partial sum takes in the compute type before it joins the double one


def _chunk_table(e: Emit) -> list[str]:
    """Elementwise graphs: fixed chunks of CHUNK elements, (tensor, first element) each."""
    return [
        "  int64_t nc = 0;",
        "  for (int64_t t = 0; t < nt; t++) nc += (numel[t] + CHUNK - 1) / CHUNK;",
        "  int64_t *chunk = malloc(sizeof(int64_t) * (2 * nc + nt + 1));",
        f"  double *part = malloc(sizeof(double) * (nc * {e.nr} + 1));",
        f"  double *pt = malloc(sizeof(double) * (nt * {e.npt} + 1));",
        "  if (!chunk || !part || !pt) { free(chunk); free(part); free(pt); return 1; }",
        "  int64_t *first = chunk + 2 * nc;  /* first chunk of each tensor */",
        "  for (int64_t t = 0, c = 0; t < nt; t++) {",
        "    first[t] = c;",
        "    for (int64_t lo = 0; lo < numel[t]; lo += CHUNK, c++) "
        "{ chunk[2 * c] = t; chunk[2 * c + 1] = lo; }",
        "  }",
        "  first[nt] = nc;",
    ]


def _line_nodes(e: Emit, kind: int) -> list[Sym]:
    return [n for n in e.graph.nodes if n.kind == kind]


def _matrix_tables(e: Emit) -> list[str]:
    """Graphs with row and column values: units of whole rows (about BLOCK elements), (tensor, first
    row, end row, offset of the unit's column partial sums) each, fixed by the shapes alone; and one
    buffer of `real` per row or column node."""
    rows, cols = _line_nodes(e, ROW), _line_nodes(e, COL)
    col_sums = [r for r in element_reductions(e.graph) if r.op == "col_sum"]
    lines = [
        "  const int64_t *rows = numel + nt, *cols = numel + 2 * nt;",
        "  int64_t nc = 0, nrow = 0, ncol = 0, ncp = 0;",
        "  for (int64_t t = 0; t < nt; t++) {",
        "    const int64_t per = cols[t] > 0 && cols[t] < BLOCK ? BLOCK / cols[t] : 1;",
        "    const int64_t units = (rows[t] + per - 1) / per;",
        "    nc += units; nrow += rows[t]; ncol += cols[t]; ncp += units * cols[t];",
        "  }",
        "  int64_t *chunk = malloc(sizeof(int64_t) * (4 * nc + 3 * nt + 1));",
        f"  double *part = malloc(sizeof(double) * (nc * {e.nr} + ncp * {max(len(col_sums), 1)} + 1));",
        f"  double *pt = malloc(sizeof(double) * (nt * {e.npt} + 1));",
        f"  {e.real} *lines = malloc(sizeof({e.real}) * (nrow * {max(len(rows), 1)}"
        f" + ncol * {max(len(cols), 1)} + ncp * {len(col_sums)} + 1));",
        "  if (!chunk || !part || !pt || !lines) {",
        "    free(chunk); free(part); free(pt); free(lines); return 1;",
        "  }",
        "  int64_t *first = chunk + 4 * nc, *roff = first + nt + 1, *coff = roff + nt;",
        "  for (int64_t t = 0, c = 0, r0 = 0, c0 = 0, p0 = 0; t < nt; t++) {",
        "    const int64_t per = cols[t] > 0 && cols[t] < BLOCK ? BLOCK / cols[t] : 1;",
        "    first[t] = c; roff[t] = r0; coff[t] = c0; r0 += rows[t]; c0 += cols[t];",
        "    for (int64_t lo = 0; lo < rows[t]; lo += per, c++, p0 += cols[t]) {",
        "      chunk[4 * c] = t; chunk[4 * c + 1] = lo;",
        "      chunk[4 * c + 2] = lo + per < rows[t] ? lo + per : rows[t]; chunk[4 * c + 3] = p0;",
        "    }",
        "  }",
        "  first[nt] = nc;",
        f"  double *colpart = part + nc * {e.nr};",
        f"  {e.real} *colrows = lines + nrow * {max(len(rows), 1)} + ncol * {max(len(cols), 1)};",
    ]
    for j, n in enumerate(rows):
        lines.append(f"  {e.real} *rb{e.index[id(n)]} = lines + nrow * {j};")
    for j, n in enumerate(cols):
        lines.append(f"  {e.real} *cb{e.index[id(n)]} = lines + nrow * {len(rows)} + ncol * {j};")
    return lines


def _between_passes(e: Emit, k: int) -> list[str]:
    """Per-tensor, row and column values whose inputs are ready before pass k, per tensor, in graph order
    (reductions of elements are filled in by the passes)."""
    todo = [n for n in e.graph.nodes if n.kind in (PER_TENSOR, ROW, COL) and e.plan.stage[id(n)] == k
            and not (n.op in REDUCTIONS and n.args[0].kind == ELEMENT)]
    if not todo:
        return []
    lines = ["  for (int64_t t = 0; t < nt; t++) {"]
    arrays = e.graph.arrays
    for n in todo:
        if n.kind == PER_TENSOR and n.op in REDUCTIONS:  # a sum over rows or columns, in double, in order
            x = e.line_ref(n.args[0], "r")
            count = "rows[t]" if n.args[0].kind == ROW else "cols[t]"
            term = f"(double){x} * (double){x}" if n.op == "sumsq" else f"(double){x}"
            lines += [f"    {{ double s = 0; for (int64_t r = 0; r < {count}; r++) s += {term};",
                      f"      {e.per_tensor_ref(n)} = s; }}"]
        elif n.kind == PER_TENSOR:
            sizes = {"numel": "(double)numel[t]", "nrows": "(double)rows[t]", "ncols": "(double)cols[t]"}
            value = sizes.get(n.op) or _expr(n.op, [e.per_tensor_ref(a) for a in n.args], "double")
            lines.append(f"    {e.per_tensor_ref(n)} = {value};")
        else:
            count = "rows[t]" if n.kind == ROW else "cols[t]"
            if n.op == "input":
                a = arrays.index(n.name)
                value = e.load.format(f"(({e.storage} *)ptr[t * {e.stride} + {a}])[r]")
            else:
                value = _expr(n.op, [e.line_ref(a, "r") for a in n.args], e.real)
            lines.append(f"    for (int64_t r = 0; r < {count}; r++) {e.line_ref(n, 'r')} = {value};")
    return lines + ["  }"]


def _store_lines(e: Emit) -> list[str]:
    """Row and column states: stored once all passes are done (until then their old values may be read)."""
    lines = []
    arrays = e.graph.arrays
    for name, o in e.graph.outputs.items():
        kind = e.graph.kinds.get(name, ELEMENT)
        if kind == ELEMENT:
            continue
        a = arrays.index(name)
        count = "rows[t]" if kind == ROW else "cols[t]"
        value = e.store.format(e.line_ref(o, "r"))
        lines += [f"  for (int64_t t = 0; t < nt; t++) {{  /* {name} */",
                  f"    {e.storage} *a = ({e.storage} *)ptr[t * {e.stride} + {a}];",
                  f"    for (int64_t r = 0; r < {count}; r++) a[r] = {value};",
                  "  }"]
    return lines


def _element_pass(e: Emit, k: int) -> list[str]:
    graph, real, arrays = e.graph, e.real, e.graph.arrays
    nodes, loads = _pass_nodes(graph, e.plan.stage, e.plan.write_pass, k)
    stores = [name for name, w in e.plan.write_pass.items() if w == k]
    reduce_here = [r for r in element_reductions(graph) if e.plan.stage[id(r.args[0])] == k]
    if not nodes and not stores and not reduce_here:
        return []
    sums = [r for r in reduce_here if r.op in ("sum", "sumsq")]
    row_sums = [r for r in reduce_here if r.op == "row_sum"]
    col_sums = [r for r in reduce_here if r.op == "col_sum"]
    used = {id(a) for n in nodes if id(n) not in loads for a in n.args}
    used |= {id(graph.outputs[name]) for name in stores}
    used |= {id(r.args[0]) for r in reduce_here}
    divisors = {id(n.args[1]): n.args[1] for n in nodes if id(n) not in loads and _by_a_number(n)}
    lines = [f"  {{ /* pass {k} */"]
    # Scalars and per-tensor values used per element, cast once to the compute type.
    for n in graph.nodes:
        if id(n) in used and n.kind == SCALAR and n.op != "const":
            ctype = "int" if n.is_bool else real
            lines.append(f"  const {ctype} k{e.index[id(n)]} = ({ctype})s{e.index[id(n)]};")
    # Dividing each element by the same number: multiply by its reciprocal, computed once in double
    # (within an ulp of the division; it takes the divider off the critical path of LAMB's passes).
    for d in divisors.values():
        if d.kind == SCALAR:
            lines.append(f"  const {real} r{e.index[id(d)]} = ({real})(1.0 / {e.scalar_ref(d)});")
    lines += [
        "  #pragma omp parallel for schedule(static) num_threads(nthreads)",
        "  for (int64_t c = 0; c < nc; c++) {",
    ]
    if e.matrix:
        lines += ["    const int64_t t = chunk[4 * c], lo = chunk[4 * c + 1], hi = chunk[4 * c + 2];",
                  "    const int64_t m = cols[t];"]
    else:
        lines += ["    const int64_t t = chunk[2 * c], lo = chunk[2 * c + 1];",
                  "    const int64_t hi = lo + CHUNK < numel[t] ? lo + CHUNK : numel[t];"]
    touched = sorted({name for name in loads.values()} | set(stores), key=arrays.index)
    for name in touched:
        a = arrays.index(name)
        const = "const " if name not in stores else ""
        ctype = "uint8_t" if name in e.coded else e.storage
        pointer = f"({ctype} *)ptr[t * {e.stride} + {a}]"
        lines.append(f"    {const}{ctype} *restrict a{a} = {pointer};  /* {name} */")
        if name in e.coded:
            scales = f"(float *)ptr[t * {e.stride} + {len(arrays) + list(e.coded).index(name)}]"
            lines.append(f"    float *restrict n{a} = {scales};  /* {name}: absmax per block */")
        if e.kahan and name == "θ":
            lines.append(f"    {const}{e.storage} *restrict ak = ({e.storage} *)ptr[nt * {len(arrays)} + t];")
        if name in stores and (e.stochastic or (e.kahan and name == "θ")):  # this chunk's keys, loaded once
            n = len(arrays) + 1
            lines.append(f"    const uint32_t key{a} = (uint32_t)keys[t * {n} + {a}];")
            if e.kahan and name == "θ":
                lines.append(f"    const uint32_t keyk = (uint32_t)keys[t * {n} + {n - 1}];")
    for n in graph.nodes:
        if id(n) in used and n.kind == PER_TENSOR:
            ctype = "int" if n.is_bool else real
            lines.append(f"    const {ctype} q{e.index[id(n)]} = ({ctype})pt[t * {e.npt} + {e.slot[id(n)]}];")
    for d in divisors.values():
        if d.kind == PER_TENSOR:
            value = f"({real})(1.0 / pt[t * {e.npt} + {e.slot[id(d)]}])"
            lines.append(f"    const {real} r{e.index[id(d)]} = {value};")
    # Sums: per chunk in the compute type; for matrices, per row in the compute type and per unit in double.
    acc_type = "double" if e.matrix else real
    for r in sums:
        lines.append(f"    {acc_type} acc{e.rslot[id(r)]} = 0;")
    for r in col_sums:
        j = col_sums.index(r)
        lines += [f"    double *restrict cp{j} = colpart + ncp * {j} + chunk[4 * c + 3];",
                  f"    {real} *restrict cf{j} = colrows + ncp * {j} + chunk[4 * c + 3];",
                  f"    for (int64_t i = 0; i < m; i++) {{ cp{j}[i] = 0; cf{j}[i] = 0; }}"]

    def ref(n: Sym) -> str:
        if n.kind == ELEMENT:
            return f"x{e.index[id(n)]}"
        if n.kind == PER_TENSOR:
            return f"q{e.index[id(n)]}"
        if n.kind == ROW:
            return f"y{e.index[id(n)]}"
        if n.kind == COL:
            return f"z{e.index[id(n)]}"
        if n.op == "const":
            return e.scalar_ref(n) if n.is_bool else f"({real}){float(n.value)!r}"
        return f"k{e.index[id(n)]}"

    body = []
    for n in graph.nodes:  # column values per element, from the tensor's own columns (a load, not a gather)
        if id(n) in used and n.kind == COL:
            lines.append(f"    const {real} *restrict zc{e.index[id(n)]} = cb{e.index[id(n)]} + coff[t];")
            body.append(f"const {real} z{e.index[id(n)]} = zc{e.index[id(n)]}[j];")
    for n in nodes:
        ctype = "int" if n.is_bool else real
        if id(n) in loads and loads[id(n)] in e.coded:  # map[code] · absmax, decoded for the block
            value = f"({real})dq{arrays.index(loads[id(n)])}[i - b0]"
        elif id(n) in loads:
            value = e.load.format(f"a{arrays.index(loads[id(n)])}[i]")
            if e.kahan and loads[id(n)] == "θ":  # the rule sees θ + c
                value = f"({value} + {e.load.format('ak[i]')})"
        elif _by_a_number(n):
            value = f"({ref(n.args[0])} * r{e.index[id(n.args[1])]})"
        else:
            value = _expr(n.op, [ref(a) for a in n.args], real, reciprocal=_scalar_over_tensor(n))
        body.append(f"const {ctype} x{e.index[id(n)]} = {value};")
    # Matrices: per row in the compute type (as a chunk), then per unit in double.
    partial = "rs" if e.matrix else "acc"
    for r in sums:
        x = ref(r.args[0])
        body.append(f"{partial}{e.rslot[id(r)]} += {f'{x} * {x}' if r.op == 'sumsq' else x};")
    for r in row_sums:
        body.append(f"racc{row_sums.index(r)} += {ref(r.args[0])};")
    for r in col_sums:
        body.append(f"cf{col_sums.index(r)}[j] += {ref(r.args[0])};")
    for name in stores:
        a = arrays.index(name)
        if name in e.coded:  # kept in float for the block's encoding, its magnitude into the block's max
            body += [f"const float y{a} = (float){ref(graph.outputs[name])}; w{a}[i - b0] = y{a};",
                     f"const float u{a} = fabsf(y{a}); p{a} = u{a} > p{a} ? u{a} : p{a};",
                     f"mag{a} += u{a};"]
        else:
            body += _store(e, name, ref(graph.outputs[name]))
    accumulators = [f"{partial}{e.rslot[id(r)]}" for r in sums] + [f"racc{j}" for j in range(len(row_sums))]
    simd = f"    #pragma omp simd reduction(+:{','.join(accumulators)})" if accumulators else None
    if e.matrix:  # row by row: row values once per row, column values per element
        lines.append("    for (int64_t r = lo; r < hi; r++) {")
        for n in graph.nodes:
            if id(n) in used and n.kind == ROW:
                lines.append(f"      const {real} y{e.index[id(n)]} = rb{e.index[id(n)]}[roff[t] + r];")
        lines += [f"      {real} racc{j} = 0;" for j in range(len(row_sums))]
        lines += [f"      {real} rs{e.rslot[id(r)]} = 0;" for r in sums]
        if simd:
            lines.append("  " + simd)
        lines.append("      for (int64_t j = 0; j < m; j++) {")
        lines.append("        const int64_t i = r * m + j;")
        lines += [f"        {b}" for b in body]
        lines.append("      }")
        for j, r in enumerate(row_sums):
            lines.append(f"      rb{e.index[id(r)]}[roff[t] + r] = racc{j};")
        for r in sums:
            lines.append(f"      acc{e.rslot[id(r)]} += (double)rs{e.rslot[id(r)]};")
        if col_sums:  # columns: ROWS_IN_REAL rows at a time in the compute type, then into double
            lines.append("      if ((r - lo) % ROWS_IN_REAL == ROWS_IN_REAL - 1 || r == hi - 1)")
            flush = "".join(f" cp{j}[i] += (double)cf{j}[i]; cf{j}[i] = 0;" for j in range(len(col_sums)))
            lines.append(f"        for (int64_t i = 0; i < m; i++) {{{flush} }}")
        lines.append("    }")
    elif e.coded:
        lines += _coded_pass(e, body, touched, stores)
    else:
        if simd:  # vector partial sums in registers, in an order fixed by the chunk and the code
            lines.append(simd)
        lines.append("    for (int64_t i = lo; i < hi; i++) {")
        lines += [f"      {b}" for b in body]
        lines.append("    }")
    for r in sums:
        lines.append(f"    part[c * {e.nr} + {e.rslot[id(r)]}] = (double)acc{e.rslot[id(r)]};")
    lines.append("  }")
    lines.append("  }")
    return lines


def _store(e: Emit, name: str, value: str) -> list[str]:
    """The store of one element output: rounded to nearest, or as lowprec.store does it."""
    a = e.graph.arrays.index(name)
    if not e.stochastic and not (e.kahan and name == "θ"):
        return [f"a{a}[i] = {e.store.format(value)};"]
    rounded = e.store.format(value)
    stochastic = "bf16_store_stochastic" if e.dtype == torch.bfloat16 else "f16_store_stochastic"
    if e.stochastic:
        rounded = f"{stochastic}({value}, element_bits(key{a}, i))"
    lines = [f"const {e.storage} w{a} = {rounded};", f"a{a}[i] = w{a};"]
    if e.kahan and name == "θ":
        lost = f"kahan_lost({value}, {e.load.format(f'w{a}')})"
        lines.append(f"ak[i] = {stochastic}({lost}, element_bits(keyk, i));")  # c: its own stream
    return lines


def _by_a_number(n: Sym) -> bool:
    """An element divided by a scalar or per-tensor value (not a constant: those fold exactly)."""
    return (n.op == "div" and n.args[0].kind == ELEMENT and n.args[1].kind in (SCALAR, PER_TENSOR)
            and n.args[1].op != "const")


def _scalar_over_tensor(n: Sym) -> bool:
    return n.op == "div" and n.args[0].kind == SCALAR and n.args[1].kind == ELEMENT


def _combine_reductions(e: Emit, k: int) -> list[str]:
    """Per-tensor sums of the chunks (units), and column sums of the units, each in a fixed order."""
    done = [r for r in element_reductions(e.graph) if e.plan.stage[id(r.args[0])] == k]
    sums = [r for r in done if r.op in ("sum", "sumsq")]
    col_sums = [r for r in done if r.op == "col_sum"]
    if not sums and not col_sums:
        return []
    lines = ["  for (int64_t t = 0; t < nt; t++) {"]
    for r in sums:
        lines += [
            "    { double s = 0;",
            "      for (int64_t c = first[t]; c < first[t + 1]; c++)",
            f"        s += part[c * {e.nr} + {e.rslot[id(r)]}];",
            f"      pt[t * {e.npt} + {e.slot[id(r)]}] = s; }}",
        ]
    for j, r in enumerate(col_sums):
        lines += [
            "    for (int64_t i = 0; i < cols[t]; i++) { double s = 0;",
            "      for (int64_t c = first[t]; c < first[t + 1]; c++)",
            f"        s += colpart[ncp * {j} + chunk[4 * c + 3] + i];",
            f"      cb{e.index[id(r)]}[coff[t] + i] = ({e.real})s; }}",
        ]
    return lines + ["  }"]


# --- coded states: 8-bit codes with a float32 absmax per block (engine/codec.py) --------------------


def reads_codes(graph: Graph) -> bool:
    """Whether the kernel can read and write coded states itself: one elementwise pass (Adam, Lion, …).
    A rule with reductions would reload states stored by an earlier pass; it runs on decoded copies."""
    return not graph.matrix and not graph.reductions and plan(graph).passes == 1


def absmax_array(sym: str) -> str:
    """The name of a coded state's block scales among a kernel's arrays."""
    return f"{sym}.absmax"


def _coded_pass(e: Emit, body: list[str], touched: list[str], stores: list[str]) -> list[str]:
    """The element loop of a kernel with coded states, one block of codec.BLOCK elements at a time:
    decode each coded input with the block's old absmax into a float buffer, compute, keep each coded
    output in a float buffer while finding its new absmax, then encode that buffer (engine/ccodec.py).
    The buffers stay in L1; the decoder and encoder are vectorised by hand where the CPU allows."""
    from .codec import BLOCK as QBLOCK

    arrays = e.graph.arrays
    coded_in = [arrays.index(n) for n in touched if n in e.coded]
    coded_out = [arrays.index(n) for n in stores if n in e.coded]
    lines = [f"    for (int64_t b0 = lo; b0 < hi; b0 += {QBLOCK}) {{",
             f"      const int64_t b1 = b0 + {QBLOCK} < hi ? b0 + {QBLOCK} : hi;"]
    for a in coded_in:
        x = ccodec.letter(e.coded[arrays[a]])
        lines += [f"      float dq{a}[{QBLOCK}];",
                  f"      decode_{x}(a{a} + b0, n{a}[b0 / {QBLOCK}], dq{a}, b1 - b0);"]
    lines += [f"      float w{a}[{QBLOCK}], p{a} = 0, mag{a} = 0;" for a in coded_out]
    # the block's max as a vector reduction; a NaN, which a max reduction may drop, is kept by a sum of
    # the magnitudes (NaN only if one is: they are never negative, so no ∞ − ∞), one add a vector
    reductions = ([f"reduction(max:{','.join(f'p{a}' for a in coded_out)})",
                   f"reduction(+:{','.join(f'mag{a}' for a in coded_out)})"] if coded_out else [])
    lines.append(f"      #pragma omp simd {' '.join(reductions)}")
    lines.append("      for (int64_t i = b0; i < b1; i++) {")
    lines += [f"        {b}" for b in body]
    lines.append("      }")
    for a in coded_out:
        lines += [f"      if (mag{a} != mag{a}) p{a} = NAN;",
                  f"      n{a}[b0 / {QBLOCK}] = p{a};",
                  f"      encode_{ccodec.letter(e.coded[arrays[a]])}(w{a}, p{a} > 0 ? 1.0f / p{a} : 0.0f, "
                  f"a{a} + b0, b1 - b0);"]
    lines.append("    }")
    return lines
