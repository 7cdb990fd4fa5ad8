"""What every ablation shares: the result it returns, a training loop, and honest summaries of seeds."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Callable, Iterable

import torch

from ...tasks.digits import data as digits_data  # noqa: F401  (re-exported to the ablations)
from ..common import fmt, single_thread  # noqa: F401  (re-exported to the ablations)


@dataclasses.dataclass
class Panel:
    """One subplot: curves label -> (xs, ys), drawn on the same axes."""

    title: str
    xlabel: str
    ylabel: str
    curves: dict[str, tuple[list[float], list[float]]]
    logy: bool = False
    logx: bool = False
    hline: tuple[float, str] | None = None  # a reference level and its label


@dataclasses.dataclass
class Result:
    name: str
    value: float  # the one measured number
    unit: str  # how to read it: '×', 'nats', ...
    verdict: str  # 'confirmed', 'refuted' or 'depends'
    summary: str  # one line: what was found, with the numbers
    spread: tuple[float, float] | None  # (min, max) of `value` over seeds, where it has one
    details: dict[str, float]  # the numbers behind the verdict
    panel: Panel
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["panel"] = {k: v for k, v in out["panel"].items() if k != "curves"}  # keep JSON small
        return _finite(out)


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool = False  # reduced sizes (the tests): fewer seeds, shorter runs
    seeds: int | None = None  # override the ablation's own number of seeds

    def n_seeds(self, full: int, quick: int) -> int:
        return self.seeds if self.seeds is not None else (quick if self.quick else full)


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One design decision, removed: the declarative entry `optimlab breakit` runs and documents."""

    name: str
    removed: str  # the design decision taken out
    claim: str  # what the seed says happens, quoted or closely paraphrased, with the seed file
    measure: str  # the measured number, defined precisely
    rule: str  # how the verdict follows from the number
    run: Callable[[Settings], Result]


def train(problem, optimizer, steps: int, *, every: int = 0, schedule=None, clip: float | None = None,
          before: Callable[[int], None] | None = None) -> list[float]:
    """Run `steps` updates; return the full-split training loss at steps 0, every, 2·every, …, steps.

    A non-finite minibatch loss ends the run (the rest of the curve is inf).
    """
    curve: list[float] = []
    diverged = False
    for step in range(steps):
        if every and step % every == 0:
            curve.append(problem.evaluate()["train_loss"])
        if before:
            before(step)
        optimizer.zero_grad()
        loss = problem.loss(step)
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(problem.model.parameters(), clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
    final = math.inf if diverged else problem.evaluate()["train_loss"]
    curve = [v if math.isfinite(v) else math.inf for v in [*curve, final]]
    if not every:
        return curve[-1:]
    return [*curve[:-1], *[math.inf] * (steps // every - (len(curve) - 1)), curve[-1]]


def linear_warmup(optimizer, steps: int):
    """lr ramps linearly from lr/steps to lr over the first `steps` updates, then stays (0: no warmup)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / steps) if steps else 1.0)


def first_below(curve: list[float], target: float, every: int = 1) -> float:
    """The first step at which `curve` (sampled every `every` steps) is at or below target; inf if never."""
    return next((i * every for i, v in enumerate(curve) if v <= target), math.inf)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    return min(values), max(values)


def median_curve(curves: list[list[float]]) -> list[float]:
    return [statistics.median(c[i] for c in curves) for i in range(min(map(len, curves)))]


def _finite(obj):
    """JSON has no inf or nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
