"""optimlab: PyTorch optimizers written once, checked against their references, and fast.

    import optimlab
    optimlab.available()                                   # ['adafactor', 'adagrad', 'adam', ...]
    opt = optimlab.create("adamw", model.parameters(), lr=3e-4, weight_decay=0.1)
    opt = optimlab.AdamW(model.parameters(), lr=3e-4)      # the classes are real torch optimizers
"""

import importlib

from .lr_find import lr_find
from .optimizers import SGD, Adafactor, Adagrad, Adam, AdamW, LAMB, Lion, NAdam, RAdam, RMSprop
from .optimizers import ADOPT, LARS, AdamW8bit, ScheduleFreeAdamW, ScheduleFreeSGD, Sophia
from .registry import Spec, available, create, presets, register, resolve, spec

# Subpackages load on first use, so `import optimlab` stays light (no plotting, no scikit-learn).
_LAZY = {"tasks", "memory", "lab", "schedules", "landscapes", "gradients", "param_groups"}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["available", "create", "spec", "resolve", "presets", "register", "Spec", "lr_find",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Lion", "LAMB", "Adafactor"]
__all__ += ["AdamW8bit", "ADOPT", "LARS", "Sophia", "ScheduleFreeAdamW", "ScheduleFreeSGD"]
__version__ = "0.1.0"
