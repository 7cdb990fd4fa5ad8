"""The protocol's arithmetic, kept free of training so that tests can check it by hand.

    first_hit(steps, values, target, goal)   the first evaluated step at which the target is met, or inf
    median_spread(values)                    (median, lowest, highest) with a miss (inf) counted as a value
    profile(times, taus)                     Dolan & Moré performance profile: for each optimizer, the
                                             fraction of tasks solved within τ × the best time on that task
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

INF = math.inf


def reached(value: float, target: float, goal: str) -> bool:
    """Whether one held-out measurement meets the target ('max': at least it; 'min': at most it)."""
    if goal not in ("max", "min"):
        raise ValueError(f"goal must be 'max' or 'min', got {goal!r}")
    if not math.isfinite(value):
        return False
    return value >= target if goal == "max" else value <= target


def first_hit(points: Sequence[float], values: Sequence[float], target: float, goal: str) -> float:
    """The first of `points` (steps or seconds, in order) whose value meets the target; inf for a miss.

    Only evaluated points count: with an evaluation every k steps, time-to-target has a resolution of k.
    """
    if len(points) != len(values):
        raise ValueError(f"{len(points)} points but {len(values)} values")
    for point, value in zip(points, values):
        if reached(value, target, goal):
            return point
    return INF


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) over seeds; a miss is inf and sorts last, so most seeds missing → inf median."""
    if not values:
        return INF, INF, INF
    return statistics.median(values), min(values), max(values)


def ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """times[optimizer][task] → t / (best t on that task over all optimizers); inf where missed."""
    tasks = {task for row in times.values() for task in row}
    best = {task: min((row.get(task, INF) for row in times.values()), default=INF) for task in tasks}
    return {o: {task: (row.get(task, INF) / best[task] if math.isfinite(best[task]) and best[task] > 0
                       else (1.0 if best[task] == 0 and row.get(task, INF) == 0 else INF))
                for task in tasks}
            for o, row in times.items()}


def profile(times: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, list[float]]:
    """ρ_o(τ) = |{tasks p : t_{o,p} ≤ τ · min_o' t_{o',p}}| / |tasks| for each τ (Dolan & Moré 2002).

    A miss (inf) is never within any τ, so ρ_o(∞) is the fraction of tasks the optimizer solves at all,
    and ρ_o(1) the fraction on which it is (jointly) the fastest.
    """
    r = ratios(times)
    tasks = sorted({task for row in times.values() for task in row})
    if not tasks:
        return {o: [0.0 for _ in taus] for o in times}
    def within(o, tau):
        return sum(math.isfinite(r[o][task]) and r[o][task] <= tau for task in tasks) / len(tasks)

    return {o: [within(o, tau) for tau in taus] for o in times}
