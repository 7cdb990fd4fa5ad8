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

from .graph import ELEMENT, PER_TENSOR, REDUCTIONS, SCALAR, Graph, Sym

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
        case "neg": return f"(-{a[0]})"
        case "sqrt": return f"sqrt{f}({a[0]})"
        case "rsqrt": return f"(({real})1 / sqrt{f}({a[0]}))"
        case "abs": return f"fabs{f}({a[0]})"
        case "sign": return f"(({real})(({a[0]} > 0) - ({a[0]} < 0)))"
        case "square": return f"({a[0]} * {a[0]})"
        case "not": return f"(!{a[0]})"
        case "pow": return f"pow{f}({a[0]}, {a[1]})"
        # torch.maximum/minimum propagate NaN from either side
        case "maximum": return f"(({a[0]} > {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})"
        case "minimum": return f"(({a[0]} < {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})"
        case "where": return f"({a[0]} ? {a[1]} : {a[2]})"
    raise ValueError(f"no C for op {op}")


@dataclasses.dataclass
class Plan:
    """Which pass computes what."""

    passes: int
    stage: dict[int, int]  # id(node) -> the first pass whose values it can use
    write_pass: dict[str, int]  # array -> the pass that stores its new value


def plan(graph: Graph) -> Plan:
    stage: dict[int, int] = {}
    for n in graph.nodes:
        if n.op in REDUCTIONS:
            stage[id(n)] = stage[id(n.args[0])] + 1
        else:
            stage[id(n)] = max((stage[id(a)] for a in n.args), default=0)
    reduced = [r.args[0] for r in graph.reductions]
    passes = 1 + max([stage[id(o)] for o in graph.outputs.values()] + [stage[id(e)] for e in reduced], default=0)
    write_pass = {name: stage[id(o)] for name, o in graph.outputs.items()}
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
    outs = [o for name, o in graph.outputs.items() if write_pass[name] == k]
    return outs + [r.args[0] for r in graph.reductions if stage[id(r.args[0])] == k]


def _stored_before(graph: Graph, write_pass, k) -> dict[int, str]:
    """Nodes already in memory at pass k: an output stored by an earlier pass is reloaded, not recomputed."""
    return {id(o): name for name, o in graph.outputs.items() if write_pass[name] < k}


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


def generate(graph: Graph, dtype: torch.dtype, title: str = "") -> str:
    """C source of the kernel `int step(nt, ptr, numel, sc, nthreads)` for parameters of `dtype`."""
    storage, real, load, store = STORAGE[dtype]
    p = plan(graph)
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    per_tensor = [n for n in graph.nodes if n.kind == PER_TENSOR]
    slot = {id(n): j for j, n in enumerate(per_tensor)}
    reductions = graph.reductions
    rslot = {id(r): j for j, r in enumerate(reductions)}
    arrays = graph.arrays
    na, npt, nr = len(arrays), max(len(per_tensor), 1), max(len(reductions), 1)

    def scalar_ref(n: Sym) -> str:
        if n.op == "const":
            return repr(float(n.value)) if not n.is_bool else str(int(n.value))
        return f"s{index[id(n)]}"

    def per_tensor_ref(n: Sym) -> str:
        return scalar_ref(n) if n.kind == SCALAR else f"pt[t * {npt} + {slot[id(n)]}]"

    out = [f"/* optimlab fused kernel: {title} ({dtype}) */", PRELUDE, f"#define CHUNK {CHUNK}"]
    out.append("int step(int64_t nt, void **ptr, const int64_t *numel, const double *sc, int nthreads) {")
    # Scalars: computed once per call, in double, as the eager path computes them in Python.
    for n in graph.nodes:
        if n.kind != SCALAR or n.op == "const":
            continue
        i = index[id(n)]
        if n.op == "scalar":
            out.append(f"  const double s{i} = sc[{graph.scalars.index(n.name)}];  /* {n.name} */")
        else:
            ctype = "int" if n.is_bool else "double"
            out.append(f"  const {ctype} s{i} = {_expr(n.op, [scalar_ref(a) for a in n.args], 'double')};")
    out += [
        "  int64_t nc = 0;",
        "  for (int64_t t = 0; t < nt; t++) nc += (numel[t] + CHUNK - 1) / CHUNK;",
        "  int64_t *chunk = malloc(sizeof(int64_t) * (2 * nc + nt + 1));",
        f"  double *part = malloc(sizeof(double) * (nc * {nr} + 1));",
        f"  double *pt = malloc(sizeof(double) * (nt * {npt} + 1));",
        "  if (!chunk || !part || !pt) { free(chunk); free(part); free(pt); return 1; }",
        "  int64_t *first = chunk + 2 * nc;  /* first chunk of each tensor */",
        "  for (int64_t t = 0, c = 0; t < nt; t++) {",
        "    first[t] = c;",
        "    for (int64_t lo = 0; lo < numel[t]; lo += CHUNK, c++) { chunk[2 * c] = t; chunk[2 * c + 1] = lo; }",
        "  }",
        "  first[nt] = nc;",
    ]
    for k in range(p.passes):
        out += _per_tensor_values(graph, p, k, per_tensor, per_tensor_ref, npt, real)
        out += _element_pass(graph, p, k, index, slot, npt, rslot, nr, arrays, storage, real, load, store,
                             scalar_ref)
        out += _combine_reductions(graph, p, k, reductions, slot, npt, nr)
    out += ["  free(chunk); free(part); free(pt);", "  return 0;", "}"]
    return "\n".join(out) + "\n"


def _per_tensor_values(graph, p, k, per_tensor, ref, npt, real) -> list[str]:
    """Per-tensor nodes whose inputs are ready before pass k (reductions are filled in elsewhere)."""
    todo = [n for n in per_tensor if p.stage[id(n)] == k and n.op not in REDUCTIONS]
    if not todo:
        return []
    lines = ["  for (int64_t t = 0; t < nt; t++) {"]
    for n in todo:
        value = "(double)numel[t]" if n.op == "numel" else _expr(n.op, [ref(a) for a in n.args], "double")
        lines.append(f"    {ref(n)} = {value};")
    return lines + ["  }"]


def _element_pass(graph, p, k, index, slot, npt, rslot, nr, arrays, storage, real, load, store, scalar_ref):
    nodes, loads = _pass_nodes(graph, p.stage, p.write_pass, k)
    stores = [name for name, w in p.write_pass.items() if w == k]
    reduce_here = [r for r in graph.reductions if p.stage[id(r.args[0])] == k]
    used = {id(a) for n in nodes if id(n) not in loads for a in n.args}
    used |= {id(graph.outputs[name]) for name in stores}
    used |= {id(r.args[0]) for r in reduce_here}
    divisors = {id(n.args[1]): n.args[1] for n in nodes if id(n) not in loads and _by_a_number(n)}
    lines = [f"  {{ /* pass {k} */"]
    # Scalars and per-tensor values used per element, cast once to the compute type.
    for n in graph.nodes:
        if id(n) in used and n.kind == SCALAR and n.op != "const":
            ctype = "int" if n.is_bool else real
            lines.append(f"  const {ctype} k{index[id(n)]} = ({ctype})s{index[id(n)]};")
    # Dividing each element by the same number: multiply by its reciprocal, computed once in double
    # (within an ulp of the division; it takes the divider off the critical path of LAMB's passes).
    for d in divisors.values():
        if d.kind == SCALAR:
            lines.append(f"  const {real} r{index[id(d)]} = ({real})(1.0 / {scalar_ref(d)});")
    lines += [
        "  #pragma omp parallel for schedule(static) num_threads(nthreads)",
        "  for (int64_t c = 0; c < nc; c++) {",
        "    const int64_t t = chunk[2 * c], lo = chunk[2 * c + 1];",
        "    const int64_t hi = lo + CHUNK < numel[t] ? lo + CHUNK : numel[t];",
    ]
    touched = sorted({name for name in loads.values()} | set(stores), key=arrays.index)
    for name in touched:
        a = arrays.index(name)
        const = "const " if name not in stores else ""
        lines.append(f"    {const}{storage} *restrict a{a} = ({storage} *)ptr[t * {len(arrays)} + {a}];  /* {name} */")
    for n in graph.nodes:
        if id(n) in used and n.kind == PER_TENSOR:
            ctype = "int" if n.is_bool else real
            lines.append(f"    const {ctype} q{index[id(n)]} = ({ctype})pt[t * {npt} + {slot[id(n)]}];")
    for d in divisors.values():
        if d.kind == PER_TENSOR:
            lines.append(f"    const {real} r{index[id(d)]} = ({real})(1.0 / pt[t * {npt} + {slot[id(d)]}]);")
    for r in reduce_here:
        lines.append(f"    {real} acc{rslot[id(r)]} = 0;")

    def ref(n: Sym) -> str:
        if n.kind == ELEMENT:
            return f"x{index[id(n)]}"
        if n.kind == PER_TENSOR:
            return f"q{index[id(n)]}"
        if n.op == "const":
            return scalar_ref(n) if n.is_bool else f"({real}){float(n.value)!r}"
        return f"k{index[id(n)]}"

    if reduce_here:  # vector partial sums in registers, in an order fixed by the chunk and the code
        lines.append(f"    #pragma omp simd reduction(+:{','.join(f'acc{rslot[id(r)]}' for r in reduce_here)})")
    lines.append("    for (int64_t i = lo; i < hi; i++) {")
    for n in nodes:
        ctype = "int" if n.is_bool else real
        if id(n) in loads:
            value = load.format(f"a{arrays.index(loads[id(n)])}[i]")
        elif _by_a_number(n):
            value = f"({ref(n.args[0])} * r{index[id(n.args[1])]})"
        else:
            value = _expr(n.op, [ref(a) for a in n.args], real, reciprocal=_scalar_over_tensor(n))
        lines.append(f"      const {ctype} x{index[id(n)]} = {value};")
    for r in reduce_here:
        x = ref(r.args[0])
        lines.append(f"      acc{rslot[id(r)]} += {f'{x} * {x}' if r.op == 'sumsq' else x};")
    for name in stores:
        lines.append(f"      a{arrays.index(name)}[i] = {store.format(ref(graph.outputs[name]))};")
    lines.append("    }")
    for r in reduce_here:
        lines.append(f"    part[c * {nr} + {rslot[id(r)]}] = (double)acc{rslot[id(r)]};")
    lines.append("  }")
    lines.append("  }")
    return lines


def _by_a_number(n: Sym) -> bool:
    """An element divided by a scalar or per-tensor value (not a constant: those fold exactly)."""
    return n.op == "div" and n.args[0].kind == ELEMENT and n.args[1].kind != ELEMENT and n.args[1].op != "const"


def _scalar_over_tensor(n: Sym) -> bool:
    return n.op == "div" and n.args[0].kind == SCALAR and n.args[1].kind == ELEMENT


def _combine_reductions(graph, p, k, reductions, slot, npt, nr) -> list[str]:
    done = [r for r in reductions if p.stage[id(r.args[0])] == k]
    if not done:
        return []
    lines = ["  for (int64_t t = 0; t < nt; t++) {"]
    for r in done:
        j = reductions.index(r)
        lines += [
            "    { double s = 0;",
            f"      for (int64_t c = first[t]; c < first[t + 1]; c++) s += part[c * {nr} + {j}];",
            f"      pt[t * {npt} + {slot[id(r)]}] = s; }}",
        ]
    return lines + ["  }"]
