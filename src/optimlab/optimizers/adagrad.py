"""Adagrad, as torch.optim.Adagrad."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def decayed_lr(h, t, carried):
    return {"clr": h.lr / (1 + (t - 1) * h.lr_decay)}


def initial_accumulator(θ, h):
    return torch.full_like(θ, h.initial_accumulator_value, memory_format=torch.contiguous_format)


@rule(state={"G": State("sum", init=initial_accumulator)}, scalars=decayed_lr,
      guards={"decays": "weight_decay"})
def adagrad(h, θ, g, G):
    """Adagrad (Duchi et al. 2011): divide by the root of all squared gradients so far."""
    if h.decays:
        g = g + h.weight_decay * θ  # L2
    G = G + g * g  # the sum only grows, so every coordinate's step only shrinks
    θ = θ - h.clr * g / (torch.sqrt(G) + h.eps)
    return θ, G


class Adagrad(RuleOptimizer):
    """torch.optim.Adagrad's rule and hyperparameters; a sparse gradient updates only what it touches."""

    rule = adagrad
    complex_as_real = True
    sparse_gradients = "touched"
    checks = {**_checks.COMMON, "lr_decay": _checks.nonnegative,
              "initial_accumulator_value": _checks.nonnegative}

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
