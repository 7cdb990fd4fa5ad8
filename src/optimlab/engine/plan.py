"""A group's step remembered: what the fast paths need to step a parameter group again, and the checks
that say it still applies.

A step walks a group's parameters many times in Python (missing state made, the boundary's checks, the
grouping by device, dtype and states, each path's arguments). For a model of a few hundred small tensors
that walk takes longer than the kernels. So after a step whose every group of parameters ran as one call
of a fast path (the C kernel on the CPU, Triton on CUDA, foreach elsewhere), the optimizer keeps a
`Plan`: the parameters, how each stores its state, the calls (for the C kernel, the kernel of the next
step and its pointer table). The next step checks, in one loop, everything that can change between
steps without the engine seeing it, and takes the long way (which makes a new plan) if anything did:

* the group's parameters with gradients (by identity), each stored state tensor in the optimizer's
  state (by identity: a replaced tensor, a loaded checkpoint, a deleted state are new objects or none),
  the keys that must stay absent, and each step count (edited by hand?);
* each parameter's and state tensor's data pointer, dtype and shape (`p.data = …` and `model.to()` keep
  the object but move its memory), so a kernel never writes through a stale pointer;
* each new gradient: the boundary's checks (shape, dtype, device, dense layout), and contiguity;
* the path, the static hyperparameters (flags: a weight decay set to 0 changes the kernel; the step's own
  static scalars), `min_8bit_size` (which states are coded), and options the plan does not cover
  (capturable steps, stochastic rounding, Kahan buffers).

A plan holds the state tensors by weak reference: `optimizer.state.clear()` frees them. What it does not
cover takes the long way on every step: tensor subclasses (DTensor), complex or empty parameters, sparse
or strided gradients, step counts that differ between parameters (or are still 0), groups where some
parameter takes the tensor path (a batch of matrices, a rule that is not elementwise) or has its coded
states decoded around the step, and capturable steps.
"""

from __future__ import annotations

import operator
import weakref
from types import SimpleNamespace

import torch

from . import codec, native, paths
from .graph import static_key


class Call:
    """One call of a path over some of the group's parameters (`idx`), with the states it takes."""

    def __init__(self, path: str, idx: list[int], syms: tuple, coded: dict):
        self.path, self.idx, self.syms, self.coded = path, idx, syms, coded  # coded: symbol -> codec
        self.table = None

    def run(self, rule, hs, params: list, grads: list, stored: list[dict]) -> None:
        """`stored[i]`: parameter i's state tensors by key, as checked this step."""
        if self.table is not None:
            pointers, width, column = self.table.pointers, self.width, self.g_column
            for row, i in enumerate(self.idx):
                pointers[row * width + column] = grads[i].data_ptr()
            self.kernel.launch(self.table, hs)
            return
        run = paths.run_triton if self.path == "triton" else paths.run_foreach
        run(rule, hs, [params[i] for i in self.idx], [grads[i] for i in self.idx], self.states(stored))

    def states(self, stored: list[dict]) -> dict[str, list]:
        """Each state symbol's tensors (or codec.Coded holders) for this call's parameters."""
        out = {}
        for sym, key in self.syms:
            if sym in self.coded:
                codes_key, absmax_key = codec.keys(key)
                out[sym] = [codec.Coded(self.coded[sym], stored[i][codes_key], stored[i][absmax_key])
                            for i in self.idx]
            else:
                out[sym] = [stored[i][key] for i in self.idx]
        return out


class Plan:
    """The step of one group, as the last step left it. Use `Plan.make`."""

    def __init__(self, opt, group: dict, h: SimpleNamespace, params: list, dicts: list[dict], t: float,
                 states: dict[str, list], calls: list[tuple[str, list[int]]], coded_syms: frozenset,
                 kept: dict, upcoming: SimpleNamespace):
        """`kept`: the rule's kept states under h; `upcoming`: what the rule sees at the next step."""
        rule = opt.rule
        self.rule, self.group, self.path, self.t = rule, group, opt.path, t
        self.min_8bit_size = getattr(h, "min_8bit_size", None)
        self.carried = {key: dicts[0][key] for key in rule.scalar_state}
        self.params = tuple(params)
        self.meta = tuple((p.shape, p.dtype, p.device, p.data_ptr()) for p in params)
        # per parameter: each stored tensor (key, weak reference, pointer, dtype, shape), and the keys that
        # must stay absent for the long way to see what the plan saw
        self.stored, self.absent = [], []
        for i, d in enumerate(dicts):
            stored, absent = [], []
            for sym, s in kept.items():
                value, codes_key, absmax_key = states[sym][i], *codec.keys(s.key)
                if isinstance(value, codec.Coded):
                    stored += [(codes_key, value.codes), (absmax_key, value.absmax)]
                    continue
                if value is None:
                    absent.append(s.key)
                else:
                    stored.append((s.key, value))
                if sym in coded_syms:
                    absent.append(codes_key)
            self.stored.append(tuple((key, weakref.ref(v), v.data_ptr(), v.dtype, v.shape)
                                     for key, v in stored))
            self.absent.append(tuple(absent))
        self.static = static_key(upcoming)  # static scalars of the next step: ADOPT's first, RAdam's branch
        self.calls = []
        for path, idx in calls:
            first = [states[sym][idx[0]] for sym in kept]
            syms = tuple((sym, s.key) for (sym, s), x in zip(kept.items(), first) if x is not None)
            coded = {sym: x.codec for sym, x in zip(kept, first) if isinstance(x, codec.Coded)}
            call = Call(path, idx, syms, coded)
            if path == "fused":  # the kernel and its pointer table (raw pointers: checked before each use)
                pick = {sym: [states[sym][i] for i in idx] for sym, _ in syms}
                call.kernel, names, arrays, extents, _ = paths.fused_arguments(
                    rule, upcoming, [params[i] for i in idx], [params[i].grad for i in idx], pick)
                call.table = call.kernel.table(arrays, extents or None)
                call.width, call.g_column = len(names), names.index("g")
            self.calls.append(call)
        self.taken = 0  # steps taken by this plan (the tests check that it runs)

    @classmethod
    def make(cls, opt, group: dict, h: SimpleNamespace, coded_syms: frozenset) -> Plan | None:
        """A plan for the step `group` just took, or None where a plan does not apply. `coded_syms`: the
        states the optimizer may store through a codec."""
        params = [p for p in group["params"] if p.grad is not None]
        if (not params or not opt.rule.traceable or opt.capturable or group.get("stochastic_rounding")
                or group.get("kahan_summation")):
            return None  # (a rule that is not elementwise takes the tensor path: never one call)
        for p in params:
            g = p.grad
            if (type(p) not in paths.PLAIN or p.is_complex() or p.numel() == 0
                    or g.layout is not torch.strided or not g.is_contiguous()):
                return None
        dicts = [opt.state.get(p) for p in params]
        if any(d is None for d in dicts):
            return None
        t = dicts[0].get("step")
        if type(t) is not float or t < 1:  # a step that only made state (_creates_state_only) counts none
            return None
        carried = [(key, dicts[0].get(key)) for key in opt.rule.scalar_state]
        if any(d.get("step") != t or any(d.get(k) != v for k, v in carried) for d in dicts):
            return None  # step counts (and NAdam's μ product) differ: several calls per path
        kept = opt.rule.kept(h)
        # the states as the paths take them (coded ones as codec.Coded holders)
        states = opt._states_for_paths(list(zip(params, dicts)), kept, h, lambda x: x)
        if any(isinstance(x, torch.Tensor) and (type(x) not in paths.PLAIN or not x.is_contiguous())
               for xs in states.values() for x in xs):
            return None
        upcoming = SimpleNamespace(**vars(h), **opt.rule.step_scalars(h, int(t) + 1, dict(carried)))
        try:
            calls = paths.one_call_each(opt.path, opt.rule, upcoming, params, states)
            return None if calls is None else cls(opt, group, h, params, dicts, t, states, calls, coded_syms,
                                                  kept, upcoming)
        except native.CompilerUnavailable:
            return None

    def step(self, opt, group: dict, h: SimpleNamespace) -> bool:
        """Take the group's step if the plan still applies (and say so); else change nothing, say False."""
        if (group is not self.group or opt.path != self.path or opt.capturable
                or group.get("stochastic_rounding") or group.get("kahan_summation")
                or getattr(h, "min_8bit_size", None) != self.min_8bit_size):
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
        dicts, grads, stored = checked
        for call in self.calls:
            call.run(self.rule, hs, params, grads, stored)
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
        """Each parameter's state dict, gradient and stored state tensors by key, if every check of the
        module docstring passes; else None."""
        t, strided = self.t, torch.strided
        dicts, grads, stored = [], [], []
        for p, (shape, dtype, device, pointer), tensors, absent in zip(self.params, self.meta, self.stored,
                                                                      self.absent):
            d, g = state.get(p), p.grad
            if (d is None or d.get("step") != t or p.data_ptr() != pointer
                    or p.dtype is not dtype or p.shape != shape or g.layout is not strided
                    or g.shape != shape or g.dtype is not dtype or g.device != device
                    or not g.is_contiguous()):
                return None
            values = {}
            for key, ref, at, kind, size in tensors:
                value = ref()
                if (value is None or d.get(key) is not value or value.data_ptr() != at
                        or value.dtype is not kind or value.shape != size):
                    return None
                values[key] = value
            if absent and any(key in d for key in absent):
                return None
            dicts.append(d)
            grads.append(g)
            stored.append(values)
        return dicts, grads, stored


class PlanWarning(RuntimeWarning):
    """A plan could not be made after a step that was taken: the next steps take the long way. Never
    expected (the test suite turns it into an error); a step that already happened is not undone."""
