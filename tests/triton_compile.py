"""Compile the Triton kernels of every traceable rule for a GPU that is not here (run by test_triton.py).

Run in a process of its own without TRITON_INTERPRET (triton.language binds its helpers to the mode at
import): each generated kernel goes through Triton's whole compiler for an H100 (sm_90): the Triton IR,
LLVM, PTX and a cubin from the ptxas that ships with triton. What the interpreter accepts but a GPU
compiler refuses (a cast, a loop-carried type, an op without a lowering) fails here, in CI.
Prints one line per module and, last, the number of kernels compiled.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import sys
import tempfile
from types import SimpleNamespace

assert os.environ.get("TRITON_INTERPRET", "0") == "0", "run without the interpreter"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import optimlab  # noqa: E402
from optimlab.engine import paths, tritongen, tritonrun  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
# Each kernel argument's Triton type: tables of pointers and sizes (int64), per-step numbers and partial
# sums (float64), GradScaler's tensors (float32).
TYPES = {"sc": "*fp64", "pt": "*fp64", "part": "*fp64", "lpart": "*fp64", "ptrs": "*i64", "geo": "*i64",
         "steps": "*i64", "scale": "*fp32", "found_inf": "*fp32", "chunk_t": "*i64", "chunk_lo": "*i64",
         "numel": "*i64", "tiles": "*i64", "first": "*i64", "tail": "*i64", "L": "i64", "C0": "i64",
         "lines": "*fp32", "qmap": "*fp32"}
SIZES = {"NA": 4, "NPT": 4, "NR": 4, "AMP": True, "BLOCK": tritongen.BLOCK, "BR": tritongen.BR,
         "BC": tritongen.BC, "LB": tritongen.LB, "ALIGNED": True}
VARIANTS = [{"FULL": True}, {"FULL": False}]  # an elementwise pass: its whole chunks and its tails


HELPERS = ("unscale", "power", "encode_S", "encode_U")  # compiled inside the kernels that call them


def compile_all(kernel: tritonrun.Kernel) -> int:
    count = 0
    for name, fn in vars(kernel.module).items():
        if not isinstance(fn, triton.runtime.jit.JITFunction) or name in HELPERS:
            continue
        params = list(inspect.signature(fn.fn).parameters)
        for variant in VARIANTS if "FULL" in params else [{}]:
            sizes = {**SIZES, **variant}
            signature = {p: "constexpr" if p in sizes else TYPES[p] for p in params}
            constants = {(params.index(p),): sizes[p] for p in params if p in sizes}
            triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=H100,
                           options=tritonrun.OPTIONS)  # as tritonrun launches them
            count += 1
    return count


def kernel(name: str, dtype: torch.dtype, capturable: bool, coded: bool = False) -> tritonrun.Kernel:
    """The kernels a weight matrix of `dtype` gets (fp32 state; `coded`: the optimizer's 8-bit states as
    codes and block scales), as paths.run_triton makes them."""
    opt = optimlab.spec(name).cls([torch.zeros(2, 2)])
    h, rule = opt.hyper(opt.param_groups[0]), opt.rule
    kept = tuple(sym for sym, s in rule.kept(h).items() if rule.keeps(s, torch.zeros(3, 3), h))
    if capturable:
        rule, h = tritonrun.counting_on_device(rule), SimpleNamespace(**vars(h), step=1.0)
    else:
        h = SimpleNamespace(**vars(h), **rule.step_scalars(h, 3, dict(rule.scalar_state)))
    graph = paths.graph_of(rule, h, kept=kept)
    codecs = {sym: c for sym, c in getattr(opt, "codecs", {}).items() if sym in graph.arrays} if coded else {}
    storage = {a: dtype if a in ("θ", "g") else torch.uint8 if a in codecs else torch.float32
               for a in paths.kernel_arrays(graph, codecs)}
    return tritonrun.Kernel(graph, storage, name, pathlib.Path(tempfile.mkdtemp()), capturable, codecs)


def main() -> int:
    total = 0
    for name in optimlab.available():
        if optimlab.spec(name).rule.traceable:
            total += compile_all(kernel(name, torch.float32, False))
            print(name, flush=True)
    for name, dtype, capturable in [("adamw", torch.bfloat16, True), ("adafactor", torch.bfloat16, False),
                                    ("lamb", torch.float16, True)]:
        total += compile_all(kernel(name, dtype, capturable))
        print(name, dtype, "capturable" if capturable else "", flush=True)
    for name, dtype in [("adamw8bit", torch.float32), ("adamw8bit", torch.bfloat16)]:  # 8-bit m and v
        total += compile_all(kernel(name, dtype, False, coded=True))
        print(name, dtype, "coded", flush=True)
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
