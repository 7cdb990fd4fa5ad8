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
        names = [*self.fixed, *(k for k, _ in _signature_defaults(type(self)))]  # not self.defaults: torch adds keys
        return self.namespace({key: group[key] for key in names})

    @classmethod
    def namespace(cls, hyper: dict) -> SimpleNamespace:
        """`h` from hyperparameter values: tensors read as numbers, tuples unpacked, the rule's flags derived."""
        values = {}
        for key, value in hyper.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if key in cls.unpack:
                values.update(zip(cls.unpack[key], value))
            else:
                values[key] = value
        return cls.rule.with_flags(values)

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
        carried = tuple(self.rule.scalar_state)
        # Parameters that share a step count (and scalar state) share per-step scalars: normally all.
        buckets: dict[tuple, list] = {}
        for p in params:
            state = self._prepare(p, h, kept)
            buckets.setdefault((float(state["step"]), *(state[k] for k in carried)), []).append((p, state))
        for (step, *values), members in buckets.items():
            t = int(step) + 1
            scalars = self.rule.step_scalars(h, t, dict(zip(carried, values)))
            states = {sym: [state.get(s.key) for _, state in members] for sym, s in kept.items()}
            bucket = [p for p, _ in members]
            paths.run(self.path, self.rule, SimpleNamespace(**vars(h), **scalars), bucket,
                      [p.grad for p in bucket], states)
            for _, state in members:
                state["step"] = float(t)  # a Python number: counting 200 tensors' steps costs nothing
                for key in carried:
                    state[key] = scalars[key]

    def _prepare(self, p: torch.Tensor, h: SimpleNamespace, kept: dict) -> dict:
        """The state of parameter p, with whatever it lacks created (all of it on its first step)."""
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            self._check_parameter(p)
            state["step"] = 0.0  # a torch checkpoint's tensor step also works: it is read with float()
            state.update(self.rule.scalar_state)
        for s in kept.values():
            if s.key not in state and self.rule.keeps(s, p, h):  # also one a flag switched on mid-run
                state[s.key] = s.create(p.detach(), h)
        return state

    def _check_parameter(self, p: torch.Tensor) -> None:
        name = type(self).__name__
        if p.is_complex():
            raise RuntimeError(f"{name} does not support complex parameters; view them with torch.view_as_real")
        if not p.is_floating_point():
            raise RuntimeError(f"{name} can only optimize floating-point parameters, got {p.dtype}")

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a torch.optim checkpoint lacks optimlab-only hyperparameters
            for key, _ in _signature_defaults(type(self)):
                group.setdefault(key, self.defaults[key])
        for state in self.state.values():  # the fused kernel reads state as dense arrays
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() and not value.is_contiguous():
                    state[key] = value.contiguous()
