"""The lessons' claim about 8-bit AdamW ("half the optimizer state"): the bytes a real step allocates, and
whether training still reaches fp32 AdamW's loss, with the same hyperparameters, on the small tasks."""

from __future__ import annotations

import statistics

import torch

import optimlab
import optimlab.tasks
from optimlab.memory import plan

from .core import Claim, confirmed, depends, fmt, refuted, shared
from .frontier import adamw_cosine, frontier_size, warmup_cosine

MARGIN = 1.02  # final validation loss within 2% of fp32 AdamW's (median of the seeds)


def final_loss(task: str, name: str, lr: float, steps: int, seed: int) -> float:
    """One run with the frontier claims' recipe: 5% warmup + cosine to 10%, weight decay 0.1."""
    problem = optimlab.tasks.get(task).build(seed=seed)
    opt = optimlab.create(name, problem.model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    for step in range(steps):
        opt.zero_grad()
        problem.loss(step).backward()
        opt.step()
        schedule.step()
    return problem.evaluate()["val_loss"]


def allocated(task: str, name: str) -> tuple[int, int]:
    """(bytes of state tensors after one real step, parameters) on the task's model."""
    params = list(optimlab.tasks.get(task).build(seed=0).model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt = optimlab.create(name, params)
    opt.step()
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return state, sum(p.numel() for p in params)


def eightbit_vs_adamw(ctx) -> dict:
    seeds = (0, 1, 2)
    n = 4096 * 4096
    out = {"tasks": list(ctx.size(("digits", "charlm"), ("digits",))), "seeds": list(seeds),
           "bytes_per_param_4096": optimlab.spec("adamw8bit").state_bytes((4096, 4096)) / n,
           "adamw_bytes_per_param_4096": optimlab.spec("adamw").state_bytes((4096, 4096)) / n}
    mixed = {name: plan(1e9, name, "bf16-mixed").whole for name in ("adamw", "adamw8bit")}
    out["with_master_ratio"] = ((mixed["adamw8bit"]["optimizer_state"] + mixed["adamw8bit"]["master_weights"])
                                / (mixed["adamw"]["optimizer_state"] + mixed["adamw"]["master_weights"]))
    for task in out["tasks"]:
        steps, _ = frontier_size(ctx, task)
        lr = adamw_cosine(ctx, task)["lr"]  # AdamW's best lr of the shared grid: 8-bit as a drop-in
        finals = {name: [final_loss(task, name, lr, steps, s) for s in seeds]
                  for name in ("adamw", "adamw8bit")}
        (state8, numel), (state32, _) = allocated(task, "adamw8bit"), allocated(task, "adamw")
        out[task] = {"steps": steps, "lr": lr, "adamw_finals": finals["adamw"],
                     "adamw8bit_finals": finals["adamw8bit"],
                     "ratio": statistics.median(finals["adamw8bit"]) / statistics.median(finals["adamw"]),
                     "bytes_per_param": state8 / numel, "adamw_bytes_per_param": state32 / numel}
    return out


def judge_eightbit(n) -> object:
    if n["bytes_per_param_4096"] > n["adamw_bytes_per_param_4096"] / 2:
        return refuted()
    close = {t: n[t]["ratio"] <= MARGIN for t in n["tasks"]}
    if all(close.values()):
        return confirmed()
    return depends("the state is at most half (a quarter) of AdamW's; the final loss is within 2% of fp32 "
                   "AdamW's on " + (", ".join(t for t in close if close[t]) or "no task") + ", not on "
                   + ", ".join(t for t in close if not close[t]))


def describe_eightbit(n) -> str:
    def one(t, r):
        eight, full = statistics.median(r["adamw8bit_finals"]), statistics.median(r["adamw_finals"])
        return (f"{t} ({r['steps']} steps, lr {fmt(r['lr'])}): val loss {fmt(eight)} vs {fmt(full)} (median "
                f"of {len(n['seeds'])} seeds): {fmt(r['ratio'])}×; state {fmt(r['bytes_per_param'])} vs "
                f"{fmt(r['adamw_bytes_per_param'])} B/param")

    return (f"state {fmt(n['bytes_per_param_4096'])} B/param against AdamW's "
            f"{fmt(n['adamw_bytes_per_param_4096'])} for a 4096² matrix (a quarter; state + fp32 master in "
            f"bf16-mixed: {fmt(n['with_master_ratio'])}×); " + "; ".join(one(t, n[t]) for t in n["tasks"]))


CLAIMS = [
    Claim(
        id="adamw8bit-half-state", seed="canyon",
        claim="For memory-bound frontier training, 'Lion or 8-bit AdamW': 'Half the optimizer state.'",
        experiment="bytes of state a real step allocates (uint8 codes + a float32 absmax per 256 elements; "
        "tensors under 4096 elements stay fp32) on a 4096² matrix and on each task's model; and digits "
        "(400 steps) and charlm (200 steps) with AdamW's best lr of the shared grid, 5% warmup + cosine, "
        "weight decay 0.1: final validation loss of 8-bit AdamW against fp32 AdamW, median of 3 seeds",
        rule="confirmed if the state is at most half of AdamW's and the loss is within 2% of fp32 AdamW's on "
        "every task; depends if the memory holds but the loss does not on some task; refuted if the state "
        "is more than half",
        measure=shared("eightbit-vs-adamw", eightbit_vs_adamw), judge=judge_eightbit,
        describe=describe_eightbit,
        reference="Dettmers et al. 2022: 8-bit states (2 bytes per parameter against 8) match 32-bit Adam's "
        "performance on language modelling, GLUE and ImageNet; 75% of the state saved, not half"),
]
