"""RAdam, as torch.optim.RAdam."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


def rectification(h, t, carried):
    """ρ_t, the length of the approximated SMA, and the rectifier r_t (Liu et al. 2020, Alg. 2)."""
    rho_inf = 2 / (1 - h.beta2) - 1
    bc2 = 1 - h.beta2**t
    rho_t = rho_inf - 2 * t * h.beta2**t / bc2
    rectified = rho_t > 5
    r = ((rho_t - 4) * (rho_t - 2) * rho_inf
         / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 0.0
    return {"bc1": 1 - h.beta1**t, "sqrt_bc2": bc2**0.5, "rectified": rectified, "r": r}


@rule(state={"m": "exp_avg", "v": "exp_avg_sq"}, scalars=rectification, guards={"decays": "weight_decay"})
def radam(h, θ, g, m, v):
    """RAdam (Liu et al. 2020): use the adaptive lr only once its variance is tractable."""
    if h.decays:
        if h.decoupled_weight_decay:
            θ = θ * (1 - h.lr * h.weight_decay)
        else:
            g = g + h.weight_decay * θ
    m = h.beta1 * m + (1 - h.beta1) * g
    v = h.beta2 * v + (1 - h.beta2) * g * g
    m_hat = m / h.bc1
    if h.rectified:
        l = h.sqrt_bc2 / (torch.sqrt(v) + h.eps)  # adaptive lr l_t (ε inside, as torch)
        θ = θ - h.lr * h.r * m_hat * l
    else:
        θ = θ - h.lr * m_hat  # the first steps: momentum SGD, no adaptive lr yet
    return θ, m, v


class RAdam(RuleOptimizer):
    """torch.optim.RAdam's rule and hyperparameters."""

    rule = radam
    complex_as_real = True
    checks = {**_checks.COMMON, "betas": _checks.betas}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
