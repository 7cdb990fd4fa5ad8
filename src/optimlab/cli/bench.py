"""optimlab bench: every optimizer on five real tasks under one fixed protocol, with a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(verbs) -> None:
    p = verbs.add_parser(
        "bench", help="every optimizer on real tasks: default and tuned runs, time to target, profiles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every registered optimizer on five small real tasks (logistic regression, MLPs, a "
        "1-D CNN, a tiny transformer; data shipped offline) under one protocol: a run at its default "
        "hyperparameters and a tuned run (the best of --budget learning rates on a half-decade grid around "
        "its default, with weight decay where it matters), each over --seeds seeds. Each task has a held-out "
        "target fixed in advance; the bench reports steps and seconds to reach it (median [min–max], a miss "
        "is ∞), the final held-out metric, and performance profiles. Every run is appended to "
        "DIR/results.jsonl as it finishes: run the same command again to continue an interrupted bench.\n\n"
        "example: optimlab bench --quick --out bench-quick\n"
        "         optimlab bench --tasks digits,cancer --optimizers adamw,lion,momentum --seeds 3",
        epilog="writes DIR/report.md, DIR/results.jsonl (one line per run), DIR/profile.png, DIR/curves.png. "
        "See docs/bench.md for the protocol, the tasks and why their targets are what they are.")
    p.add_argument("--tasks", "-t", nargs="+", default=None, metavar="TASK",
                   help="comma- or space-separated (default: cancer digits diabetes mnist1d charlm)")
    p.add_argument("--optimizers", "-o", nargs="+", default=None, metavar="OPT",
                   help="registry names, presets or 'name:key=value,…' without lr (default: every registered "
                   "optimizer, optimlab list)")
    p.add_argument("--budget", type=int, default=None,
                   help="tuning trials per optimizer and task, the same for all (default 7; --quick 2)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per reported setting (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="a quarter of each task's steps, budget 2, 1 seed: a two-minute smoke run")
    p.add_argument("--out", default="bench", metavar="DIR", help="output directory (default ./bench)")
    p.add_argument("--workers", "-j", type=int, default=None,
                   help="parallel processes, one thread each (default: the number of CPUs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run)


def output_dir(text: str) -> Path:
    """The output directory, checked before any run starts: creatable, a directory, writable.

    (A small local check; a shared helper for output paths can replace it.)
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {text!r} exists and is not a directory")
    parent = path if path.exists() else next((q for q in path.absolute().parents if q.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {text!r}: {str(parent)!r} is not writable")
    return path


def run(args) -> int:
    from optimlab.lab.bench import bench

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    out = output_dir(args.out)
    try:
        result = bench(args.tasks, args.optimizers, budget=args.budget, seeds=args.seeds, quick=args.quick,
                       out=out, workers=workers, progress=progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished runs are in {out / 'results.jsonl'}; run the same command to "
              "continue", file=sys.stderr)
        return 130
    print(result.report_path.read_text().split("## Reading")[0].rstrip())
    print(f"\nreport: {result.report_path}\nruns: {result.out / 'results.jsonl'}\n"
          f"pictures: {result.out / 'profile.png'}, {result.out / 'curves.png'}")
    return 0
