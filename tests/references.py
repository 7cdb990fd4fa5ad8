"""Plain float64 transcriptions of papers' pseudo-code: the references for rules torch lacks.

Deliberately naive: Python floats, one element at a time, no torch, no optimlab. Each `*_step`
updates lists of floats in place; `state` is a dict the function fills on its first call.
"""

from __future__ import annotations

import math


def lion_step(θ: list[float], g: list[float], state: dict, lr: float, betas: tuple,
              weight_decay: float) -> None:
    """Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms", Program 1 / Algorithm 2."""
    β1, β2 = betas
    m = state.setdefault("m", [0.0] * len(θ))
    for i in range(len(θ)):
        c = β1 * m[i] + (1 - β1) * g[i]  # interpolation
        sign = 1.0 if c > 0 else -1.0 if c < 0 else 0.0
        θ[i] = θ[i] - lr * (sign + weight_decay * θ[i])  # decoupled decay uses θ before the update
        m[i] = β2 * m[i] + (1 - β2) * g[i]


def lamb_step(θ: list[float], g: list[float], state: dict, lr: float, betas: tuple, eps: float,
              weight_decay: float, bias_correction: bool = True) -> None:
    """You et al. (2020), "Large Batch Optimization for Deep Learning", Algorithm 2, φ = identity,
    trust ratio 1 when either norm is zero."""
    β1, β2 = betas
    m = state.setdefault("m", [0.0] * len(θ))
    v = state.setdefault("v", [0.0] * len(θ))
    t = state["t"] = state.get("t", 0) + 1
    bc1, bc2 = (1 - β1**t, 1 - β2**t) if bias_correction else (1.0, 1.0)
    r = []
    for i in range(len(θ)):
        m[i] = β1 * m[i] + (1 - β1) * g[i]
        v[i] = β2 * v[i] + (1 - β2) * g[i] * g[i]
        r.append((m[i] / bc1) / (math.sqrt(v[i] / bc2) + eps) + weight_decay * θ[i])
    θ_norm = math.sqrt(sum(x * x for x in θ))
    r_norm = math.sqrt(sum(x * x for x in r))
    trust = θ_norm / r_norm if θ_norm > 0 and r_norm > 0 else 1.0
    for i in range(len(θ)):
        θ[i] -= lr * trust * r[i]


def adam_without_bias_correction_step(θ: list[float], g: list[float], state: dict, lr: float, betas: tuple,
                                      eps: float, weight_decay: float) -> None:
    """Kingma & Ba (2015), Algorithm 1 with the bias-correction lines removed (coupled L2 decay)."""
    β1, β2 = betas
    m = state.setdefault("m", [0.0] * len(θ))
    v = state.setdefault("v", [0.0] * len(θ))
    for i in range(len(θ)):
        gi = g[i] + weight_decay * θ[i]
        m[i] = β1 * m[i] + (1 - β1) * gi
        v[i] = β2 * v[i] + (1 - β2) * gi * gi
        θ[i] -= lr * m[i] / (math.sqrt(v[i]) + eps)
