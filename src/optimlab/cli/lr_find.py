"""optimlab lr-find: the learning-rate range test on a built-in task."""

from __future__ import annotations

import argparse
import json
import sys

from ._outputs import check, failed, require, save


def register(verbs) -> None:
    p = verbs.add_parser(
        "lr-find", help="LR range test (Smith 2017) on a built-in task: suggestions and a plot",
        description="Train a fresh model from optimlab.tasks for up to STEPS updates while the learning rate "
        "grows geometrically from START_LR to END_LR; stop when the smoothed loss exceeds DIVERGE times its "
        "best. Prints three suggestions (steepest descent of the smoothed loss, the middle of its longest "
        "valley, and the lr of its minimum divided by 10) and, with --out, writes the curve with the "
        "suggestions marked. The model and optimizer are restored afterwards; in Python: "
        "optimlab.lr_find.lr_find(model_or_problem, optimizer, loss). Runs single-threaded: tiny models are "
        "fastest that way.")
    p.add_argument("--optimizer", default="adamw",
                   help="registry name, preset or name:key=value,… without lr (the ramp sets it), e.g. "
                   "'sgd:momentum=0.9' (default adamw)")
    p.add_argument("--task", default="digits", help="an optimlab.tasks task (default digits)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and its minibatches (default 0)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=100,
                   help="updates in the ramp, at most; up to 100,000 (default 100)")
    p.add_argument("--smoothing", type=float, default=0.05,
                   help="weight of each new loss in the moving average (default 0.05)")
    p.add_argument("--diverge", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this multiple of its best (default 4)")
    p.add_argument("--out", metavar="PNG",
                   help="write the plot here (e.g. /tmp/lr-find.png; .png, .svg, .pdf)")
    p.add_argument("--json", action="store_true", help="print the curve and suggestions as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    import optimlab.tasks
    from optimlab.lr_find import check_optimizer, check_ramp, lr_find

    torch.set_num_threads(1)  # a tiny model on a shared CPU: threads only add overhead
    out = check(args.out, "--out", (".png", ".svg", ".pdf"))  # bad input fails here, before the dataset
    require(out, "matplotlib")
    check_optimizer(args.optimizer)
    check_ramp(args.start_lr, args.end_lr, args.steps, args.smoothing, args.diverge)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    problem = optimlab.tasks.get(args.task).build(seed=args.seed)
    result = lr_find(problem, args.optimizer, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     smoothing=args.smoothing, diverge=args.diverge, progress=progress)
    saved = [save(out, result.plot)] if out is not None else []
    if args.json:
        print(json.dumps({"optimizer": args.optimizer, "task": args.task, "seed": args.seed,
                          "stop": result.stop, "suggestions": result.suggestions, "lrs": result.lrs,
                          "losses": result.losses, "smoothed": result.smoothed}, indent=2))
        return failed(saved)
    low = result.picks["minimum/10"]
    print(f"LR range test: {args.optimizer} on {args.task} (seed {args.seed}), "
          f"lr {args.start_lr:g} → {args.end_lr:g} over at most {args.steps} updates")
    print(f"{result.stop} after {len(result.lrs)} updates; lowest smoothed loss {low.loss:.4g} at lr "
          f"{result.lrs[low.index]:.3g}\n")
    print(result.table())
    if all(saved) and out is not None:
        print(f"\nplot: {args.out}")
    return failed(saved)
