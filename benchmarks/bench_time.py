"""How long `optimlab bench` takes: wall time, and the CPU seconds per task and per optimizer.

    PYTHONPATH=src python benchmarks/bench_time.py --quick     # run the quick bench, then summarise
    PYTHONPATH=src python benchmarks/bench_time.py --from DIR  # summarise a finished (or partial) bench

Budgets: --quick ≤ 2 minutes and the full default run ≤ 20 minutes on 2 cores. On a loaded machine the
wall time stretches while each run's CPU time stays put, so the quiet-machine estimate is the runs' total
CPU time divided by the workers (each run is one thread), printed beside the load average.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path


def summarise(out: Path, workers: int) -> None:
    lines = (out / "results.jsonl").read_text().splitlines()
    runs = [json.loads(line) for line in lines if line.endswith("}")]  # a cut-off last line is skipped
    by_task, by_opt = collections.Counter(), collections.Counter()
    for r in runs:
        by_task[r["task"]] += r["run_cpu_seconds"]
        by_opt[r["optimizer"]] += r["run_cpu_seconds"]
    total = sum(by_task.values())
    print(f"{len(runs)} runs; CPU seconds by task: " + ", ".join(f"{k} {v:.0f}" for k, v in by_task.items()))
    print("CPU seconds by optimizer: " + ", ".join(f"{k} {v:.0f}" for k, v in by_opt.most_common()))
    print(f"total run CPU {total:.0f} s; wall sum {sum(r['run_seconds'] for r in runs):.0f} s; "
          f"quiet-machine estimate on {workers} cores: {total / workers / 60:.1f} min "
          "(+ start-up and report)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--from", dest="source", default=None, help="summarise this bench directory only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.source:
        summarise(Path(args.source), args.workers)
        return
    from optimlab.lab.bench import bench

    out = Path(tempfile.mkdtemp(prefix="bench-time-"))
    wall, cpu = time.perf_counter(), os.times()
    bench(quick=args.quick, out=out, workers=args.workers)
    end = os.times()
    used = (end.user + end.system + end.children_user + end.children_system
            - cpu.user - cpu.system - cpu.children_user - cpu.children_system)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{'quick' if args.quick else 'full'} bench: wall {time.perf_counter() - wall:.0f} s, "
          f"CPU of all processes {used:.0f} s (/{args.workers} = {used / args.workers:.0f} s "
          "on a quiet machine)")
    summarise(out, args.workers)
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
