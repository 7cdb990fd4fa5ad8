"""Per-step host work on each path: a group's step by its plan against the long way, interleaved.

    python benchmarks/host_overhead.py                 # AdamW, 10 and 195 tensors of 1,000 elements
    python benchmarks/host_overhead.py --optimizer lion --reps 300

On the CPU a step of small tensors is mostly host work (Python), so the fused and foreach rows time
the whole step. The Triton rows run on CPU tensors with Triton's interpreter and every kernel launch
replaced by a no-op: what remains is optimlab's own per-step Python before and around the launches
(checks, grouping, tables, per-step numbers) — what a GPU step pays on the host besides Triton's
launcher and the driver. "long way" drops the group's plan before every step (engine/plan.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: its kernels on CPU tensors

import torch  # noqa: E402

import optimlab  # noqa: E402
from optimlab.engine import tritonrun  # noqa: E402


class _NoLaunch:
    """A Triton kernel whose launches do nothing: `kernel[grid](*args, **meta)`."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def _stub_launches():
    """Every Triton kernel module loaded from now on launches nothing."""
    original = tritonrun.Kernel.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for name in dir(self.module):
            if name.startswith(("pass_", "lines_")) or name == "combine":
                setattr(self.module, name, _NoLaunch())

    tritonrun.Kernel.__init__ = init


def optimizer(name: str, path: str, count: int, size: int):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(size, generator=g).requires_grad_() for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=g)
    return optimlab.create(name, params, path=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--reps", type=int, default=200, help="interleaved steps (default 200)")
    parser.add_argument("--size", type=int, default=1000, help="elements per tensor (default 1000)")
    args = parser.parse_args()
    _stub_launches()
    print(f"{args.optimizer}, tensors of {args.size} elements, {torch.get_num_threads()} threads, "
          f"median of {args.reps} interleaved steps (Triton: launches stubbed, host work only)")
    print(f"{'path':8s} {'tensors':>7s} {'long way ms':>12s} {'plan ms':>8s} {'plan ÷ long':>11s}")
    for path in ("fused", "foreach", "triton"):
        for count in (10, 195):
            opts = {way: optimizer(args.optimizer, path, count, args.size) for way in ("long", "plan")}
            times = {way: [] for way in opts}
            for _ in range(args.reps + 3):
                for way, opt in opts.items():
                    if way == "long":
                        opt.__dict__["_plans"] = {}
                    start = time.perf_counter()
                    opt.step()
                    times[way].append(time.perf_counter() - start)
            long, plan = (statistics.median(times[w][3:]) * 1e3 for w in ("long", "plan"))
            print(f"{path:8s} {count:7d} {long:12.3f} {plan:8.3f} {plan / long:11.2f}")


if __name__ == "__main__":
    main()
