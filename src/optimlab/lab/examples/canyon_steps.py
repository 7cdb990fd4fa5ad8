"""The canyon's three hand-computed steps, from the lesson on the canyon and smart nudging: L = 100x² + y²
from (1, 1), vanilla SGD (α 0.01), SGD + momentum (α 0.01, β 0.9) and Adam (α 0.1, bias correction skipped),
each printed number of the lesson beside the value computed in float64 with optimlab's optimizers and torch's.

Four of the lesson's numbers come from carrying its own rounded numbers into the next line: momentum's
g_y = 1.884 is 2 × the printed y = 0.942 (exactly 2 × 0.9424 = 1.8848); Adam's second update −0.413 is
0.1 × 31.68/√58.7 from the printed moments (exactly −0.41357), so its position 0.271 = 0.684 − 0.413 is
exactly 0.27021 and the next gradient 54.2 is exactly 54.04.
"""

from __future__ import annotations

import torch

import optimlab

from .core import Check, Example, agree, confirmed, fmt, refuted

STEPS = 3

# (what, step, the lesson's printed text for x, for y): positions are after `step` updates, the others at it
SGD_PRINTED = [("position", 1, "-1.000", "0.980"), ("position", 2, "1.000", "0.960"),
               ("position", 3, "-1.000", "0.941"), ("gradient", 0, "200", "2"),
               ("gradient", 1, "-200", "1.96"), ("gradient", 2, "200", "1.92"),
               ("update", 0, "-2.00", "-0.02")]
MOMENTUM_PRINTED = [("velocity", 0, "200", "2"), ("velocity", 1, "-20", "3.76"),
                    ("velocity", 2, "-178", "5.27"),
                    ("position", 1, "-1.000", "0.980"), ("position", 2, "-0.800", "0.942"),
                    ("position", 3, "0.980", "0.890"), ("gradient", 2, "-160", "1.884")]
ADAM_PRINTED = [("m", 0, "20", "0.2"), ("v", 0, "40", "0.004"), ("m", 1, "31.68", "0.317"),
                ("v", 1, "58.7", "0.00587"), ("update", 0, "-0.316", "-0.316"),
                ("position", 1, "0.684", "0.684"),
                ("gradient", 1, "136.8", "1.368"), ("update", 1, "-0.413", "-0.413"),
                ("position", 2, "0.271", "0.271"), ("gradient", 2, "54.2", "0.542")]
STATE_KEYS = {"velocity": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}


def canyon_steps(make, steps=STEPS):
    """Positions, gradients and the optimizer's state after each step (gradient (200x, 2y) by autograd)."""
    xy = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = make([xy])
    positions, grads, states = [xy.detach().tolist()], [], []
    for _ in range(steps):
        xy.grad = None
        (100 * xy[0] ** 2 + xy[1] ** 2).backward()
        grads.append(xy.grad.tolist())
        opt.step()
        positions.append(xy.detach().tolist())
        states.append({k: v.tolist() for k, v in opt.state[xy].items() if k != "step"})
    return positions, grads, states


def printed(value: float, text: str) -> bool:
    """`value` shown as `text` (the lesson's digits): within half a unit of its last printed place."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(value - float(text)) <= 0.5 * 10 ** -decimals + 1e-12


def value_of(what: str, step: int, run) -> list[float]:
    positions, grads, states = run
    if what == "position":
        return positions[step]
    if what == "gradient":
        return grads[step]
    if what == "update":
        return [a - b for a, b in zip(positions[step + 1], positions[step])]
    return states[step][STATE_KEYS[what]]


def compare(table, run) -> list[tuple[str, str, float]]:
    """The printed numbers that the computed run does not show: (label, printed, computed)."""
    misses = []
    for what, step, tx, ty in table:
        for axis, text, value in zip("xy", (tx, ty), value_of(what, step, run)):
            if not printed(value, text):
                misses.append((f"{what} {axis} at step {step}", text, value))
    return misses


RUNS = {
    "SGD": (SGD_PRINTED, {"optimlab": lambda ps: optimlab.SGD(ps, lr=0.01),
                          "torch": lambda ps: torch.optim.SGD(ps, lr=0.01)}),
    "momentum": (MOMENTUM_PRINTED, {"optimlab": lambda ps: optimlab.SGD(ps, lr=0.01, momentum=0.9),
                                    "torch": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)}),
    # torch's Adam cannot skip the bias correction: optimlab's alone
    "Adam": (ADAM_PRINTED, {"optimlab": lambda ps: optimlab.Adam(ps, lr=0.1, bias_correction=False)}),
}
def owners(implementations) -> str:
    return " and ".join(f"{i}'s" for i in implementations)


def run() -> tuple[str, list[Check], dict]:
    runs = {name: {impl: canyon_steps(make) for impl, make in makers.items()}
            for name, (_, makers) in RUNS.items()}
    lines, checks, numbers = [], [], {}
    for name, (table, makers) in RUNS.items():
        ref = runs[name]["optimlab"]
        lines.append(f"{name}: {'what':<10} {'step':>4} | {'lesson x':>9} {'computed x':>11} | "
                     f"{'lesson y':>9} {'computed y':>11}")
        for what, step, tx, ty in table:
            vx, vy = value_of(what, step, ref)
            lines.append(f"{'':{len(name) + 2}}{what:<10} {step:>4} | {tx:>9} {vx:>11.5g} | {ty:>9} "
                         f"{vy:>11.5g}")
        misses = {impl: compare(table, run) for impl, run in runs[name].items()}
        count = 2 * len(table)
        shown = misses["optimlab"]
        checks.append(Check(
            f"The {name} steps as printed ({count} numbers)",
            (f"all {count} reproduce at their printed precision" if not shown else
             f"{count - len(shown)} of {count} reproduce; " + "; ".join(
                 f"{label}: printed {text}, computed {value:.5g}" for label, text, value in shown)
             + " (the lesson carried its own rounded numbers into the next line)")
            + f", with {owners(misses)} optimizers",
            "confirmed if every printed number is the computed value rounded to its printed digits, refuted "
            "otherwise", agree({impl: not m for impl, m in misses.items()})))
        numbers[name] = {impl: [list(miss) for miss in m] for impl, m in misses.items()}
    sgd, mom, adam = (runs[n]["optimlab"] for n in ("SGD", "momentum", "Adam"))
    y_ratio = [sgd[0][i + 1][1] / sgd[0][i][1] for i in range(STEPS)]
    tenth = abs(mom[2][1]["momentum_buffer"][0]) / abs(mom[2][0]["momentum_buffer"][0])
    xy_gap = max(abs(x - y) for x, y in adam[0])
    checks += [
        Check("SGD: 'x flips sign every step … y creeps down by 2% each step'",
              f"x: {', '.join(f'{p[0]:+.0f}' for p in sgd[0])}; y × {', '.join(f'{r:.4f}' for r in y_ratio)}",
              "confirmed if x alternates ±1 and y shrinks by 2 % (1 − 2α) at every step to 1e-12, refuted "
              "otherwise",
              confirmed() if all(abs(abs(p[0]) - 1) < 1e-12 for p in sgd[0]) and all(abs(r - 0.98) < 1e-12
                                                                                     for r in y_ratio)
              else refuted()),
        Check("Momentum: 'The bounce cancelled itself down to a tenth of the size'",
              f"|v_x| after step 1 / after step 0 = {fmt(tenth, 6)}",
              "confirmed if the ratio is 0.1 to 1e-12, refuted otherwise",
              confirmed() if abs(tenth - 0.1) < 1e-12 else refuted()),
        Check("Adam: 'Both x and y move at roughly the same speed, even though their gradient magnitudes "
              "differ "
              "by 100×'",
              f"max |x − y| over the three steps: {fmt(xy_gap)}",
              "confirmed if |x − y| stays below 1e-6, refuted otherwise",
              confirmed() if xy_gap < 1e-6 else refuted()),
    ]
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="canyon-steps", lesson="canyon",
    title="three hand-computed steps of SGD, momentum and Adam on the canyon",
    setup="L = 100x² + y², start (1, 1), gradient (200x, 2y); SGD α 0.01; SGD + momentum α 0.01, β 0.9, "
          "velocity "
    "from 0; Adam α 0.1, β (0.9, 0.999), bias correction skipped (optimlab's Adam(bias_correction=False); "
    "torch "
    "has no such switch); three steps in float64",
    run=run)
