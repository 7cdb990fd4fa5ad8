"""Plain float64 transcriptions of ADOPT, LARS and Sophia, as tests/references.py does for older rules.

Deliberately naive: Python floats, one element at a time, no torch, no optimlab. Each `*_step`
updates a list of floats in place; `state` is a dict the function fills on its first call.
"""

from __future__ import annotations

import math


def adopt_step(θ: list[float], g: list[float], state: dict, lr: float, betas: tuple, eps: float,
               weight_decay: float, clip_exponent: float | None, decoupled_weight_decay: bool) -> None:
    """Taniguchi et al. (2024), "ADOPT: Modified Adam Can Converge with Any β₂ with the Optimal Rate",
    Algorithm 1; with clipping, the revised version's Clip(g / max(√v, ε), t^p) (p = 1/4 in the paper),
    t counting the updates after the initial one. Weight decay as the official code: L2 added to the
    gradient, or θ ← θ − lr·λ·θ on updates."""
    β1, β2 = betas
    t = state["t"] = state.get("t", -1) + 1  # t = 0 is the initialisation
    g = [gi + weight_decay * θi for gi, θi in zip(g, θ)] if not decoupled_weight_decay else list(g)
    if t == 0:
        state["v"] = [gi * gi for gi in g]
        state["m"] = [0.0] * len(θ)
        return
    m, v = state["m"], state["v"]
    for i in range(len(θ)):
        if decoupled_weight_decay:
            θ[i] -= lr * weight_decay * θ[i]
        u = g[i] / max(math.sqrt(v[i]), eps)
        if clip_exponent is not None:
            c = t**clip_exponent
            u = min(max(u, -c), c)
        m[i] = β1 * m[i] + (1 - β1) * u
        θ[i] -= lr * m[i]
        v[i] = β2 * v[i] + (1 - β2) * g[i] * g[i]


def lars_step(w: list[float], g: list[float], state: dict, lr: float, momentum: float, weight_decay: float,
              trust_coefficient: float, layer_adaptation: bool = True) -> None:
    """You, Gitman & Ginsburg (2017), "Large Batch Training of Convolutional Networks", Algorithm 1 with
    the local lr of eq. (6), λ = η‖w‖/(‖∇L(w)‖ + β‖w‖); λ = 1 when a norm is zero or for excluded layers."""
    v = state.setdefault("v", [0.0] * len(w))
    w_norm = math.sqrt(sum(x * x for x in w))
    g_norm = math.sqrt(sum(x * x for x in g))
    local = 1.0
    if layer_adaptation and w_norm > 0 and g_norm > 0:
        local = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm)
    for i in range(len(w)):
        v[i] = momentum * v[i] + lr * local * (g[i] + weight_decay * w[i])
        w[i] -= v[i]


def sophia_step(θ: list[float], g: list[float], ĥ: list[float] | None, state: dict, lr: float, betas: tuple,
                gamma: float, eps: float, weight_decay: float) -> None:
    """Liu et al. (2023), "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training", Algorithm 3: ĥ is the estimate made at this step (t ≡ 1 mod k) or None."""
    β1, β2 = betas
    m = state.setdefault("m", [0.0] * len(θ))
    h = state.setdefault("h", [0.0] * len(θ))
    for i in range(len(θ)):
        m[i] = β1 * m[i] + (1 - β1) * g[i]
        if ĥ is not None:
            h[i] = β2 * h[i] + (1 - β2) * ĥ[i]
        θ[i] -= lr * weight_decay * θ[i]
        ratio = m[i] / max(gamma * h[i], eps)
        θ[i] -= lr * min(max(ratio, -1.0), 1.0)
