"""optimlab sweep: final loss over a log grid of learning rates, per optimizer, and the good band's width."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._outputs import check, failed, require, save


def register(verbs) -> None:
    p = verbs.add_parser(
        "sweep", help="LR sensitivity: final loss over a log grid of learning rates, and the band's width",
        description="Train each optimizer at each learning rate of a log grid on a small real task, several "
        "seeds each, and print the final loss per lr (median over seeds), the best lr, and the band of lrs "
        "whose median final loss is within --factor× the best: its width in decades measures how forgiving "
        "the optimizer is about lr (the experiment of the lesson 'Adam vs SGD in practice'). A run whose "
        "loss becomes NaN or infinite has diverged and counts as an infinite loss. Every run uses one "
        "thread and depends only on its seed, so the grid runs in parallel processes and results repeat "
        "exactly on one machine; on another CPU the last digits of the losses differ (see docs/sweep.md)."
        "\n\nexample:\n  optimlab sweep -o sgd,adam --lrs 1e-4:10:16 --steps 300 --seeds 3 "
        "--out /tmp/sweep.png",
        epilog="tasks: digits (scikit-learn 8×8 digits, MLP), charlm (pydoc text, tiny transformer); options "
        "as text: --task digits:hidden=128,depth=4.\n\noptimizers: registry names and presets (optimlab "
        "list), with hyperparameters as name:key=value,… but without lr. The band is contiguous around the "
        "best lr; its width is log10(highest/lowest lr in it), so its resolution is the grid spacing, and ≥ "
        "marks a band that reaches the end of the grid.")
    p.add_argument("--optimizers", "-o", nargs="+", default=["sgd,adam"], metavar="OPT",
                   help="comma- or space-separated, e.g. sgd,adam or 'sgd:momentum=0.9' adamw "
                   "(default sgd,adam)")
    p.add_argument("--task", "-t", default="digits", help="task name, or name:key=value,… (default digits)")
    p.add_argument("--lrs", default="1e-4:10:16", metavar="GRID",
                   help="LO:HI:N log-spaced (N points from LO to HI), or a list 1e-3,1e-2,0.1 "
                   "(default 1e-4:10:16)")
    p.add_argument("--steps", "-n", type=int, default=300,
                   help="updates per run, at most 100,000 (default 300)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (optimizer, lr) (default 3)")
    p.add_argument("--factor", type=float, default=2.0,
                   help="the band holds lrs whose median final loss is ≤ factor × the best (default 2)")
    p.add_argument("--metric", default="val_loss", choices=["val_loss", "train_loss"],
                   help="final loss compared: held-out (default: it has a floor, so 'within 2× of the best' "
                   "means something) or the full training split (heads to 0 on digits)")
    p.add_argument("--workers", "-j", type=int, default=None,
                   help="parallel processes, one thread each (default: the number of CPUs)")
    p.add_argument("--out", default=None, metavar="PNG",
                   help="write the loss-vs-lr plot here (.png, .svg, .pdf)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run)


def run(args) -> int:
    out = check(args.out, "--out", (".png", ".svg", ".pdf"))
    require(out, "matplotlib")
    from optimlab.lab.sweeps import sweep

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = sweep(args.optimizers, task=args.task, lrs=args.lrs, steps=args.steps, seeds=args.seeds,
                   factor=args.factor, metric=args.metric, workers=workers, progress=progress)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.table(), flush=True)
    if out is None:
        return 0
    ok = save(out, result.plot)
    if ok and not args.json:
        print(f"plot: {args.out}")
    return failed([ok])
