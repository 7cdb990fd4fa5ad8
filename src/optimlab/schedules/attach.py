"""`attach(optimizer, schedule)`: drive any torch optimizer's lr with a schedule, as a torch LRScheduler.

    sched = attach(opt, warmup_cosine(total_steps=10_000, warmup_steps=500))
    for batch in data:
        loss(batch).backward(); opt.step(); opt.zero_grad()
        sched.step()                      # once per optimizer update

After k calls of `sched.step()` each group's lr is `base_lr * schedule(k)`: the lr of update k+1.
`base_lr` is the group's lr when the scheduler was attached (torch's `initial_lr`), so groups keep
their ratios (layer decay, a 10x head). The scheduler's `state_dict()` holds only numbers and the
schedule's description, so it loads with `torch.load(weights_only=True)`, and `load_state_dict`
puts every group back on the lr of the saved position.
"""

from __future__ import annotations

import warnings

import torch
from torch.optim.lr_scheduler import LRScheduler

from .base import Schedule, check_step


def _momentum_key(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    raise ValueError(f"{type(optimizer).__name__} has neither 'momentum' nor 'betas' in its param groups, "
                     "so it has no momentum to schedule")


class ScheduledLR(LRScheduler):
    """A torch LRScheduler whose lr is `base_lr * schedule(t)`, t = optimizer updates taken.

    `momentum`, if given, is a schedule of momentum values (e.g. `one_cycle_momentum`) written into
    each group's `momentum`, or `betas[0]` for Adam-like optimizers, at every step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, momentum: Schedule | None = None,
                 last_epoch: int = -1):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"attach needs an optimlab Schedule (see optimlab.schedules.available()), "
                             f"got {schedule!r}")
        if schedule.absolute:
            raise ValueError(f"{schedule.name} gives momentum values, not lr multipliers: "
                             "pass it as momentum=..., with an lr schedule first")
        if momentum is not None and not isinstance(momentum, Schedule):
            raise ValueError(f"momentum must be an optimlab Schedule of momentum values, got {momentum!r}")
        self.schedule, self.momentum = schedule, momentum
        self._momentum_key = _momentum_key(optimizer) if momentum is not None else None
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        t = check_step(self.last_epoch)
        if self.momentum is not None:
            beta = self.momentum(t)
            for group in self.optimizer.param_groups:
                if self._momentum_key == "betas":
                    group["betas"] = (beta, *group["betas"][1:])
                else:
                    group["momentum"] = beta
        m = self.schedule(t)
        return [base * m for base in self.base_lrs]

    _get_closed_form_lr = get_lr  # the schedule is closed-form: step(epoch) lands exactly

    def state_dict(self) -> dict:
        """Position and base lrs as plain numbers, and the schedules' descriptions (no pickled code)."""
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr),
                "schedule": self.schedule.describe(),
                "momentum": None if self.momentum is None else self.momentum.describe()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position and base lrs, and set every group's lr (and momentum) for that position.

        The attached schedule is kept; if the checkpoint was made with a different one, a warning
        names both (extending a WSD run on purpose is fine; a typo is not).
        """
        state = dict(state_dict)
        for key, mine in (("schedule", self.schedule), ("momentum", self.momentum)):
            saved = state.pop(key, None)
            now = None if mine is None else mine.describe()
            if saved is not None and saved != now:
                warnings.warn(f"resuming with {key} {now} but the checkpoint was saved with {saved}",
                              stacklevel=2)
        if len(state.get("base_lrs", [])) != len(self.optimizer.param_groups):
            raise ValueError(f"the checkpoint has {len(state.get('base_lrs', []))} param groups' base lrs, "
                             f"the optimizer has {len(self.optimizer.param_groups)} groups")
        self.__dict__.update(state)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def attach(optimizer: torch.optim.Optimizer, schedule: Schedule,
           momentum: Schedule | None = None) -> ScheduledLR:
    """Drive `optimizer`'s lr (all groups, keeping their ratios) with `schedule`; call `.step()` once per
    optimizer update. Works with optimlab's and torch's optimizers. See `ScheduledLR`."""
    return ScheduledLR(optimizer, schedule, momentum)

