"""The from-scratch NumPy Adam of the lesson on Adam, SGD and RMSProp, on f(x, y) = x² + 10y² from (5, 2),
lr 0.1, 50 steps, with its printed table; and that class (its clipping, its order of decay and update)
against optimlab's AdamW in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

import optimlab
from optimlab.gradients import clip_grad_norm_

from .core import Check, Example, bounded, confirmed, depends, fmt, refuted

START = (5.0, 2.0)
LR = 0.1
STEPS = 50
PRINT_EVERY = 10
DECAY = 0.1  # a weight decay for the comparison (the lesson's run has none)
CLIP = 1.0  # a max_grad_norm for the comparison (the lesson's run has none)


class LessonAdam:
    """The lesson's class, re-typed: global-norm clipping with a 1e-12 guard, bias-corrected Adam, then
    weight decay of the *updated* parameters (p -= lr·λ·p after the Adam step), in place on NumPy arrays."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 max_grad_norm=None):
        self.params, self.lr, self.beta1, self.beta2, self.eps = params, lr, beta1, beta2, eps
        self.weight_decay, self.max_grad_norm, self.t = weight_decay, max_grad_norm, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def clip_grad_norm(self, grads):
        if self.max_grad_norm is None:
            return grads
        total = np.sqrt(sum(np.sum(g ** 2) for g in grads))
        if total > self.max_grad_norm:
            grads = [g * (self.max_grad_norm / (total + 1e-12)) for g in grads]
        return grads

    def step(self, grads) -> None:
        self.t += 1
        grads = self.clip_grad_norm(grads)
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * g
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * g ** 2
            p -= self.lr * (self.m[i] / bc1) / (np.sqrt(self.v[i] / bc2) + self.eps)
            if self.weight_decay > 0:
                p -= self.lr * self.weight_decay * p


def gradient(x, y):
    return 2 * x, 20 * y  # of x² + 10y²


def lesson_run(steps=STEPS, **options) -> tuple[list[tuple[int, float, float, float]], np.ndarray]:
    """train_with_numpy_adam(): the printed rows (step, x, y, loss) and every position after each step.
    As in the lesson, x and y are read after `step()` has moved them in place; the loss before."""
    params = [np.array([START[0]]), np.array([START[1]])]
    opt = LessonAdam(params, lr=LR, **options)
    rows, path = [], []
    for step in range(steps):
        x, y = params
        loss = (x ** 2 + 10 * y ** 2).item()
        opt.step(list(gradient(x, y)))
        if step % PRINT_EVERY == 0:
            rows.append((step, x.item(), y.item(), loss))
        path.append([x.item(), y.item()])
    return rows, np.array(path)


def library_run(make, steps=STEPS, clip=None) -> np.ndarray:
    """The same problem with a torch optimizer in float64 (one tensor per coordinate, as the lesson has)."""
    params = [torch.tensor([START[0]], dtype=torch.float64, requires_grad=True),
              torch.tensor([START[1]], dtype=torch.float64, requires_grad=True)]
    opt = make(params)
    path = []
    for _ in range(steps):
        x, y = params
        for p, g in zip(params, gradient(x.detach(), y.detach())):
            p.grad = g.clone()
        if clip is not None:
            clip_grad_norm_(params, max_norm=clip)
        opt.step()
        path.append([x.item(), y.item()])
    return np.array(path)


def float_of_one_element_array() -> str:
    """What `float(x)` does here on the lesson's 1-element arrays: 'ok', 'deprecated' or the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            float(np.array([START[0]]))
        except TypeError as err:
            return f"TypeError: {err}"
    return "deprecated" if any(issubclass(w.category, DeprecationWarning) for w in caught) else "ok"


def run() -> tuple[str, list[Check], dict]:
    rows, path = lesson_run()
    lines = [f"{'Step':>5} | {'x':>8} | {'y':>8} | {'loss':>12}"]
    lines += [f"{s:>5} | {x:>8.4f} | {y:>8.4f} | {loss:>12.6f}" for s, x, y, loss in rows]
    fx, fy = path[-1]
    lines += ["", f"Final position: x={fx:.6f}, y={fy:.6f}", "Optimum is (0, 0)"]
    distance = math.hypot(fx, fy) / math.hypot(*START)
    _, long_path = lesson_run(steps=2000)
    within = np.flatnonzero(np.hypot(long_path[:, 0], long_path[:, 1]) <= 0.01 * math.hypot(*START))
    steps_to_1pct = int(within[0]) + 1 if within.size else math.inf
    mismatch = max(abs(loss - (x ** 2 + 10 * y ** 2)) / loss for _, x, y, loss in rows)
    floated = float_of_one_element_array()

    # the class against optimlab's AdamW (and torch's), float64, three settings
    plain = {"optimlab AdamW": library_run(lambda ps: optimlab.AdamW(ps, lr=LR, weight_decay=0.0)),
             "optimlab Adam": library_run(lambda ps: optimlab.Adam(ps, lr=LR)),
             "torch AdamW": library_run(lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.0))}
    plain_gap = max(float(np.max(np.abs(p - path))) for p in plain.values())
    _, decayed = lesson_run(weight_decay=DECAY)
    decayed_lib = library_run(lambda ps: optimlab.AdamW(ps, lr=LR, weight_decay=DECAY))
    decay_gap = float(np.max(np.abs(decayed - decayed_lib)))
    # one step from the start: the class minus AdamW is exactly lr²·λ·u, u = m̂/(√v̂ + ε) the Adam direction
    g = np.array(gradient(*START))
    u = g / (np.abs(g) + 1e-8)  # m̂ = g, √v̂ = |g| at t = 1
    predicted = LR ** 2 * DECAY * u
    one_step = lesson_run(steps=1, weight_decay=DECAY)[1][0] - library_run(
        lambda ps: optimlab.AdamW(ps, lr=LR, weight_decay=DECAY), steps=1)[0]
    one_step_error = float(np.max(np.abs(one_step - predicted)))
    _, clipped = lesson_run(max_grad_norm=CLIP)
    clipped_lib = library_run(lambda ps: optimlab.AdamW(ps, lr=LR, weight_decay=0.0), clip=CLIP)
    clip_gap = float(np.max(np.abs(clipped - clipped_lib)))

    lines += ["", "The class against optimlab's AdamW, float64, 50 steps (max |Δ(x, y)| on the path):",
              f"  weight_decay=0 (the lesson's run): {fmt(plain_gap)} (also against optimlab Adam and torch "
              "AdamW)",
              f"  weight_decay={DECAY}: {fmt(decay_gap)}; after one step the difference is "
              f"({one_step[0]:.3e}, {one_step[1]:.3e}) = lr²·λ·u to {fmt(one_step_error)}",
              f"  max_grad_norm={CLIP}: {fmt(clip_gap)} (optimlab.gradients.clip_grad_norm_, torch's "
              "formula)"]
    checks = [
        Check("'Demonstrate Adam convergence on a simple quadratic' (50 steps, then 'Optimum is (0, 0)')",
              f"after 50 steps (x, y) = ({fx:.4f}, {fy:.4f}): {100 * distance:.1f} % of the start's distance "
              "from "
              "the optimum; Adam moves about lr = 0.1 per step, so x needs ≥ 50 steps to cross 5; within 1 "
              "% "
              f"after {steps_to_1pct} steps",
              "confirmed if the final distance to (0, 0) is at most 1 % of the start's, refuted above 10 %, "
              "depends between",
              bounded(distance, 0.01, 0.10, "closer than 10 % but not within 1 % after 50 steps")),
        Check("The printed table: one row per step with 'x | y | loss'",
              "x and y are printed after step() has moved them in place, the loss before it: the loss "
              "column "
              f"is up to {100 * mismatch:.0f} % off x² + 10y² of its own row",
              "confirmed if every row's loss equals x² + 10y² of its x and y (to 1e-9 relative), refuted "
              "otherwise",
              confirmed() if mismatch <= 1e-9 else refuted()),
        Check("The code runs as printed (`float(x)` on the 1-element arrays)",
              f"NumPy {np.__version__}: float(np.array([5.0])) → {floated}",
              "confirmed if it returns a float, depends if only with a DeprecationWarning, refuted if it "
              "raises",
              {"ok": confirmed(),
               "deprecated": depends("runs, with a DeprecationWarning, on this NumPy")}.get(floated,
                                                                                             refuted())),
        Check("The class with weight_decay=0 (the lesson's run) is Adam",
              "max |Δ| against optimlab's AdamW(weight_decay=0), optimlab's Adam and torch's AdamW in "
              "float64: "
              f"{fmt(plain_gap)}",
              "confirmed if the paths agree to 1e-12, refuted otherwise", confirmed() if plain_gap <= 1e-12
              else refuted()),
        Check("'Decoupled weight decay (AdamW behavior when weight_decay > 0)'",
              f"λ = {DECAY}: it decays the updated parameters, where the paper's Algorithm 2 (and optimlab, "
              f"and torch) decays θ_(t−1): each step differs by exactly +lr²·λ·u (u the Adam direction; one "
              f"step: matched to {fmt(one_step_error)}); max |Δ| over 50 steps {fmt(decay_gap)}",
              "confirmed if the paths agree with optimlab's AdamW to 1e-12, refuted otherwise",
              confirmed() if decay_gap <= 1e-12 else refuted()),
        Check("'Clip gradient by global L2 norm' (max_grad_norm)",
              f"max_grad_norm = {CLIP}: max |Δ| against optimlab's clip_grad_norm_ + AdamW {fmt(clip_gap)}; "
              "the "
              "coefficients differ only in the guard: max/(‖g‖ + 1e-12) against torch's max/(‖g‖ + 1e-6)",
              "confirmed if the paths agree to 1e-6, refuted otherwise",
              confirmed() if clip_gap <= 1e-6 else refuted()),
    ]
    numbers = {"rows": rows, "final": [fx, fy], "distance_fraction": distance, "steps_to_1pct": steps_to_1pct,
               "row_loss_mismatch": mismatch, "float_of_array": floated, "gap_no_decay": plain_gap,
               "gap_decay": decay_gap, "one_step_difference": one_step.tolist(),
               "one_step_error": one_step_error, "gap_clip": clip_gap}
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="numpy-adam", lesson="adam-vs-sgd",
    title="AdamOptimizer in NumPy and train_with_numpy_adam()",
    setup="f(x, y) = x² + 10y², params [array([5.0]), array([2.0])], analytic gradients (2x, 20y), lr 0.1, "
    "β = (0.9, 0.999), ε = 1e-8, weight_decay 0, no clipping, 50 steps, a row every 10 steps; compared "
    f"with optimlab's AdamW in float64, also at weight_decay {DECAY} and max_grad_norm {CLIP}",
    run=run)
