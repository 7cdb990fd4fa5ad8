"""Precision recipes: the dtype of each thing training keeps."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str
    params: torch.dtype  # the weights forward and backward use
    grads: torch.dtype
    state: torch.dtype  # the optimizer's state: the dtype of the weights the optimizer updates
    master: torch.dtype | None  # a separate full-precision copy of the weights, or None
    activation: int  # bytes per stored activation element
    about: str
    # optimizer options the recipe implies (engine/lowprec.py): stochastic rounding costs no bytes, the
    # Kahan buffer one weight-sized tensor in the weights' dtype, kept in optimizer.state
    options: tuple = ()


PRECISIONS = {p.name: p for p in (
    Precision("fp32", torch.float32, torch.float32, torch.float32, None, 4,
              "everything in fp32"),
    Precision("bf16-mixed", torch.bfloat16, torch.bfloat16, torch.float32, torch.float32, 2,
              "bf16 weights and gradients; fp32 master weights and optimizer state"),
    Precision("fp16-mixed", torch.float16, torch.float16, torch.float32, torch.float32, 2,
              "fp16 weights and gradients; fp32 master weights and optimizer state (plus a loss scale)"),
    Precision("bf16", torch.bfloat16, torch.bfloat16, torch.bfloat16, None, 2,
              "pure bf16: weights, gradients and optimizer state in bf16, no master copy"),
    Precision("bf16-sr", torch.bfloat16, torch.bfloat16, torch.bfloat16, None, 2,
              "pure bf16 with stochastic rounding of each update: the bytes of pure bf16",
              options=(("stochastic_rounding", True),)),
    Precision("bf16-kahan", torch.bfloat16, torch.bfloat16, torch.bfloat16, None, 2,
              "pure bf16 with a bf16 Kahan buffer per weight in the optimizer state, no master copy",
              options=(("kahan_summation", True),)),
)}


def recipe(name: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]
