"""The one place where a step's tensors are checked before any path touches them.

The fused path hands raw pointers to C, so a gradient or a state tensor that does not match its
parameter element for element would be read or written out of bounds, or silently paired with the
wrong elements. Everything a user can hand the engine passes through `admit` first:

* a gradient must have its parameter's shape, dtype, device and (dense) layout: anything else is an
  error that names the parameter;
* each state tensor must have the shape the rule declares for that parameter (a checkpoint of another
  model is an error, never a misaligned update);
* a state tensor of another floating dtype or device follows its parameter (after `model.to(dtype)` or
  `model.to(device)`), as torch's `load_state_dict` casts state, with one warning: the rule never reads
  fp32 state as bf16 bits;
* state the fused kernel reads as a dense array is made contiguous;
* a coded state (engine/codec.py) is uint8 codes of the parameter's shape and one float32 absmax per
  block; an absmax that is NaN, negative or infinite when first seen (a corrupt checkpoint) is refused.
* a bf16 parameter's Kahan buffer is checked as a state of the parameter's shape and dtype, and its
  stochastic-rounding seed must be an integer in [0, 2³²) (engine/lowprec.py).

Tensor subclasses (DTensor and others) never reach the C kernel: `paths.run` routes them (see there).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch

from . import codec, lowprec
from .rule import State


class ParameterMismatch(RuntimeError):
    """A gradient or a state tensor does not fit its parameter."""


def admit(h, kept: dict[str, State], params: list, states: list[dict], describe: Callable) -> None:
    """Check (and, where torch would, convert in place) each parameter's gradient and state.

    `states[i]` is `optimizer.state[params[i]]`; `describe(i)` names parameter i in an error message.
    """
    for i, p in enumerate(params):
        g, shape, dtype, device = p.grad, p.shape, p.dtype, p.device
        if g.shape != shape or g.dtype is not dtype or g.device != device or g.layout is not torch.strided:
            what = f"{g.layout} (this optimizer needs a dense gradient)" if g.is_sparse else _what(g)
            raise ParameterMismatch(f"{describe(i)}: the gradient is {what} but the parameter is {_what(p)}")
        state = states[i]
        if lowprec.SEED_KEY in state:  # stochastic rounding's per-parameter seed (a hand-edited checkpoint?)
            state[lowprec.SEED_KEY] = lowprec.checked_seed(state[lowprec.SEED_KEY], describe(i))
        for s in kept.values():
            value = state.get(s.key)
            if value is None:
                if codec.keys(s.key)[0] in state:
                    check_coded(p, state, s.key, lambda: describe(i))
                continue
            if not isinstance(value, torch.Tensor):
                kind = type(value).__name__
                raise ParameterMismatch(f"{describe(i)}: state {s.key!r} is a {kind}, not a tensor")
            # a state with a shape of its own (Adafactor's rows, Shampoo's blocks): its declaration says
            want_shape, want_dtype = (shape, dtype) if s.init is None else expected(s, p, value, h)
            if value.shape != want_shape:
                raise ParameterMismatch(
                    f"{describe(i)}: state {s.key!r} has shape {tuple(value.shape)} but this parameter needs "
                    f"{tuple(want_shape)} (a checkpoint of a different model or layer?)"
                )
            if value.dtype is not want_dtype or value.device != device:
                if not value.is_floating_point():
                    raise ParameterMismatch(
                        f"{describe(i)}: state {s.key!r} is {value.dtype}, not floating point")
                _warn_once(f"optimlab: optimizer state follows its parameter to {want_dtype} on {device} "
                           "(the parameter's dtype or device changed after the state was created)")
                value = state[s.key] = value.to(device=device, dtype=want_dtype)
            if not value.is_contiguous():
                state[s.key] = value.contiguous()


def check_coded(p: torch.Tensor, state: dict, key: str, describe: Callable) -> None:
    """The codes and block scales of coded state `key` fit parameter p; a new absmax tensor is finite."""
    codes_key, absmax_key = codec.keys(key)
    codes, absmax = state.get(codes_key), state.get(absmax_key)
    blocks = (codec.Blockwise8bit.blocks(p.numel()),)
    for name, value, shape, dtype in ((codes_key, codes, p.shape, torch.uint8),
                                      (absmax_key, absmax, blocks, torch.float32)):
        if not isinstance(value, torch.Tensor):
            raise ParameterMismatch(f"{describe()}: state {name!r} is {type(value).__name__}, not a tensor "
                                    f"({tuple(shape)} {str(dtype).removeprefix('torch.')})")
        if value.shape != shape or value.dtype is not dtype:
            raise ParameterMismatch(f"{describe()}: state {name!r} is {_what(value)} but this parameter "
                                    f"needs {tuple(shape)} {str(dtype).removeprefix('torch.')} (a checkpoint "
                                    "of a different model, or a corrupt one?)")
        if value.device != p.device:
            state[name] = value = value.to(p.device)
        if not value.is_contiguous():
            state[name] = value.contiguous()
    absmax = state[absmax_key]
    seen = _finite_seen.get(id(absmax))
    if seen is None or seen() is not absmax:
        if not bool(torch.isfinite(absmax).all()) or bool((absmax < 0).any()):
            raise ParameterMismatch(f"{describe()}: state {absmax_key!r} holds NaN, infinite or negative "
                                    "block scales (a corrupt checkpoint?)")
        _finite_seen[id(absmax)] = weakref.ref(absmax)
        if len(_finite_seen) > 65536:
            _finite_seen.clear()


_finite_seen: dict = {}


def check_coded_load(optimizer) -> None:
    """After load_state_dict: every coded state of every parameter passes `check_coded`."""
    for p, state in optimizer.state.items():
        for s in optimizer.rule.state.values():
            if codec.keys(s.key)[0] in state or codec.keys(s.key)[1] in state:
                check_coded(p, state, s.key, lambda: optimizer._describe(p))


def expected(s: State, p: torch.Tensor, value: torch.Tensor, h) -> tuple[torch.Size, torch.dtype]:
    """Shape and dtype of state `s` for parameter p, from the rule's own declaration: made on the meta
    device with the group's hyperparameters (a shape may depend on numbers: Shampoo's block size), once
    per state tensor and parameter layout; a new tensor (a loaded checkpoint) is checked again."""
    if s.init is None:
        return p.shape, p.dtype
    key = (id(value), p.shape, p.dtype)
    seen = _declared.get(key)
    if seen is not None and seen[0]() is value:
        return seen[1]
    made = s.create(torch.empty(p.shape, dtype=p.dtype, device="meta"), h)
    _declared[key] = (weakref.ref(value), (made.shape, made.dtype))
    if len(_declared) > 65536:  # stale entries of freed tensors: start over
        _declared.clear()
    return made.shape, made.dtype


_declared: dict = {}


def _what(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
