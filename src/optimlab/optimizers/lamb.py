"""LAMB (You et al. 2020)."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks
from .adam import bias_corrections


@rule(state={"m": "exp_avg", "v": "exp_avg_sq"}, scalars=bias_corrections)
def lamb(h, θ, g, m, v):
    """LAMB (You et al. 2020, Alg. 2): AdamW's direction, rescaled per tensor to ‖θ‖/‖update‖."""
    m = h.beta1 * m + (1 - h.beta1) * g
    v = h.beta2 * v + (1 - h.beta2) * g * g
    u = (m / h.bc1) / (torch.sqrt(v / h.bc2) + h.eps) + h.weight_decay * θ  # AdamW's update
    θ_norm, u_norm = torch.linalg.vector_norm(θ), torch.linalg.vector_norm(u)
    trust = torch.where((θ_norm > 0) & (u_norm > 0), θ_norm / u_norm, 1.0)  # φ(‖θ‖)/‖u‖, φ = identity
    θ = θ - h.lr * trust * u  # every tensor moves by lr × its own norm
    return θ, m, v


class LAMB(RuleOptimizer):
    """LAMB with the paper's ε = 1e-6. Exclude biases and norms from decay with parameter groups."""

    rule = lamb
    checks = {**_checks.COMMON, "betas": _checks.betas}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 bias_correction=True, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
