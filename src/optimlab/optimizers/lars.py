"""LARS (You, Gitman & Ginsburg 2017): momentum SGD with a per-layer lr η‖w‖/(‖g‖ + β‖w‖)."""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


@rule(state={"v": "momentum_buffer"})
def lars(h, w, g, v):
    """LARS (You et al. 2017, Alg. 1 with eq. 6's trust coefficient η); β is the weight decay."""
    if h.layer_adaptation:
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        local_lr = h.trust_coefficient * w_norm / (g_norm + h.weight_decay * w_norm)  # λˡ = η‖w‖/(‖g‖ + β‖w‖)
        local_lr = torch.where((w_norm > 0) & (g_norm > 0), local_lr, 1.0)  # a zero norm: no trust ratio
    else:
        local_lr = 1.0  # excluded (biases, norms): plain momentum SGD
    v = h.momentum * v + h.lr * local_lr * (g + h.weight_decay * w)  # the buffer holds the lr, as the paper's
    w = w - v
    return w, v


class LARS(RuleOptimizer):
    """LARS with the paper's η = 0.001, momentum 0.9 and weight decay 5e-4. Exclude biases and norms
    with parameter groups: `param_groups.build(model, lr, weight_decay,
    no_decay_settings={"layer_adaptation": False})` gives them neither decay nor a trust ratio."""

    rule = lars
    checks = {"lr": _checks.nonnegative, "weight_decay": _checks.nonnegative, "momentum": _checks.fraction,
              "trust_coefficient": _checks.positive}

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=5e-4, trust_coefficient=1e-3, *,
                 layer_adaptation=True, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
