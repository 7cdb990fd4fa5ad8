"""The claim that bf16 training keeps fp32 weights (a master copy) and fp32 state for numerical
stability, checked on charlm: the master copy against bf16 weights updated by round-to-nearest, by
stochastic rounding, and with a Kahan buffer (docs/lowprecision.md; benchmarks/bf16_training.py runs the
same function over three seeds)."""

from __future__ import annotations

import math

import torch

import optimlab
import optimlab.tasks

from .core import Claim, Verdict, confirmed, depends, fmt, refuted, shared, single_thread

MODES = ("master", "nearest", "stochastic", "kahan")
OPTIONS = {"master": {}, "nearest": {}, "stochastic": {"stochastic_rounding": True},
           "kahan": {"kahan_summation": True}}
MARGIN = 0.01  # within 1% of the master run's final validation loss


def lr_at(step: int, steps: int, peak: float) -> float:
    """5% linear warmup, then cosine down to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_mode(mode: str, seed: int, steps: int, lr: float = 3e-3, **model) -> dict:
    """One AdamW run of charlm with a bf16 model (forward and backward in bf16 in every mode): the final
    validation loss, and the fraction of element updates rounded away over the last 40% of steps (θ
    unchanged after a step although its update is not zero: m ≠ 0)."""
    problem = optimlab.tasks.get("charlm").build(seed=seed, **model)
    net = problem.model.to(torch.bfloat16)
    params = list(net.parameters())
    if mode == "master":  # fp32 master weights, copied to the bf16 model after each step
        master = [p.detach().float().requires_grad_() for p in params]
        opt = optimlab.create("adamw", master, lr=lr, weight_decay=0.01)
    else:
        opt = optimlab.create("adamw", params, lr=lr, weight_decay=0.01, rounding_seed=seed, **OPTIONS[mode])
    stepped = opt.param_groups[0]["params"]
    watched, moved = 0, 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        for p in params:
            p.grad = None
        problem.loss(step).backward()
        if mode == "master":
            for p, q in zip(params, master):
                q.grad = p.grad.float()
        measuring = step >= int(0.6 * steps)
        before = [p.detach().clone() for p in stepped] if measuring else None
        opt.step()
        if mode == "master":
            with torch.no_grad():
                for p, q in zip(params, master):
                    p.copy_(q)
        if measuring:
            for p, old in zip(stepped, before):
                live = opt.state[p]["exp_avg"] != 0
                watched += int(live.sum())
                moved += int((live & (p.detach() != old)).sum())
    return {"mode": mode, "seed": seed, "val_loss": validation_loss(net, seed, model.get("context", 32)),
            "rounded_away": 1 - moved / max(watched, 1)}


@torch.no_grad()
def validation_loss(model, seed: int, context: int, windows: int = 512) -> float:
    """Cross-entropy on fixed held-out windows, from the bf16 logits taken to float32 (the task's own
    evaluate() computes it in bf16, whose steps of 2⁻⁶ near 2.3 would hide the differences measured)."""
    from optimlab.tasks import charlm

    _, data = charlm.corpus()
    val = data[int(len(data) * (1 - charlm.VALIDATION_FRACTION)):]
    draw = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(val) - context - 1, (windows,), generator=draw)
    chunk = val[starts[:, None] + torch.arange(context + 1)]
    logits = model(chunk[:, :-1]).float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten()).item()


def master_copy_needed(ctx) -> dict:
    steps = ctx.size(600, 40)
    model = ctx.size({}, {"width": 32, "batch_size": 16})
    with single_thread():
        runs = {mode: run_mode(mode, 0, steps, **model) for mode in MODES}
    base = runs["master"]["val_loss"]
    return {"steps": steps, "model": model, "master_loss": base,
            **{f"{m}_loss": runs[m]["val_loss"] for m in MODES[1:]},
            **{f"{m}_gap": runs[m]["val_loss"] / base - 1 for m in MODES[1:]},
            "nearest_rounded_away": runs["nearest"]["rounded_away"]}


def judge(n) -> Verdict:
    if n["nearest_gap"] <= MARGIN:
        return refuted()
    recovered = [m for m in ("stochastic", "kahan") if n[f"{m}_gap"] <= MARGIN]
    if not recovered:
        return confirmed()
    return depends("an fp32 copy is needed for round-to-nearest bf16 updates; "
                   + " and ".join({"stochastic": "stochastic rounding", "kahan": "a bf16 Kahan buffer"}[m]
                                  for m in recovered)
                   + " match it without one (8 or 10 B per parameter with AdamW, against 16)")


def describe(n) -> str:
    return (f"charlm, {n['steps']} steps, AdamW with warmup + cosine, bf16 forward and backward: fp32 master "
            f"copy val loss {fmt(n['master_loss'])}; bf16 weights rounded to nearest "
            f"{fmt(n['nearest_loss'])} ({100 * n['nearest_gap']:+.2f}%, "
            f"{100 * n['nearest_rounded_away']:.0f}% of late updates rounded away); stochastic rounding "
            f"{fmt(n['stochastic_loss'])} ({100 * n['stochastic_gap']:+.2f}%); Kahan "
            f"{fmt(n['kahan_loss'])} ({100 * n['kahan_gap']:+.2f}%)")


CLAIMS = [
    Claim(
        id="bf16-needs-fp32-master", seed="curvature-bets",
        claim="'Large-scale training uses mixed precision: weights in bfloat16 (2 bytes) but optimizer "
        "states in float32 (4 bytes) for numerical stability', with an fp32 master copy of the weights in "
        "the memory table",
        experiment="charlm, 600 steps, AdamW lr 3e-3 with 5% warmup + cosine to 10%, the model in bf16: "
        "fp32 master weights and state against bf16 weights and state updated with round-to-nearest, "
        "with stochastic rounding and with a Kahan buffer; final validation loss (float32 cross-entropy)",
        rule="refuted if round-to-nearest bf16 ends within 1% of the master run; confirmed if it does not "
        "and neither stochastic rounding nor Kahan does either; depends (on how bf16 is rounded) otherwise",
        measure=shared("bf16-master", master_copy_needed), judge=judge, describe=describe,
        reference="Zamirai et al. 2020 (Revisiting BFloat16 Training): stochastic rounding or Kahan "
        "summation of the weight update lets pure bf16 training match fp32"),
]
