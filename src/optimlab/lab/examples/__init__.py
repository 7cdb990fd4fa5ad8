"""The lessons' own worked examples, re-run: a section of the claims report (`optimlab claims --examples`).

    from optimlab.lab.examples import examples, report_markdown
    outcomes = examples()                         # every example (about half a minute on one thread)
    outcomes = examples(["lr-sensitivity"])       # one alone
    for o in outcomes:
        for c in o.checks:
            print(o.id, c.verdict.verdict, c.says)
    print(report_markdown(outcomes))

Each module re-implements one code example of a lesson from the lesson's setup (the design is the lesson's,
the code is ours), runs it with optimlab's optimizers and torch.optim's, prints its output beside what the
lesson says, and gives each statement a verdict (confirmed / refuted / depends) by a rule fixed in advance,
as the claims checker does. The lessons are named by topic in `core.LESSONS`.
"""

from __future__ import annotations

import difflib
import sys

from . import (
    adamw_class,
    canyon_steps,
    compare_on_task,
    grad_monitoring,
    lr_sensitivity,
    numpy_adam,
    param_group_recipes,
    schedule_recipe,
)
from .core import LESSONS, Check, Example, Outcome, run_example
from .report import dumps, report_markdown, to_json

EXAMPLES: dict[str, Example] = {m.EXAMPLE.id: m.EXAMPLE for m in (
    lr_sensitivity, numpy_adam, adamw_class, compare_on_task, schedule_recipe, param_group_recipes,
    grad_monitoring, canyon_steps)}

__all__ = ["examples", "catalogue", "get", "ids", "report_markdown", "to_json", "dumps", "Example", "Outcome",
           "Check", "LESSONS", "EXAMPLES"]


def ids() -> list[str]:
    return list(EXAMPLES)


def get(example_id: str) -> Example:
    key = example_id.strip().lower()
    if key not in EXAMPLES:
        hint = difflib.get_close_matches(key, EXAMPLES, n=1)
        raise ValueError(f"unknown example {example_id!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + "; see `optimlab claims --examples --list`")
    return EXAMPLES[key]


def catalogue() -> list[Example]:
    return list(EXAMPLES.values())


def examples(ids: list[str] | str | None = None, *, progress: bool = False) -> list[Outcome]:
    """Run the named examples (all when None), in catalogue order; one `Outcome` each."""
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i.strip()]
    chosen = {get(i).id for i in ids} if ids else set(EXAMPLES)
    outcomes = []
    for entry in (e for e in EXAMPLES.values() if e.id in chosen):
        outcomes.append(run_example(entry))
        if progress:
            o = outcomes[-1]
            tally = ", ".join(c.verdict.verdict for c in o.checks)
            print(f"[{len(outcomes)}/{len(chosen)}] {o.id}: {tally} ({o.seconds:.1f} s)", file=sys.stderr)
    return outcomes
