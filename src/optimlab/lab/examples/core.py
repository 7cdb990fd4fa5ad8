"""What every worked example shares: the lessons' names, the checks and their verdicts, and the runner.

An example re-implements one code example of a lesson from the lesson's setup (model, data, seed, steps,
hyperparameters), runs it with optimlab's optimizers and torch.optim's, prints its output the way the
lesson's code prints it, and turns each statement the lesson makes about that output into a `Check`: the
statement, what was measured, the rule (fixed in advance) and the verdict it gives.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from .. import lessons as _lessons
from ..claim_checks.core import VERDICTS, Verdict, confirmed, depends, json_safe, refuted
from ..common import fmt, single_thread

__all__ = ["LESSONS", "Check", "Example", "Outcome", "Verdict", "VERDICTS", "confirmed", "refuted", "depends",
           "fmt", "ok", "agree", "bounded", "run_example"]

# The lessons, named by topic (never by file): the one table in optimlab.lab.lessons, as "the lesson <title>".
LESSONS = {name: f"the lesson '{lesson.title}'" for name, lesson in _lessons.LESSONS.items()}


@dataclasses.dataclass(frozen=True)
class Check:
    """One statement of the lesson about its example's output, and what the run shows."""

    says: str  # the lesson's statement, quoted or closely paraphrased
    measured: str  # what was measured, one line
    rule: str  # how the verdict follows from the numbers, fixed before the run
    verdict: Verdict

    def to_json(self) -> dict:
        return {"says": self.says, "measured": self.measured, "rule": self.rule,
                "verdict": self.verdict.verdict, "condition": self.verdict.condition}


@dataclasses.dataclass(frozen=True)
class Example:
    """A lesson's code example, re-implemented: `run()` returns (printed output, checks, numbers)."""

    id: str  # a short slug: `optimlab claims --examples ID`
    lesson: str  # a key of LESSONS
    title: str  # what the lesson's code is, in a few words
    setup: str  # the lesson's setup as this re-implementation runs it
    run: Callable[[], tuple[str, list[Check], dict]]

    def __post_init__(self):
        if self.lesson not in LESSONS:
            raise ValueError(f"lesson must be one of {sorted(LESSONS)}, got {self.lesson!r}")


@dataclasses.dataclass
class Outcome:
    id: str
    lesson: str  # the lesson's name by topic
    title: str
    setup: str
    output: str  # the example's printout, as the lesson's code prints it (optimlab and torch beside)
    checks: list[Check]
    numbers: dict
    seconds: float

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["checks"] = [c.to_json() for c in self.checks]
        return json_safe(out)


def run_example(example: Example) -> Outcome:
    """Run one example on one thread (the numbers then repeat exactly on the same machine)."""
    start = time.perf_counter()
    with single_thread():
        output, checks, numbers = example.run()
    return Outcome(example.id, LESSONS[example.lesson], example.title, example.setup, output, checks, numbers,
                   time.perf_counter() - start)


# --- verdict rules shared by the examples ----------------------------------------------------------------

def agree(holds: dict[str, bool]) -> Verdict:
    """One statement checked with several implementations (optimlab, torch): confirmed if it holds with
    all of them, refuted if with none, depends (naming which) if they disagree."""
    if not holds:
        raise ValueError("agree() needs at least one implementation")
    yes = [name for name, ok in holds.items() if ok]
    if len(yes) == len(holds):
        return confirmed()
    if not yes:
        return refuted()
    no = [name for name in holds if name not in yes]
    return depends(f"holds with {', '.join(yes)}'s optimizers, not with {', '.join(no)}'s")


def bounded(value: float, confirm_at_most: float, refute_above: float, condition: str) -> Verdict:
    """A measured size against two fixed bounds: confirmed if value <= confirm_at_most, refuted if it is
    above refute_above (or not finite), depends (with `condition`) in between."""
    if not confirm_at_most <= refute_above:
        raise ValueError("confirm_at_most must not exceed refute_above")
    if not math.isfinite(value) or value > refute_above:
        return refuted()
    return confirmed() if value <= confirm_at_most else depends(condition)


def ok(flag: bool) -> str:
    """A part of a statement in the measured text: held (✓) or not (✗)."""
    return "✓" if flag else "✗"

