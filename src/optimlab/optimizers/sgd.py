"""SGD with heavy-ball or Nesterov momentum, as torch.optim.SGD."""

from __future__ import annotations

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def first_step_undamped(h, t, carried):
    """torch starts the velocity at g itself: no dampening on the first step."""
    return {"damp": 0.0 if t == 1 else h.dampening}


@rule(state={"b": State("momentum_buffer", when="heavy_ball")},
      flags={"heavy_ball": lambda h: h.momentum != 0},
      scalars=first_step_undamped, guards={"decays": "weight_decay"})
def sgd(h, θ, g, b):
    """SGD (Robbins & Monro 1951) with momentum (Polyak 1964) or Nesterov's look-ahead
    (Sutskever et al. 2013)."""
    if h.decays:
        g = g + h.weight_decay * θ  # L2
    if h.heavy_ball:
        b = h.momentum * b + (1 - h.damp) * g  # velocity: b ← μ b + (1 − τ) g
        if h.nesterov:
            g = g + h.momentum * b  # step from where the velocity is about to take us
        else:
            g = b
    θ = θ - h.lr * g
    return θ, b


class SGD(RuleOptimizer):
    """torch.optim.SGD's rule and hyperparameters."""

    rule = sgd
    complex_as_real = True
    sparse_gradients = "dense"  # untouched entries keep moving with their momentum, as torch's
    checks = {"lr": _checks.nonnegative, "momentum": _checks.nonnegative, "dampening": _checks.nonnegative,
              "weight_decay": _checks.nonnegative}

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, path="auto"):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, path, **hyperparameters(locals()))
