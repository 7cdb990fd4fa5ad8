"""Matrix rules, batched: one run of the rule per stack of same-shape parameters.

A matrix rule (`@rule(..., traceable=False, batched=True)`: Muon, Shampoo, SOAP) is written for a
stack. θ, g and each state arrive with one leading dimension, one entry per parameter, and the rule's
matrix algebra acts on the trailing dimensions: `@`, `.mT`, `torch.baddbmm`, `torch.linalg.eigh` and
`torch.linalg.qr` all batch natively. So the rule still reads like its paper (for one matrix), and a
transformer's dozens of same-shape weights cost one batched matmul, eigendecomposition or QR each
instead of dozens of small calls.

This module is the only place that batches: it groups the parameters of a step by device, dtype,
shape and the shapes of the states they keep (a parameter without a state, say a vector beside the
matrices, lands in a group of its own), stacks each group in the compute dtype (float32 for bf16/fp16
parameters, as every path), runs the rule once and writes the results back in place. Each entry of a
stack is computed by the same kernels whatever its position, so results do not depend on the order of
the parameters (a generic test checks it bit for bit).
"""

from __future__ import annotations

from collections import defaultdict

import torch


def run(rule, h, params, grads, states: dict[str, list]) -> None:
    """Apply one step of the batched `rule` to `params` (and `states`, symbol -> tensor or None each)."""
    from .paths import compute_dtype  # paths imports this module

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        kept = tuple(_shape(states, sym, i) for sym in rule.state)
        groups[(p.device, p.dtype, tuple(p.shape), kept)].append(i)
    for idx in groups.values():
        compute = compute_dtype(params[idx[0]].dtype)
        targets = [[params[i] for i in idx]]
        targets += [None if _shape(states, sym, idx[0]) is None else [states[sym][i] for i in idx]
                    for sym in rule.state]
        inputs = [None if t is None else stack(t, compute) for t in targets]
        new = rule.apply(h, inputs[0], stack([grads[i] for i in idx], compute), *inputs[1:])
        for target, old, value in zip(targets, inputs, new):
            if target is not None and value is not old:
                unstack(target, value)


def _shape(states: dict, sym: str, i: int):
    value = states.get(sym, [None] * (i + 1))[i]
    return None if value is None else tuple(value.shape)


def stack(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """One tensor with a leading batch dimension (a view, not a copy, for a group of one)."""
    if len(tensors) == 1:
        return tensors[0].to(dtype).unsqueeze(0)
    return torch.stack(tensors).to(dtype)


def unstack(targets: list[torch.Tensor], value: torch.Tensor) -> None:
    """Write entry j of the stack `value` into targets[j], rounding to each target's dtype once."""
    if len(targets) == 1:
        targets[0].copy_(value[0])
    else:
        torch._foreach_copy_(targets, list(value.to(targets[0].dtype).unbind(0)))
