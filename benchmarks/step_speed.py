"""Optimizer step time and peak memory against torch.optim and against the machine's memory bandwidth.

    python benchmarks/step_speed.py                 # 25 M fp32 parameters, 10 and ~200 tensors
    python benchmarks/step_speed.py --reps 40 --json out.json
    python benchmarks/step_speed.py --layouts 5x1M --optimizers adamw,lamb,adafactor   # the foreach target

Every candidate steps the same parameters and gradients; candidates are interleaved within each
repetition, so drifts in machine load hit all of them alike, and only medians are reported. The
in-place bandwidth (x.mul_(c): read and write 4 bytes per element) is measured in the same loop.
optimlab runs on its default path (fused on the CPU) and on path="foreach" (what runs on other devices).

Peak memory is measured per candidate in a fresh process (so no allocator cache or other candidate's
state counts): the parameters, gradients and optimizer state are made and one step taken; then the
peak resident set is reset (/proc/self/clear_refs) and one more step taken. "step MB" is that step's
peak above the memory held before it (the temporaries a step needs); "peak MB" the process's peak
above what the interpreter and torch hold before the first tensor (parameters, gradients, state and
the temporaries of the first two steps).

Targets (on a 2-core CPU): optimlab AdamW ≤ 1.15× torch's fused AdamW; any other elementwise rule
≤ 1.15× fused AdamW's time scaled by its bytes per parameter (B/28); LAMB ≤ 1.6×; Adafactor ≤ 1.0×;
optimlab's foreach AdamW ≤ 1.15× torch's foreach AdamW, with a peak ≤ 1.10× torch's foreach run; the
cold first step, compilation included, ≤ 5 s at ~200 tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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


def layout_five(total: int) -> list[tuple]:
    """Five tensors of a million elements: where the foreach targets are stated."""
    return layout_flat(5_000_000, 5)


def layout_transformer(total: int, d: int = 352, vocab: int = 3000) -> list[tuple]:
    """Embedding, then blocks of (qkv, proj, fc1, fc2 weights and biases, two norms) until ~total."""
    shapes = [(vocab, d)]
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,),
             (d,), (d,), (d,), (d,)]
    size = lambda shapes: sum(torch.Size(s).numel() for s in shapes)  # noqa: E731
    while size(shapes) + size(block) <= total:
        shapes += block
    return shapes + [(d,), (d,)]


LAYOUTS = {"flat": layout_flat, "transformer": layout_transformer, "5x1M": layout_five}


def bytes_per_param(text: str) -> int | None:
    """Bytes the fused kernel moves per fp32 parameter, read off its plan (None: not elementwise)."""
    spec, hp = optimlab.resolve(text)
    if not spec.rule.traceable:
        return None
    h = spec.hyper(**hp)
    h = types.SimpleNamespace(**vars(h), **spec.rule.step_scalars(h, 10, dict(spec.rule.scalar_state)))
    matrix = torch.empty(2, 2, device="meta")  # the states a weight matrix has (Adafactor: rows and columns)
    kept = tuple(sym for sym, s in spec.rule.kept(h).items() if spec.rule.keeps(s, matrix))
    return 4 * cgen.traffic(paths.graph_of(spec.rule, h, kept=kept))


def target(name: str, traffic: int | None) -> float | None:
    """The ratio to torch's fused AdamW each optimlab rule must stay under."""
    if name == "lamb":
        return 1.6
    if name == "adafactor":
        return 1.0
    return None if traffic is None else 1.15 * traffic / 28


def make_candidate(impl: str, name: str, params):
    text, torch_ref, _ = CANDIDATES[name]
    if impl.startswith("optimlab"):
        return optimlab.create(text, params, **({"path": "foreach"} if impl == "optimlab foreach" else {}))
    cls, hp = torch_ref
    return cls(params, **({"foreach": True} if impl == "torch foreach" else {"fused": True}), **hp)


def peak_memory(layout: str, total: int, impl: str, name: str) -> dict | None:
    """Peak memory of one candidate, measured in a fresh process (see the module's docstring)."""
    probe = json.dumps({"layout": layout, "total": total, "impl": impl, "name": name})
    env = {**os.environ, "OPTIMLAB_CACHE_DIR": os.environ["OPTIMLAB_CACHE_DIR"]}
    done = subprocess.run([sys.executable, __file__, "--probe", probe], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        print(f"memory probe failed for {impl} {name}: {done.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def probe(spec: str) -> None:
    """Run in the fresh process: one step to create state, then one step measured."""
    config = json.loads(spec)
    base = _status_kb("VmRSS")  # the interpreter and torch, before any tensor
    _reset_peak()  # importing torch peaks above what it keeps: that is not the candidate's
    torch.manual_seed(0)
    params = [torch.randn(s) for s in LAYOUTS[config["layout"]](config["total"])]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    opt = make_candidate(config["impl"], config["name"], params)
    opt.step()
    peak = _status_kb("VmHWM") - base
    before = _status_kb("VmRSS")
    _reset_peak()
    opt.step()
    step = _status_kb("VmHWM") - before
    peak = max(peak, _status_kb("VmHWM") - base)
    print(json.dumps({"step_MB": step / 1024, "peak_MB": peak / 1024}))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set (VmHWM) starts again from the current one


def run(layout: str, shapes: list[tuple], names: list[str], reps: int, memory: bool) -> dict:
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
        optimizers[("optimlab foreach", name)] = make_candidate("optimlab foreach", name, params)
        if torch_ref:
            optimizers[("torch foreach", name)] = make_candidate("torch foreach", name, params)
            if has_fused:
                optimizers[("torch fused", name)] = make_candidate("torch fused", name, params)
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
        torch_foreach = median.get(("torch foreach", name))
        row = {
            "layout": layout, "optimizer": name, "impl": impl, "ms": seconds * 1e3, "ratio": seconds / anchor,
            "bytes_per_param": traffic,
            "bandwidth_pct": None if traffic is None else 100 * traffic * total / seconds / bandwidth,
            "target": goal, "meets": None if goal is None else seconds / anchor <= goal,
            "cold_s": cold[name] if impl == "optimlab" else None,
            "vs_torch_foreach": None if torch_foreach is None else seconds / torch_foreach,
        }
        if memory:
            row.update(peak_memory(layout, sum(torch.Size(s).numel() for s in shapes), impl, name) or {})
        rows.append(row)
    # The foreach targets: optimlab's foreach AdamW against torch's, in time and in peak memory.
    ours = next((r for r in rows if (r["impl"], r["optimizer"]) == ("optimlab foreach", "adamw")), None)
    theirs = next((r for r in rows if (r["impl"], r["optimizer"]) == ("torch foreach", "adamw")), None)
    if ours and theirs:
        ours["target"], ours["meets"] = 1.15, ours["vs_torch_foreach"] <= 1.15
        if "peak_MB" in ours and "peak_MB" in theirs:
            ours["peak_vs_torch_foreach"] = ours["peak_MB"] / theirs["peak_MB"]
            ours["meets"] = ours["meets"] and ours["peak_vs_torch_foreach"] <= 1.10
    return {"layout": layout, "tensors": len(params), "params": total, "bandwidth_GBps": bandwidth / 1e9,
            "fused_adamw_ms": anchor * 1e3, "rows": rows}


def report(result: dict) -> None:
    print(f"\n{result['layout']}: {result['params'] / 1e6:.1f} M fp32 parameters in {result['tensors']} "
          f"tensors; in-place bandwidth {result['bandwidth_GBps']:.1f} GB/s; torch fused AdamW "
          f"{result['fused_adamw_ms']:.1f} ms")
    print(f"{'optimizer':<13} {'impl':<16} {'median ms':>9} {'× fused AdamW':>13} {'× torch foreach':>15} "
          f"{'B/param':>7} {'% bw':>5} {'step MB':>7} {'peak MB':>7} {'target':>7} {'cold s':>6}")
    for r in sorted(result["rows"], key=lambda r: (list(CANDIDATES).index(r["optimizer"]), r["impl"])):
        traffic = "—" if r["bytes_per_param"] is None else str(r["bytes_per_param"])
        pct = "—" if r["bandwidth_pct"] is None else f"{r['bandwidth_pct']:.0f}"
        goal = "" if r["target"] is None else f"≤{r['target']:.2f}" + (" ✓" if r["meets"] else " ✗")
        cold = "" if r["cold_s"] is None else f"{r['cold_s']:.2f}"
        vs = "—" if r["vs_torch_foreach"] is None else f"{r['vs_torch_foreach']:.2f}"
        step = f"{r['step_MB']:.0f}" if "step_MB" in r else "—"
        peak = f"{r['peak_MB']:.0f}" if "peak_MB" in r else "—"
        print(f"{r['optimizer']:<13} {r['impl']:<16} {r['ms']:>9.1f} {r['ratio']:>13.2f} {vs:>15} "
              f"{traffic:>7} {pct:>5} {step:>7} {peak:>7} {goal:>7} {cold:>6}")
    for r in result["rows"]:
        if "peak_vs_torch_foreach" in r:
            print(f"optimlab foreach {r['optimizer']}: {r['vs_torch_foreach']:.2f}× torch foreach time "
                  f"(target ≤ 1.15), peak memory {r['peak_vs_torch_foreach']:.2f}× torch foreach's run "
                  "(target ≤ 1.10)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=25e6, help="total parameters (default 25e6)")
    parser.add_argument("--reps", type=int, default=20,
                        help="interleaved repetitions per candidate (default 20)")
    parser.add_argument("--optimizers", default=",".join(CANDIDATES),
                        help="comma-separated subset of: " + ", ".join(CANDIDATES))
    parser.add_argument("--layouts", default="flat,transformer",
                        help="flat (10 tensors), transformer (~200 tensors), "
                             "5x1M (5 tensors of 1 M; ignores --params)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory probes (a process each)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one memory probe in this process
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return 0
    names = [n.strip() for n in args.optimizers.split(",")]
    unknown = set(names) - set(CANDIDATES) | ({"adamw"} - set(names))
    if unknown:
        parser.error(f"unknown optimizers {sorted(unknown)} (adamw is always needed: it is the anchor)")
    total = int(args.params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, optimlab {optimlab.__version__}")
    results = []
    for layout in args.layouts.split(","):
        if layout not in LAYOUTS:
            parser.error(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
        result = run(layout, LAYOUTS[layout](total), names, args.reps, not args.no_memory)
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
