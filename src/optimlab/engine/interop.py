"""Where optimlab meets torch.optim's conventions: its keyword arguments, its value types, its checkpoints.

Everything here is a translation at a boundary, so that the engine inside keeps one representation:
* torch's `foreach=`/`fused=`/`capturable=`/`differentiable=` become optimlab's `path` (or a clear error);
  `capturable=True` also keeps step counts on the device (RuleOptimizer);
* every numeric hyperparameter (Python, numpy scalar, 0-d tensor) becomes a plain Python number, so
  compiled paths see a dynamic value and never a new static one;
* scalar state (`step`, NAdam's `mu_product`) is a Python float inside optimlab (counting 200
  tensors' steps as tensors would cost a kernel launch each) and a 0-d tensor in a checkpoint, as torch
  keeps it, so checkpoints load both ways.
"""

from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np
import torch

TORCH_KEYWORDS = ("foreach", "fused", "capturable", "differentiable")


def plain_number(value):
    """A 0-d (or 1-element) tensor or a numpy scalar as the Python number it holds; anything else as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_flag(value):
    """A boolean hyperparameter: True/False, or 0/1 as torch code sometimes passes; None if neither."""
    value = plain_number(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    return None


def path_for(name: str, path: str, traceable: bool, foreach, fused, capturable, differentiable) -> str:
    """optimlab's `path` for torch's keyword arguments (docs/engine.md has the table)."""
    if differentiable:
        raise ValueError(f"{name}: differentiable=True is not supported: optimlab updates parameters in "
                         "place under torch.no_grad(), so autograd cannot run through step()")
    if capturable and not traceable:
        raise ValueError(f"{name}: capturable=True is not supported: this rule is not elementwise and runs "
                         "on the per-tensor path, whose step count and per-step scalars live on the host")
    if capturable and (foreach or fused):
        raise ValueError(f"{name}: capturable=True runs on the triton path (step counts on the device, "
                         "for CUDA graphs), not with foreach=True or fused=True")
    if foreach and fused:
        raise RuntimeError(f"{name}: `fused` and `foreach` cannot be `True` together (as torch.optim)")
    if fused and not traceable:
        raise RuntimeError(f"{name}: fused=True is not supported: this rule is not elementwise and has no "
                           "fused kernel; it runs on the per-tensor path")
    if capturable:
        wanted = "triton"
    elif fused:
        wanted = "fused"
    elif foreach:  # torch's multi-tensor loop: optimlab's, where the rule is elementwise (same results)
        wanted = "foreach" if traceable else "tensor"
    elif foreach is False:
        wanted = "tensor"
    elif fused is False:  # "not the fused kernel", and foreach left to us
        wanted = "foreach" if traceable else "tensor"
    else:
        return path
    if path not in ("auto", wanted):
        raise ValueError(f"{name}: path={path!r} contradicts foreach={foreach!r}, fused={fused!r} "
                         f"(which mean path={wanted!r}); give one of them")
    return wanted


def check_tensor_hyperparameters(name: str, hyper: dict) -> None:
    """torch.optim.Adam refuses tensor lr and betas on its foreach path unless capturable: so does optimlab's
    (with the same error type), so that torch code behaves the same; the other optimizers take them."""
    if isinstance(hyper.get("lr"), torch.Tensor):
        raise ValueError(f"{name}: lr as a Tensor is not supported for capturable=False and foreach=True "
                         "(as torch.optim); pass a float, or leave foreach unset")
    for i, beta in enumerate(hyper.get("betas") or ()):
        if isinstance(beta, torch.Tensor):
            raise ValueError(f"{name}: betas[{i}] as a Tensor is not supported for capturable=False and "
                             "foreach=True (as torch.optim); pass floats, or leave foreach unset")


def accepting_torch_keywords(init):
    """Wrap an optimizer's __init__ so that it takes torch's four implementation keywords as well."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, params, *args, foreach=None, fused=None, capturable=False, differentiable=False,
                 **kwargs):
        name = type(self).__name__
        if foreach is not None or fused is not None or capturable or differentiable:
            bound = signature.bind(self, params, *args, **kwargs)
            bound.apply_defaults()
            kwargs["path"] = path_for(name, bound.arguments.get("path", "auto"), type(self).rule.traceable,
                                      foreach, fused, capturable, differentiable)
            if foreach and type(self).foreach_refuses_tensors:
                check_tensor_hyperparameters(name, bound.arguments)
        init(self, params, *args, **kwargs)
        self.capturable = bool(capturable)
        if fused:
            devices = {p.device.type for g in self.param_groups for p in g["params"]}
            if devices - {"cpu"}:
                raise RuntimeError(f"{name}: fused=True runs on the CPU only (optimlab's fused path is a C "
                                   f"kernel); got parameters on {sorted(devices)}: use foreach=True")

    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d)
             for k, d in zip(TORCH_KEYWORDS, (None, None, False, False)) if k not in signature.parameters]
    params = list(signature.parameters.values())
    rest = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]  # **kwargs stays last
    __init__.__signature__ = signature.replace(parameters=[p for p in params if p not in rest] + extra + rest)
    return __init__


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives its step tensors: float64 when that is the default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def state_to_torch(state: dict, scalar_keys) -> dict:
    """A parameter's state as torch.optim keeps it: `step` and scalar state as 0-d tensors (a new dict)."""
    out = dict(state)
    if "step" in out and not isinstance(out["step"], torch.Tensor):
        out["step"] = torch.tensor(float(out["step"]), dtype=scalar_dtype())
    for key in scalar_keys:  # float64 whatever the default: a round trip through a checkpoint is exact
        if key in out and not isinstance(out[key], torch.Tensor):
            out[key] = torch.tensor(float(out[key]), dtype=torch.float64)
    return out


def state_from_torch(state: dict, scalar_keys, tensor_keys) -> dict:
    """A checkpoint's state for one parameter with `step` and scalar state as Python floats (a new dict).

    torch's SGD keeps no step count: a momentum buffer there means at least one step was taken, which is
    all SGD's rule asks of the count (its first step is undamped)."""
    out = dict(state)
    if "step" not in out and any(key in out for key in tensor_keys):
        out["step"] = 1.0
    for key in ("step", *scalar_keys):
        if key in out and isinstance(out[key], torch.Tensor):
            out[key] = float(out[key].item())
    return out
