"""Learning-rate schedules as pure functions of the number of optimizer updates taken.

    from optimlab import schedules
    s = schedules.warmup_cosine(total_steps=10_000, warmup_steps=500, floor=0.1)
    s(0), s(500), s(10_000)                 # 0.0, 1.0, 0.1: multipliers of each group's base lr
    sched = schedules.attach(optimizer, s)  # a torch LRScheduler; call sched.step() after each update

The unit is always the optimizer update: `s(t)` is the multiplier for the update that follows t
earlier updates. A schedule multiplies each group's own base lr, so per-group lrs keep their ratios.
Schedules are frozen dataclasses: they compare by value, pickle, and `describe()` themselves as JSON
(`from_dict` rebuilds them). Compose with `warmup(schedule, steps)` and `sequence([...], boundaries)`.
Command line: `optimlab schedule NAME key=value ... [--steps N] [--out plot.png | --json]`.
"""

import inspect

from .attach import ScheduledLR, attach
from .base import REGISTRY, Schedule, Sequence, Warmup, from_dict, get, parse, sequence, warmup
from .base import call as _call
from .cycles import Cyclical, CyclicalMomentum, OneCycle, OneCycleMomentum
from .shapes import (WSD, Constant, Cosine, CosineRestarts, Exponential, InverseSqrt, LinearDecay, MultiStep,
                     Polynomial, StepDecay)



def _checked(name: str):
    """The lower-case constructor `name(...)`: the class, with the documented ValueError for a wrong
    argument (`cosine(total=100)`: did you mean 'total_steps'?) instead of Python's TypeError."""
    factory = REGISTRY[name]

    def make(*args, **kwargs) -> Schedule:
        return _call(name, factory, args, kwargs)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = factory.__doc__
    make.__signature__ = inspect.signature(factory)
    return make


# lower-case constructors, the names the registry, `parse` and the CLI use
constant, cosine, wsd, linear_decay, polynomial = map(_checked, ("constant", "cosine", "wsd", "linear_decay",
                                                                 "polynomial"))
step, multistep, exponential = map(_checked, ("step", "multistep", "exponential"))
inverse_sqrt, cosine_restarts = map(_checked, ("inverse_sqrt", "cosine_restarts"))
one_cycle, one_cycle_momentum = map(_checked, ("one_cycle", "one_cycle_momentum"))
cyclical, cyclical_momentum = map(_checked, ("cyclical", "cyclical_momentum"))
linear_warmup, warmup_cosine = map(_checked, ("linear_warmup", "warmup_cosine"))


def available() -> list[str]:
    """Names accepted by `get`, `parse` and `optimlab schedule`."""
    return sorted(REGISTRY)


__all__ = ["Schedule", "ScheduledLR", "attach", "available", "get", "parse", "from_dict", "warmup",
           "sequence", "constant", "linear_warmup", "cosine", "warmup_cosine", "wsd", "linear_decay",
           "polynomial", "step",
           "multistep", "exponential", "inverse_sqrt", "cosine_restarts", "one_cycle", "one_cycle_momentum",
           "cyclical", "cyclical_momentum", "Warmup", "Sequence", "Constant", "Cosine", "WSD", "LinearDecay",
           "Polynomial", "StepDecay", "MultiStep", "Exponential", "InverseSqrt", "CosineRestarts", "OneCycle",
           "OneCycleMomentum", "Cyclical", "CyclicalMomentum"]
