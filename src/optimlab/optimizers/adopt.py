"""ADOPT (Taniguchi et al. 2024): Adam that normalises g_t by the second moment *before* g_t enters it."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


def clip_schedule(h, t, carried):
    """Update 1 only records v₀ = g₀²; update t ≥ 2 may clip the normalised gradient at (t − 1)^p."""
    initializing = t == 1
    clip = float(t - 1) ** h.clip_exponent if h.clipped and not initializing else 0.0
    return {"initializing": initializing, "clip": clip}


@rule(state={"m": "exp_avg", "v": "exp_avg_sq"}, scalars=clip_schedule,
      flags={"clipped": lambda h: h.clip_exponent is not None})
def adopt(h, θ, g, m, v):
    """ADOPT (Taniguchi et al. 2024, Alg. 1; the clipped variant of its revised version)."""
    if not h.decoupled_weight_decay:
        g = g + h.weight_decay * θ  # L2 joins the gradient (the official code's default)
    if h.initializing:
        v = g * g  # t = 0: v₀ = g₀², and θ does not move
        return θ, m, v
    if h.decoupled_weight_decay:
        θ = θ * (1 - h.lr * h.weight_decay)  # AdamW-style: shrink θ itself
    u = g / torch.clamp(torch.sqrt(v), h.eps)  # normalise by v_{t−1}: it does not contain g_t
    if h.clipped:
        u = torch.clamp(u, -h.clip, h.clip)  # clip at t^p so early near-zero v cannot blow up
    m = h.beta1 * m + (1 - h.beta1) * u  # momentum of the *normalised* gradient
    θ = θ - h.lr * m
    v = h.beta2 * v + (1 - h.beta2) * g * g  # only now does g_t enter the second moment
    return θ, m, v


def _clip_exponent(v):
    ok = v is None or _checks.nonnegative(v) is None
    return None if ok else "must be None (no clipping) or a number ≥ 0"


class ADOPT(RuleOptimizer):
    """ADOPT with the official code's defaults: β = (0.9, 0.9999), ε = 1e-6, clipping at t^0.25
    (`clip_exponent=None` is the unclipped Algorithm 1), coupled L2 decay unless
    `decoupled_weight_decay`."""

    rule = adopt
    checks = {**_checks.COMMON, "betas": _checks.betas, "clip_exponent": _clip_exponent}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0,
                 clip_exponent=0.25, *, decoupled_weight_decay=False, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
