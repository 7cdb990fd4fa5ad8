"""Logistic regression on scikit-learn's bundled Wisconsin breast-cancer data: a convex problem.

569 tumours, 30 features each, two classes; 114 held out. The model is one linear layer onto two
logits with cross-entropy, which is multinomial logistic regression: convex in its weights, so every
optimizer chases the same global minimum and differences are about speed and noise, not about luck.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import Problem, Task, register
from .digits import classification_problem

VALIDATION = 114  # held-out tumours (20%); the other 455 train


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.long)


def build(seed: int = 0, batch_size: int = 32) -> Problem:
    x, y = data()
    torch.manual_seed(seed)
    return classification_problem(nn.Linear(x.shape[1], 2), x, y, seed, batch_size, VALIDATION)


register(Task("cancer", "breast cancer from scikit-learn (30 standardised features), logistic regression, "
              "cross-entropy, batch 32", build))
