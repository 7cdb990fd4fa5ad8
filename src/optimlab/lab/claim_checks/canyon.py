"""The canyon 100x² + y² from (1, 1) of the canyon lesson, and Reddi et al.'s counterexample, raced."""

from __future__ import annotations

import numpy as np

from ..races import race
from .core import Claim, Verdict, confirmed, depends, fmt, refuted


def sgd_bounce(ctx) -> dict:
    steps = ctx.size(1000, 100)
    xy = race("canyon", "sgd", steps=steps)["sgd"].positions  # the landscape's lr for SGD: α = 0.01
    x, y = xy[:, 0], xy[:, 1]
    return {"steps": steps, "sign_flips": int(np.sum(np.sign(x[1:]) == -np.sign(x[:-1]))),
            "max_abs_x_minus_1": float(np.max(np.abs(np.abs(x) - 1))),
            "y_ratio_per_step": float(np.mean(y[1:] / y[:-1])), "y_final": float(y[-1])}


def momentum_bounce(ctx) -> dict:
    steps = ctx.size(60, 30)
    x = race("canyon", "momentum", steps=steps)["momentum"].positions[:, 0]  # α = 0.01, β = 0.9
    dx = np.diff(x)
    # |x|'s envelope: the largest |x| in the first and the last ten steps, and the per-step rate between
    early, late = np.max(np.abs(x[1:11])), np.max(np.abs(x[-10:]))
    return {"steps": steps, "dx": [float(v) for v in dx[:3]], "second_over_first": float(abs(dx[1] / dx[0])),
            "third_over_first": float(abs(dx[2] / dx[0])), "envelope_first_10": float(early),
            "envelope_last_10": float(late),
            "envelope_rate_per_step": float((late / early) ** (1 / (steps - 10)))}


def adam_diagonal(ctx) -> dict:
    steps = ctx.size(200, 50)
    r = race("canyon", "adam,adam_no_bias_correction", steps=steps)  # α = 0.1, β = (0.9, 0.999)
    out = {"steps": steps}
    for label in r.labels:
        xy = r[label].positions
        out[f"{label}_max_abs_x_minus_y"] = float(np.max(np.abs(xy[:, 0] - xy[:, 1])))
        out[f"{label}_first_points"] = [float(v) for v in xy[1:3, 0]]
    return out


def reddi(ctx) -> dict:
    steps = ctx.size(1200, 300)  # whole periods of three steps
    r = race("reddi", "adam,amsgrad", steps=steps)  # the paper's setting: β₁ = 0, β₂ = 1/(1 + C²), α/√t
    return {"steps": steps, "adam_final_x": float(r["adam"].final[0]),
            "amsgrad_final_x": float(r["amsgrad"].final[0]),
            "optimum": -1.0}


def judge_reddi(n) -> Verdict:
    adam_fails, ams_fixes = n["adam_final_x"] > 0.9, abs(n["amsgrad_final_x"] + 1) <= 0.05
    if adam_fails and ams_fixes:
        return confirmed()
    if not adam_fails or n["amsgrad_final_x"] > -0.5:
        return refuted()
    return depends(f"AMSGrad moves towards −1 but ends at {fmt(n['amsgrad_final_x'])} after {n['steps']} "
                   "steps")


CLAIMS = [
    Claim(
        id="sgd-flips-forever", seed="canyon",
        claim="SGD at α = 0.01 on 100x² + y² from (1, 1): 'x flips sign every step. Forever. y creeps down "
        "by 2% each step.'",
        experiment="race('canyon', 'sgd') for 1000 steps (α = 0.01)",
        rule="confirmed if x changes sign at every step with |x| = 1 to 1e-12, refuted otherwise",
        measure=sgd_bounce,
        judge=lambda n: confirmed() if n["sign_flips"] == n["steps"] and n["max_abs_x_minus_1"] < 1e-12
        else refuted(),
        describe=lambda n: f"x flipped sign at {n['sign_flips']} of {n['steps']} steps, max ||x| − 1| = "
        f"{fmt(n['max_abs_x_minus_1'])} (1 − 200α = −1 exactly); y × {n['y_ratio_per_step']:.4f} a step, y = "
        f"{fmt(n['y_final'])} at the end"),
    Claim(
        id="momentum-bounce-tenth", seed="canyon",
        claim="SGD + momentum (α = 0.01, β = 0.9) on the canyon: at step 1 'the bounce cancelled itself down "
        "to a tenth of the size'",
        experiment="race('canyon', 'momentum') for 60 steps: the x-updates and |x|'s envelope",
        rule="confirmed if the second x-update is a tenth of the first (to 1e-9), refuted otherwise",
        measure=momentum_bounce,
        judge=lambda n: confirmed() if abs(n["second_over_first"] - 0.1) < 1e-9 else refuted(),
        describe=lambda n: f"x-updates {', '.join(f'{v:+.3g}' for v in n['dx'])}: the second is "
        f"{fmt(n['second_over_first'])}× the first, but the third is back to {fmt(n['third_over_first'])}×; "
        f"max |x| falls {fmt(n['envelope_first_10'])} → {fmt(n['envelope_last_10'])} from the first to the "
        f"last 10 of {n['steps']} steps, ×{n['envelope_rate_per_step']:.3f} a step (√β = 0.949)"),
    Claim(
        id="adam-equal-speed", seed="canyon",
        claim="Adam on the canyon: 'Both x and y move at roughly the same speed, even though their gradient "
        "magnitudes differ by 100×'",
        experiment="race('canyon', 'adam,adam_no_bias_correction') for 200 steps (α = 0.1): max |x − y| "
        "along the path",
        rule="confirmed if |x − y| stays below 1e-6 for both variants, refuted otherwise",
        measure=adam_diagonal,
        judge=lambda n: confirmed() if max(v for k, v in n.items() if k.endswith("max_abs_x_minus_y")) < 1e-6
        else refuted(),
        describe=lambda n: f"max |x − y| over {n['steps']} steps: {fmt(n['adam_max_abs_x_minus_y'])} (Adam), "
        f"{fmt(n['adam_no_bias_correction_max_abs_x_minus_y'])} (no bias correction, the lesson's variant: "
        "x = "
        f"{', '.join(f'{v:.4f}' for v in n['adam_no_bias_correction_first_points'])} after steps 1, 2; with "
        f"the correction {', '.join(f'{v:.4f}' for v in n['adam_first_points'])})"),
    Claim(
        id="amsgrad-fixes-reddi", seed="curvature-bets",
        claim="Reddi et al.'s 1-D counterexample: 'Adam keeps stepping in the wrong direction. Fix: AMSGrad'",
        experiment="race('reddi', 'adam,amsgrad'): f_t = 3x once every 3 steps, −x otherwise, x ∈ [−1, 1], "
        "β₁ = 0, β₂ = 1/(1 + C²), α = 0.5/√t, 1200 steps",
        rule="confirmed if Adam ends above 0.9 (the worst point, +1) and AMSGrad within 0.05 of the optimum "
        "−1; refuted if Adam does not fail or AMSGrad ends above −0.5; depends otherwise",
        measure=reddi,
        judge=judge_reddi,
        describe=lambda n: f"after {n['steps']} steps Adam is at x = {n['adam_final_x']:+.4f}, AMSGrad at "
        f"{n['amsgrad_final_x']:+.4f} (optimum −1)",
        reference="Reddi et al. 2018, Theorem 1 (AMSGrad keeps the running max of v over all steps)"),
]
