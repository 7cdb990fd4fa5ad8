"""What every claim shares: the declarative entry, its result, verdicts, and the context runs share."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from .. import lessons
from ..common import fmt, single_thread  # noqa: F401  (fmt is re-exported to the claims)

VERDICTS = ("confirmed", "refuted", "depends")


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: str  # one of VERDICTS
    condition: str = ""  # for "depends": when the claim holds and when it does not

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "depends" and not self.condition.strip():
            raise ValueError("a 'depends' verdict must state its condition")


def confirmed() -> Verdict:
    return Verdict("confirmed")


def refuted() -> Verdict:
    return Verdict("refuted")


def depends(condition: str) -> Verdict:
    return Verdict("depends", condition)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checkable claim of a lesson: the catalogue's entry. The verdict is a rule fixed in advance
    (`judge`, described by `rule`) applied to the measured numbers, never a judgement after the fact."""

    id: str  # a short slug
    seed: str  # the lesson it comes from, by short name (optimlab.lab.lessons: "canyon", ...)
    claim: str  # quoted or closely paraphrased
    experiment: str  # one line: what is run
    rule: str  # how the verdict follows from the numbers
    measure: Callable[["Context"], dict]  # -> the measured numbers (JSON-friendly)
    judge: Callable[[dict], Verdict]  # numbers -> verdict
    describe: Callable[[dict], str]  # numbers -> the measured finding as one line of text
    reference: str = ""  # the paper or arithmetic the verdict leans on, where a lesson disagrees with it

    def __post_init__(self):
        lessons.get(self.seed)  # a lesson's short name, or a clear error at import


@dataclasses.dataclass
class Result:
    id: str
    seed: str  # the lesson's short name (the field keeps its name: JSON readers depend on it)
    claim: str
    measured: str
    verdict: str
    condition: str
    experiment: str
    rule: str
    reference: str
    numbers: dict
    seconds: float
    quick: bool
    lesson: str = ""  # the lesson's title

    def to_json(self) -> dict:
        return json_safe(dataclasses.asdict(self))


class Context:
    """Sizes for full or quick runs, and experiments shared by several claims (run once per call)."""

    def __init__(self, quick: bool = False):
        self.quick = quick
        self._shared: dict = {}

    def size(self, full, quick):
        return quick if self.quick else full

    def shared(self, key, compute: Callable[[], object]):
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


def shared(key: str, measure: Callable[[Context], dict]) -> Callable[[Context], dict]:
    """A measurement several claims read: run once per `claims()` call, whichever claim asks first."""
    return lambda ctx: ctx.shared(key, lambda: measure(ctx))


def run_claim(entry: Claim, context: Context) -> Result:
    start = time.perf_counter()
    with single_thread():
        numbers = entry.measure(context)
    seconds = time.perf_counter() - start
    found = entry.judge(numbers)
    return Result(entry.id, entry.seed, entry.claim, entry.describe(numbers), found.verdict, found.condition,
                  entry.experiment, entry.rule, entry.reference, numbers, seconds, context.quick,
                  lessons.get(entry.seed).title)


def gb(n_bytes: float) -> str:
    """Decimal gigabytes, as the lessons count them."""
    return f"{n_bytes / 1e9:.4g} GB"


def json_safe(obj):
    """JSON has no inf or nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
