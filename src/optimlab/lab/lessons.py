"""The five lessons optimlab grew from, named by what they teach (docs/lessons.md says more).

The claims checker, Break It and the docs cite a lesson by its short name (`canyon`), never by a file:
the lessons are teaching texts that are not part of this repository.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Lesson:
    name: str  # the short name the claims checker prints
    title: str
    covers: str  # one line: what it teaches


LESSONS: dict[str, Lesson] = {lesson.name: lesson for lesson in (
    Lesson("curvature-bets", "Curvature bets",
           "SGD, momentum, Adam, AdamW, Lion and Adafactor as variance reduction plus preconditioning; "
           "schedules; warmup, clipping, β₂ and ε; memory per parameter and mixed precision"),
    Lesson("adamw-recipe", "The AdamW recipe",
           "from SGD to AdamW one fix at a time; decoupled weight decay; AdamW with warmup and cosine "
           "decay; the optimizers real models use"),
    Lesson("canyon", "The canyon",
           "SGD, momentum and Adam computed by hand for three steps on 100x² + y² from (1, 1); RMSProp; "
           "AdamW's weight decay; Adam's memory"),
    Lesson("adam-vs-sgd", "Adam vs SGD",
           "why Adam and SGD win on different problems; bias correction; learning-rate sensitivity; "
           "memory estimates; Lion; layer-wise decay; exploding gradients"),
    Lesson("modern-variants", "Modern variants",
           "a survey: momentum, Nesterov, AdaGrad, RMSProp, Adam, AdaFactor, Lion, Sophia, schedule-free; "
           "schedules and debugging training"),
)}


def get(name: str) -> Lesson:
    """A lesson by its short name; ValueError listing the names otherwise."""
    if name not in LESSONS:
        raise ValueError(f"unknown lesson {name!r}; lessons: {', '.join(LESSONS)}")
    return LESSONS[name]


def names() -> list[str]:
    return list(LESSONS)
