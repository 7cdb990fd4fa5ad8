"""Optimizer step time and peak memory against torch.optim and against the machine's memory bandwidth.

    python benchmarks/step_speed.py                 # 25 M fp32 parameters, 10 and ~200 tensors
    python benchmarks/step_speed.py --reps 40 --json out.json
    python benchmarks/step_speed.py --layouts 5x1M --optimizers adamw,lamb,adafactor   # the foreach target
    python benchmarks/step_speed.py --device cuda   # the GPU: Triton kernels against torch's fused AdamW

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

With --device cuda the same table is measured on the GPU: optimlab's default path there is Triton
(and "optimlab capturable" its capturable=True variant, step counts on the device), each step timed
between two torch.cuda.synchronize(); the bandwidth row is x.mul_(c) on the GPU (HBM); the cold first
step includes Triton's compilation (fresh Triton and optimlab caches per layout). Memory is measured in
this process with torch.cuda.max_memory_allocated: "step MB" is a step's peak above the memory allocated
before it, "peak MB" the optimizer state plus that. "syncs" counts the host synchronisations of one
step (torch.cuda.set_sync_debug_mode("warn"): one warning each). Targets on one H100: AdamW ≤ 1.05×
torch fused; every elementwise rule ≥ 85 % of the measured bandwidth; LAMB ≤ 1.5×; Adafactor ≤ 1.0×;
cold first step ≤ 5 s at ~200 tensors; zero syncs per step. The bandwidth is measured as ten x.mul_(c)
replayed from a CUDA graph (so a launch's latency is not counted as memory time). Each step above is
timed with the host's own per-step work (Python, argument tables, launches), which on a fast GPU can
outlast the kernels; the "graph" rows take it away: "optimlab graph" replays a capturable=True step
recorded in a CUDA graph, against "torch fused graph" (torch's fused capturable AdamW, recorded alike),
which is their anchor: kernels against kernels.
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
import warnings

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


def layout_small(total: int) -> list[tuple]:
    """A small transformer (d = 64, ~1 M parameters in ~250 tensors), where per-step host work shows."""
    return layout_transformer(1_000_000, d=64, vocab=500)


LAYOUTS = {"flat": layout_flat, "transformer": layout_transformer, "5x1M": layout_five, "small": layout_small}


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


def target(name: str, traffic: int | None, cuda: bool = False) -> float | None:
    """The ratio to torch's fused AdamW each optimlab rule must stay under (the GPU's: issue 8's)."""
    if name == "lamb":
        return 1.5 if cuda else 1.6
    if name == "adafactor":
        return 1.0
    if cuda and name == "adamw":
        return 1.05
    return None if traffic is None or cuda else 1.15 * traffic / 28  # cuda: ≥ 85 % of bandwidth instead


# A graph row replays its base candidate's step recorded in a CUDA graph (see `captured`).
GRAPHED = {"optimlab graph": "optimlab capturable", "torch fused graph": "torch fused capturable"}


def make_candidate(impl: str, name: str, params):
    text, torch_ref, _ = CANDIDATES[name]
    if impl in GRAPHED:
        return captured(make_candidate(GRAPHED[impl], name, params))
    if impl.startswith("optimlab"):
        keywords = {"optimlab foreach": {"path": "foreach"}, "optimlab capturable": {"capturable": True}}
        return optimlab.create(text, params, **keywords.get(impl, {}))
    cls, hp = torch_ref
    keywords = {"torch foreach": {"foreach": True}, "torch fused": {"fused": True},
                "torch fused capturable": {"fused": True, "capturable": True}}
    return cls(params, **keywords[impl], **hp)


def captured(opt) -> types.SimpleNamespace:
    """`opt.step()` recorded in a CUDA graph (capturable optimizers only). A replay is one launch: its time
    is the kernels' own, without the host's per-step work (Python, argument tables, launches), which on a
    fast GPU can take longer than the kernels themselves."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up steps (state, kernels, device tables) outside the capture
        for _ in range(3):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return types.SimpleNamespace(step=graph.replay, state=opt.state, graph=graph)


def bandwidth_probe(buffer: torch.Tensor, device: torch.device, repeats: int = 10):
    """(a callable, the passes over `buffer` it makes): x.mul_(c), on the GPU `repeats` of them replayed
    from a CUDA graph, so a launch's latency does not count as memory time."""
    if device.type != "cuda":
        return (lambda: buffer.mul_(1.0)), 1
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        buffer.mul_(1.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            buffer.mul_(1.0)
    return graph.replay, repeats


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


def clock(device: torch.device, fn) -> float:
    """Seconds `fn()` takes; on the GPU, from an idle device to an idle device."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(layout: str, shapes: list[tuple], names: list[str], reps: int, memory: bool,
        device: torch.device = torch.device("cpu")) -> dict:
    # Each layout starts cold: no kernel in memory or on disk, so its first steps compile.
    os.environ["OPTIMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="optimlab-bench-")
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-bench-")
    paths._kernels.clear()
    paths._graphs.clear()
    torch.manual_seed(0)
    params = [torch.randn(s, device=device) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    total = sum(p.numel() for p in params)
    buffer = torch.randn(total, device=device)
    optimizers, cold = {}, {}
    for name in names:
        text, torch_ref, has_fused = CANDIDATES[name]
        opt = optimlab.create(text, params)
        # cold: state allocation, tracing and compiling the kernel (C on the CPU, Triton on the GPU)
        cold[name] = clock(device, opt.step)
        optimizers[("optimlab", name)] = opt
        impls = ["optimlab foreach"] + (["optimlab capturable", "optimlab graph"] if device.type == "cuda"
                                        else [])
        impls += ["torch foreach"] + (["torch fused"] if has_fused else []) if torch_ref else []
        if device.type == "cuda" and name in ("adam", "adamw"):
            impls.append("torch fused graph")
        for impl in impls:
            try:
                optimizers[(impl, name)] = make_candidate(impl, name, params)
                optimizers[(impl, name)].step()  # warm each candidate once
            except (ValueError, RuntimeError) as err:  # e.g. capturable=True for a rule counting on the host
                optimizers.pop((impl, name), None)
                print(f"  ({impl} {name}: {str(err).splitlines()[0][:100]})")
    times = {key: [] for key in optimizers} | {("bandwidth", "x.mul_(c)"): []}
    scale, passes = bandwidth_probe(buffer, device)
    for _ in range(reps):
        for key, opt in optimizers.items():
            times[key].append(clock(device, opt.step))
        times[("bandwidth", "x.mul_(c)")].append(clock(device, scale) / passes)
    median = {key: statistics.median(t) for key, t in times.items()}
    bandwidth = 8 * total / median[("bandwidth", "x.mul_(c)")]
    anchor = median[("torch fused", "adamw")]
    # graph rows against torch's fused AdamW replayed from a graph too (kernels against kernels)
    graph_anchor = median.get(("torch fused graph", "adamw"), anchor)
    on_gpu = gpu_figures(optimizers) if device.type == "cuda" else {}
    rows = []
    for (impl, name), seconds in median.items():
        if impl == "bandwidth":
            continue
        traffic = bytes_per_param(CANDIDATES[name][0])
        goal = target(name, traffic, device.type == "cuda") if impl.startswith("optimlab") and \
            impl != "optimlab foreach" else None
        row_ratio = seconds / (graph_anchor if impl in GRAPHED else anchor)
        torch_foreach = median.get(("torch foreach", name))
        row = {
            "layout": layout, "optimizer": name, "impl": impl, "ms": seconds * 1e3,
            "ratio": row_ratio,
            "bytes_per_param": traffic,
            "bandwidth_pct": None if traffic is None else 100 * traffic * total / seconds / bandwidth,
            "target": goal, "meets": None if goal is None else row_ratio <= goal,
            "cold_s": cold[name] if impl == "optimlab" else None,
            "vs_torch_foreach": None if torch_foreach is None else seconds / torch_foreach,
        }
        if device.type == "cuda":
            row.update(on_gpu[impl, name])
            if impl != "optimlab foreach" and impl.startswith("optimlab") and goal is None and traffic:
                row["target"], row["meets"] = "≥85%", row["bandwidth_pct"] >= 85
        elif memory:
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
            "fused_adamw_ms": anchor * 1e3, "rows": rows, "device": device_name(device),
            **({"fused_adamw_graph_ms": graph_anchor * 1e3} if graph_anchor is not anchor else {})}


def gpu_figures(optimizers: dict) -> dict:
    """Per candidate, one more step each: its host synchronisations, then its memory (see the docstring)."""
    figures = {}
    for key, opt in optimizers.items():
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        opt.step()
        torch.cuda.synchronize()
        step = torch.cuda.max_memory_allocated() - before
        state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.is_cuda)
        figures[key] = {"syncs": syncs, "step_MB": step / 2**20, "peak_MB": (state + step) / 2**20}
    return figures


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def report(result: dict) -> None:
    gpu = result.get("device", "cpu") != "cpu"
    print(f"\n{result['layout']}: {result['params'] / 1e6:.1f} M fp32 parameters in {result['tensors']} "
          f"tensors on {result.get('device', 'cpu')}; in-place bandwidth {result['bandwidth_GBps']:.1f} "
          f"GB/s; torch fused AdamW {result['fused_adamw_ms']:.2f} ms"
          + (f" ({result['fused_adamw_graph_ms']:.3f} ms replayed from a CUDA graph: the anchor of the graph "
             "rows)" if "fused_adamw_graph_ms" in result else ""))
    print(f"{'optimizer':<13} {'impl':<19} {'median ms':>9} {'× fused AdamW':>13} {'× torch foreach':>15} "
          f"{'B/param':>7} {'% bw':>5} {'step MB':>7} {'peak MB':>7} {'target':>7} {'cold s':>6}"
          + (f" {'syncs':>5}" if gpu else ""))
    for r in sorted(result["rows"], key=lambda r: (list(CANDIDATES).index(r["optimizer"]), r["impl"])):
        traffic = "—" if r["bytes_per_param"] is None else str(r["bytes_per_param"])
        pct = "—" if r["bandwidth_pct"] is None else f"{r['bandwidth_pct']:.0f}"
        goal = "" if r["target"] is None else (r["target"] if isinstance(r["target"], str)
                                                else f"≤{r['target']:.2f}") + (" ✓" if r["meets"] else " ✗")
        cold = "" if r["cold_s"] is None else f"{r['cold_s']:.2f}"
        vs = "—" if r["vs_torch_foreach"] is None else f"{r['vs_torch_foreach']:.2f}"
        step = f"{r['step_MB']:.0f}" if "step_MB" in r else "—"
        peak = f"{r['peak_MB']:.0f}" if "peak_MB" in r else "—"
        print(f"{r['optimizer']:<13} {r['impl']:<19} {r['ms']:>9.{3 if gpu else 1}f} {r['ratio']:>13.2f} "
              f"{vs:>15} {traffic:>7} {pct:>5} {step:>7} {peak:>7} {goal:>7} {cold:>6}"
              + (f" {r['syncs']:>5}" if gpu else ""))
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
                             "5x1M (5 tensors of 1 M; ignores --params), "
                             "small (~1 M parameters in ~250 tensors; ignores --params)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory probes (a process each)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the parameters live (cuda: Triton kernels against torch's fused ones)")
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
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("step_speed.py: --device cuda needs a CUDA GPU, and torch.cuda.is_available() is False here",
              file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, optimlab {optimlab.__version__}, "
          f"{device_name(device)}")
    results = []
    for layout in args.layouts.split(","):
        if layout not in LAYOUTS:
            parser.error(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
        result = run(layout, LAYOUTS[layout](total), names, args.reps, not args.no_memory, device)
        report(result)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    missed = [r for res in results for r in res["rows"] if r["meets"] is False]
    cold = max(r["cold_s"] or 0 for res in results for r in res["rows"])
    print(f"\ncold first step, slowest optimlab optimizer: {cold:.2f} s (target ≤ 5 s)")
    syncing = [r for res in results for r in res["rows"]
               if r.get("syncs") and r["impl"].startswith("optimlab")]
    if device.type == "cuda":
        print("host syncs per step (optimlab): " + (", ".join(
            f"{r['optimizer']} {r['impl']} {r['syncs']}" for r in syncing) or "none (target 0)"))
    misses = ", ".join(f"{r['optimizer']} {r['impl']} ({r['layout']})" for r in missed)
    met = not missed and cold <= 5 and not (device.type == "cuda" and syncing)
    print("all targets met" if met else f"missed: {misses or ('host syncs' if syncing else 'cold step')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
