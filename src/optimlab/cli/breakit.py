"""optimlab breakit: remove one design decision at a time and measure what breaks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from ._outputs import check_folder, failed, require, save


def register(verbs) -> None:
    p = verbs.add_parser(
        "breakit", help="ablations: remove one design decision, measure what breaks, give a verdict",
        description="Run the 'Break It' ablations of the lessons: each removes one design decision, runs "
        "the comparison on a small real task over several seeds, and prints one measured number, its "
        "spread over seeds and a verdict on the lesson's claim (confirmed, refuted or depends), with the "
        "finding in one line. --out DIR writes DIR/breakit.png (one panel per ablation) and "
        "DIR/breakit.json. --list describes each ablation: what is removed, the claim, the number "
        "measured, the verdict rule. Results repeat exactly on one machine; on another CPU the numbers "
        "move within the printed spread (see docs/breakit.md)."
        "\n\nexample:\n  optimlab breakit bias-correction decoupled-decay --out /tmp/breakit",
        epilog="ablations: bias-correction, warmup, decoupled-decay, clipping, beta2, eps-bf16 (all by "
        "default). Each takes seconds to a few tens of seconds on one CPU thread; --workers runs them in "
        "parallel processes; --quick uses fewer seeds and shorter runs (as the tests do).")
    p.add_argument("names", nargs="*", metavar="NAME", help="ablations to run (default: all)")
    p.add_argument("--out", default=None, metavar="DIR", help="write breakit.png and breakit.json here")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--quick", action="store_true", help="reduced sizes: fewer seeds, shorter runs")
    p.add_argument("--seeds", type=int, default=None, help="override every ablation's number of seeds")
    p.add_argument("--workers", "-j", type=int, default=None,
                   help="run ablations in this many processes (default: the number of CPUs)")
    p.add_argument("--list", action="store_true", help="describe every ablation and exit")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(run=run)


def run(args) -> int:
    out = check_folder(args.out, "--out")
    from optimlab.lab import ablations

    if args.list:
        for name in args.names or ablations.names():
            a = ablations.get(name)
            print(a.name)
            for field in ("removed", "claim", "measure", "rule"):
                print(textwrap.fill(getattr(a, field), 100, initial_indent=f"  {field:<8} ",
                                    subsequent_indent=" " * 11))
        return 0
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    require(out, "matplotlib")
    results = ablations.breakit(args.names or None, quick=args.quick, seeds=args.seeds, workers=workers,
                                progress=progress)
    if args.json:
        print(json.dumps(ablations.to_json(results), indent=2, ensure_ascii=False))
    else:
        print(ablations.table(results), flush=True)
    if out is None:
        return 0
    saved = [save(out, lambda folder: ablations.write(results, folder), what=f"{out}/breakit.*")]
    if saved[0] and not args.json:
        print(f"figure: {out / 'breakit.png'}")
    return failed(saved)
