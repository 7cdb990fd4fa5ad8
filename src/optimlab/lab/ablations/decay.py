"""Replace AdamW's decoupled weight decay by L2 in the gradient (Adam + L2).

No model is needed: each parameter gets a synthetic gradient of known scale s (seeded Gaussian noise of
RMS s, mean zero), so √v̂ ≈ s, and the only systematic force on it is the decay. Every coordinate starts
at 1; the effective decay per unit lr is read off the mean over many coordinates, against a λ = 0 run
with the same noise (common random numbers), so the noise cancels.
"""

from __future__ import annotations

import math

import torch

import optimlab

from .common import Ablation, Panel, Result, Settings, fmt

LR, LAMBDA = 1e-2, 0.1
SCALES = (0.0, 1.0, 10.0, 100.0)  # gradient RMS s ≈ √v̂; 0 is a weight whose loss gradient is zero


def shrink_curves(name: str, weight_decay: float, steps: int, n: int, seed: int = 0) -> dict[float, list]:
    """Mean θ (all coordinates start at 1) after each step, one curve per gradient scale."""
    params = {s: torch.ones(n, requires_grad=True) for s in SCALES}
    opt = optimlab.create(name, list(params.values()), lr=LR, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    curves = {s: [1.0] for s in SCALES}
    for _ in range(steps):
        noise = torch.randn(n, generator=gen)
        for s, p in params.items():
            p.grad = s * noise  # the same noise for every scale and every optimizer
        opt.step()
        for s, p in params.items():
            curves[s].append(p.detach().mean().item())
    return curves


def decay_rate(curve: list[float], baseline: list[float]) -> float:
    """Effective per-step decay κ, in units of lr: mean θ shrinks like (1 − lr·κ)ᵗ beyond the baseline."""
    t = len(curve) - 1
    return -math.log(curve[-1] / baseline[-1]) / (LR * t)


def run(settings: Settings) -> Result:
    steps, n = (300, 1 << 14) if settings.quick else (500, 1 << 16)
    base = shrink_curves("adam", 0.0, steps, n)  # λ = 0: where the noise alone takes θ
    runs = {name: shrink_curves(name, LAMBDA, steps, n) for name in ("adamw", "adam")}
    kappa = {(name, s): decay_rate(runs[name][s], base[s]) / LAMBDA for name in runs for s in SCALES if s}
    ratio = kappa["adam", 10.0] / kappa["adamw", 10.0]
    predicted = {s: 1 / math.sqrt(s * s + LAMBDA**2) for s in SCALES if s}  # √v̂ ≈ √(s² + (λθ)²), θ ≈ 1
    # with no loss gradient, Adam + L2 divides λθ by √(λθ)²: a step of lr·sign(θ), whatever λ is
    zero = runs["adam"][0.0]
    half_l2 = next((t for t, v in enumerate(zero) if v <= 0.5), math.inf)
    half_w = math.log(2) / (LR * LAMBDA)
    ok = abs(ratio / predicted[10.0] - 1) < 0.25
    at100 = kappa["adam", 100.0] / kappa["adamw", 100.0]
    summary = (f"at √v̂ = 10, Adam + L2 decays a weight {fmt(ratio)}× as fast as AdamW (predicted 1/√v̂ = "
               f"{fmt(predicted[10.0])}): 10× weaker; at √v̂ = 100 {fmt(at100)}×; a weight with zero loss "
               f"gradient halves in {half_l2} steps (lr·sign(θ) per step) vs {half_w:.0f} under AdamW")
    xs = list(range(steps + 1))
    curves = {"AdamW (every s)": (xs, runs["adamw"][10.0])}
    curves.update({f"Adam+L2, √v̂≈{s:g}": (xs, runs["adam"][s]) for s in SCALES})
    panel = Panel("Adam + L2 vs AdamW: mean θ, λ = 0.1", "step", "mean θ (starts at 1)", curves)
    details = {f"kappa_over_lambda_{name}_s{s:g}": k for (name, s), k in kappa.items()}
    details.update({f"predicted_adam_s{s:g}": p for s, p in predicted.items()})
    details.update({"halving_steps_adam_zero_grad": half_l2, "halving_steps_adamw": half_w, "lr": LR,
                    "weight_decay": LAMBDA})
    verdict = "confirmed" if ok else "refuted"
    return Result("decoupled-decay", ratio, "×", verdict, summary, None, details, panel)


ABLATION = Ablation(
    name="decoupled-decay",
    removed="AdamW's decoupled weight decay (Adam + L2 instead: λθ joins the gradient)",
    claim="with L2 inside Adam, 'parameters with large v̂ get less weight decay'; the quick check asks how "
    "the per-step decay compares at √v̂ = 10 (lesson adamw-recipe; answer: λ/√v̂ = λ/10 vs λ)",
    measure="effective per-step decay κ of the mean of 65,536 weights given Gaussian gradients of RMS 10 "
    "(so √v̂ ≈ 10), from mean θ after 500 steps relative to a λ = 0 run with the same noise, "
    "κ(Adam + L2) ÷ κ(AdamW), lr 1e-2, λ 0.1",
    rule="confirmed if within 25% of the predicted 1/√v̂ = 0.1, refuted otherwise",
    run=run,
)
