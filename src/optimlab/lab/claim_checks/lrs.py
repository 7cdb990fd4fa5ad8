"""Claims about learning rates, from lr sweeps on the digits MLP (optimlab.lab.sweep), and Lion's step."""

from __future__ import annotations

import math

import torch

import optimlab
import optimlab.tasks

from ..sweeps import sweep
from .core import Claim, Verdict, confirmed, depends, fmt, refuted, shared


def swept(optimizers: list[str], lrs_full: str, lrs_quick: str):
    def measure(ctx) -> dict:
        grid = ctx.size(lrs_full, lrs_quick)
        s = sweep(optimizers, task="digits", lrs=grid, steps=ctx.size(200, 60), seeds=1, workers=1)
        lo, hi, n = (float(v) for v in grid.split(":"))
        out = {"task": "digits", "steps": s.steps, "seeds": s.seeds, "metric": s.metric, "factor": s.factor,
               "grid": grid, "grid_step": (hi / lo) ** (1 / (n - 1))}
        for o in optimizers:
            out.update({f"{o}_best_lr": s.best(o)[0], f"{o}_best_loss": s.best(o)[1],
                        f"{o}_width": s.width(o),
                        f"{o}_band": list(s.band(o) or ()), f"{o}_band_at_grid_end": s.open_ended(o),
                        f"{o}_vertex_lr": vertex_lr(s.lrs, s.median(o))})
        return out

    return measure


def vertex_lr(lrs: list[float], losses: list[float]) -> float:
    """The best lr between grid points: the vertex of the parabola through log-loss at the best grid lr and
    its two neighbours, in log lr (the grid lr itself where the best is at an end or a neighbour diverged)."""
    i = min(range(len(losses)), key=losses.__getitem__)
    if i in (0, len(lrs) - 1) or not all(math.isfinite(v) for v in losses[i - 1:i + 2]):
        return lrs[i]
    x = [math.log10(v) for v in lrs[i - 1:i + 2]]
    y0, y1, y2 = (math.log(v) for v in losses[i - 1:i + 2])
    h = (x[2] - x[0]) / 2
    curvature = y0 - 2 * y1 + y2
    return lrs[i] if curvature <= 0 else 10 ** (x[1] + h * (y0 - y2) / (2 * curvature))


SGD_ADAM = shared("sweep-sgd-adam", swept(["sgd", "adam"], "1e-4:10:16", "1e-4:10:11"))
ADAMW_LION = shared("sweep-adamw-lion", swept(["adamw", "lion"], "1e-4:0.1:13", "1e-4:0.1:7"))


TOLERANCE = 1.25  # a best lr read between grid points, from one seed: ±25% on a ratio of two


def within(ratio: float, lo: float, hi: float) -> bool:
    return lo / TOLERANCE <= ratio <= hi * TOLERANCE


def judge_sensitivity(n) -> Verdict:
    wider = n["adam_width"] - n["sgd_width"]  # decades, in whole grid steps
    return confirmed() if wider >= 1 - 1e-9 else refuted()


def describe_bands(n, a: str, b: str) -> str:
    def one(o):
        lo, hi = n[f"{o}_band"] or (math.nan, math.nan)
        end = " (reaches the grid's end)" if n[f"{o}_band_at_grid_end"] else ""
        return (f"{o} best lr {fmt(n[f'{o}_best_lr'])} (val loss {fmt(n[f'{o}_best_loss'])}), band "
                f"{fmt(lo)}–{fmt(hi)} = {n[f'{o}_width']:.2f} decades{end}")

    return (f"{one(a)}; {one(b)} (digits, {n['steps']} steps, {n['seeds']} seed, band: val loss within "
            f"{n['factor']:g}× of the best, grid step {n['grid_step']:.2f}×)")


def judge_adam_vs_sgd_lr(n) -> Verdict:
    return confirmed() if within(n["sgd_vertex_lr"] / n["adam_vertex_lr"], 10, 100) else refuted()


def judge_lion_smaller(n) -> Verdict:
    ratio = n["adamw_vertex_lr"] / n["lion_vertex_lr"]
    if within(ratio, 3, 10):
        return confirmed()
    if ratio > 1:
        return depends(f"Lion's best lr is smaller, by {fmt(ratio)}×, outside the paper's 3–10×")
    return refuted()


def judge_lion_larger(n) -> Verdict:
    ratio = n["lion_vertex_lr"] / n["adamw_vertex_lr"]
    if ratio > TOLERANCE:
        return confirmed()
    if ratio < 1 / TOLERANCE:
        return refuted()
    return depends(f"about the same best lr ({fmt(ratio)}×) on digits")


def ratio_text(n, a: str, b: str) -> str:
    return (f"best lr {a} {fmt(n[f'{a}_vertex_lr'])} ÷ {b} {fmt(n[f'{b}_vertex_lr'])} = "
            f"{fmt(n[f'{a}_vertex_lr'] / n[f'{b}_vertex_lr'])}× (between grid points; on the grid "
            f"{fmt(n[f'{a}_best_lr'])} ÷ {fmt(n[f'{b}_best_lr'])} = "
            f"{fmt(n[f'{a}_best_lr'] / n[f'{b}_best_lr'])}×)")


def lion_steps(ctx) -> dict:
    """Every coordinate's |Δθ| on Lion's first steps (lr 1e-3, no weight decay) on the digits MLP."""
    problem = optimlab.tasks.get("digits").build(seed=0)
    params = list(problem.model.parameters())
    lr, steps = 1e-3, ctx.size(20, 5)
    opt = optimlab.create("lion", params, lr=lr)
    eta = zero = other = 0
    never = None
    for step in range(steps):
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        problem.loss(step).backward()
        opt.step()
        moved = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(params, before)]) / lr
        silent = torch.cat([p.grad.flatten() == 0 for p in params])
        never = silent if never is None else never & silent
        eta += int(((moved - 1).abs() < 1e-3).sum())
        zero += int((moved == 0).sum())
        other += int(((moved - 1).abs() >= 1e-3).sum()) - int((moved == 0).sum())
    total = eta + zero + other
    return {"steps": steps, "coordinates": int(never.numel()), "share_eta": eta / total,
            "share_zero": zero / total,
            "share_other": other / total, "share_never_a_gradient": float(never.float().mean())}


def judge_lion_magnitude(n) -> Verdict:
    if n["share_eta"] == 1:
        return confirmed()
    if n["share_other"] > 0:
        return refuted()
    return depends("every coordinate with a non-zero c = β₁m + (1 − β₁)g moves exactly η; the "
                   f"{n['share_zero']:.1%} of moves with c = 0 (no gradient yet: constant pixels, dead "
                   "units) are 0, and with weight decay a step is η·|sign(c) + λθ|")


CLAIMS = [
    Claim(
        id="adam-lr-insensitive", seed="adam-vs-sgd",
        claim="'Adam is much less sensitive to learning rate than SGD … This 10x–100x larger robust LR range "
        "is why Adam is the default'",
        experiment="optimlab.lab.sweep(['sgd', 'adam'], 'digits', lrs='1e-4:10:16', steps=200, seeds=1): "
        "decades of lr whose validation loss is within 2× of the best",
        rule="confirmed if Adam's band is at least 10× (1 decade) wider than SGD's on the grid, refuted "
        "otherwise",
        measure=SGD_ADAM, judge=judge_sensitivity, describe=lambda n: describe_bands(n, "sgd", "adam")),
    Claim(
        id="adam-lr-10-100x-smaller", seed="curvature-bets",
        claim="Adam's step is ≈ η·sign(g): 'Hence LRs are 10–100× smaller for Adam than SGD.'",
        experiment="the same sweep: SGD's best lr ÷ Adam's, each read between grid points (vertex of a "
        "parabola through log-loss at the best lr and its neighbours)",
        rule="confirmed if the ratio is within 10–100× (±25%), refuted otherwise",
        measure=SGD_ADAM, judge=judge_adam_vs_sgd_lr, describe=lambda n: ratio_text(n, "sgd", "adam")),
    Claim(
        id="lion-lr-3x-smaller", seed="curvature-bets",
        claim="Lion 'Requires smaller LR (~3× smaller than AdamW) and larger weight decay'",
        experiment="optimlab.lab.sweep(['adamw', 'lion'], 'digits', lrs='1e-4:0.1:13', steps=200, seeds=1): "
        "AdamW's best lr ÷ Lion's, each read between grid points",
        rule="confirmed if the ratio is within the paper's 3–10× (±25%); depends if Lion's is smaller by "
        "another factor; refuted if it is not smaller",
        measure=ADAMW_LION, judge=judge_lion_smaller,
        describe=lambda n: ratio_text(n, "adamw", "lion") + "; " + describe_bands(n, "adamw", "lion"),
        reference="Chen et al. 2023 §5: Lion's lr is typically 3–10× smaller than AdamW's"),
    Claim(
        id="lion-larger-lr", seed="adam-vs-sgd",
        claim="Lion 'Works best with larger learning rates and smaller batch sizes than Adam'",
        experiment="the same sweep (AdamW with its default weight decay 0.01): Lion's best lr ÷ AdamW's",
        rule="confirmed if Lion's best lr is more than 1.25× AdamW's; refuted if less than 1/1.25×; depends "
        "otherwise",
        measure=ADAMW_LION, judge=judge_lion_larger, describe=lambda n: ratio_text(n, "lion", "adamw"),
        reference="Chen et al. 2023 §5: a 3–10× smaller lr than AdamW"),
    Claim(
        id="lion-step-is-eta", seed="modern-variants",
        claim="Lion 'uses only the sign of the momentum update … every parameter update has the same "
        "magnitude (η)'",
        experiment="Lion (lr 1e-3, no weight decay) on the digits MLP for 20 steps: |Δθ| of every coordinate "
        "at every step",
        rule="confirmed if every coordinate moves exactly η (to 1e-3η); refuted if any moves by another "
        "non-zero amount; depends if the rest do not move at all",
        measure=lion_steps, judge=judge_lion_magnitude,
        describe=lambda n: f"over {n['steps']} steps × {n['coordinates']:,} coordinates: "
        f"{n['share_eta']:.2%} moved exactly η, {n['share_zero']:.2%} did not move "
        f"({n['share_never_a_gradient']:.2%} of coordinates never got a gradient), {n['share_other']:.2%} "
        "moved by anything else"),
]
