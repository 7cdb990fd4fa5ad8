"""Optimizer step time against torch.optim and against the machine's memory bandwidth.

    python benchmarks/step_speed.py                 # 25 M fp32 parameters, 10 and ~200 tensors
    python benchmarks/step_speed.py --reps 40 --json out.json

Every candidate steps the same parameters and gradients; candidates are interleaved within each
repetition, so drifts in machine load hit all of them alike, and only medians are reported. The
in-place bandwidth (x.mul_(c): read and write 4 bytes per element) is measured in the same loop.

Targets (issue #2, on a 2-core CPU): optimlab AdamW ≤ 1.15× torch's fused AdamW; any other elementwise
rule ≤ 1.15× fused AdamW's time scaled by its bytes per parameter (B/28); LAMB ≤ 1.6×; the cold first
step, compilation included, ≤ 5 s at ~200 tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import types

import torch

import optimlab
from optimlab.engine import cgen, paths

# name: (optimlab spec text, torch class and hyperparameters or None, torch has fused)
CANDIDATES = {
    "sgd": ("sgd", (torch.optim.SGD, {}), True),
    "sgd-momentum": ("momentum", (torch.optim.SGD, {"momentum": 0.9}), True),
    "adagrad": ("adagrad", (torch.optim.Adagrad, {}), True),
    "rmsprop": ("rmsprop", (torch.optim.RMSprop, {}), False),
    "adam": ("adam", (torch.optim.Adam, {}), True),
    "adamw": ("adamw", (torch.optim.AdamW, {}), True),
    "nadam": ("nadam", (torch.optim.NAdam, {}), False),
    "radam": ("radam", (torch.optim.RAdam, {}), False),
    "lion": ("lion", None, False),
    "lamb": ("lamb", None, False),
    "adafactor": ("adafactor", (torch.optim.Adafactor, {}), False),
}
CANDIDATES.update({name: (name, None, False) for name in ("adopt", "lars", "sophia", "schedulefree_adamw",
                                                           "schedulefree_sgd")})


def layout_flat(total: int, count: int = 10) -> list[tuple]:
    return [(total // count,)] * count


def layout_transformer(total: int, d: int = 352, vocab: int = 3000) -> list[tuple]:
    """Embedding, then blocks of (qkv, proj, fc1, fc2 weights and biases, two norms) until ~total."""
    shapes = [(vocab, d)]
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,),
             (d,), (d,), (d,), (d,)]
    size = lambda shapes: sum(torch.Size(s).numel() for s in shapes)  # noqa: E731
    while size(shapes) + size(block) <= total:
        shapes += block
    return shapes + [(d,), (d,)]


def bytes_per_param(text: str) -> int | None:
    """Bytes the fused kernel moves per fp32 parameter, read off its plan (None: not elementwise)."""
    spec, hp = optimlab.resolve(text)
    if not spec.rule.traceable:
        return None
    h = spec.hyper(**hp)
    h = types.SimpleNamespace(**vars(h), **spec.rule.step_scalars(h, 10, dict(spec.rule.scalar_state)))
    return 4 * cgen.traffic(paths.graph_of(spec.rule, h))


def target(name: str, traffic: int | None) -> float | None:
    """The ratio to torch's fused AdamW each optimlab rule must stay under."""
    if name == "lamb":
        return 1.6
    return None if traffic is None else 1.15 * traffic / 28


def run(layout: str, shapes: list[tuple], names: list[str], reps: int) -> dict:
    # Each layout starts cold: no kernel in memory or on disk, so its first steps compile.
    os.environ["OPTIMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="optimlab-bench-")
    paths._kernels.clear()
    paths._graphs.clear()
    torch.manual_seed(0)
    params = [torch.randn(s) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    total = sum(p.numel() for p in params)
    buffer = torch.randn(total)
    optimizers, cold = {}, {}
    for name in names:
        text, torch_ref, has_fused = CANDIDATES[name]
        opt = optimlab.create(text, params)
        start = time.perf_counter()
        opt.step()  # cold: state allocation, tracing and (for the fused path) compiling the kernel
        cold[name] = time.perf_counter() - start
        optimizers[("optimlab", name)] = opt
        if torch_ref:
            cls, hp = torch_ref
            optimizers[("torch foreach", name)] = cls(params, foreach=True, **hp)
            if has_fused:
                optimizers[("torch fused", name)] = cls(params, fused=True, **hp)
    for opt in optimizers.values():
        opt.step()  # warm every candidate once
    times = {key: [] for key in optimizers} | {("bandwidth", "x.mul_(c)"): []}
    for _ in range(reps):
        for key, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[key].append(time.perf_counter() - start)
        start = time.perf_counter()
        buffer.mul_(1.0)
        times[("bandwidth", "x.mul_(c)")].append(time.perf_counter() - start)
    median = {key: statistics.median(t) for key, t in times.items()}
    bandwidth = 8 * total / median[("bandwidth", "x.mul_(c)")]
    anchor = median[("torch fused", "adamw")]
    rows = []
    for (impl, name), seconds in median.items():
        if impl == "bandwidth":
            continue
        traffic = bytes_per_param(CANDIDATES[name][0])
        goal = target(name, traffic) if impl == "optimlab" else None
        rows.append({
            "layout": layout, "optimizer": name, "impl": impl, "ms": seconds * 1e3, "ratio": seconds / anchor,
            "bytes_per_param": traffic,
            "bandwidth_pct": None if traffic is None else 100 * traffic * total / seconds / bandwidth,
            "target": goal, "meets": None if goal is None else seconds / anchor <= goal,
            "cold_s": cold[name] if impl == "optimlab" else None,
        })
    return {"layout": layout, "tensors": len(params), "params": total, "bandwidth_GBps": bandwidth / 1e9,
            "fused_adamw_ms": anchor * 1e3, "rows": rows}


def report(result: dict) -> None:
    print(f"\n{result['layout']}: {result['params'] / 1e6:.1f} M fp32 parameters in {result['tensors']} "
          f"tensors; in-place bandwidth {result['bandwidth_GBps']:.1f} GB/s; torch fused AdamW "
          f"{result['fused_adamw_ms']:.1f} ms")
    print(f"{'optimizer':<13} {'impl':<14} {'median ms':>9} {'× fused AdamW':>13} {'B/param':>7} {'% bw':>5} "
          f"{'target':>7} {'cold s':>6}")
    for r in sorted(result["rows"], key=lambda r: (list(CANDIDATES).index(r["optimizer"]), r["impl"])):
        traffic = "—" if r["bytes_per_param"] is None else str(r["bytes_per_param"])
        pct = "—" if r["bandwidth_pct"] is None else f"{r['bandwidth_pct']:.0f}"
        goal = "" if r["target"] is None else f"≤{r['target']:.2f}" + (" ✓" if r["meets"] else " ✗")
        cold = "" if r["cold_s"] is None else f"{r['cold_s']:.2f}"
        print(f"{r['optimizer']:<13} {r['impl']:<14} {r['ms']:>9.1f} {r['ratio']:>13.2f} {traffic:>7} "
              f"{pct:>5} "
              f"{goal:>7} {cold:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=25e6, help="total parameters (default 25e6)")
    parser.add_argument("--reps", type=int, default=20,
                        help="interleaved repetitions per candidate (default 20)")
    parser.add_argument("--optimizers", default=",".join(CANDIDATES),
                        help="comma-separated subset of: " + ", ".join(CANDIDATES))
    parser.add_argument("--layouts", default="flat,transformer",
                        help="flat (10 tensors), transformer (~200 tensors)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    names = [n.strip() for n in args.optimizers.split(",")]
    unknown = set(names) - set(CANDIDATES) | ({"adamw"} - set(names))
    if unknown:
        parser.error(f"unknown optimizers {sorted(unknown)} (adamw is always needed: it is the anchor)")
    total = int(args.params)
    layouts = {"flat": layout_flat(total), "transformer": layout_transformer(total)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, optimlab {optimlab.__version__}")
    results = []
    for layout in args.layouts.split(","):
        result = run(layout, layouts[layout], names, args.reps)
        report(result)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    missed = [r for res in results for r in res["rows"] if r["meets"] is False]
    cold = max(r["cold_s"] or 0 for res in results for r in res["rows"])
    print(f"\ncold first step, slowest optimlab optimizer: {cold:.2f} s (target ≤ 5 s)")
    misses = ", ".join(f"{r['optimizer']} ({r['layout']})" for r in missed)
    print("all targets met" if not missed and cold <= 5 else f"missed: {misses or 'cold step'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
