"""The schedules. Each is a pure function of t, the number of optimizer updates taken so far, and
returns the multiplier of every group's base lr for the next update (momentum schedules excepted:
they return the momentum / beta1 value itself).

Where torch has the same schedule the formula is torch's closed form, with torch's boundary
conventions, so `torch.optim.lr_scheduler.X` and this module agree step for step (see the tests).
Unlike torch, nothing here cycles back up after its end: past `total_steps` a decay stays at its floor.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

from .base import Schedule, Warmup, choice, real, register, whole


def _cos(p: float) -> float:  # 1 -> 0 as p goes 0 -> 1, half a cosine period
    return 0.5 * (1.0 + math.cos(math.pi * p))


@register("constant")
@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """The same multiplier `factor` for every update t (t: optimizer updates taken)."""

    factor: float = 1.0

    def __post_init__(self):
        self._set(factor=real("factor", self.factor, 0.0))

    def value(self, t):
        return self.factor


@register("cosine")
@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """Half a cosine from 1 down to `floor` over `total_steps` optimizer updates, then `floor`.

    m(t) = floor + (1 - floor) * (1 + cos(pi * min(t, T) / T)) / 2. floor=0 is plain cosine, floor>0
    cosine-to-floor. As torch's CosineAnnealingLR(T_max=T, eta_min=floor*lr): the floor is reached at
    t = T, after the T-th update (torch then climbs back up; this stays at the floor).
    """

    total_steps: int
    floor: float = 0.0

    def __post_init__(self):
        self._set(total_steps=whole("total_steps", self.total_steps),
                  floor=real("floor", self.floor, 0.0, 1.0))

    def value(self, t):
        return self.floor + (1.0 - self.floor) * _cos(min(t, self.total_steps) / self.total_steps)


COOLDOWNS = {"linear": lambda p: 1.0 - p, "cosine": _cos, "1-sqrt": lambda p: 1.0 - math.sqrt(p)}


@register("wsd")
@dataclasses.dataclass(frozen=True)
class WSD(Schedule):
    """Warmup-stable-decay over `total_steps` optimizer updates.

    t < W: t / W (linear warmup, the lesson's convention); W <= t < T - D: 1 (stable);
    then a cool-down over the last D = `decay_steps` updates to `floor`, with p = (t - (T - D)) / D:
    'linear' 1 - p, 'cosine' (1 + cos(pi p)) / 2, or '1-sqrt' 1 - sqrt(p) (Hägele et al. 2024).
    decay_steps defaults to 20% of total_steps. The floor is reached at t = T.
    """

    total_steps: int
    warmup_steps: int = 0
    decay_steps: int | None = None
    shape: str = "linear"
    floor: float = 0.0

    def __post_init__(self):
        total = whole("total_steps", self.total_steps)
        decay = round(0.2 * total) if self.decay_steps is None else self.decay_steps
        decay, warm = whole("decay_steps", decay), whole("warmup_steps", self.warmup_steps, 0)
        if warm + decay > total:
            raise ValueError(f"warmup_steps + decay_steps ({warm} + {decay}) "
                             f"must not exceed total_steps ({total})")
        self._set(total_steps=total, warmup_steps=warm, decay_steps=decay,
                  shape=choice("shape", self.shape, tuple(COOLDOWNS)),
                  floor=real("floor", self.floor, 0.0, 1.0))

    def value(self, t):
        if t < self.warmup_steps:
            return t / self.warmup_steps
        start = self.total_steps - self.decay_steps
        if t < start:
            return 1.0
        p = min((t - start) / self.decay_steps, 1.0)
        return self.floor + (1.0 - self.floor) * COOLDOWNS[self.shape](p)

    @property
    def horizon(self):
        return self.total_steps

    def key_steps(self, until):
        points = {0, self.warmup_steps, self.total_steps - self.decay_steps, self.total_steps}
        return sorted(s for s in points if s <= until)


@register("linear_decay")
@dataclasses.dataclass(frozen=True)
class LinearDecay(Schedule):
    """A straight line from 1 to `floor` over `total_steps` optimizer updates, then `floor`.

    m(t) = 1 - (1 - floor) * min(t, T) / T; torch's LinearLR(1.0, floor, total_iters=T).
    """

    total_steps: int
    floor: float = 0.0

    def __post_init__(self):
        self._set(total_steps=whole("total_steps", self.total_steps),
                  floor=real("floor", self.floor, 0.0, 1.0))

    def value(self, t):
        return 1.0 - (1.0 - self.floor) * min(t, self.total_steps) / self.total_steps


@register("polynomial")
@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """m(t) = floor + (1 - floor) * (1 - min(t, T) / T) ** power, t = optimizer updates taken.

    With floor=0 this is torch's PolynomialLR(total_iters=T, power=power).
    """

    total_steps: int
    power: float = 1.0
    floor: float = 0.0

    def __post_init__(self):
        self._set(total_steps=whole("total_steps", self.total_steps),
                  power=real("power", self.power, 0.0, low_open=True),
                  floor=real("floor", self.floor, 0.0, 1.0))

    def value(self, t):
        left = 1.0 - min(t, self.total_steps) / self.total_steps
        return self.floor + (1.0 - self.floor) * left ** self.power


@register("step")
@dataclasses.dataclass(frozen=True)
class StepDecay(Schedule):
    """m(t) = gamma ** (t // step_size): multiply by gamma every `step_size` optimizer updates (StepLR)."""

    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        self._set(step_size=whole("step_size", self.step_size),
                  gamma=real("gamma", self.gamma, 0.0, low_open=True))

    def value(self, t):
        return self.gamma ** (t // self.step_size)

    def key_steps(self, until):
        last = min(until, self.step_size * (MARKS - 1))  # the first MARKS drops: as many as a plot shows
        return list(range(0, last + 1, self.step_size))


MARKS = 1000  # phase marks a periodic schedule lists at most (a plot cannot show more)


@register("multistep")
@dataclasses.dataclass(frozen=True)
class MultiStep(Schedule):
    """m(t) = gamma ** (number of milestones <= t), milestones in optimizer updates (MultiStepLR)."""

    milestones: tuple
    gamma: float = 0.1

    def __post_init__(self):
        if isinstance(self.milestones, (int, float)) or not self.milestones:
            raise ValueError(f"milestones must be a non-empty list of update counts, got {self.milestones!r}")
        ms = tuple(whole("milestone", m) for m in self.milestones)
        if any(a >= b for a, b in zip(ms, ms[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {list(ms)}")
        self._set(milestones=ms, gamma=real("gamma", self.gamma, 0.0, low_open=True))

    def value(self, t):
        return self.gamma ** bisect.bisect_right(self.milestones, t)

    @property
    def horizon(self):
        return self.milestones[-1] + max(self.milestones[0], 1)

    def key_steps(self, until):
        return [s for s in (0, *self.milestones) if s <= until]


@register("exponential")
@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
    """m(t) = gamma ** t: multiply by gamma after every optimizer update (ExponentialLR)."""

    gamma: float

    def __post_init__(self):
        self._set(gamma=real("gamma", self.gamma, 0.0, low_open=True))

    def value(self, t):
        return self.gamma ** t


@register("inverse_sqrt")
@dataclasses.dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Linear warmup, then 1/sqrt decay (Vaswani et al. 2017, normalised to peak 1 at t = W).

    m(t) = t / W for t < W, else sqrt(W / t); t = optimizer updates taken, W = warmup_steps.
    """

    warmup_steps: int

    def __post_init__(self):
        self._set(warmup_steps=whole("warmup_steps", self.warmup_steps))

    def value(self, t):
        w = self.warmup_steps
        return t / w if t < w else math.sqrt(w / t)

    def key_steps(self, until):
        return [s for s in (0, self.warmup_steps) if s <= until]


@register("cosine_restarts")
@dataclasses.dataclass(frozen=True)
class CosineRestarts(Schedule):
    """Cosine with warm restarts (SGDR, Loshchilov & Hutter 2017), periods counted in optimizer updates.

    Cycle i lasts T_i = period * mult**i updates; inside it
    m = floor + (decay**i - floor) * (1 + cos(pi u / T_i)) / 2, u = updates since the restart.
    decay=1 is torch's CosineAnnealingWarmRestarts(T_0=period, T_mult=mult, eta_min=floor*lr);
    decay<1 lowers each restart's peak (timm's cycle_decay).
    """

    period: int
    mult: int = 1
    floor: float = 0.0
    decay: float = 1.0

    def __post_init__(self):
        self._set(period=whole("period", self.period), mult=whole("mult", self.mult),
                  floor=real("floor", self.floor, 0.0, 1.0),
                  decay=real("decay", self.decay, 0.0, 1.0, low_open=True))

    def _cycle(self, t):  # (cycle index, updates since its start, its length)
        if self.mult == 1:
            i, u = divmod(t, self.period)
            return i, u, self.period
        i, start, length = 0, 0, self.period
        while t >= start + length:
            start, length, i = start + length, length * self.mult, i + 1
        return i, t - start, length

    def value(self, t):
        i, u, length = self._cycle(t)
        return self.floor + (self.decay ** i - self.floor) * _cos(u / length)

    def key_steps(self, until):
        out, start, length = [], 0, self.period
        while start <= until:
            out.append(start)
            start, length = start + length, length * self.mult
        return out


@register("linear_warmup")
def linear_warmup(warmup_steps: int, start: float = 0.0) -> Warmup:
    """Linear warmup from `start` to 1 over `warmup_steps` optimizer updates, then 1.

    m(t) = start + (1 - start) * t / W for t < W. start=0 is the lesson's `step / warmup_steps` (the first
    update then uses lr 0); start>0 is torch's LinearLR(start_factor=start, total_iters=W).
    """
    return Warmup(Constant(1.0), whole("warmup_steps", warmup_steps), start)


@register("warmup_cosine")
def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.1) -> Warmup:
    """The Llama-2 recipe of the lessons: linear warmup t / W, then cosine from 1 to `floor` (10% of peak).

    For W <= t: m(t) = floor + (1 - floor) * (1 + cos(pi (t - W) / (T - W))) / 2, reaching the floor at t = T;
    t and T count optimizer updates. Same values as the lesson's lambda, with math.pi for its 3.14159
    and held at the floor after T (the lesson's lambda climbs back up).
    """
    total, warm = whole("total_steps", total_steps), whole("warmup_steps", warmup_steps, 0)
    if warm >= total:
        raise ValueError(f"warmup_steps ({warm}) must be less than total_steps ({total})")
    return Warmup(Cosine(total - warm, floor), warm)
