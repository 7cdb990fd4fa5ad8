"""The lessons' claim about 8-bit AdamW ("half the optimizer state"): the bytes a real step allocates, and
whether training still reaches fp32 AdamW's loss, with the same hyperparameters, on the small tasks.

The loss is compared seed by seed: each seed builds the same model, split and batches for both optimizers,
so the ratio of their final losses pairs like with like, and the interval over seeds says whether the
experiment resolves the 2% margin at all. On digits it does not: the final validation loss of the 9 k
parameter MLP is carried by one to three held-out images (pixels near-constant in training, standardised
to twice the training range), so fp32 AdamW's own final loss spans 0.02-0.51 over seeds, and 8-bit AdamW
against itself on another code path (the same method, other float rounding) scatters 0.63-2.3x per seed
(benchmarks/eightbit_quality.py). A median of 3 seeds exceeds 1.02 about half the time between identical
methods; such a task is reported as unresolved, not as a miss.
"""

from __future__ import annotations

import math
import statistics

import torch

import optimlab
import optimlab.tasks
from optimlab.memory import plan

from .core import Claim, confirmed, depends, fmt, refuted, shared
from .frontier import adamw_cosine, frontier_size, warmup_cosine

MARGIN = 1.02  # final validation loss within 2% of fp32 AdamW's
# two-sided 95% quantiles of Student's t by degrees of freedom (a paired interval over few seeds)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
        19: 2.093}


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


def paired_ratio(ours: list[float], base: list[float]) -> dict:
    """The per-seed ratios ours/base, their geometric mean and its 95% interval (Student's t on the logs:
    a loss ratio is multiplicative, and the seeds are few)."""
    if len(ours) != len(base) or len(ours) < 2:
        raise ValueError(f"paired_ratio needs two lists of the same length ≥ 2, got {len(ours)} and "
                         f"{len(base)}")
    ratios = [a / b for a, b in zip(ours, base)]
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        return {"ratios": ratios, "geomean": math.inf, "low": math.inf, "high": math.inf}
    logs = [math.log(r) for r in ratios]
    mean, spread = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    t = T975[min(len(logs) - 1, max(T975))]  # beyond the table: a slightly wider interval than needed
    return {"ratios": ratios, "geomean": math.exp(mean), "low": math.exp(mean - t * spread),
            "high": math.exp(mean + t * spread)}


def outcome(r: dict) -> str:
    """within: the interval lies under the margin; worse: above it; unresolved: it straddles it."""
    return "within" if r["high"] <= MARGIN else "worse" if r["low"] > MARGIN else "unresolved"


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
    # paired seeds: a digits run is 1 s, a charlm run 5 s, and digits scatters ~50x more per seed
    seeds = ctx.size({"digits": 16, "charlm": 3}, {"digits": 3})
    n = 4096 * 4096
    out = {"tasks": list(seeds), "seeds": seeds,
           "bytes_per_param_4096": optimlab.spec("adamw8bit").state_bytes((4096, 4096)) / n,
           "adamw_bytes_per_param_4096": optimlab.spec("adamw").state_bytes((4096, 4096)) / n}
    mixed = {name: plan(1e9, name, "bf16-mixed").whole for name in ("adamw", "adamw8bit")}
    out["with_master_ratio"] = ((mixed["adamw8bit"]["optimizer_state"] + mixed["adamw8bit"]["master_weights"])
                                / (mixed["adamw"]["optimizer_state"] + mixed["adamw"]["master_weights"]))
    for task in out["tasks"]:
        steps, _ = frontier_size(ctx, task)
        lr = adamw_cosine(ctx, task)["lr"]  # AdamW's best lr of the shared grid: 8-bit as a drop-in
        finals = {name: [final_loss(task, name, lr, steps, s) for s in range(seeds[task])]
                  for name in ("adamw", "adamw8bit")}
        (state8, numel), (state32, _) = allocated(task, "adamw8bit"), allocated(task, "adamw")
        out[task] = {"steps": steps, "lr": lr, "adamw_finals": finals["adamw"],
                     "adamw8bit_finals": finals["adamw8bit"],
                     "ratio": statistics.median(finals["adamw8bit"]) / statistics.median(finals["adamw"]),
                     "paired": paired_ratio(finals["adamw8bit"], finals["adamw"]),
                     "bytes_per_param": state8 / numel, "adamw_bytes_per_param": state32 / numel}
    return out


def judge_eightbit(n) -> object:
    if n["bytes_per_param_4096"] > n["adamw_bytes_per_param_4096"] / 2:
        return refuted()
    found = {t: outcome(n[t]["paired"]) for t in n["tasks"]}
    if all(o == "within" for o in found.values()):
        return confirmed()
    said = {"within": "within 2% of fp32 AdamW's on", "worse": "more than 2% worse on",
            "unresolved": "not resolved to 2% by the seeds' scatter on"}
    return depends("the state is at most half (a quarter) of AdamW's; the final loss is " + "; ".join(
        f"{said[o]} {', '.join(t for t in found if found[t] == o)}" for o in said if o in found.values()))


def describe_eightbit(n) -> str:
    def one(t, r):
        eight, full = statistics.median(r["adamw8bit_finals"]), statistics.median(r["adamw_finals"])
        pair = r["paired"]
        return (f"{t} ({r['steps']} steps, lr {fmt(r['lr'])}): val loss {fmt(eight)} vs {fmt(full)} (median "
                f"of {n['seeds'][t]} seeds: {fmt(r['ratio'])}×); per seed {fmt(min(pair['ratios']))}-"
                f"{fmt(max(pair['ratios']))}×, geometric mean {fmt(pair['geomean'])}× (95% interval "
                f"{fmt(pair['low'])}-{fmt(pair['high'])}: {outcome(pair)}); state "
                f"{fmt(r['bytes_per_param'])} vs {fmt(r['adamw_bytes_per_param'])} B/param")

    return (f"state {fmt(n['bytes_per_param_4096'])} B/param against AdamW's "
            f"{fmt(n['adamw_bytes_per_param_4096'])} for a 4096² matrix (a quarter; state + fp32 master in "
            f"bf16-mixed: {fmt(n['with_master_ratio'])}×); " + "; ".join(one(t, n[t]) for t in n["tasks"]))


CLAIMS = [
    Claim(
        id="adamw8bit-half-state", seed="canyon",
        claim="For memory-bound frontier training, 'Lion or 8-bit AdamW': 'Half the optimizer state.'",
        experiment="bytes of state a real step allocates (uint8 codes + a float32 absmax per 256 elements; "
        "tensors under 4096 elements stay fp32) on a 4096² matrix and on each task's model; and digits "
        "(400 steps, 16 seeds) and charlm (200 steps, 3 seeds) with AdamW's best lr of the shared grid, 5% "
        "warmup + cosine, weight decay 0.1: final validation loss of 8-bit AdamW against fp32 AdamW, seed by "
        "seed (the same model, split and batches for both): the geometric mean of the ratios and its 95% "
        "interval (Student's t on their logs)",
        rule="confirmed if the state is at most half of AdamW's and, on every task, the loss ratio's 95% "
        "interval lies at or under 1.02; depends if the memory holds but on some task the interval lies "
        "above 1.02 (worse) or straddles it (the seeds' scatter does not resolve 2%); refuted if the state "
        "is more than half",
        measure=shared("eightbit-vs-adamw", eightbit_vs_adamw), judge=judge_eightbit,
        describe=describe_eightbit,
        reference="Dettmers et al. 2022: 8-bit states (2 bytes per parameter against 8) match 32-bit Adam's "
        "performance on language modelling, GLUE and ImageNet; 75% of the state saved, not half"),
]
