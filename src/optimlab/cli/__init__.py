"""The command line: `optimlab <verb>`.

Each module in this package adds one verb: it defines `register(subparsers)`, which adds a parser
and sets `run=` to a function taking the parsed arguments. Modules import heavy libraries inside
`run`, so `optimlab --help` and `optimlab list` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys


# How `optimlab --help` lists the verbs: the library, the practitioner's tools, the lab; others after.
ORDER = ("catalog", "diff", "schedule", "lr_find", "memory", "race", "breakit", "sweep", "claims")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimlab",
        description="PyTorch optimizers written once, checked against their references, and fast; "
        "and a lab to see why they behave as they do.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    found = [m.name for m in pkgutil.iter_modules(__path__)]
    for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"{__name__}.{name}").register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as err:  # bad names and hyperparameters: one clear line, no traceback
        print(f"optimlab {args.verb}: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `optimlab list | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # keep Python's exit flush from failing again
        return 0
