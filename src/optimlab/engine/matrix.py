"""Matrix rules, batched: one run of the rule per stack of same-shape parameters.

A matrix rule (`@rule(..., traceable=False, batched=True)`: Muon, Shampoo, SOAP) is written for a
stack. θ, g and each state arrive with one leading dimension, one entry per parameter, and the rule's
matrix algebra acts on the trailing dimensions: `@`, `.mT`, `torch.baddbmm`, `torch.linalg.eigh` and
`torch.linalg.qr` all batch natively. So the rule still reads like its paper (for one matrix), and a
transformer's dozens of same-shape weights cost one batched matmul, eigendecomposition or QR each
instead of dozens of small calls.

A rule may update θ and its states in place (`B.lerp_(g, …)`, `θ.mul_(…)`): it gets either the
parameters' and states' own memory (a group of one, or states kept as one buffer, see below) or a stack
that is its own copy and is written back; the gradients it must not change (they may be p.grad itself).
θ of a group of several plain parameters already in the compute dtype is not copied at all: it comes as
`Parameters`, the parameters themselves, whose in-place `mul_`, `add_` and `sub_` (the last steps of
every matrix rule) are one torch._foreach op each; `stacked(θ)` gives a rule that needs more a copy.

This module is the only place that batches: it groups the parameters of a step by device, dtype,
shape and the shapes of the states they keep (a parameter without a state, say a vector beside the
matrices, lands in a group of its own), stacks each group in the compute dtype (float32 for bf16/fp16
parameters, as every path), runs the rule once and writes the results back in place.

A batched LAPACK call does not always give an entry the same bits in another position (an eigenbasis
of a rank-deficient matrix is not unique, and which one comes back moved with the order here), so a
stack is put in a canonical order, not the parameters' order: on the first step by content (the sums
of θ and g), afterwards the order of the buffer that then holds the group's states.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class Parameters:
    """θ of a group, as the parameters themselves: a stack's shape, and its in-place arithmetic with a stack
    of the same shape done by torch._foreach ops on the parameters, so that θ is neither copied into a
    stack nor written back (two passes over every parameter a step saved)."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors
        self.shape = torch.Size((len(tensors), *tensors[0].shape))
        self.dtype, self.device = tensors[0].dtype, tensors[0].device

    def __len__(self) -> int:
        return len(self.tensors)

    def dim(self) -> int:
        return len(self.shape)

    def mul_(self, factor: float) -> Parameters:
        torch._foreach_mul_(self.tensors, factor)
        return self

    def add_(self, X: torch.Tensor, *, alpha: float = 1) -> Parameters:
        torch._foreach_add_(self.tensors, self._entries(X), alpha=alpha)
        return self

    def sub_(self, X: torch.Tensor, *, alpha: float = 1) -> Parameters:
        torch._foreach_sub_(self.tensors, self._entries(X), alpha=alpha)
        return self

    def _entries(self, X: torch.Tensor) -> list[torch.Tensor]:
        if not isinstance(X, torch.Tensor) or X.shape != self.shape:
            raise TypeError(f"Parameters of shape {tuple(self.shape)}: in-place arithmetic takes a stack of "
                            f"the same shape, not {type(X).__name__} {tuple(getattr(X, 'shape', ()))}")
        return list(X.unbind(0))


def stacked(θ) -> torch.Tensor:
    """θ as one tensor (a copy for `Parameters`; the engine then writes the rule's result back)."""
    return torch.stack(θ.tensors) if isinstance(θ, Parameters) else θ


def run(rule, h, params, grads, states: dict[str, list]) -> None:
    """Apply one step of the batched `rule` to `params` (and `states`, symbol -> tensor or None each)."""
    from .paths import PLAIN, compute_dtype  # paths imports this module

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        kept = tuple(_shape(states, sym, i) for sym in rule.state)
        groups[(p.device, p.dtype, tuple(p.shape), kept)].append(i)
    for (_, dtype, _, kept), idx in groups.items():
        held = [sym for sym, shape in zip(rule.state, kept) if shape is not None]
        idx = canonical_order(idx, params, grads, states[held[0]] if held else None)
        compute = compute_dtype(dtype)
        targets = [[params[i] for i in idx]]
        targets += [[states[sym][i] for i in idx] if sym in held else None for sym in rule.state]
        plain = len(idx) > 1 and all(type(p) in PLAIN and p.dtype == compute for p in targets[0])
        inputs = [Parameters(targets[0]) if plain else stack(targets[0], compute)]
        inputs += [None if t is None else stacked_state(t, compute) for t in targets[1:]]
        new = rule.apply(h, inputs[0], stack([grads[i] for i in idx], compute), *inputs[1:])
        for target, old, value in zip(targets, inputs, new):
            if isinstance(old, Parameters) and value is old:
                continue  # updated in place by foreach ops
            if target is not None and not (_same(value, old) and _holds(old, target)):
                unstack(target, value)


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """The same memory in the same layout (the input itself, or a view of it reshaped back)."""
    if b is None or isinstance(b, Parameters):
        return False
    return a is b or (a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride())


def _holds(stacked: torch.Tensor, targets: list[torch.Tensor]) -> bool:
    """Whether the stack is the targets' own memory (a view), so that updating it in place updated them."""
    return stacked.dtype == targets[0].dtype and (
        _as_one_view(targets) is not None and stacked.data_ptr() == targets[0].data_ptr()
        if len(targets) > 1 else stacked.data_ptr() == targets[0].data_ptr()
        and stacked[0].stride() == targets[0].stride())


def canonical_order(idx: list[int], params, grads, state: list | None) -> list[int]:
    """The group in the order of its state buffer if it has one, else by the content of θ and g."""
    if len(idx) == 1:
        return idx
    if state is not None and len({state[i].untyped_storage().data_ptr() for i in idx}) == 1:
        return sorted(idx, key=lambda i: state[i].storage_offset())
    return sorted(idx, key=lambda i: (float(params[i].detach().double().sum()),
                                      float(grads[i].double().sum())))


def _shape(states: dict, sym: str, i: int):
    value = states.get(sym, [None] * (i + 1))[i]
    return None if value is None else tuple(value.shape)


def stack(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """One tensor with a leading batch dimension (a view, not a copy, for a group of one)."""
    if len(tensors) == 1:
        return tensors[0].to(dtype).unsqueeze(0)
    return torch.stack(tensors).to(dtype)


def stacked_state(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The states of a group as one stack, without a copy from the second step on.

    The first time, the group's states move into one buffer (each tensor in optimizer.state becomes a
    view of its slice, with `set_`, so checkpoints and the user see the same tensors); afterwards the
    slices lie one after the other in that buffer and the stack is a view of it.
    """
    if len(tensors) == 1 or tensors[0].dtype != dtype:
        return stack(tensors, dtype).contiguous()  # a rule may view it in place (a loaded one may be strided)
    view = _as_one_view(tensors)
    if view is None:
        buffer = torch.stack(tensors)
        for j, t in enumerate(tensors):
            t.set_(buffer.untyped_storage(), j * t.numel(), t.shape, buffer[j].stride())
        view = _as_one_view(tensors)
    return view


def _as_one_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """(k, *shape) over the tensors' common storage, if they are its consecutive contiguous slices."""
    first = tensors[0]
    storage, n = first.untyped_storage(), first.numel()
    for j, t in enumerate(tensors):
        if (not t.is_contiguous() or t.untyped_storage().data_ptr() != storage.data_ptr()
                or t.storage_offset() != first.storage_offset() + j * n):
            return None
    return first.as_strided((len(tensors), *first.shape), (n, *first.stride()), first.storage_offset())


def unstack(targets: list[torch.Tensor], value: torch.Tensor) -> None:
    """Write entry j of the stack `value` into targets[j], rounding to each target's dtype once."""
    if len(targets) == 1:
        targets[0].copy_(value[0])
    elif (view := _as_one_view(targets)) is not None:
        view.copy_(value)  # states kept as one buffer: one copy
    else:
        torch._foreach_copy_(targets, list(value.to(targets[0].dtype).unbind(0)))
