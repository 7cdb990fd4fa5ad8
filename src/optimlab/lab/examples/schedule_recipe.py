"""The "AdamW + cosine schedule with warmup" recipe of the lesson on AdamW and the optimizer lineage: its
Llama-2 style `lr_lambda` (linear warmup over 2,000 steps, cosine from 1.0 to 0.1 of the peak at 100,000),
its optimizer and its clipping, against optimlab's `schedules.warmup_cosine`, `schedules.attach`, AdamW and
`gradients.clip_grad_norm_`.
"""

from __future__ import annotations

import warnings

import torch

import optimlab
from optimlab import schedules
from optimlab.gradients import clip_grad_norm_
from optimlab.tasks import digits

from .core import Check, Example, confirmed, depends, fmt, refuted

WARMUP, TOTAL = 2000, 100_000
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
MAX_NORM = 1.0
RUN_STEPS, RUN_WARMUP = 500, 10  # the recipe's loop on digits, the schedule scaled to the run (2 % warmup)
D_MODEL, HEADS = 512, 8


def lesson_lr_lambda(step: int, warmup_steps: int = WARMUP, total_steps: int = TOTAL) -> float:
    """The lesson's lambda, re-typed: its 3.14159 for π and its float32 torch.cos included."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * 3.14159)).item())


def recipe_run(use_optimlab: bool) -> tuple[list[float], list[torch.Tensor]]:
    """The recipe's loop (zero_grad, backward, clip to 1.0, step, scheduler.step) on optimlab's digits task,
    with torch's AdamW, LambdaLR and clipping, or with optimlab's AdamW, schedule and clipping."""
    problem = digits.build(seed=0)
    params = problem.model.parameters()
    if use_optimlab:
        opt = optimlab.AdamW(params, **ADAMW)
        sched = schedules.attach(opt, schedules.warmup_cosine(RUN_STEPS, RUN_WARMUP, floor=0.1))
        clip = clip_grad_norm_
    else:
        opt = torch.optim.AdamW(params, **ADAMW)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lesson_lr_lambda(s, RUN_WARMUP, RUN_STEPS))
        clip = torch.nn.utils.clip_grad_norm_
    lrs = []
    for step in range(RUN_STEPS):
        opt.zero_grad()
        problem.loss(step).backward()
        clip(problem.model.parameters(), max_norm=MAX_NORM)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, [p.detach().clone() for p in problem.model.parameters()]


def run() -> tuple[str, list[Check], dict]:
    ours = schedules.warmup_cosine(total_steps=TOTAL, warmup_steps=WARMUP, floor=0.1)
    warm_gap = max(abs(lesson_lr_lambda(t) - ours(t)) for t in range(WARMUP))
    cos_gap = max(abs(lesson_lr_lambda(t) - ours(t)) for t in range(WARMUP, TOTAL + 1))
    past = {t: (lesson_lr_lambda(t), ours(t)) for t in (TOTAL, TOTAL + 25_000, 2 * TOTAL - WARMUP)}
    climbs = max(v[0] for v in past.values()) - 0.1
    lrs_torch, p_torch = recipe_run(False)
    lrs_ours, p_ours = recipe_run(True)
    lr_gap = max(abs(a - b) / ADAMW["lr"] for a, b in zip(lrs_torch, lrs_ours))
    p_gap = max((a - b).abs().max().item() for a, b in zip(p_torch, p_ours))
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch's note that a sequence-first encoder skips nested tensors
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        transformer = torch.nn.Transformer(d_model=D_MODEL, nhead=HEADS)
    src, tgt = torch.randn(7, 2, D_MODEL), torch.randn(5, 2, D_MODEL)
    with torch.no_grad():
        out_shape = tuple(transformer(src=src, tgt=tgt).shape)

    lines = [f"{'step':>7} | {'lesson lr_lambda':>16} | {'warmup_cosine':>14}"]
    for t in (0, 1, 1000, WARMUP, 51_000, TOTAL, *list(past)[1:]):
        lines.append(f"{t:>7} | {lesson_lr_lambda(t):>16.9f} | {ours(t):>14.9f}")
    lines += [f"max |Δ| over steps 0–{WARMUP - 1}: {fmt(warm_gap)}; over {WARMUP}–{TOTAL}: {fmt(cos_gap)} "
              "(float32 cos and 3.14159 for π)",
              f"the recipe's loop on digits, {RUN_STEPS} steps (warmup {RUN_WARMUP}): lr per step agrees to "
              f"{fmt(lr_gap)} of the peak, parameters to {fmt(p_gap)} (torch AdamW + LambdaLR + "
              "clip_grad_norm_ "
              "against optimlab AdamW + schedules.attach(warmup_cosine) + optimlab clip_grad_norm_); the "
              "first "
              "update has lr 0 in both",
              f"nn.Transformer(d_model={D_MODEL}, nhead={HEADS})(src, tgt) has shape {out_shape}: d_model "
              "features, "
              "no vocabulary projection; the recipe's loop also uses dataloader, criterion and labels "
              "without "
              "defining them"]
    warm_ok, cos_ok, floor_kept = warm_gap <= 1e-6, cos_gap <= 1e-6, climbs <= 1e-6
    checks = [
        Check("'return step / warmup_steps  # linear warmup'",
              f"max |Δ| against optimlab's linear warmup over steps 0–{WARMUP - 1}: {fmt(warm_gap)}",
              "confirmed if it agrees with optimlab's warmup_cosine to 1e-6, refuted otherwise",
              confirmed() if warm_ok else refuted()),
        Check("'cosine decay from 1.0 to 0.1 of peak LR' (the Llama-2 convention)",
              f"max |Δ| against optimlab's warmup_cosine(floor=0.1) over steps {WARMUP}–{TOTAL}: "
              f"{fmt(cos_gap)}; "
              f"after total_steps the lambda climbs back: {past[TOTAL + 25_000][0]:.3f} at step "
              f"{TOTAL + 25_000:,}, {past[2 * TOTAL - WARMUP][0]:.3f} at {2 * TOTAL - WARMUP:,} (optimlab "
              "holds "
              "0.1)",
              "confirmed if it agrees with optimlab's warmup_cosine to 1e-6 up to total_steps and stays at "
              "0.1 "
              "after; depends if only up to total_steps; refuted if not even there",
              refuted() if not cos_ok else confirmed() if floor_kept else depends(
                  "from 1.0 to 0.1 up to total_steps; a run longer than total_steps climbs back to the "
                  "peak")),
        Check("The recipe: AdamW (lr 3e-4, β (0.9, 0.95), weight decay 0.1), LambdaLR(lr_lambda), "
              "clip_grad_norm_(max_norm=1.0) between backward and step",
              f"optimlab's AdamW, schedule and clipping reproduce torch's run: lr to {fmt(lr_gap)} of the "
              "peak, "
              f"parameters to {fmt(p_gap)} after {RUN_STEPS} steps",
              "confirmed if the lrs agree to 1e-6 of the peak and the parameters to 1e-5, refuted otherwise",
              confirmed() if lr_gap <= 1e-6 and p_gap <= 1e-5 else refuted()),
        Check("'out = model(src=x, tgt=y)  # returns (seq, batch, vocab)'",
              f"nn.Transformer(d_model={D_MODEL}, nhead={HEADS}) returns {out_shape}: the last dimension is "
              "d_model; logits need a Linear(d_model, vocab) the recipe does not have",
              "confirmed if the last dimension is not d_model (a vocabulary), refuted if it is d_model",
              refuted() if out_shape[-1] == D_MODEL else confirmed()),
    ]
    numbers = {"warmup_gap": warm_gap, "cosine_gap": cos_gap,
               "past_total": {str(k): v for k, v in past.items()},
               "run_lr_gap": lr_gap, "run_param_gap": p_gap, "transformer_out_shape": list(out_shape)}
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="cosine-warmup-recipe", lesson="adamw-recipe",
    title="AdamW + cosine schedule with warmup, and its Llama-2 lr_lambda",
    setup=f"lr_lambda with warmup_steps {WARMUP:,}, total_steps {TOTAL:,}, 3.14159 and torch.cos as printed, "
    f"evaluated at every step 0–{TOTAL:,} and past it; the recipe's AdamW (lr 3e-4, β (0.9, 0.95), weight "
    "decay "
    f"0.1, ε 1e-8), LambdaLR and clip_grad_norm_(1.0) run on optimlab's digits task for {RUN_STEPS} steps "
    "with "
    f"the schedule scaled to them ({RUN_WARMUP} warmup steps: 2 %); nn.Transformer(d_model=512, nhead=8) "
    "called once for its output shape",
    run=run)

