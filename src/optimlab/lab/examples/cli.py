"""`optimlab claims --examples`: the command-line side of the examples' section (kept here, so that the claims
verb only hands over)."""

from __future__ import annotations

import shlex
import sys
import textwrap
import time


def run_examples(args) -> int:
    from . import catalogue, dumps, examples, get, report_markdown
    from .core import LESSONS

    if args.list:
        for e in ([get(i) for i in args.ids] if args.ids else catalogue()):
            print(f"{e.id}  ({LESSONS[e.lesson]})")
            print(textwrap.fill(e.title, 100, initial_indent="  ", subsequent_indent="  "))
        return 0
    if getattr(args, "quick", False):
        print("optimlab claims --examples: --quick does not apply (each example keeps the lesson's sizes)",
              file=sys.stderr)
    start = time.perf_counter()
    outcomes = examples(args.ids or None, progress=getattr(args, "progress", False))
    seconds = time.perf_counter() - start
    command = "optimlab claims --examples" + "".join(f" {shlex.quote(a)}" for a in args.ids)
    text = dumps(outcomes) if args.json else report_markdown(outcomes, command=command, seconds=seconds)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(f"wrote {args.out} ({len(outcomes)} examples, {seconds:.0f} s)", file=sys.stderr)
    else:
        print(text.rstrip("\n"))
    return 0
