"""Adam, AdamW and AMSGrad: one rule; each variant is a flag that changes a line or two."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def bias_corrections(h, t, carried):
    """1 − βᵗ undoes the pull toward zero of moments that start at zero (Kingma & Ba 2015, §3)."""
    if not h.bias_correction:
        return {"bc1": 1.0, "bc2": 1.0}
    return {"bc1": 1 - h.beta1**t, "bc2": 1 - h.beta2**t}


@rule(state={"m": "exp_avg", "v": "exp_avg_sq", "v_max": State("max_exp_avg_sq", when="amsgrad")},
      scalars=bias_corrections, guards={"decays": "weight_decay"})
def adam(h, θ, g, m, v, v_max):
    """Adam (Kingma & Ba 2015, Alg. 1), AdamW (Loshchilov & Hutter 2019, Alg. 2),
    AMSGrad (Reddi et al. 2018)."""
    if h.decays:
        if h.decoupled_weight_decay:
            θ = θ * (1 - h.lr * h.weight_decay)  # AdamW: shrink θ itself, at the same rate everywhere
        else:
            g = g + h.weight_decay * θ  # Adam: L2 joins the gradient, so it too gets divided by √v̂
    m = h.beta1 * m + (1 - h.beta1) * g  # first moment: EMA of g
    v = h.beta2 * v + (1 - h.beta2) * g * g  # second moment: EMA of g²
    m_hat = m / h.bc1
    v_hat = v / h.bc2
    if h.amsgrad:
        v_max = torch.maximum(v_max, v)  # AMSGrad: keep the largest v (before correction, as torch)
        v_hat = v_max / h.bc2  # and divide by it, so the step size never grows back
    θ = θ - h.lr * m_hat / (torch.sqrt(v_hat) + h.eps)
    return θ, m, v, v_max


class Adam(RuleOptimizer):
    """Adam with torch's hyperparameters; `weight_decay` is coupled L2 unless `decoupled_weight_decay`.

    `bias_correction=False` removes the 1 − βᵗ corrections (for the lab's ablations).
    """

    rule = adam
    complex_as_real = True
    foreach_refuses_tensors = True
    checks = {**_checks.COMMON, "betas": _checks.betas}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, bias_correction=True, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))


class AdamW(RuleOptimizer):
    """Adam with decoupled weight decay: θ ← θ(1 − ηλ) − η m̂/(√v̂ + ε). Torch's defaults (λ = 0.01)."""

    rule = adam
    complex_as_real = True
    foreach_refuses_tensors = True
    checks = Adam.checks
    fixed = {"decoupled_weight_decay": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, bias_correction=True, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
