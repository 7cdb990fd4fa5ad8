"""Regression on scikit-learn's bundled diabetes data: a small MLP predicts disease progression.

442 patients, 10 standardised features, a standardised target (so a mean-squared error of 1.0 is the
constant predictor and 1 − MSE is roughly R²); 88 held out. A noisy, small regression problem where
overfitting starts early: the held-out error, not the training error, tells the optimizers apart.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import Problem, Task, register

VALIDATION = 88  # held-out patients (20%); the other 354 train


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.float32)


def build(seed: int = 0, hidden: int = 32, batch_size: int = 32) -> Problem:
    x, y = data()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    x, y = x[order], y[order]
    x_train, y_train, x_val, y_val = x[:-VALIDATION], y[:-VALIDATION], x[-VALIDATION:], y[-VALIDATION:]
    # standardise features and target with training statistics only
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    y_mean, y_std = y_train.mean(), y_train.std()
    y_train, y_val = (y_train - y_mean) / y_std, (y_val - y_mean) / y_std
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, 1))
    per_epoch = len(x_train) // batch_size
    criterion = nn.MSELoss()

    def loss(step: int) -> torch.Tensor:
        # a seeded shuffle per epoch: every optimizer sees the same batches
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        idx = order[i * batch_size:(i + 1) * batch_size]
        return criterion(model(x_train[idx]).squeeze(1), y_train[idx])

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        return {"train_loss": criterion(model(x_train).squeeze(1), y_train).item(),
                "val_loss": criterion(model(x_val).squeeze(1), y_val).item()}

    return Problem(model=model, loss=loss, evaluate=evaluate)


register(Task("diabetes", "diabetes progression from scikit-learn (10 standardised features), MLP 10→32→1 "
              "(tanh), mean-squared error on the standardised target, batch 32", build))
