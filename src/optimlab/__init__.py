"""optimlab: PyTorch optimizers written once, checked against their references, and fast.

    import optimlab
    optimlab.available()                                   # ['adafactor', 'adagrad', 'adam', ...]
    opt = optimlab.create("adamw", model.parameters(), lr=3e-4, weight_decay=0.1)
    opt = optimlab.AdamW(model.parameters(), lr=3e-4)      # the classes are real torch optimizers
"""

from .optimizers import SGD, Adafactor, Adagrad, Adam, AdamW, LAMB, Lion, NAdam, RAdam, RMSprop
from .registry import Spec, available, create, presets, register, resolve, spec

__all__ = ["available", "create", "spec", "resolve", "presets", "register", "Spec",
           "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Lion", "LAMB", "Adafactor"]
__version__ = "0.1.0"
