"""Claims about the frontier optimizers: Sophia's 2× over Adam, and schedule-free training without a
schedule against warmup + cosine. Each runs a small lr grid per optimizer (the same size for each) on
the small tasks, with one seed, and compares the best of each."""

from __future__ import annotations

import math

import torch

import optimlab
import optimlab.tasks

from .core import Claim, Verdict, confirmed, depends, fmt, refuted, shared

WARMUP, FLOOR = 0.05, 0.1  # the seeds' standard: warm up for 5% of training, cosine down to 10% of the peak


def warmup_cosine(total: int):
    def factor(step: int) -> float:
        warm = max(1, round(WARMUP * total))
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def curve(task: str, name: str, lr: float, steps: int, every: int, schedule: bool, seed: int = 0) -> dict:
    """Validation loss every `every` steps of one run; Sophia refreshes its Hessian estimate (GNB, from
    the model's own logits) every k steps; schedule-free is evaluated at x."""
    problem = optimlab.tasks.get(task).build(seed=seed)
    hp = {"weight_decay": 0.1} if name in ("adamw", "sophia", "schedulefree_adamw") else {}
    opt = optimlab.create(name, problem.model.parameters(), lr=lr, **hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps)) if schedule else None
    logits = {}
    problem.model.register_forward_hook(lambda module, inputs, output: logits.__setitem__("last", output))
    sophia = isinstance(opt, optimlab.Sophia)
    hessian_refreshes = 0
    points = []
    for step in range(steps):
        if sophia and opt.update_hessian(lambda: (problem.loss(step), logits["last"])[1]) is not None:
            hessian_refreshes += 1
        opt.zero_grad()
        problem.loss(step).backward()
        opt.step()
        if scheduler:
            scheduler.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            if hasattr(opt, "eval"):
                opt.eval()
            loss = problem.evaluate()["val_loss"]
            if hasattr(opt, "train"):
                opt.train()
            points.append((step + 1, loss if math.isfinite(loss) else math.inf))
    return {"points": points, "final": points[-1][1], "hessian_refreshes": hessian_refreshes}


def best_of_grid(task, name, lrs, steps, every, schedule) -> dict:
    runs = {lr: curve(task, name, lr, steps, every, schedule) for lr in lrs}
    lr = min(runs, key=lambda k: runs[k]["final"])
    return {"lr": lr, "grid": list(lrs), "finals": [runs[k]["final"] for k in lrs], **runs[lr]}


def adamw_cosine(ctx, task: str) -> dict:
    steps, every = frontier_size(ctx, task)
    return ctx.shared(("adamw-cosine", task),
                      lambda: best_of_grid(task, "adamw", grid(ctx), steps, every, True))


def frontier_size(ctx, task: str) -> tuple[int, int]:
    steps = ctx.size({"digits": 400, "charlm": 200}, {"digits": 60, "charlm": 20})[task]
    return steps, max(1, steps // 20)


def grid(ctx) -> tuple[float, ...]:
    """The same lr grid for every optimizer: one tuning budget."""
    return ctx.size((1e-3, 3e-3, 1e-2, 3e-2, 1e-1), (3e-3, 1e-2))


def sophia_vs_adamw(ctx) -> dict:
    task = ctx.size("charlm", "digits")
    steps, every = frontier_size(ctx, task)
    adamw = adamw_cosine(ctx, task)
    sophia = best_of_grid(task, "sophia", grid(ctx), steps, every, True)
    target = adamw["final"]
    reached = next((s for s, loss in sophia["points"] if loss <= target), None)
    # every k-th step Sophia-G also runs a forward and backward pass on sampled labels: count them too
    k = optimlab.spec("sophia").defaults["update_period"]
    refreshes = sum(1 for s in range(reached or 0) if s % k == 0)
    return {"task": task, "steps": steps, "target": target, "lr_grid": adamw["grid"],
            "adamw_lr": adamw["lr"], "adamw_finals": adamw["finals"],
            "sophia_lr": sophia["lr"], "sophia_finals": sophia["finals"], "sophia_final": sophia["final"],
            "sophia_steps_to_target": reached, "sophia_points": sophia["points"],
            "speedup_steps": steps / reached if reached else 0.0,  # 0: never reached
            "speedup_gradient_evaluations": steps / (reached + refreshes) if reached else 0.0}


def judge_sophia(n) -> Verdict:
    s = n["speedup_gradient_evaluations"]
    if s >= 2 / 1.25:
        return confirmed()
    if s >= 1.1:
        return depends(f"Sophia reaches AdamW's final loss {fmt(s)}× sooner (in gradient evaluations) on "
                       f"{n['task']}: faster, not 2×")
    return refuted()


def describe_sophia(n) -> str:
    reached = n["sophia_steps_to_target"]
    where = (f"reached it after {reached} steps: {fmt(n['speedup_steps'])}× fewer steps, "
             f"{fmt(n['speedup_gradient_evaluations'])}× fewer gradient evaluations counting its Hessian "
             "refreshes") if reached else "never reached it"
    return (f"{n['task']}, {n['steps']} steps, warmup + cosine for both, best of an lr grid each: AdamW (lr "
            f"{fmt(n['adamw_lr'])}) ends at val loss {fmt(n['target'])}; Sophia-G (lr {fmt(n['sophia_lr'])}, "
            f"final {fmt(n['sophia_final'])}) {where}")


def schedulefree_vs_cosine(ctx) -> dict:
    out = {"tasks": list(ctx.size(("digits", "charlm"), ("digits",)))}
    for task in out["tasks"]:
        steps, every = frontier_size(ctx, task)
        cosine = adamw_cosine(ctx, task)
        free = best_of_grid(task, "schedulefree_adamw", grid(ctx), steps, every, False)
        out[task] = {"steps": steps, "cosine_lr": cosine["lr"], "cosine_final": cosine["final"],
                     "schedulefree_lr": free["lr"], "schedulefree_final": free["final"],
                     "ratio": free["final"] / cosine["final"], "cosine_finals": cosine["finals"],
                     "schedulefree_finals": free["finals"]}
    return out


MARGIN = 1.02  # within 2% of the scheduled run's final validation loss


def judge_schedulefree(n) -> Verdict:
    ok = {t: n[t]["ratio"] <= MARGIN for t in n["tasks"]}
    if all(ok.values()):
        return confirmed()
    if not any(ok.values()):
        return refuted()
    return depends("matches the warmup + cosine run on " + ", ".join(t for t in ok if ok[t]) + ", not on "
                   + ", ".join(t for t in ok if not ok[t]))


def describe_schedulefree(n) -> str:
    def one(t, r):
        return (f"{t} ({r['steps']} steps): schedule-free AdamW, constant lr {fmt(r['schedulefree_lr'])} and "
                f"no warmup, val loss {fmt(r['schedulefree_final'])} vs AdamW with warmup + cosine (lr "
                f"{fmt(r['cosine_lr'])}) {fmt(r['cosine_final'])}: {fmt(r['ratio'])}×")

    return "; ".join(one(t, n[t]) for t in n["tasks"])


CLAIMS = [
    Claim(
        id="sophia-2x-faster", seed="modern-variants",
        claim="'Early results show Sophia converging 2x faster than Adam for LLM pre-training' (also: "
        "'Sophia in particular reported 2× speedup on GPT-style pretraining')",
        experiment="charlm (the tiny GPT-style character model), 200 steps, 5% warmup + cosine, weight "
        "decay 0.1: AdamW and Sophia-G, each the best of lr {1e-3, 3e-3, 1e-2, 3e-2, 0.1}; the step at which "
        "Sophia first reaches AdamW's final validation loss (evaluated every 10 steps)",
        rule="confirmed if Sophia needs ≤ 1/1.6 of AdamW's gradient evaluations (2× with 25% tolerance; its "
        "Hessian refreshes count); depends if it is faster by 1.1–1.6×; refuted otherwise",
        measure=shared("frontier-sophia", sophia_vs_adamw), judge=judge_sophia, describe=describe_sophia,
        reference="Liu et al. 2023: 2× fewer steps, compute and wall-clock time than AdamW on GPT-2 and "
        "GPT NeoX pre-training (125M–6.6B parameters)"),
    Claim(
        id="schedulefree-no-schedule", seed="modern-variants",
        claim="Schedule-free Adam 'eliminates the need for learning rate schedules entirely … you only need "
        "to set the base learning rate, not the warmup steps, decay schedule'",
        experiment="digits (400 steps) and charlm (200 steps): schedule-free AdamW at a constant lr, no "
        "warmup, best of lr {1e-3, 3e-3, 1e-2, 3e-2, 0.1}, against AdamW with 5% warmup + cosine to 10%, "
        "best of the same grid; final validation loss (schedule-free evaluated at x)",
        rule="confirmed if schedule-free is within 2% of (or better than) the scheduled run on every task; "
        "refuted if it is worse by more on every task; depends otherwise",
        measure=shared("frontier-schedulefree", schedulefree_vs_cosine), judge=judge_schedulefree,
        describe=describe_schedulefree,
        reference="Defazio et al. 2024: matches or beats tuned cosine schedules; the official package still "
        "recommends warmup_steps for transformers"),
]
