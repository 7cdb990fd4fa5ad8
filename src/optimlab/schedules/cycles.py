"""One-cycle (Smith & Topin 2017) and cyclical learning rates (Smith 2017), counted in optimizer updates.

Both are written relative to the *peak*: the group's lr is the top of the cycle and the multiplier
is at most 1. torch's OneCycleLR and CyclicLR also cycle momentum (beta1 for Adam-like optimizers).
Here an lr schedule only scales the lr; momentum cycling is opt-in, with the matching momentum
schedules below passed as `attach(optimizer, lr_schedule, momentum=momentum_schedule)`. Why opt-in:
changing beta1 every update changes what Adam's first moment averages (and its bias correction
assumes a fixed beta1), which is not what most users of a one-cycle *lr* expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from .base import Schedule, choice, real, register, whole

ANNEAL = {"cos": lambda a, b, p: b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * p)),
          "linear": lambda a, b, p: a + (b - a) * p}


def _phase_ends(total: int, pct_start: float, three_phase: bool) -> list[float]:
    # torch's OneCycleLR boundaries: the peak is at update pct_start*T - 1, the end at T - 1
    if three_phase:
        return [pct_start * total - 1, 2 * pct_start * total - 2, total - 1]
    return [pct_start * total - 1, total - 1]


def _anneal_phases(t: int, ends: list[float], points: list[tuple[float, float]], anneal: str) -> float:
    start = 0.0
    for end, (a, b) in zip(ends, points):
        if t <= end or end == ends[-1]:
            p = min((t - start) / (end - start), 1.0)  # held at the last value after T - 1
            return ANNEAL[anneal](a, b, p)
        start = end
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class _OneCycleBase(Schedule):
    total_steps: int
    pct_start: float = 0.3

    def _check_phases(self, three_phase: bool, anneal: str) -> None:
        total = whole("total_steps", self.total_steps, 2)
        pct = real("pct_start", self.pct_start, 0.0, 1.0, low_open=True, high_open=True)
        ends = _phase_ends(total, pct, three_phase)
        if ends[0] <= 0 or any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"pct_start={pct} with total_steps={total} leaves a phase of no updates "
                             f"(phase ends at updates {ends}); every phase needs at least one update")
        self._set(total_steps=total, pct_start=pct, anneal=choice("anneal", anneal, tuple(ANNEAL)))

    @property
    def horizon(self):
        return self.total_steps

    def key_steps(self, until):
        ends = _phase_ends(self.total_steps, self.pct_start, self.three_phase)
        return sorted({0, *(math.ceil(e) for e in ends if e <= until)})


MARKS = 1000  # phase marks a periodic schedule lists at most


@register("one_cycle")
@dataclasses.dataclass(frozen=True)
class OneCycle(_OneCycleBase):
    """One-cycle lr as a multiplier of the peak lr, over `total_steps` optimizer updates.

    Rises from 1/div_factor to 1 at update pct_start*T - 1, then anneals to 1/(div_factor*final_div_factor)
    at update T - 1 (three_phase: back down to 1/div_factor at 2*pct_start*T - 2 first). Same values as
    torch's OneCycleLR(max_lr=lr, ...) with cycle_momentum=False; for torch's momentum cycling pass
    `one_cycle_momentum(...)` to attach.
    """

    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self):
        self._check_phases(bool(self.three_phase), self.anneal)
        self._set(div_factor=real("div_factor", self.div_factor, 1.0),
                  final_div_factor=real("final_div_factor", self.final_div_factor, 1.0))

    def value(self, t):
        initial = 1.0 / self.div_factor
        low = initial / self.final_div_factor
        points = ([(initial, 1.0), (1.0, initial), (initial, low)] if self.three_phase
                  else [(initial, 1.0), (1.0, low)])
        ends = _phase_ends(self.total_steps, self.pct_start, self.three_phase)
        return _anneal_phases(t, ends, points, self.anneal)


@register("one_cycle_momentum")
@dataclasses.dataclass(frozen=True)
class OneCycleMomentum(_OneCycleBase):
    """The momentum (or beta1) that torch's OneCycleLR cycles: high -> low at the lr peak -> high.

    Returns momentum values, not lr multipliers: use as `attach(opt, one_cycle(...), momentum=this)`.
    """

    low: float = 0.85
    high: float = 0.95
    anneal: str = "cos"
    three_phase: bool = False
    absolute: ClassVar[bool] = True  # momentum values, not lr multipliers

    def __post_init__(self):
        self._check_phases(bool(self.three_phase), self.anneal)
        self._set(low=real("low", self.low, 0.0, 1.0), high=real("high", self.high, 0.0, 1.0))

    def value(self, t):
        lo, hi = self.low, self.high
        points = [(hi, lo), (lo, hi), (hi, hi)] if self.three_phase else [(hi, lo), (lo, hi)]
        ends = _phase_ends(self.total_steps, self.pct_start, self.three_phase)
        return _anneal_phases(t, ends, points, self.anneal)


MODES = ("triangular", "triangular2", "exp_range")


def _cyclic_height(t: int, up: int, down: int, mode: str, gamma: float) -> float:
    """Height in [0, 1] of the cycle at update t, times the mode's amplitude scaling (as torch's CyclicLR)."""
    size = up + down
    cycle = math.floor(1 + t / size)
    x = 1.0 + t / size - cycle  # position in the cycle, 0..1
    ratio = up / size
    height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    if mode == "triangular2":
        return height / 2.0 ** (cycle - 1)
    if mode == "exp_range":
        return height * gamma ** t  # torch scales by gamma ** (updates since the start), not per cycle
    return height


@dataclasses.dataclass(frozen=True)
class _CyclicBase(Schedule):
    step_size_up: int
    step_size_down: int | None = None

    def _check_cycle(self):
        up = whole("step_size_up", self.step_size_up)
        down = up if self.step_size_down is None else whole("step_size_down", self.step_size_down)
        self._set(step_size_up=up, step_size_down=down, mode=choice("mode", self.mode, MODES),
                  gamma=real("gamma", self.gamma, 0.0, 1.0, low_open=True))

    def _height(self, t):
        return _cyclic_height(t, self.step_size_up, self.step_size_down, self.mode, self.gamma)

    @property
    def horizon(self):
        return 4 * (self.step_size_up + self.step_size_down)

    def key_steps(self, until):
        size = self.step_size_up + self.step_size_down
        cycles = min(until // size + 1, MARKS // 2)  # the first cycles only: a plot cannot show more marks
        return sorted({s for k in range(cycles) for s in (k * size, k * size + self.step_size_up)
                       if s <= until})


@register("cyclical")
@dataclasses.dataclass(frozen=True)
class Cyclical(_CyclicBase):
    """Cyclical lr between `low` and 1 (the peak), with cycles counted in optimizer updates.

    m(t) = low + (1 - low) * height(t): triangular; triangular2 halves the amplitude each cycle;
    exp_range scales it by gamma**t. torch's CyclicLR(base_lr=low*lr, max_lr=lr, cycle_momentum=False).
    """

    low: float = 0.1
    mode: str = "triangular"
    gamma: float = 1.0

    def __post_init__(self):
        self._check_cycle()
        self._set(low=real("low", self.low, 0.0, 1.0))

    def value(self, t):
        return self.low + (1.0 - self.low) * self._height(t)


@register("cyclical_momentum")
@dataclasses.dataclass(frozen=True)
class CyclicalMomentum(_CyclicBase):
    """The momentum torch's CyclicLR cycles against the lr: `high` at the lr's bottom, `low` at its top.

    Returns momentum values, not lr multipliers: pass as `attach(..., momentum=this)`.
    """

    low: float = 0.8
    high: float = 0.9
    mode: str = "triangular"
    gamma: float = 1.0
    absolute: ClassVar[bool] = True  # momentum values, not lr multipliers

    def __post_init__(self):
        self._check_cycle()
        self._set(low=real("low", self.low, 0.0, 1.0), high=real("high", self.high, 0.0, 1.0))

    def value(self, t):
        return self.high - (self.high - self.low) * self._height(t)
