"""The "compare optimizers on a task" function of the lesson on Adam, SGD and RMSProp, on a real task that
ships offline: scikit-learn's bundled 8×8 digits (optimlab's `digits` task: its model, split and scaling).

The lesson's function trains SGD+Nesterov (lr 0.01, momentum 0.9, weight decay 5e-4), Adam with L2 (lr 1e-3,
weight decay 1e-4), AdamW (lr 1e-3, weight decay 0.01) and RMSProp (lr 1e-3, α 0.99), each from
torch.manual_seed(42), with a shuffled DataLoader of batch 64 for n_epochs (default 100); it prints the final
training loss, the validation accuracy and the "50%-convergence" epoch: the first epoch whose mean training
loss is below half of epoch 0's mean. It runs here with torch.optim's classes and optimlab's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

import optimlab
from optimlab.tasks import digits

from .core import Check, Example, agree, fmt, ok

SEED = 42
BATCH = 64
EPOCHS = 30  # the function's argument (default 100): 30 keeps the whole set of examples within a minute
HIDDEN = 64  # optimlab's digits model: 64 → 64 → 64 → 10


def configs(lib) -> dict:
    """The lesson's four optimizers, from torch.optim or optimlab (the same names and hyperparameters)."""
    return {
        "SGD+Nesterov": lambda m: lib.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                          weight_decay=5e-4),
        "Adam": lambda m: lib.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4),
        "AdamW": lambda m: lib.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
        "RMSProp": lambda m: lib.RMSprop(m.parameters(), lr=1e-3, alpha=0.99),
    }


IMPLEMENTATIONS = {"torch": torch.optim, "optimlab": optimlab}


def split() -> tuple[torch.Tensor, ...]:
    """The digits task's split (360 held out) and standardisation, as optimlab's task builds it for seed 0."""
    x, y = digits.data()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000))
    x, y = x[order], y[order]
    n = len(x) - digits.VALIDATION
    x_train, x_val = x[:n], x[n:]
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return (x_train - mean) / std, y[:n], (x_val - mean) / std, y[n:]


def model_fn() -> nn.Module:
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 10))


def compare(lib, n_epochs: int = EPOCHS) -> dict:
    """The lesson's loop, re-typed: {name: {final_train_loss, val_acc, convergence_epoch, losses, ...}}."""
    x_train, y_train, x_val, y_val = split()
    criterion = nn.CrossEntropyLoss()
    results = {}
    for name, make in configs(lib).items():
        torch.manual_seed(SEED)  # before the model and the loader's shuffles, as in the lesson
        model = model_fn()
        # the lesson's DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True), drawing the same batches
        # from the same global generator, but over indices: collating 64 rows one by one costs more than a
        # step
        loader = DataLoader(range(len(x_train)), batch_size=BATCH, shuffle=True)
        opt = make(model)
        with torch.no_grad():
            untrained = criterion(model(x_train), y_train).item()  # not in the lesson: a fixed reference
        losses = []
        for _ in range(n_epochs):
            model.train()
            total = 0.0
            for idx in loader:
                bx, by = x_train[idx], y_train[idx]
                opt.zero_grad()
                loss = criterion(model(bx), by)
                loss.backward()
                opt.step()
                total += loss.item()
            losses.append(total / len(loader))
        model.eval()
        with torch.no_grad():
            val_acc = (model(x_val).argmax(1) == y_val).float().mean().item()
        results[name] = {
            "final_train_loss": losses[-1], "val_acc": val_acc, "losses": losses, "untrained": untrained,
            "convergence_epoch": next((i for i, v in enumerate(losses) if v < losses[0] * 0.5), n_epochs),
            "halving_untrained": next((i for i, v in enumerate(losses) if v < untrained * 0.5), n_epochs)}
    return results


def run() -> tuple[str, list[Check], dict]:
    res = {impl: compare(lib) for impl, lib in IMPLEMENTATIONS.items()}
    lines = []
    for impl, r in res.items():
        lines.append(f"{impl}:")
        lines += [f"  {name:20s}: train_loss={v['final_train_loss']:.4f}, val_acc={v['val_acc']:.3f}, "
                  f"50%-convergence at epoch {v['convergence_epoch']}" for name, v in r.items()]
    lines.append("epoch 0's mean loss, against which the lesson counts: " + ", ".join(
        f"{n} {v['losses'][0]:.3f}" for n, v in res["torch"].items()) + f" (untrained: "
        f"{res['torch']['Adam']['untrained']:.3f}); epochs to halve the untrained loss instead: " + ", ".join(
        f"{n} {v['halving_untrained']}" for n, v in res["torch"].items()))
    one_image = 1 / digits.VALIDATION

    def parts(fn):
        return {impl: fn(r) for impl, r in res.items()}

    faster = parts(lambda r: r["Adam"]["convergence_epoch"] < r["SGD+Nesterov"]["convergence_epoch"])
    sgd_best = parts(lambda r: all(r["SGD+Nesterov"]["val_acc"] > r[n]["val_acc"] for n in r
                                   if n != "SGD+Nesterov"))
    adamw_better = parts(lambda r: r["AdamW"]["val_acc"] > r["Adam"]["val_acc"])
    same_order = parts(lambda r: sorted(r, key=lambda n: (r[n]["convergence_epoch"], n))
                       == sorted(r, key=lambda n: (r[n]["halving_untrained"], n)))

    def show(field, names, digits_=3):
        return "; ".join(f"{impl}: " + ", ".join(f"{n} {fmt(r[n][field], digits_)}" for n in names)
                         for impl, r in res.items())

    checks = [
        Check("'Adam wins on … fast convergence when you want results quickly' (its 50%-convergence epoch "
              "before SGD+Nesterov's)",
              "50%-convergence epoch: " + show("convergence_epoch", ["Adam", "SGD+Nesterov"]) + "; "
              + ", ".join(f"{i} {ok(v)}" for i, v in faster.items()),
              "confirmed if Adam's epoch is earlier than SGD+Nesterov's with torch's and optimlab's "
              "optimizers, "
              "refuted if not with either", agree(faster)),
        Check("'SGD with momentum wins on image classification from scratch … where final generalization "
              "quality matters'",
              f"validation accuracy after {EPOCHS} epochs: " + show("val_acc", list(res["torch"]), 4)
              + f" (one image = {one_image:.4f})",
              "confirmed if SGD+Nesterov's accuracy is above each of the three others' with both libraries, "
              "refuted if not with either", agree(sgd_best)),
        Check("'AdamW consistently outperforms Adam + L2 regularization'",
              "validation accuracy: " + show("val_acc", ["AdamW", "Adam"], 4),
              "confirmed if AdamW's accuracy is above Adam's (weight decay 1e-4 as L2) with both libraries, "
              "refuted if not with either", agree(adamw_better)),
        Check("The '50%-convergence' epoch ranks the optimizers by speed",
              "it halves epoch 0's *mean* loss, which already includes a whole epoch of training (a fast "
              "optimizer sets itself a lower bar); ranked by epochs to halve the untrained loss instead: "
              + ", ".join(f"{i} same order {ok(v)}" for i, v in same_order.items()),
              "confirmed if both measures rank the four optimizers alike (ties by name) with both libraries, "
              "refuted if with neither", agree(same_order)),
    ]
    numbers = res  # per library and optimizer: the printed numbers, every epoch's loss, the untrained loss
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="compare-on-task", lesson="adam-vs-sgd",
    title="compare_optimizers_on_task(): SGD+Nesterov, Adam with L2, AdamW and RMSProp",
    setup=f"digits (scikit-learn's bundled load_digits: 1,437 train / 360 validation images, standardised), "
    f"MLP 64 → {HIDDEN} → {HIDDEN} → 10, cross-entropy, DataLoader(batch_size={BATCH}, shuffle=True), "
    f"n_epochs={EPOCHS} (the function's default is 100), torch.manual_seed({SEED}) before each model; the "
    "lesson's four "
    "optimizer configurations from torch.optim and from optimlab",
    run=run)

