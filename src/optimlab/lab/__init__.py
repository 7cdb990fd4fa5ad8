"""The lab: run real optimizers where you can see what they do.

    optimlab.lab.race(...)      optimizers racing on a 2-D landscape      (lab/races.py)
    optimlab.lab.breakit(...)   ablations that remove one design decision (lab/ablations.py)
    optimlab.lab.sweep(...)     final loss across a grid of learning rates (lab/sweeps.py)
    optimlab.lab.claims(...)    the lessons' claims, measured             (lab/claims.py)

Names resolve lazily, so importing optimlab does not import plotting libraries.
"""

from __future__ import annotations

import importlib

_WHERE = {"race": "races", "breakit": "ablations", "sweep": "sweeps", "claims": "claims"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(_WHERE)
