"""NAdam, as torch.optim.NAdam."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


def momentum_schedule(h, t, carried):
    """Dozat's warming momentum μ_t = β₁(1 − ½·0.96^(tψ)) and the running product of the μ's."""
    mu = h.beta1 * (1 - 0.5 * 0.96 ** (t * h.momentum_decay))
    mu_next = h.beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * h.momentum_decay))
    mu_product = carried["mu_product"] * mu
    return {"mu": mu, "mu_next": mu_next, "mu_product": mu_product, "mu_product_next": mu_product * mu_next,
            "bc2": 1 - h.beta2**t}


@rule(state={"m": "exp_avg", "v": "exp_avg_sq"}, scalars=momentum_schedule, scalar_state={"mu_product": 1.0},
      guards={"decays": "weight_decay"})
def nadam(h, θ, g, m, v):
    """NAdam (Dozat 2016): Adam whose first moment takes Nesterov's look-ahead."""
    if h.decays:
        if h.decoupled_weight_decay:
            θ = θ * (1 - h.lr * h.weight_decay)  # as AdamW
        else:
            g = g + h.weight_decay * θ  # as Adam
    m = h.beta1 * m + (1 - h.beta1) * g
    v = h.beta2 * v + (1 - h.beta2) * g * g
    denom = torch.sqrt(v / h.bc2) + h.eps
    θ = θ - h.lr * (1 - h.mu) / (1 - h.mu_product) * g / denom  # the current gradient's share...
    θ = θ - h.lr * h.mu_next / (1 - h.mu_product_next) * m / denom  # ...and next step's momentum
    return θ, m, v


class NAdam(RuleOptimizer):
    """torch.optim.NAdam's rule and hyperparameters."""

    rule = nadam
    complex_as_real = True
    checks = {**_checks.COMMON, "betas": _checks.betas, "momentum_decay": _checks.nonnegative}

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
