"""RMSprop, as torch.optim.RMSprop."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


@rule(state={"v": "square_avg", "b": State("momentum_buffer", when="heavy_ball"),
             "g_mean": State("grad_avg", when="centered")},
      flags={"heavy_ball": lambda h: h.momentum > 0}, guards={"decays": "weight_decay"})
def rmsprop(h, θ, g, v, b, g_mean):
    """RMSprop (Hinton 2012, lecture 6e); centered form (Graves 2013, eq. 38–40)."""
    if h.decays:
        g = g + h.weight_decay * θ  # L2
    v = h.alpha * v + (1 - h.alpha) * g * g  # EMA of g²: forgets, unlike Adagrad's sum
    if h.centered:
        g_mean = h.alpha * g_mean + (1 - h.alpha) * g  # EMA of g, to divide by a variance instead
        variance = v - g_mean * g_mean  # ≤ v, unless both overflowed to inf: inf − inf is NaN...
        variance = torch.where(variance <= v, variance, v)  # ...so keep v's inf there, as torch's fma does
        denom = torch.sqrt(variance) + h.eps
    else:
        denom = torch.sqrt(v) + h.eps
    if h.heavy_ball:
        b = h.momentum * b + g / denom  # momentum on the normalised step
        θ = θ - h.lr * b
    else:
        θ = θ - h.lr * g / denom
    return θ, v, b, g_mean


class RMSprop(RuleOptimizer):
    """torch.optim.RMSprop's rule and hyperparameters."""

    rule = rmsprop
    complex_as_real = True
    checks = {**_checks.COMMON, "alpha": _checks.nonnegative, "momentum": _checks.nonnegative}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
