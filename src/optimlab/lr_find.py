"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", §3.3).

Train for a few updates while the learning rate grows exponentially, watch the loss, and read a good
learning rate off the curve. The model and the optimizer are put back exactly as they were.

    from optimlab.lr_find import lr_find
    result = lr_find(optimlab.tasks.get("digits").build(seed=0), "adamw")
    result.suggestions      # {'steepest': ..., 'valley': ..., 'minimum/10': ...}
    result.plot("/tmp/lr.png")

Any torch optimizer works: every parameter group's lr is set by the same ramp factor, so groups keep
their ratios (a backbone at lr/10 stays at a tenth of the head's lr).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import sys
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

RULES = {
    "steepest": "where the smoothed loss falls fastest per unit of log lr",
    "valley": "middle point of the longest decreasing subsequence of the smoothed loss",
    "minimum/10": "lr of the lowest smoothed loss, divided by 10",
}


@dataclasses.dataclass(frozen=True)
class Suggestion:
    name: str
    lr: float
    index: int  # the point of the curve the rule picked (for minimum/10: the minimum)
    loss: float  # smoothed loss at that point


@dataclasses.dataclass
class LRFind:
    """A range test's curve and what it suggests. `lrs` are the first parameter group's rates."""

    lrs: list[float]
    losses: list[float]  # raw minibatch losses
    smoothed: list[float]  # bias-corrected exponential moving average of `losses`
    stop: str  # "diverged", "non-finite" or "completed"
    picks: dict[str, Suggestion]

    @property
    def suggestions(self) -> dict[str, float]:
        return {name: s.lr for name, s in self.picks.items()}

    def table(self) -> str:
        rows = [f"{'suggestion':<11} {'lr':>9}  {'loss there':>10}  rule"]
        for s in self.picks.values():
            rows.append(f"{s.name:<11} {s.lr:>9.3g}  {s.loss:>10.4g}  {RULES[s.name]}")
        return "\n".join(rows)

    def plot(self, path=None, ax=None):
        """Loss against lr (log axis), suggestions marked. Writes `path` when given; returns the figure."""
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

        fig = ax.figure if ax is not None else Figure(figsize=(7, 4.2), layout="constrained")
        ax = ax if ax is not None else fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="minibatch loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=2, label="smoothed")
        for (name, s), color in zip(self.picks.items(), ("C3", "C2", "C1")):
            ax.axvline(s.lr, color=color, ls="--", lw=1.2, label=f"{name}: {s.lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        finite = [v for v in (*self.losses, *self.smoothed) if math.isfinite(v)]
        if finite:  # keep the divergence spike from flattening the interesting part
            low, first = min(finite), self.smoothed[0]
            span = max(first - low, 1e-3 * abs(first) + 1e-12)
            ax.set_ylim(low - 0.05 * span, first + 0.3 * span)
        ax.set_title(f"LR range test ({self.stop} after {len(self.lrs)} updates)")
        ax.legend(fontsize=8)
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def lr_find(target, optimizer="adamw", loss: Callable[[int], Tensor] | None = None, *,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, smoothing: float = 0.05,
            diverge: float = 4.0, progress: bool = False) -> LRFind:
    """Run the range test and restore everything it touched.

    target: an `nn.Module`, or an `optimlab.tasks` Problem (which brings its model and its loss).
    optimizer: a torch optimizer over the model's parameters, or an optimlab name or text such as
        "sgd:momentum=0.9" (created on the model's parameters; its lr is replaced by the ramp).
    loss: loss(step) -> scalar tensor, the forward pass on update `step`'s minibatch (see `batch_loss`).
    The lr goes from start_lr to end_lr geometrically over `steps` updates; the test stops early when the
    smoothed loss exceeds `diverge` × its best, or a loss is not finite. `smoothing` is the weight of each
    new loss in the moving average (torch-lr-finder's 0.05; fastai's β = 0.98 is 0.02).
    progress: a progress bar on stderr (needs tqdm, from the lab extra).
    """
    model, loss = _model_and_loss(target, loss)
    check_ramp(start_lr, end_lr, steps, smoothing, diverge)
    if isinstance(optimizer, str):
        import optimlab

        check_optimizer(optimizer)
        optimizer = optimlab.create(optimizer, model.parameters())
    with _Restored(model, optimizer):
        lrs, losses, smoothed, stop = _ramp(model, optimizer, loss, start_lr, end_lr, steps, smoothing,
                                            diverge, progress)
    return LRFind(lrs, losses, smoothed, stop, suggest(lrs, smoothed))


def batch_loss(model: torch.nn.Module, batches: Iterable, criterion: Callable) -> Callable[[int], Tensor]:
    """A `loss(step)` from (inputs, targets) batches, e.g. a DataLoader, cycled when exhausted."""
    stream = itertools.cycle(batches) if isinstance(batches, (list, tuple)) else _repeat(batches)

    def loss(step: int) -> torch.Tensor:
        inputs, targets = next(stream)
        return criterion(model(inputs), targets)

    return loss


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, Suggestion]:
    """The three readings of a curve. Steepest and valley look only at the descent, up to the lowest
    smoothed loss: past it, a loss falling back from a spike is no advice."""
    n = next((i for i, v in enumerate(smoothed) if not math.isfinite(v)), len(smoothed))
    if n < 2:
        raise ValueError("the loss was not finite from the first updates on: start_lr is too large")
    lrs_, curve = np.asarray(lrs[:n]), np.asarray(smoothed[:n])
    low = int(np.argmin(curve))
    descent = curve[:low + 1]
    steep = int(np.argmin(np.gradient(descent, np.log10(lrs_[:low + 1])))) if low >= 1 else 0
    valley = _valley(descent)
    return {"steepest": Suggestion("steepest", float(lrs_[steep]), steep, float(curve[steep])),
            "valley": Suggestion("valley", float(lrs_[valley]), valley, float(curve[valley])),
            "minimum/10": Suggestion("minimum/10", float(lrs_[low]) / 10, low, float(curve[low]))}


def _valley(curve: np.ndarray) -> int:
    """The middle point of the longest decreasing subsequence of the curve.

    A subsequence, not a run, so minibatch noise does not break the valley; its middle point (half the
    falling points before it) sits where the loss falls steadily, which a flat noisy start, contributing
    few points, does not drag earlier. fastai's `valley` reads the same subsequence a little differently.
    """
    length = np.ones(len(curve), dtype=int)
    before = np.full(len(curve), -1)
    for i in range(1, len(curve)):
        higher = np.flatnonzero(curve[:i] > curve[i])  # earlier points it can continue downward from
        if len(higher):
            j = higher[np.argmax(length[higher])]
            length[i], before[i] = length[j] + 1, j
    path = [int(np.argmax(length))]  # ends at the first of the longest
    while before[path[-1]] >= 0:
        path.append(int(before[path[-1]]))
    return path[::-1][len(path) // 2]


def _ramp(model, optimizer, loss, start_lr, end_lr, steps, smoothing, diverge, progress=False):
    ratios = _group_ratios(optimizer)
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    if progress:
        from tqdm import tqdm  # only when a bar is drawn: a core install has no tqdm

        counter = tqdm(range(steps), file=sys.stderr, unit="update", dynamic_ncols=True, leave=False)
    else:
        counter = range(steps)
    for step in counter:
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            _set_lr(group, lr * ratio)
        optimizer.zero_grad()
        value = loss(step)
        value.backward()
        optimizer.step()
        raw = float(value.detach())
        average = (1 - smoothing) * average + smoothing * raw
        smooth = average / (1 - (1 - smoothing) ** (step + 1))  # bias-corrected, as Adam's moments
        lrs.append(lr), losses.append(raw), smoothed.append(smooth)
        if not math.isfinite(smooth):
            return lrs, losses, smoothed, "non-finite"
        if smooth > diverge * best:
            return lrs, losses, smoothed, "diverged"
        best = min(best, smooth)
    return lrs, losses, smoothed, "completed"


def _group_ratios(optimizer) -> list[float]:
    """Each group's lr relative to the first group's, kept fixed along the ramp."""
    base = float(optimizer.param_groups[0]["lr"])
    if base <= 0:
        if all(float(g["lr"]) == 0 for g in optimizer.param_groups):
            return [1.0] * len(optimizer.param_groups)
        raise ValueError("the first parameter group has lr 0: the other groups' ratios to it are undefined")
    return [float(g["lr"]) / base for g in optimizer.param_groups]


def _set_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):  # torch's capturable / fused optimizers may keep a tensor lr
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


class _Restored:
    """Snapshot what the test changes (weights, buffers, grads, optimizer state and groups, train/eval
    modes, torch's RNG) and put it back on exit, also after an error."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        self.weights = copy.deepcopy(self.model.state_dict())
        self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.grads = [(p, None if p.grad is None else p.grad.clone()) for p in self.model.parameters()]
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return self

    def __exit__(self, *exc):
        self.model.load_state_dict(self.weights)  # copies into the same tensors, which the optimizer holds
        self.optimizer.load_state_dict(self.optimizer_state)
        for p, grad in self.grads:
            p.grad = grad
        for m, training in self.modes:
            m.training = training
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        return False


def _model_and_loss(target, loss):
    if isinstance(target, torch.nn.Module):
        if loss is None:
            raise ValueError("lr_find(model, optimizer, loss): give loss(step) -> tensor, e.g. "
                             "batch_loss(model, loader, criterion)")
        return target, loss
    if hasattr(target, "model") and hasattr(target, "loss"):  # an optimlab.tasks Problem
        return target.model, loss or target.loss
    raise ValueError(f"lr_find needs a torch.nn.Module or an optimlab.tasks Problem, "
                     f"got {type(target).__name__}")


MAX_STEPS = 100_000  # a range test needs a few hundred updates; more is a typo, not a test


def check_optimizer(text: str) -> None:
    """ValueError for an unknown optimizer or one that sets lr (the ramp sets it; it would be ignored)."""
    import optimlab

    _, hyper = optimlab.resolve(text)
    if "lr" in hyper:
        raise ValueError(f"{text!r} sets lr, but the range test sets lr itself (from start_lr to end_lr); "
                         "remove lr=")


def check_ramp(start_lr, end_lr, steps, smoothing, diverge) -> None:
    """ValueError for settings the range test cannot run with."""
    if not 0 < start_lr < end_lr < math.inf:
        raise ValueError(f"need 0 < start_lr < end_lr < inf, got start_lr={start_lr}, end_lr={end_lr}")
    if not isinstance(steps, int) or not 3 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 3 to {MAX_STEPS:,}, got {steps!r}")
    if not 0 < smoothing <= 1:
        raise ValueError(f"smoothing must be in (0, 1] (the weight of each new loss), got {smoothing}")
    if not diverge > 1:
        raise ValueError(f"diverge must be > 1 (stop when the smoothed loss exceeds diverge × its best), "
                         f"got {diverge}")


def _repeat(batches: Iterable):
    while True:  # a DataLoader restarts (and reshuffles) on each pass
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batch_loss: no batches (empty, or a one-pass iterator that ran out: "
                             "pass a list or a DataLoader)")
