"""What the lab's experiments share: one thread for tiny models, and numbers printed alike."""

from __future__ import annotations

import contextlib
import math

import torch


@contextlib.contextmanager
def single_thread():
    """Tiny models run fastest on one thread, and one thread makes the numbers repeat exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fmt(x, digits: int = 3) -> str:
    """3 significant digits; inf and nan spelt out; text as is."""
    if isinstance(x, str):
        return x
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "nan" if math.isnan(x) else f"{x:.{digits}g}"
