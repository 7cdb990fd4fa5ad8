"""The command line: `optimlab <verb>`.

Each public module in this package adds one verb: it defines `register(subparsers)`, which adds a
parser and sets `run=` to a function taking the parsed arguments. Modules import heavy libraries
inside `run`, so `optimlab --help` and `optimlab list` stay fast. Modules whose name starts with `_`
are helpers, not verbs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import shutil
import sys
import textwrap

# How `optimlab --help` lists the verbs: the library, the practitioner's tools, the lab; others after.
ORDER = ("catalog", "diff", "schedule", "lr_find", "memory", "race", "breakit", "sweep", "claims")

# Modules of the `lab` extra (pyproject.toml): a core install (torch + numpy) lacks them.
EXTRAS = {"matplotlib": "lab", "plotly": "lab", "sklearn": "lab", "tqdm": "lab", "PIL": "lab",
          "mnist1d": "lab", "fastapi": "web", "uvicorn": "web", "pebble": "web", "starlette": "web",
          "pydantic": "web"}

# An option's value that starts with '-' but is a number or a list of them: -2, -2,2, -.5, -1e-3
NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf\b|nan\b)", re.IGNORECASE)


class HelpFormatter(argparse.HelpFormatter):
    """One wrapping rule for every verb: prose paragraphs are filled to the terminal's width (at most
    100 columns); a paragraph with indented lines (examples, lists) is kept as written."""

    def __init__(self, prog, **kwargs):
        width = min(shutil.get_terminal_size((100, 24)).columns, 100) - 2
        super().__init__(prog, width=width, max_help_position=30, **kwargs)

    def _fill_text(self, text, width, indent):
        blocks = re.split(r"\n\s*\n", text.strip("\n"))
        out = []
        for block in blocks:
            lines = block.splitlines()
            if any(line[:1].isspace() for line in lines):  # kept as written; a long heading is wrapped
                fill = dict(width=width, initial_indent=indent, subsequent_indent=indent)
                out.append("\n".join(indent + line if line[:1].isspace() else textwrap.fill(line, **fill)
                                     for line in lines))
            else:
                out.append(textwrap.fill(" ".join(line.strip() for line in lines), width,
                                         initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


def verb_modules() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    from optimlab import __version__

    parser = argparse.ArgumentParser(
        prog="optimlab", formatter_class=HelpFormatter,
        description="PyTorch optimizers written once, checked against their references, and fast; "
        "and a lab to see why they behave as they do.",
        epilog="`optimlab VERB --help` describes each verb. The lab verbs (race --out/--html/--gif, lr-find, "
        "sweep, breakit, claims, memory --task) need the lab extra: pip install \"optimlab[lab]\".")
    parser.add_argument("--version", action="version", version=f"optimlab {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in verb_modules():
        importlib.import_module(f"{__name__}.{name}").register(verbs)
    for sub in verbs.choices.values():  # every verb, present and future, wraps its help the same way
        sub.formatter_class = HelpFormatter
    return parser


def join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--start -2,2` -> `--start=-2,2`: argparse would read '-2,2' as an option and stop."""
    takes_value = {opt for sub in _parsers(parser) for action in sub._actions
                   if action.option_strings and action.nargs is None and action.const is None
                   and not isinstance(action, (argparse._VersionAction, argparse._HelpAction))
                   for opt in action.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in takes_value and i + 1 < len(argv) and NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}" if token.startswith("--") else token + argv[i + 1])
            i += 2
        else:
            out.append(token)
            i += 1
    return out


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The one-line advice for a module of an extra that is not installed, else None."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra = EXTRAS[top]
    return f"this needs {top}, which comes with the {extra} extra: pip install \"optimlab[{extra}]\""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(parser, list(sys.argv[1:] if argv is None else argv)))
    try:
        return args.run(args) or 0
    except (ValueError, OverflowError) as err:  # bad names, values, sizes: one clear line, no traceback
        print(f"optimlab {args.verb}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        advice = missing_extra(err)
        if advice is None:
            raise
        print(f"optimlab {args.verb}: {advice}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"optimlab {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optimlab list | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # keep Python's exit flush from failing again
        return 0
