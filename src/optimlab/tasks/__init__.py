"""Small real training tasks whose data ships inside installed packages: nothing is downloaded.

A task builds a `Problem` for a seed: a fresh model, the minibatch loss at each update number
(deterministic for the seed, so two optimizers see the same batches), and a full evaluation.

    problem = optimlab.tasks.get("digits").build(seed=0)
    opt = optimlab.create("adamw", problem.model.parameters())
    for step in range(200):
        opt.zero_grad(); problem.loss(step).backward(); opt.step()
    problem.evaluate()   # {'train_loss': ..., 'val_loss': ..., 'val_accuracy': ...}

Register more with `register(Task(...))`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass
class Problem:
    model: torch.nn.Module
    loss: Callable[[int], torch.Tensor]  # minibatch loss at update number `step`, with autograd
    evaluate: Callable[[], dict[str, float]]  # losses (and accuracy) on the full splits, no autograd


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    build: Callable[..., Problem]  # build(seed=0, **options) -> Problem


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def available() -> list[str]:
    return sorted(TASKS)


from . import digits  # noqa: E402,F401  (registers the built-in tasks)
from . import charlm  # noqa: E402,F401  (a tiny character-level transformer on pydoc_data.topics)
from . import cancer  # noqa: E402,F401  (logistic regression on scikit-learn's breast-cancer data)
from . import mnist1d  # noqa: E402,F401  (a small 1-D CNN on MNIST-1D, generated offline)
from . import diabetes  # noqa: E402,F401  (an MLP regression on scikit-learn's diabetes data)
