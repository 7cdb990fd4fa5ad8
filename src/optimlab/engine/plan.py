"""A group's step remembered: what a fast path needs to step a parameter group again, and the checks
that say it still applies.

A step walks a group's parameters many times in Python (missing state made, the boundary's checks, the
grouping by device, dtype and states, the kernel's pointer table). For a model of a few hundred small
tensors that walk takes longer than the kernel. So after a step that ran as one call of a fast path over
the whole group (the C kernel on the CPU, Triton on CUDA, foreach elsewhere), the optimizer keeps a
`Plan`: the parameters, their state dicts and state tensors, the path's arguments (for the C kernel, its
pointer table). The next step checks, in one loop, everything that can change between steps without the
engine seeing it, and takes the long way (which makes a new plan) if anything did:

* the group's parameters with gradients (by identity), each state tensor in the optimizer's state (by
  identity: a replaced tensor, a loaded checkpoint, a deleted state are new objects or none) and each
  step count (edited by hand?);
* each parameter's and state tensor's data pointer, dtype and shape (`p.data = …` and `model.to()` keep
  the object but move its memory), so a kernel never writes through a stale pointer;
* each new gradient: the boundary's checks (shape, dtype, device, dense layout), and contiguity;
* the path, the static hyperparameters (flags: a weight decay set to 0 changes the kernel), and options
  the plan does not cover (capturable steps, stochastic rounding, Kahan buffers).

What a plan does not cover keeps taking the long way on every step: optimizers with coded (8-bit)
states, matrix rules, tensor subclasses, complex or empty parameters, states shaped unlike their
parameter, parameters of several dtypes or devices in one group, sparse or strided gradients, step counts
that differ between parameters (or are still 0), capturable steps, and the tensor path.
"""

from __future__ import annotations

import operator
import weakref
from types import SimpleNamespace

import torch

from . import native, paths
from .graph import static_key


class Plan:
    """The step of one group, as the last step left it. A plan keeps no state alive: it holds the group
    (which the optimizer holds) and weak references to the state tensors, so `optimizer.state.clear()`
    frees them and the next step takes the long way."""

    def __init__(self, opt, group: dict, h: SimpleNamespace, params: list, dicts: list[dict], t: float):
        """A plan for `group` after a step that left each parameter's state in `dicts` at step count t.
        Use `Plan.make`, which says None where a plan does not apply."""
        rule = opt.rule
        self.rule, self.group, self.path = rule, group, opt.path
        kept = rule.kept(h)
        self.syms, self.keys = tuple(kept), tuple(s.key for s in kept.values())
        self.params = tuple(params)
        self.dtype, self.device = params[0].dtype, params[0].device
        self.shapes = tuple(p.shape for p in params)
        self.values = tuple(tuple(weakref.ref(d[key]) for key in self.keys) for d in dicts)
        self.t = t
        self.carried = {key: dicts[0][key] for key in rule.scalar_state}
        # The kernel of the next step: per-step scalars may be static (ADOPT's first step, RAdam's branch)
        upcoming, _ = self.upcoming(h)
        self.static = static_key(upcoming)
        self.chosen = paths.choose(opt.path, rule, self.device, True)
        self.θ_pointers = tuple(p.data_ptr() for p in params)
        self.state_pointers = tuple(tuple(d[key].data_ptr() for key in self.keys) for d in dicts)
        if self.chosen == "fused":  # the kernel and its pointer table (raw pointers: checked before use)
            graph = paths.graph_of(rule, upcoming, self.static, self.syms)
            self.kernel = paths.kernel_of(rule, upcoming, self.dtype, self.static, self.syms, {})
            names = paths.kernel_arrays(graph, {})
            columns = {"θ": list(params), "g": [p.grad for p in params],
                       **{sym: [d[key] for d in dicts] for sym, key in zip(self.syms, self.keys)}}
            self.table = self.kernel.table([columns[name] for name in names])
            # where a gradient's pointer sits in its tensor's row of the table
            self.width, self.g_column = len(names), names.index("g")
        self.taken = 0  # steps taken by this plan (the tests check that it runs)

    @classmethod
    def make(cls, opt, group: dict, h: SimpleNamespace) -> Plan | None:
        """A plan for the step `group` just took, or None where it would not run as one call of a path.
        (The optimizer asks only where it stores no state through a codec.)"""
        params = [p for p in group["params"] if p.grad is not None]
        if (not params or opt.capturable or group.get("stochastic_rounding") or group.get("kahan_summation")
                or opt.rule.matrix):
            return None
        kept = opt.rule.kept(h)
        dtype, device = params[0].dtype, params[0].device
        if paths.choose(opt.path, opt.rule, device, True) not in ("fused", "triton", "foreach"):
            return None
        for p in params:
            g = p.grad
            if (type(p) not in paths.PLAIN or p.dtype is not dtype or p.device != device or p.is_complex()
                    or p.numel() == 0 or not p.is_contiguous() or g.layout is not torch.strided
                    or not g.is_contiguous()):
                return None
        dicts = [opt.state.get(p) for p in params]
        if any(d is None for d in dicts):
            return None
        t = dicts[0].get("step")
        if type(t) is not float or t < 1:  # a step that only made state (_creates_state_only) counts none
            return None
        carried = [(key, dicts[0].get(key)) for key in opt.rule.scalar_state]
        for p, d in zip(params, dicts):
            if d.get("step") != t or any(d.get(k) != v for k, v in carried):
                return None  # step counts (and NAdam's μ product) differ: several kernel calls
            for s in kept.values():
                value = d.get(s.key)
                if (type(value) not in paths.PLAIN or value.shape != p.shape or value.dtype is not dtype
                        or not value.is_contiguous()):
                    return None  # a state this parameter does not keep, or one shaped unlike it
        try:
            return cls(opt, group, h, params, dicts, t)
        except native.CompilerUnavailable:
            return None

    def step(self, opt, group: dict, h: SimpleNamespace) -> bool:
        """Take the group's step if the plan still applies (and say so); else change nothing, say False."""
        if (group is not self.group or opt.path != self.path or opt.capturable
                or group.get("stochastic_rounding") or group.get("kahan_summation")):
            return False
        hs, scalars = self.upcoming(h)
        if static_key(hs) != self.static:  # a flag changed, or a per-step branch turned
            return False
        params = [p for p in group["params"] if p.grad is not None]
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return False
        checked = self._checked(opt.state)
        if checked is None:
            return False
        dicts, grads, states = checked
        if self.chosen == "fused":
            pointers, width, column = self.table.pointers, self.width, self.g_column
            for i, g in enumerate(grads):
                pointers[i * width + column] = g.data_ptr()
            self.kernel.launch(self.table, hs)
        else:
            run = paths.run_triton if self.chosen == "triton" else paths.run_foreach
            run(self.rule, hs, list(self.params), grads, dict(zip(self.syms, states)))
        t, carried = self.t + 1, {key: scalars[key] for key in self.carried}
        for d in dicts:
            d["step"] = t
            d.update(carried)
        self.t, self.carried = t, carried
        self.taken += 1
        return True

    def upcoming(self, h: SimpleNamespace) -> tuple[SimpleNamespace, dict]:
        """What the rule sees at the next step (h and the step's scalars), and those scalars."""
        scalars = self.rule.step_scalars(h, int(self.t) + 1, self.carried)
        return SimpleNamespace(**vars(h), **scalars), scalars

    def _checked(self, state: dict) -> tuple[list, list, list] | None:
        """Each parameter's state dict and gradient, and each kept state's tensors (one list per state),
        if every check of the module docstring passes; else None."""
        keys, dtype, device, strided, t = self.keys, self.dtype, self.device, torch.strided, self.t
        dicts, grads, states = [], [], [[] for _ in keys]
        for p, shape, refs, θ_pointer, pointers in zip(self.params, self.shapes, self.values, self.θ_pointers,
                                                       self.state_pointers):
            d, g = state.get(p), p.grad
            if (d is None or d.get("step") != t or p.data_ptr() != θ_pointer
                    or p.dtype is not dtype or p.shape != shape or g.layout is not strided
                    or g.shape != shape or g.dtype is not dtype or g.device != device
                    or not g.is_contiguous()):
                return None
            for key, ref, pointer, column in zip(keys, refs, pointers, states):
                value = ref()
                if (value is None or d.get(key) is not value or value.data_ptr() != pointer
                        or value.dtype is not dtype or value.shape != shape):
                    return None
                column.append(value)
            dicts.append(d)
            grads.append(g)
        return dicts, grads, states
