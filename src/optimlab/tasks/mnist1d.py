"""A small 1-D CNN on MNIST-1D (Greydanus 2020): ten templated digits as noisy, shifted, sheared 40-sample
signals, a data set built so that a CNN clearly beats an MLP and optimizers separate in minutes on a CPU.

The data are generated offline by the `mnist1d` package's `make_dataset` with its default arguments
(4,000 training and 1,000 test signals, the generator seeded by the package); its download helper is
never called. The 5,000 signals are shuffled by the seed and 1,000 held out (as the digits task does).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from . import Problem, Task, register
from .digits import classification_problem


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(signals, labels, held-out count). Generated once per process (a few seconds)."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x = torch.tensor(np.concatenate([d["x"], d["x_test"]]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([d["y"], d["y_test"]]), dtype=torch.long)
    return x, y, len(d["y_test"])


class ConvNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2), nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(),  # 40 → 20 samples
            nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(),  # 20 → 10
        )
        self.head = nn.Linear(c * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x[:, None, :]).flatten(1))


def build(seed: int = 0, channels: int = 16, batch_size: int = 64) -> Problem:
    x, y, held_out = data()
    torch.manual_seed(seed)
    return classification_problem(ConvNet(channels), x, y, seed, batch_size, held_out)


register(Task("mnist1d", "MNIST-1D signals from mnist1d.make_dataset (4,000 + 1,000, 40 samples), "
              "3-layer 1-D CNN (16 channels), cross-entropy, batch 64", build))
