"""Schedule-free AdamW and SGD (Defazio et al. 2024): no lr schedule; average the iterates instead.

Three sequences: z takes the base optimizer's steps, x is a weighted average of the z's (what you
evaluate), and y = (1 − β)z + βx is where gradients are taken (what you train). The parameters hold y
in train mode and x in eval mode; `train()` and `eval()` switch between them, as in the official
`schedulefree` package, whose hyperparameter names and defaults these classes take.
"""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def averaging_weights(h, t, carried):
    """Warmup, and the weight c_{t+1} = w_t / Σw of the newest z in the average x (Defazio et al., §4)."""
    lr = h.lr * min(1.0, t / h.warmup_steps) if h.warmup_steps else h.lr  # linear warmup
    lr_max = max(lr, carried["lr_max"])
    weight = t**h.r * lr_max**h.weight_lr_power  # w_t = t^r · (max lr so far)^p
    weight_sum = carried["weight_sum"] + weight
    c = weight / weight_sum if weight_sum else 0.0
    out = {"lr_t": lr, "c": c, "lr_max": lr_max, "weight_sum": weight_sum}
    if hasattr(h, "beta2"):
        out["bc2"] = 1 - h.beta2**t
    return out


# z starts at the initial point: x₁ = y₁ = z₁ = θ₁
Z = State("z", init=lambda θ, h: θ.clone(memory_format=torch.contiguous_format))
CARRIED = {"weight_sum": 0.0, "lr_max": -1.0}


@rule(state={"z": Z, "v": "exp_avg_sq"}, scalars=averaging_weights, scalar_state=CARRIED)
def schedulefree_adamw(h, y, g, z, v):
    """Schedule-free AdamW (Defazio et al. 2024, Alg. 1, as the official package): θ holds y."""
    v = h.beta2 * v + (1 - h.beta2) * g * g  # Adam's second moment, bias-corrected below
    u = g / (torch.sqrt(v / h.bc2) + h.eps) + h.weight_decay * y  # Adam's direction; decay taken at y
    # z ← z − γu; x ← (1 − c)x + cz; y ← (1 − β₁)z + β₁x, written in y and z alone:
    y = y + h.c * (z - y) - h.lr_t * (1 - h.beta1 * (1 - h.c)) * u
    z = z - h.lr_t * u
    return y, z, v


@rule(state={"z": Z}, scalars=averaging_weights, scalar_state=CARRIED)
def schedulefree_sgd(h, y, g, z):
    """Schedule-free SGD (Defazio et al. 2024, Alg. 1 with the SGD step, as the official package)."""
    u = g + h.weight_decay * y  # decay taken at y
    y = y + h.c * (z - y) - h.lr_t * (1 - h.momentum * (1 - h.c)) * u  # as in schedulefree_adamw
    z = z - h.lr_t * u
    return y, z


class _ScheduleFree(RuleOptimizer):
    """train()/eval() switching and the checkpoint safety the two share."""

    def __init__(self, params, path, **hyper):
        super().__init__(params, path, **hyper, train_mode=True)  # a group key, so state_dict records it

    def _interpolation(self, group) -> float:
        return group["betas"][0] if "betas" in group else group["momentum"]

    @torch.no_grad()
    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            β = self._interpolation(group)
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:  # y = (1 − β)z + βx  ⇔  x = y + (1 − 1/β)(z − y)
                    p.lerp_(z.to(p.device), 1 - β if train else 1 - 1 / β)
            group["train_mode"] = train

    def train(self, mode: bool = True):
        """Parameters hold y, where gradients are taken. Call before training (and after `eval()`)."""
        self._switch(bool(mode))
        return self

    def eval(self):
        """Parameters hold x, the averaged iterate: evaluate, checkpoint for inference, or export."""
        self._switch(False)
        return self

    @property
    def training(self) -> bool:
        return all(group["train_mode"] for group in self.param_groups)

    def step(self, closure=None):
        if not self.training:
            raise RuntimeError(f"{type(self).__name__}.step() in eval mode: the parameters hold the "
                               "average x, not y; call optimizer.train() before training (and "
                               "optimizer.eval() before evaluating)")
        return super().step(closure)

    def load_state_dict(self, state_dict: dict) -> None:
        modes = {group.get("train_mode") for group in state_dict["param_groups"]}
        if None in modes or len(modes) != 1:
            raise ValueError(f"{type(self).__name__}: the checkpoint does not record one train/eval mode "
                             "for all groups, so its parameters cannot be told apart as y or x; save it "
                             "with this optimizer's state_dict()")
        # The checkpoint's mode is the mode of the parameters saved with it: adopt it, so the next
        # train()/eval() converts them correctly instead of treating an x as a y.
        super().load_state_dict(state_dict)


def _interpolation_check(v):
    ok = _checks.fraction(v) is None and v > 0
    return None if ok else "must be in (0, 1): x is recovered by dividing by it"


def _betas(v):
    problem = _checks.betas(v)
    return problem or (None if v[0] > 0 else "must have β₁ in (0, 1): x is recovered by dividing by β₁")


def _warmup(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return None if ok else "must be an integer ≥ 0"


CHECKS = {"lr": _checks.nonnegative, "weight_decay": _checks.nonnegative, "warmup_steps": _warmup,
          "r": _checks.nonnegative, "weight_lr_power": _checks.nonnegative}


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW with the official package's defaults (lr 0.0025, no schedule needed).

    Use `optimizer.train()` / `optimizer.eval()` around training and evaluation; `step()` in eval mode
    raises. The mode is part of `state_dict()`.
    """

    rule = schedulefree_adamw
    checks = {**CHECKS, "eps": _checks.nonnegative, "betas": _betas}

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0,
                 r=0.0, weight_lr_power=2.0, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD with the official package's defaults (lr 1.0, momentum 0.9)."""

    rule = schedulefree_sgd
    checks = {**CHECKS, "momentum": _interpolation_check}

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))


@torch.no_grad()
def recompute_batchnorm_statistics(model: torch.nn.Module, optimizer: _ScheduleFree, batches,
                                   forward=None) -> int:
    """Re-estimate BatchNorm running statistics at x, the point the model is evaluated at.

    During training BatchNorm layers average their statistics at y; evaluated at x they are stale.
    This puts the optimizer in eval mode (parameters = x), resets every BatchNorm layer, runs the model
    in train mode over `batches` (`forward(model, batch)`, default `model(batch)`) with a cumulative
    average, and leaves the model in eval mode. Returns the number of batches used. Call
    `optimizer.train()` and `model.train()` before training on.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    optimizer.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative moving average: every batch counts equally
    model.train()
    count = 0
    for batch in batches:
        forward(model, batch) if forward is not None else model(batch)
        count += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return count
