"""The from-scratch PyTorch AdamW class of the lesson on Adam, SGD and RMSProp, against optimlab's AdamW.

The lesson gives the class and its defaults (lr 1e-3, β = (0.9, 0.999), ε = 1e-8, weight_decay 0.01) but no
run; this one trains the same lesson's 1-16-1 sine regression with it, in float64, full batch, beside
optimlab's AdamW and torch's at the same defaults. The class decays the parameters *after* the Adam step
(p -= lr·λ·p on the updated p), where the paper's Algorithm 2 (and optimlab, and torch) decays θ_{t−1}:
each step then differs by exactly lr²·λ·u, u = m̂/(√v̂ + ε).
"""

from __future__ import annotations

import torch

import optimlab

from .core import Check, Example, bounded, confirmed, fmt, refuted
from .lr_sensitivity import SEED, data, make_model

STEPS = 200
LR, BETAS, EPS, DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.01  # the class's defaults, optimlab's and torch's too


class LessonAdamW:
    """The lesson's AdamWFromScratch, re-typed: bias-corrected Adam step, then p -= lr·λ·p."""

    def __init__(self, params, lr=LR, betas=BETAS, eps=EPS, weight_decay=DECAY):
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1, bc2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * g
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * g * g
            p -= self.lr * (self.m[i] / bc1) / ((self.v[i] / bc2).sqrt() + self.eps)
            p -= self.lr * self.weight_decay * p  # after the Adam step: on the updated p

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def train(make, steps=STEPS) -> list[torch.Tensor]:
    """The sine regression in float64; the parameters after `steps` updates."""
    x, y = (t.double() for t in data())
    torch.manual_seed(SEED)
    model = make_model().double()
    opt = make(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def one_step_check(decay: float) -> tuple[float, float]:
    """One update from the same start: (the largest |class − AdamW|, its distance from lr²·λ·|u|), u = ±1·(1 −
    ε/|g|) at t = 1 since m̂ = g and √v̂ = |g|."""
    lesson = train(lambda ps: LessonAdamW(ps, weight_decay=decay), steps=1)
    library = train(lambda ps: optimlab.AdamW(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=decay), steps=1)
    x, y = (t.double() for t in data())
    torch.manual_seed(SEED)
    model = make_model().double()
    ((model(x) - y) ** 2).mean().backward()
    u = [p.grad / (p.grad.abs() + EPS) for p in model.parameters()]
    errors = [((a - b) - LR ** 2 * decay * w).abs().max().item() for a, b, w in zip(lesson, library, u)]
    return gap(lesson, library), max(errors)


def run() -> tuple[str, list[Check], dict]:
    lesson = train(lambda ps: LessonAdamW(ps))
    library = {"optimlab AdamW": train(lambda ps: optimlab.AdamW(ps, lr=LR, betas=BETAS, eps=EPS,
                                                                 weight_decay=DECAY)),
               "torch AdamW": train(lambda ps: torch.optim.AdamW(ps, lr=LR, betas=BETAS, eps=EPS,
                                                                 weight_decay=DECAY))}
    no_decay = train(lambda ps: LessonAdamW(ps, weight_decay=0.0))
    adam = {"optimlab Adam": train(lambda ps: optimlab.Adam(ps, lr=LR, betas=BETAS, eps=EPS)),
            "torch Adam": train(lambda ps: torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS))}
    size = max(p.abs().max().item() for p in lesson)
    gaps = {k: gap(lesson, v) for k, v in library.items()}
    gaps_adam = {k: gap(no_decay, v) for k, v in adam.items()}
    step_gap, step_error = one_step_check(DECAY)
    libs_gap = gap(*library.values())
    lines = [f"max |Δθ| after {STEPS} steps (float64; the largest |θ| is {size:.3f}):"]
    lines += [f"  class (λ = {DECAY}) vs {k}: {fmt(v)}" for k, v in gaps.items()]
    lines += [f"  optimlab AdamW vs torch AdamW: {fmt(libs_gap)}"]
    lines += [f"  class (λ = 0) vs {k}: {fmt(v)}" for k, v in gaps_adam.items()]
    lines += [f"  one step: class − AdamW = lr²·λ·u to {fmt(step_error)} (the difference itself: "
              f"{fmt(step_gap)})"]
    worst = max(gaps.values())
    checks = [
        Check("'Decoupled weight decay - SEPARATE from adaptive gradient': the class is AdamW",
              f"max |Δθ| against optimlab's and torch's AdamW after {STEPS} steps: {fmt(worst)}; each step "
              "adds "
              f"exactly lr²·λ·u (one step: matched to {fmt(step_error)}), because the class decays the "
              "updated "
              "p where the paper decays θ_(t−1)",
              "confirmed if the parameters agree to 1e-12; depends if within 1e-6 (equal to first order in "
              "lr·λ); refuted above",
              bounded(worst, 1e-12, 1e-6, "equal to first order in lr·λ: the class decays after the Adam "
                                          "step, "
                      "so each step differs by lr²·λ·u")),
        Check("With weight_decay = 0 the class is Adam",
              f"max |Δθ| against optimlab's and torch's Adam: {fmt(max(gaps_adam.values()))}",
              "confirmed if the parameters agree to 1e-12, refuted otherwise",
              confirmed() if max(gaps_adam.values()) <= 1e-12 else refuted()),
    ]
    numbers = {"steps": STEPS, "gap_adamw": gaps, "gap_adam": gaps_adam, "gap_optimlab_torch": libs_gap,
               "one_step_gap": step_gap, "one_step_error": step_error}
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="adamw-class", lesson="adam-vs-sgd",
    title="AdamWFromScratch (PyTorch) against optimlab's AdamW",
    setup="the class at its defaults (lr 1e-3, β = (0.9, 0.999), ε = 1e-8, weight_decay 0.01); the lesson "
          "gives "
    f"no run, so it trains the same lesson's 1-16-1 sine regression (torch.manual_seed(0)) in float64, full "
    f"batch, {STEPS} steps, beside optimlab's and torch's AdamW at the same hyperparameters",
    run=run)
