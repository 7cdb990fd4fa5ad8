"""RuleOptimizer: a `torch.optim.Optimizer` that runs one declared rule.

A concrete optimizer is a few lines: its rule, torch's signature and defaults, and the checks on its
hyperparameters. Everything else is here, once: state creation inside `optimizer.state[p]`, step
counting, per-step scalars, grouping parameters that share a step count, and the path choice.
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace
from typing import Callable

import torch

from . import paths
from .rule import Rule


def hyperparameters(local_vars: dict) -> dict:
    """An optimizer's keyword arguments from its __init__'s locals()."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "params", "path", "__class__")}


@functools.cache
def _signature_defaults(cls) -> tuple:
    return tuple((k, p.default) for k, p in inspect.signature(cls.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty and k != "path")


class RuleOptimizer(torch.optim.Optimizer):
    rule: Rule
    # hyperparameter -> check(value) returning an error message or None
    checks: dict[str, Callable] = {}
    # tuple hyperparameters the rule reads element by element
    unpack: dict[str, tuple[str, ...]] = {"betas": ("beta1", "beta2")}
    # hyperparameters this class fixes for its rule (AdamW: the Adam rule with decoupled decay)
    fixed: dict = {}

    def __init__(self, params, path: str = "auto", **hyper):
        self._check(hyper)
        hyper = {**self.fixed, **hyper}
        if path not in paths.PATHS:
            raise ValueError(f"path must be one of {', '.join(paths.PATHS)}; got {path!r}")
        if path in ("foreach", "fused") and not self.rule.traceable:
            raise ValueError(f"{type(self).__name__} is not elementwise and runs on path='tensor' only")
        self.path = path
        super().__init__(params, hyper)

    def _check(self, hyper: dict) -> None:
        name = type(self).__name__
        for key, value in hyper.items():
            default = self.defaults_signature().get(key)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"{name}: {key} must be True or False, got {value!r}")
            check = self.checks.get(key)
            problem = check(value) if check else None
            if problem:
                raise ValueError(f"{name}: {key} {problem}, got {value!r}")

    @classmethod
    def defaults_signature(cls) -> dict:
        """The hyperparameters a user can set, with their defaults (from __init__'s signature)."""
        return dict(_signature_defaults(cls))

    def __getstate__(self):
        return {**super().__getstate__(), "path": self.path}  # torch's keeps defaults, state and groups only

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("path", "auto")

    def hyper(self, group: dict) -> SimpleNamespace:
        """The namespace `h` a rule sees for a parameter group (without per-step scalars)."""
        values = {}
        for key in [*self.fixed, *(k for k, _ in _signature_defaults(type(self)))]:  # not self.defaults: torch adds keys
            value = group[key]
            if isinstance(value, torch.Tensor):
                value = value.item()
            if key in self.unpack:
                values.update(zip(self.unpack[key], value))
            else:
                values[key] = value
        return self.rule.with_flags(values)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        h = self.hyper(group)
        kept = self.rule.kept(h)
        for p in params:
            self._prepare(p, h, kept)
        for (step, *carried), bucket in self._buckets(params).items():
            scalars = self.rule.step_scalars(h, int(step) + 1, dict(zip(self.rule.scalar_state, carried)))
            states = {sym: [self.state[p].get(s.key) for p in bucket] for sym, s in kept.items()}
            paths.run(self.path, self.rule, SimpleNamespace(**vars(h), **scalars), bucket,
                      [p.grad for p in bucket], states)
            torch._foreach_add_([self.state[p]["step"] for p in bucket], 1.0)
            for key in self.rule.scalar_state:
                for p in bucket:
                    self.state[p][key] = scalars[key]

    def _prepare(self, p: torch.Tensor, h: SimpleNamespace, kept: dict) -> None:
        """Check a parameter and create whatever state it lacks (all of it on its first step)."""
        name = type(self).__name__
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if p.is_complex():
            raise RuntimeError(f"{name} does not support complex parameters; view them with torch.view_as_real")
        if not p.is_floating_point():
            raise RuntimeError(f"{name} can only optimize floating-point parameters, got {p.dtype}")
        state = self.state[p]
        if "step" not in state:
            # as torch: a float32 counter (float64 when that is the default dtype), kept on the CPU
            state["step"] = torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64
                                         else torch.float32)
            state.update(self.rule.scalar_state)
        for s in kept.values():
            if s.key not in state and self.rule.keeps(s, p):  # also one a flag switched on mid-run
                state[s.key] = s.create(p.detach(), h)

    def _buckets(self, params: list) -> dict[tuple, list]:
        """Parameters grouped by step count and scalar state; normally a single group."""
        steps = torch.stack([self.state[p]["step"] for p in params]).tolist()
        buckets: dict[tuple, list] = {}
        for p, step in zip(params, steps):
            key = (step, *(self.state[p][k] for k in self.rule.scalar_state))
            buckets.setdefault(key, []).append(p)
        return buckets
