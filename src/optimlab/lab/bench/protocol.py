"""The benchmark's fixed protocol: its tasks, their budgets and held-out targets, and the tuning grid.

Everything here is decided before any optimizer runs and is the same for every optimizer, as in
AlgoPerf (Dahl et al. 2023), DeepOBS (Schneider et al. 2019) and Schmidt et al. (2021):

* a default run: the optimizer's own default hyperparameters, once per seed;
* a tuned run: `budget` trials on the tuning seed (0), a log grid of learning rates around the
  optimizer's default (and weight decay on the tasks where it matters); the trial that reaches the
  target in the fewest steps (ties and misses: the best final held-out metric) is re-run on every seed.
"""

from __future__ import annotations

import dataclasses
import math

from .scoring import reached


@dataclasses.dataclass(frozen=True)
class BenchTask:
    name: str  # a registered task (optimlab.tasks)
    steps: int  # training budget in updates
    eval_every: int  # held-out evaluation period, the resolution of steps-to-target
    metric: str  # the held-out measurement from Problem.evaluate() that the target is about
    goal: str  # 'max' (accuracy) or 'min' (loss)
    target: float
    why: str  # how the target was chosen, written down before the benchmark runs
    options: tuple = ()  # (key, value) pairs for the task's build()
    decay: bool = False  # weight decay is part of the tuning grid here

    def reached(self, value: float) -> bool:
        return reached(value, self.target, self.goal)

    def better(self, a: float, b: float) -> bool:
        """Whether final metric a beats b (non-finite values lose)."""
        if not math.isfinite(b):
            return math.isfinite(a)
        return math.isfinite(a) and (a > b if self.goal == "max" else a < b)

    def scaled(self, fraction: float) -> BenchTask:
        """The same task with `fraction` of the steps (the --quick configuration); the target is unchanged."""
        steps = max(int(self.steps * fraction) // self.eval_every, 2) * self.eval_every
        return dataclasses.replace(self, steps=steps)


TASKS: dict[str, BenchTask] = {t.name: t for t in [
    BenchTask("cancer", steps=300, eval_every=10, metric="val_loss", goal="min", target=0.12,
              why="convex: every optimizer can reach the optimum's held-out log-loss (≈0.06–0.09 by seed); "
              "0.12 is within 2× of it, a clearly fitted but not yet converged model"),
    BenchTask("digits", steps=600, eval_every=30, metric="val_accuracy", goal="max", target=0.95,
              why="a well-trained MLP reaches 96–98% on the 360 held-out digits; 95% is a fitted model, "
              "short of the last per cent that depends on the seed"),
    BenchTask("diabetes", steps=500, eval_every=5, metric="val_loss", goal="min", target=0.62,
              why="held-out mean-squared error of the standardised target; ≈0.5–0.6 is the floor for this "
              "data (R² ≈ 0.4–0.5 in the literature), and 0.62 (R² ≈ 0.38) is a useful fit that a tuned "
              "optimizer reaches before the MLP starts to overfit"),
    BenchTask("mnist1d", steps=600, eval_every=50, metric="val_accuracy", goal="max", target=0.65,
              decay=True,
              why="on MNIST-1D logistic regression reaches ≈32% and an MLP ≈68% (the data set's paper); 65% "
              "on the 1,000 held-out signals within 600 steps means the CNN has learnt shift-tolerant "
              "features, well short of the ≈94% its long training reaches"),
    BenchTask("charlm", steps=240, eval_every=30, metric="val_loss", goal="min", target=2.40,
              options=(("width", 32), ("depth", 1), ("batch_size", 16)),
              why="the text's character (unigram) entropy is 3.25 nats and its in-sample bigram entropy "
              "2.46: below 2.40 on held-out text the model uses more than the previous character, which a "
              "tuned Adam reaches within about 100 steps"),
]}

QUICK_FRACTION = 0.25  # --quick: a quarter of each task's steps
QUICK_BUDGET = 2
QUICK_SEEDS = 1
DEFAULT_BUDGET = 7
DEFAULT_SEEDS = 3

LR_FACTOR = math.sqrt(10)  # the grid's spacing: half a decade


def lr_factors(n: int) -> list[float]:
    """The first n of 1, 10^½, 10^-½, 10^1, 10^-1, …: centred on the default, the larger lr first."""
    out, k = [1.0], 1
    while len(out) < n:
        out += [LR_FACTOR ** k, LR_FACTOR ** -k]
        k += 1
    return out[:n]


def decay_choices(default: float) -> list[float]:
    """The optimizer's default weight decay and one alternative: 10× it, or 1e-4 where the default is 0."""
    return [default, 10 * default] if default > 0 else [0.0, 1e-4]


def trials(defaults: dict, budget: int, decay: bool) -> list[dict]:
    """`budget` hyperparameter settings for the tuning seed; each is a dict of overrides of the defaults.

    Equal budget for every optimizer: always exactly `budget` trials. Without an lr (or a default lr of
    None) nothing can be tuned and the default is tried once: that is its budget's worth.
    """
    if budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    lr = defaults.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        return [{}]
    wds = decay_choices(defaults["weight_decay"]) if decay and "weight_decay" in defaults else [None]
    out = []
    for f in lr_factors(budget):
        for wd in wds:
            setting = {} if f == 1 else {"lr": float(f"{lr * f:.3g}")}  # {}: the default run itself
            if wd is not None and wd != defaults["weight_decay"]:
                setting["weight_decay"] = wd
            out.append(setting)
    return out[:budget]
