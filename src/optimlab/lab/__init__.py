"""The lab: run real optimizers where you can see what they do.

    optimlab.lab.race(...)      optimizers racing on a 2-D landscape      (lab/races.py)
    optimlab.lab.breakit(...)   ablations that remove one design decision (lab/ablations/)
    optimlab.lab.sweep(...)     final loss across a grid of learning rates (lab/sweeps.py)
    optimlab.lab.claims(...)    the lessons' claims, measured             (lab/claim_checks/)

Names resolve lazily, so importing optimlab does not import plotting libraries.
"""

from __future__ import annotations

import importlib

_WHERE = {"race": "races", "breakit": "ablations", "sweep": "sweeps", "claims": "claim_checks"}


def __getattr__(name: str):
    # Modules and functions have different names (races.race, ...), so importing a module never
    # rebinds the name of the function here.
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(_WHERE)
