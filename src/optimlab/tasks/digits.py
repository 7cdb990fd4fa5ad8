"""scikit-learn's bundled 8×8 handwritten digits (1,797 images) with a small MLP classifier."""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import Problem, Task, register

VALIDATION = 360  # held-out images; the other 1,437 train


def classification_problem(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, batch_size: int,
                           validation: int) -> Problem:
    """Minibatches drawn by a seeded shuffle per epoch; the last `validation` rows of the split are held
    out."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    x, y = x[order], y[order]
    x_train, y_train, x_val, y_val = x[:-validation], y[:-validation], x[-validation:], y[-validation:]
    # Standardise with training statistics. A pixel that is constant in this split keeps scale 1 (as
    # scikit-learn's StandardScaler does): dividing by a tiny std would blow held-out values up to 1e6.
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    per_epoch = max(len(x_train) // batch_size, 1)
    epochs: dict[int, torch.Tensor] = {}
    criterion = nn.CrossEntropyLoss()

    def batch(step: int) -> torch.Tensor:
        epoch, i = divmod(step, per_epoch)
        if epoch not in epochs:
            epochs.clear()
            shuffle = torch.Generator().manual_seed(seed * 7919 + epoch)
            epochs[epoch] = torch.randperm(len(x_train), generator=shuffle)
        return epochs[epoch][i * batch_size:(i + 1) * batch_size]

    def loss(step: int) -> torch.Tensor:
        idx = batch(step)
        return criterion(model(x_train[idx]), y_train[idx])

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        logits = model(x_val)
        return {"train_loss": criterion(model(x_train), y_train).item(),
                "val_loss": criterion(logits, y_val).item(),
                "val_accuracy": (logits.argmax(1) == y_val).float().mean().item()}

    return Problem(model=model, loss=loss, evaluate=evaluate)


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels, read once per process (loading takes up to seconds on a busy machine)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.long)


def build(seed: int = 0, hidden: int = 64, depth: int = 2, batch_size: int = 64) -> Problem:
    x, y = data()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = x.shape[1]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    return classification_problem(model, x, y, seed, batch_size, VALIDATION)


register(Task("digits", "8×8 digits from scikit-learn, MLP 64→64→64→10, cross-entropy, batch 64", build))
