"""Lion (Chen et al. 2023)."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


@rule(state={"m": "exp_avg"})
def lion(h, θ, g, m):
    """Lion (Chen et al. 2023, Program 1): the sign of an interpolation; one state buffer."""
    c = h.beta1 * m + (1 - h.beta1) * g  # interpolate momentum and gradient...
    θ = θ - h.lr * (torch.sign(c) + h.weight_decay * θ)  # ...and step by the sign: ±η per coordinate
    m = h.beta2 * m + (1 - h.beta2) * g  # the momentum tracks g with the slower β₂
    return θ, m


class Lion(RuleOptimizer):
    """Lion with the paper's defaults. Its update has norm η√n, so use a 3–10× smaller lr than AdamW
    and a correspondingly larger weight decay (Chen et al. 2023, §5)."""

    rule = lion
    checks = {"lr": _checks.nonnegative, "weight_decay": _checks.nonnegative, "betas": _checks.betas}

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
