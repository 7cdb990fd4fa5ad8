"""optimlab claims: the lessons' checkable claims, each measured by a small experiment, with a verdict."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
import time

from ._outputs import check, save

DESCRIPTION = """\
Measure the checkable claims of the five lessons optimlab grew from (docs/lessons.md). Each claim
runs a small experiment (a few seconds on one CPU thread), reports the measured numbers, and gets a
verdict (confirmed, refuted, or depends, with the condition) from a rule fixed in advance. Where a
lesson and a paper disagree, the paper and the measurement win.

Prints a Markdown report (a table, then every claim in full); --json prints {"claims": [{"id",
"seed", "lesson", "claim", "measured", "verdict", ...}, ...]} instead, where "seed" is the lesson's
short name (e.g. canyon) and "lesson" its title.

examples:
  optimlab claims                                   every claim, full sizes (about half a minute)
  optimlab claims --quick --json                    reduced sizes, as JSON
  optimlab claims lion-3x-memory amsgrad-fixes-reddi --out report.md
  optimlab claims --list                            ids, lessons and claims
  optimlab claims --examples                        the lessons' own worked examples, re-run
  optimlab claims --examples lr-sensitivity         one example alone (--examples --list: their ids)
"""


def register(verbs) -> None:
    p = verbs.add_parser("claims", help="the lessons' claims, each measured, with a verdict",
                         description=DESCRIPTION)
    p.add_argument("ids", nargs="*", metavar="ID", help="claims to run (default: all; see --list)")
    p.add_argument("--quick", action="store_true", help="reduced sizes: shorter runs, fewer seeds, coarser "
                                                        "grids")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--out", metavar="FILE", help="write the report (Markdown, or JSON with --json) to FILE")
    p.add_argument("--list", action="store_true", help="list the claims (id, lesson, claim) and exit")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="one line per finished claim on stderr (default: off)")
    p.add_argument("--examples", action="store_true", help="the report's section on the lessons' own worked "
                   "examples, re-run: IDs then name examples")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.examples:
        from optimlab.lab.examples.cli import run_examples

        return run_examples(args)
    from optimlab.lab.claim_checks import catalogue, claims, dumps, get, report_markdown

    if args.list:
        chosen = [get(i) for i in args.ids] if args.ids else catalogue()
        for c in chosen:
            print(f"{c.id}  (lesson {c.seed})")
            print(textwrap.fill(c.claim, 100, initial_indent="  ", subsequent_indent="  "))
        return 0
    out = check(args.out, "--out")
    start = time.perf_counter()
    results = claims(args.ids or None, quick=args.quick, progress=args.progress)
    seconds = time.perf_counter() - start
    command = "optimlab claims" + "".join(f" {shlex.quote(a)}" for a in _shown_arguments(args))
    text = dumps(results) if args.json else report_markdown(results, command=command, seconds=seconds)
    if out is None:
        print(text.rstrip("\n"))
        return 0
    if not save(out, lambda path: path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")):
        print(text.rstrip("\n"))  # the report is not lost: it goes to stdout instead
        return 1
    print(f"wrote {args.out} ({len(results)} claims, {seconds:.0f} s)", file=sys.stderr)
    return 0


def _shown_arguments(args) -> list[str]:
    return [*args.ids, *(["--quick"] if args.quick else [])]
