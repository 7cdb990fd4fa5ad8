"""Hyperparameter checks: each returns what is wrong with a value, or None."""

from __future__ import annotations

import math
import numbers

import torch


def _real(v) -> bool:
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():  # torch accepts a tensor lr
        v = v.item()
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


def nonnegative(v):
    return None if _real(v) and float(v) >= 0 else "must be a number ≥ 0"


def positive(v):
    return None if _real(v) and v > 0 else "must be a number > 0"


def fraction(v):
    return None if _real(v) and 0 <= v < 1 else "must be in [0, 1)"


def betas(v):
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(fraction(b) is None for b in v)
    if ok and len({isinstance(b, torch.Tensor) for b in v}) > 1:  # torch refuses the mix (ValueError too)
        return "must be both numbers or both tensors"
    return None if ok else "must be a pair of numbers in [0, 1)"


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


COMMON = {"lr": nonnegative, "eps": nonnegative, "weight_decay": nonnegative}
