"""What a schedule is, how it is described, and how schedules compose.

A schedule is a frozen dataclass: calling it with `t`, the number of optimizer updates taken so far,
returns the multiplier of each parameter group's base lr for the next update. Being a plain
dataclass of numbers (and other schedules), it pickles, compares by value and describes itself as a
JSON-able dict, so a checkpoint can carry it without pickled code.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import inspect
import math
import numbers
from typing import Callable, ClassVar

from .. import settings

REGISTRY: dict[str, Callable[..., "Schedule"]] = {}  # name -> class or factory, for parse/CLI
CLASSES: dict[str, type["Schedule"]] = {}  # name written by describe() -> class, for from_dict


def register(name: str):
    """Make a schedule class or factory available by name to `get`, `parse` and the CLI."""
    def add(obj):
        if isinstance(obj, type):
            obj.name = name
            CLASSES[name] = obj
        REGISTRY[name] = obj
        return obj
    return add


def check_step(t) -> int:
    """The update count as an int; a schedule is only defined for t = 0, 1, 2, ..."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t != int(t):
        raise ValueError(f"step must be a whole number of optimizer updates, got {t!r}")
    if t < 0:
        raise ValueError(f"step must be a non-negative number of optimizer updates, got {t!r}")
    return int(t)


# Argument checks shared by the schedules: each returns the (normalised) value or raises ValueError.
def whole(name: str, value, minimum: int = 1) -> int:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value != int(value)):
        raise ValueError(f"{name} must be a whole number of updates, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def real(name: str, value, low: float = -math.inf, high: float = math.inf,
         low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def choice(name: str, value, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class. Subclasses define `value(t)` and check their arguments in `__post_init__`."""

    name: ClassVar[str] = "schedule"
    absolute: ClassVar[bool] = False  # True: values are momenta (for attach(momentum=)), not lr multipliers

    def __call__(self, step: int) -> float:
        t = check_step(step)
        try:
            return self.value(t)
        except OverflowError:  # gamma ** t with a huge gamma: a clear error, not Errno 34
            raise ValueError(f"{self!r} overflows a float at t = {t} (above 1.8e308): check its "
                             "arguments") from None

    def value(self, t: int) -> float:  # t: updates taken, already checked
        raise NotImplementedError

    @property
    def horizon(self) -> int | None:
        """The number of updates over which the schedule does something interesting (None: unbounded);
        a schedule with a `total_steps` ends there."""
        return getattr(self, "total_steps", None)

    def key_steps(self, until: int) -> list[int]:
        """Update counts up to `until` where the schedule changes phase (where tests and plots look)."""
        return [s for s in (0, self.horizon) if s is not None and s <= until]

    def describe(self) -> dict:
        """A JSON-able description; `from_dict(s.describe()) == s`."""
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Schedule):
                v = v.describe()
            elif isinstance(v, tuple):
                v = [x.describe() if isinstance(x, Schedule) else x for x in v]
            out[f.name] = v
        return out

    def _set(self, **values) -> None:  # normalised arguments on a frozen dataclass
        for k, v in values.items():
            object.__setattr__(self, k, v)


def from_dict(description: dict) -> Schedule:
    """Rebuild a schedule from `Schedule.describe()` output (nested schedules included)."""
    if not isinstance(description, dict) or "name" not in description:
        raise ValueError(f"a schedule description is a dict with a 'name', got {description!r}")
    args = dict(description)
    name = args.pop("name")
    if name not in CLASSES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(sorted(CLASSES))}")

    def build(v):
        if isinstance(v, dict) and "name" in v:
            return from_dict(v)
        if isinstance(v, list):
            return tuple(build(x) for x in v)
        return v
    return call(name, CLASSES[name], (), {k: build(v) for k, v in args.items()})


def get(name: str, **kwargs) -> Schedule:
    """A schedule by registry name: `get("cosine", total_steps=1000, floor=0.1)`."""
    if name not in REGISTRY:
        hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
        raise ValueError(f"unknown schedule {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; available: {', '.join(sorted(REGISTRY))}")
    return call(name, REGISTRY[name], (), kwargs)


def call(name: str, factory: Callable, args: tuple, kwargs: dict) -> Schedule:
    """factory(*args, **kwargs), with the documented ValueError (the name, a suggestion, the valid
    arguments) where Python would raise a bare TypeError."""
    accepted = inspect.signature(factory).parameters
    for key in kwargs:
        if key not in accepted:
            hint = difflib.get_close_matches(key, list(accepted), n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{name} has no argument {key!r}{did}; its arguments: {_signature(factory)}")
    try:
        bound = inspect.signature(factory).bind(*args, **kwargs)
    except TypeError:
        given = list(accepted)[:len(args)] + list(kwargs)
        missing = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in given]
        what = f"needs {', '.join(missing)}" if missing else f"takes at most {len(accepted)} arguments"
        raise ValueError(f"{name} {what}; its arguments: {_signature(factory)}") from None
    return factory(*bound.args, **bound.kwargs)


def signature(name: str) -> str:
    return _signature(REGISTRY[name])


def _signature(factory: Callable) -> str:
    params = inspect.signature(factory).parameters.values()
    return ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                     for p in params)


def parse(text: str) -> Schedule:
    """A schedule from text, like optimizers: 'wsd:total_steps=1000,warmup_steps=50,decay_steps=200'.

    List values use brackets: 'multistep:milestones=[30,60,80],gamma=0.1'.
    """
    name, kwargs = settings.parse(text)
    return get(name, **kwargs)


# ---------------------------------------------------------------------------------------------
# Composition


@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warmup before any schedule, then that schedule shifted by `warmup_steps` updates.

    For t < warmup_steps the multiplier is `target * (start + (1 - start) * t / warmup_steps)` with
    `target = schedule(0)` (1 for the usual schedules), so the ramp meets the schedule without a jump.
    With start=0 (the lesson's convention) the first update is taken with lr 0. For t >= warmup_steps:
    `schedule(t - warmup_steps)`. t is the number of optimizer updates taken.
    """

    schedule: Schedule
    warmup_steps: int
    start: float = 0.0

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"warmup needs a Schedule to warm up into, got {self.schedule!r}")
        self._set(warmup_steps=whole("warmup_steps", self.warmup_steps, 0),
                  start=real("start", self.start, 0.0, 1.0))

    def value(self, t):
        w = self.warmup_steps
        if t >= w:
            return self.schedule.value(t - w)
        return self.schedule.value(0) * (self.start + (1.0 - self.start) * t / w)

    @property
    def horizon(self):
        inner = self.schedule.horizon
        return None if inner is None else self.warmup_steps + inner

    def key_steps(self, until):
        w = self.warmup_steps
        inner = self.schedule.key_steps(max(until - w, 0))
        return sorted({0, min(w, until)} | {w + m for m in inner if w + m <= until})


@dataclasses.dataclass(frozen=True)
class Sequence(Schedule):
    """Schedules one after another, each counting its own updates from 0 at its boundary.

    Schedule i runs for t in [boundaries[i-1], boundaries[i]) (from 0 for the first, forever for the
    last) and sees t - boundaries[i-1]; t is the number of optimizer updates taken. As torch's SequentialLR.
    """

    schedules: tuple
    boundaries: tuple

    def __post_init__(self):
        schedules, boundaries = tuple(self.schedules), tuple(self.boundaries)
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise ValueError("sequence needs a non-empty list of Schedule objects")
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(f"sequence of {len(schedules)} schedules needs {len(schedules) - 1} boundaries, "
                             f"got {len(boundaries)}")
        boundaries = tuple(whole("boundary", b, 1) for b in boundaries)
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
        self._set(schedules=schedules, boundaries=boundaries)

    def value(self, t):
        i = bisect.bisect_right(self.boundaries, t)
        return self.schedules[i].value(t - (self.boundaries[i - 1] if i else 0))

    @property
    def horizon(self):
        last = self.schedules[-1].horizon
        return None if last is None else (self.boundaries[-1] if self.boundaries else 0) + last

    def key_steps(self, until):
        starts, ends = (0,) + self.boundaries, self.boundaries + (until,)
        return sorted({s + m for s, e, sch in zip(starts, ends, self.schedules) if s <= until
                       for m in sch.key_steps(min(e, until) - s)})


register("warmup")(Warmup)
register("sequence")(Sequence)


def warmup(schedule: Schedule, warmup_steps: int, start: float = 0.0) -> Warmup:
    """`Warmup(schedule, warmup_steps, start)`: a linear ramp of `warmup_steps` updates before `schedule`."""
    return Warmup(schedule, warmup_steps, start)


def sequence(schedules, boundaries) -> Sequence:
    """`Sequence(schedules, boundaries)`: schedule i runs on updates [boundaries[i-1], boundaries[i])."""
    return Sequence(tuple(schedules), tuple(boundaries))
