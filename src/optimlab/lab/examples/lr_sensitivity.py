"""The LR-sensitivity regression of the lesson on Adam, SGD and RMSProp: a 1-16-1 ReLU network fitting
sin(2πx) on 100 points, full batch, 500 steps, plain SGD against Adam at five learning rates.

The lesson's code seeds `torch.manual_seed(0)` before each model, prints the loss of the last forward pass
(taken before the last update) for each lr, and comments on the pattern it expects. Each of the four
statements of that pattern gets a verdict, with optimlab's SGD and Adam and with torch.optim's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import optimlab

from .core import Check, Example, agree, fmt, ok

LRS = (1e-4, 1e-3, 1e-2, 0.1, 1.0)
STEPS = 500
POINTS = 100
SEED = 0
IMPLEMENTATIONS = {"optimlab": {"SGD": optimlab.SGD, "Adam": optimlab.Adam},
                   "torch": {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam}}

# What the words of the lesson's comment mean here, against the loss L0 of the untrained model:
DIVERGES = "the final loss is not finite or above L0"
CONVERGES = "the final loss is at most L0 / 2"
BARELY_MOVES = "the final loss is at least 0.9 L0"
SLOWLY = "the final loss is below L0 but above L0 / 2"


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, POINTS).unsqueeze(1)
    return x, torch.sin(2 * math.pi * x)


def train(optimizer_class, lr: float) -> tuple[float, float]:
    """(the untrained loss, the lesson's 'final loss': the last forward pass, before the last update)."""
    x, y = data()
    torch.manual_seed(SEED)
    model = make_model()
    opt = optimizer_class(model.parameters(), lr=lr)
    first = None
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    return first, loss.item()


# --- the words of the comment, as rules on (final loss, untrained loss) ---------------------------------

def diverges(final: float, initial: float) -> bool:
    return not math.isfinite(final) or final > initial


def converges(final: float, initial: float) -> bool:
    return math.isfinite(final) and final <= initial / 2


def barely_moves(final: float, initial: float) -> bool:
    return math.isfinite(final) and final >= 0.9 * initial


def slowly(final: float, initial: float) -> bool:
    return math.isfinite(final) and initial / 2 < final < initial


def threshold(finals: dict[float, float], initial: float) -> float:
    """The smallest lr of the grid at which the run diverges (inf: none does)."""
    return min((lr for lr, f in finals.items() if diverges(f, initial)), default=math.inf)


def statements(final: dict[str, dict[float, float]], initial: float) -> list[tuple[str, str, bool]]:
    """The comment's four statements for one implementation's {"SGD": {lr: loss}, "Adam": {...}}:
    (statement, which parts held, whether all did)."""
    sgd, adam = final["SGD"], final["Adam"]
    s1 = (barely_moves(sgd[1e-4], initial), slowly(adam[1e-4], initial))
    s2 = (converges(sgd[1e-3], initial), converges(adam[1e-3], initial), adam[1e-3] < sgd[1e-3])
    s3 = (diverges(sgd[0.1], initial), converges(adam[0.1], initial))
    t_sgd, t_adam = threshold(sgd, initial), threshold(adam, initial)
    s4 = (diverges(sgd[1.0], initial), diverges(adam[1.0], initial), t_adam > t_sgd)
    return [
        ("Small LR (1e-4): SGD barely moves, Adam converges slowly",
         f"SGD barely moves {ok(s1[0])}, Adam slowly {ok(s1[1])}", all(s1)),
        ("Medium LR (1e-3): both work, Adam usually faster",
         f"SGD works {ok(s2[0])}, Adam works {ok(s2[1])}, Adam lower {ok(s2[2])}", all(s2)),
        ("Large LR (0.1): SGD diverges, Adam still converges",
         f"SGD diverges {ok(s3[0])}, Adam converges {ok(s3[1])}", all(s3)),
        ("Very large LR (1.0): both diverge, but Adam fails at higher threshold",
         f"SGD diverges {ok(s4[0])}, Adam diverges {ok(s4[1])}, Adam's threshold higher {ok(s4[2])} "
         f"(first diverging lr: SGD {fmt(t_sgd)}, Adam {fmt(t_adam)})", all(s4)),
    ]


BOTH = ("confirmed if every part holds with optimlab's and with torch's optimizers, refuted if a part fails "
        "with both")
L0 = "L0 = the untrained loss, the same for every run"
RULES = [
    f"{BOTH}; 'barely moves': {BARELY_MOVES}; 'converges slowly': {SLOWLY} ({L0})",
    f"{BOTH}; 'works': {CONVERGES}; 'faster': the lower loss after the 500 steps ({L0})",
    f"{BOTH}; 'diverges': {DIVERGES}; 'converges': {CONVERGES} ({L0})",
    f"{BOTH}; 'diverges': {DIVERGES}; 'threshold': the smallest lr of the grid that diverges ({L0})",
]
LR_OF = (1e-4, 1e-3, 0.1, 1.0)  # the lr each statement is about


def run() -> tuple[str, list[Check], dict]:
    final: dict[str, dict[str, dict[float, float]]] = {}
    initial = None
    for impl, classes in IMPLEMENTATIONS.items():
        final[impl] = {}
        for name, cls in classes.items():
            final[impl][name] = {}
            for lr in LRS:
                first, last = train(cls, lr)
                initial = first if initial is None else initial
                final[impl][name][lr] = last
    head = (f"{'LR':<10} | {'SGD optimlab':>13} | {'SGD torch':>13} | {'Adam optimlab':>13} | "
            f"{'Adam torch':>13}")
    rows = [head, "-" * len(head)]
    for lr in LRS:
        cells = [final[i][n][lr] for n in ("SGD", "Adam") for i in IMPLEMENTATIONS]
        rows.append(f"{lr:<10} | " + " | ".join(f"{c:>13.4f}" for c in cells))
    rows.append(f"untrained loss L0 = {initial:.4f} (the same model for every run: "
                f"torch.manual_seed({SEED}))")
    per_impl = {impl: statements(final[impl], initial) for impl in IMPLEMENTATIONS}
    checks = []
    for k, rule in enumerate(RULES):
        says = per_impl["optimlab"][k][0]
        lr = LR_OF[k]
        parts = "; ".join(f"{impl}: SGD {fmt(final[impl]['SGD'][lr])}, Adam {fmt(final[impl]['Adam'][lr])} "
                          f"(L0 {fmt(initial)}): {per_impl[impl][k][1]}" for impl in IMPLEMENTATIONS)
        verdict = agree({impl: per_impl[impl][k][2] for impl in IMPLEMENTATIONS})
        checks.append(Check(says, parts, rule, verdict))
    numbers = {"initial_loss": initial, "steps": STEPS, "lrs": list(LRS),
               "final_loss": {i: {n: [final[i][n][lr] for lr in LRS] for n in final[i]} for i in final}}
    return "\n".join(rows), checks, numbers


EXAMPLE = Example(
    id="lr-sensitivity", lesson="adam-vs-sgd",
    title="compare_lr_sensitivity(): plain SGD against Adam at five learning rates",
    setup="nn.Sequential(Linear(1, 16), ReLU, Linear(16, 1)); x = 100 points of linspace(-1, 1), y = "
          "sin(2πx); "
    "mean squared error, full batch, 500 steps; torch.manual_seed(0) before each model; lr ∈ {1e-4, 1e-3, "
    "1e-2, 0.1, 1.0}; SGD and Adam at their defaults otherwise; the loss printed is the last forward pass",
    run=run)
