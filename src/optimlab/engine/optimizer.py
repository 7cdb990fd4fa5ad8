"""RuleOptimizer: a `torch.optim.Optimizer` that runs one declared rule.

A concrete optimizer is a few lines: its rule, torch's signature and defaults, and the checks on its
hyperparameters. Everything else is here, once: state creation inside `optimizer.state[p]`, step
counting, per-step scalars, grouping parameters that share a step count, and the path choice.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from types import SimpleNamespace
from typing import Callable

import torch

from . import boundary, codec, interop, lowprec, paths, sharded
from .graph import ELEMENT, SCALAR
from .plan import Plan, PlanWarning
from .rule import Rule, State


def hyperparameters(local_vars: dict, settings: tuple = ()) -> dict:
    """An optimizer's keyword arguments from its __init__'s locals(), less its `settings`."""
    skipped = ("self", "params", "path", "__class__", *settings)
    return {k: v for k, v in local_vars.items() if k not in skipped}


@functools.cache
def _signature_defaults(cls) -> tuple:
    return tuple((k, p.default) for k, p in inspect.signature(cls.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty
                 and k not in ("path", *interop.TORCH_KEYWORDS, *lowprec.OPTIONS, *cls.settings))


@functools.cache
def _flag_names(cls) -> frozenset:
    """Hyperparameters that are booleans (their default is), where 0 and 1 also mean False and True."""
    return frozenset(k for k, v in [*_signature_defaults(cls), *cls.fixed.items()] if isinstance(v, bool))


@functools.cache
def _coded_symbols(cls) -> frozenset:
    """The states this optimizer class may store through a codec (engine/codec.py): the others skip the
    codec's bookkeeping on every step."""
    return frozenset(sym for sym in cls.rule.state if cls._codec_declared(sym) is not None)


def _same(x):
    return x


def _as_real(x):
    """A complex tensor as a real one with a trailing dimension of 2 (a view: writes reach the original)."""
    return torch.view_as_real(x) if x is not None and x.is_complex() else x


class RuleOptimizer(torch.optim.Optimizer):
    rule: Rule
    # hyperparameter -> check(value) returning an error message or None
    checks: dict[str, Callable] = {}
    # tuple hyperparameters the rule reads element by element
    unpack: dict[str, tuple[str, ...]] = {"betas": ("beta1", "beta2")}
    # hyperparameters this class fixes for its rule (AdamW: the Adam rule with decoupled decay)
    fixed: dict = {}
    # __init__ keywords that configure the optimizer object, not its groups (Sophia's process_group):
    # neither hyperparameters nor in checkpoints
    settings: tuple[str, ...] = ()
    # Complex parameters run as real ones (torch.view_as_real), as torch does where the rule is elementwise.
    complex_as_real: bool = False
    # Sparse gradients, as torch has them: None (refused), "dense" (the rule on the densified gradient:
    # untouched entries still move with their momentum, as torch's SGD), or "touched" (the rule on the
    # touched entries only, everything else untouched, as torch's Adagrad).
    sparse_gradients: str | None = None
    # torch.optim.Adam(W) refuses tensor lr/betas with foreach=True (capturable=False): do as torch there.
    foreach_refuses_tensors: bool = False
    # torch's capturable=True (set by interop's keyword wrapper): step counts live on the device, and the
    # Triton kernels compute the per-step scalars from them (see _step_on_device).
    capturable: bool = False

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """GradScaler hands its scale and found_inf to step() instead of unscaling and checking on the host,
        as it does for torch's fused optimizers: with capturable=True the kernels read them on the device."""
        return self.capturable
    # State storage codecs this optimizer chooses (rule symbol -> codec, engine/codec.py), beside any a
    # rule's State declares. A coded state applies to plain real parameters of at least `min_8bit_size`
    # elements (a hyperparameter where the class has it; smaller tensors keep their state as it is).
    codecs: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # torch's foreach=, fused=, capturable=, differentiable= (see interop.py)
            cls.__init__ = interop.accepting_torch_keywords(cls.__init__)
            cls.__init__ = lowprec.accepting_options(cls.__init__)  # stochastic_rounding=, kahan_summation=

    def __init__(self, params, path: str = "auto", **hyper):
        self._check(hyper)
        # group keys, so a checkpoint records them (the rule never sees them: lowprec.py applies them)
        hyper = {**self.fixed, **hyper, **getattr(self, "_rounding_options", lowprec.OPTIONS)}
        paths.validate(path, self.rule, type(self).__name__)
        self.path = path
        super().__init__(params, hyper)

    def _check(self, hyper: dict) -> None:
        name = type(self).__name__
        for key, value in hyper.items():
            default = self.defaults_signature().get(key)
            if isinstance(default, bool) and interop.as_flag(value) is None:
                raise ValueError(f"{name}: {key} must be True or False (or 1 or 0), got {value!r}")
            check = self.checks.get(key)
            problem = check(value) if check else None
            if problem:
                raise ValueError(f"{name}: {key} {problem}, got {value!r}")

    @classmethod
    def defaults_signature(cls) -> dict:
        """The hyperparameters a user can set, with their defaults (from __init__'s signature)."""
        return dict(_signature_defaults(cls))

    def __getstate__(self):
        # torch's keeps defaults, state and groups only
        return {**super().__getstate__(), "path": self.path, "capturable": self.capturable}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("path", "auto")
        self._plans = {}  # load_state_dict comes here: its state is new (plan.py would see that too)

    def hyper(self, group: dict) -> SimpleNamespace:
        """The namespace `h` a rule sees for a parameter group (without per-step scalars)."""
        # not self.defaults: torch adds keys
        names = [*self.fixed, *(k for k, _ in _signature_defaults(type(self)))]
        return self.namespace({key: group[key] for key in names})

    @classmethod
    def namespace(cls, hyper: dict) -> SimpleNamespace:
        """`h` from hyperparameter values, the one place that builds it: every number (Python, numpy, 0-d
        tensor) a plain Python number, so compiled paths take it as a dynamic value and never recompile for
        it; booleans given as 0/1 as booleans; tuples unpacked; the rule's flags derived."""
        values = {}
        flags = _flag_names(cls)
        for key, value in hyper.items():
            if key in cls.unpack:
                values.update(zip(cls.unpack[key], map(interop.plain_number, value)))
            elif key in flags:
                values[key] = interop.as_flag(value)
            else:
                values[key] = interop.plain_number(value)
        return cls.rule.with_flags(values)

    # Outside Dynamo on purpose: under torch.compile(opt.step) the step runs eagerly on its own fast paths.
    # The engine is a compiler of its own (tracing, caches, ctypes calls): Dynamo would trace into it and
    # break its graph there, step after step (docs/engine.md).
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        plans = self.__dict__.get("_plans")
        if plans and len(plans) > len(self.param_groups):  # a group was removed: its plan goes too
            live = {id(group) for group in self.param_groups}
            for key in [key for key in plans if key not in live]:
                del plans[key]
        return loss

    def _step_group(self, group: dict) -> None:
        """One step of a group: by its plan where the last step left one that still applies (plan.py),
        else the long way, which leaves a plan where one applies."""
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.pop(id(group), None)
        if plan is not None and plan.step(self, group, self.hyper(group)):
            plans[id(group)] = plan
            return
        h = self._step_group_long(group)
        if h is None:
            return
        try:
            plans[id(group)] = Plan.make(self, group, h, _coded_symbols(type(self)))
        except Exception as err:  # the step is taken: an error now would invite the caller to take it again
            warnings.warn(f"optimlab: {type(self).__name__} could not plan its next step ({err!r}); steps "
                          "take the long way (please report this)", PlanWarning, stacklevel=3)

    def _step_group_long(self, group: dict) -> SimpleNamespace | None:
        """The step of a group, every check and choice made afresh; the group's h where it stepped every
        parameter with a gradient, else None (no gradients, a step that only made state, a capturable one:
        nothing to plan from)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        h = self.hyper(group)
        kept = self.rule.kept(h)
        carried = tuple(self.rule.scalar_state)
        # Parameters that share a step count (and scalar state) share per-step scalars: normally all.
        buckets: dict[tuple, list] = {}
        prepared = [self._prepare(p, h, kept) for p in params]
        rounding = group.get("stochastic_rounding") or group.get("kahan_summation")
        if rounding and self.capturable:  # refused before any state is made for it
            raise ValueError(f"{type(self).__name__}: capturable=True runs on the Triton path, which "
                             "does not take stochastic_rounding or kahan_summation")
        if rounding:
            for p, state in zip(params, prepared):
                if p.grad.is_sparse and p.dtype in lowprec.LOW:
                    raise RuntimeError(f"{type(self).__name__}: stochastic_rounding and kahan_summation do "
                                       "not support sparse gradients (their rule runs on gathered entries)")
                lowprec.prepare(state, p, group, functools.partial(self._position, p))
        # Every dense gradient and its state pass the boundary; sparse ones are checked in _check_sparse.
        dense = [(p, state) for p, state in zip(params, prepared)
                 if self.sparse_gradients is None or not p.grad.is_sparse]
        checked = {**kept, lowprec.KAHAN_KEY: State(lowprec.KAHAN_KEY)} if rounding else kept
        boundary.admit(h, checked, [p for p, _ in dense], [state for _, state in dense],
                       lambda i: self._describe(dense[i][0]))
        if self._creates_state_only(group, params, prepared):
            return None
        if self.capturable:
            self._step_on_device(h, kept, list(zip(params, prepared)))
            return None
        for p, state in zip(params, prepared):
            key = (float(state["step"]), *(float(state[k]) for k in carried))
            buckets.setdefault(key, []).append((p, state))
        for (step, *values), members in buckets.items():
            t = int(step) + 1
            scalars = self.rule.step_scalars(h, t, dict(zip(carried, values)))
            hs = SimpleNamespace(**vars(h), **scalars)
            dense = members
            if self.sparse_gradients is not None:  # (other optimizers refused sparse gradients in _prepare)
                dense = [(p, state) for p, state in members if not p.grad.is_sparse]
                for p, state in members:
                    if p.grad.is_sparse:
                        self._step_sparse(p, state, hs, kept)
            if dense:
                self._step_dense(hs, kept, dense, lowprec.rounding_for(group, t, *zip(*dense)))
            for _, state in members:
                state["step"] = float(t)  # a Python number: counting 200 tensors' steps costs nothing
                for key in carried:
                    state[key] = scalars[key]
        return h

    @staticmethod
    def _creates_state_only(group: dict, params: list, prepared: list) -> bool:
        """torch's distributed checkpoint makes an optimizer's state by a step with zero gradients and lr 0
        (`_init_optim_state`): that step creates the state and changes nothing else, not even the step
        count (training after a step-0 checkpoint would begin at t = 2). Only a first step can be one."""
        if float(group.get("lr", 1.0)) != 0 or any(state["step"] != 0 for state in prepared):
            return False
        return not sharded.any_nonzero([p.grad for p in params if not p.grad.is_sparse])

    def _step_on_device(self, h: SimpleNamespace, kept: dict, members: list) -> None:
        """capturable=True: each step count is a 0-d float32 tensor on its parameter's device (as torch's
        fused and capturable optimizers keep it), counted there; the kernels compute the per-step scalars
        from it, divide the gradient by GradScaler's scale and store nothing when it found an inf, whose
        step is uncounted again on the device. No number crosses to the host."""
        if any(p.grad.is_sparse for p, _ in members):
            raise RuntimeError(f"{type(self).__name__}: capturable=True does not take sparse gradients")
        steps = [state["step"] for _, state in members]
        torch._foreach_add_(steps, 1.0)
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        amp = None
        if scale is not None or found_inf is not None:
            device = members[0][0].device
            one = torch.ones((), dtype=torch.float32, device=device)
            amp = tuple(one if x is None else x.to(device, torch.float32, non_blocking=True)
                        for x in (scale, found_inf))
        view = _as_real if self.complex_as_real and any(p.is_complex() for p, _ in members) else _same
        states = self._states_for_paths(members, kept, h, view)
        paths.run(self.path, self.rule, h, [view(p) for p, _ in members], [view(p.grad) for p, _ in members],
                  states, steps=steps, amp=amp)
        if found_inf is not None:
            torch._foreach_sub_(steps, [amp[1]] * len(steps))

    def _step_dense(self, h: SimpleNamespace, kept: dict, members: list, rounding=None) -> None:
        """Parameters with dense gradients, on the chosen path; complex ones as real views."""
        view = _as_real if self.complex_as_real and any(p.is_complex() for p, _ in members) else _same
        states = self._states_for_paths(members, kept, h, view)
        paths.run(self.path, self.rule, h, [view(p) for p, _ in members], [view(p.grad) for p, _ in members],
                  states, rounding=rounding)

    def _states_for_paths(self, members: list, kept: dict, h: SimpleNamespace, view) -> dict[str, list]:
        """Each kept state of each parameter as a path takes it (symbol -> list): coded ones as codec.Coded
        holders with the codec the group's hyperparameters choose, the others as tensors (or None)."""
        coded = _coded_symbols(type(self))
        return {sym: [self._stored(state, sym, h, view) if sym in coded else view(state.get(s.key))
                      for _, state in members] for sym, s in kept.items()}

    def _position(self, p: torch.Tensor) -> int:
        """p's place in the optimizer's order of parameters (its stream of random bits derives from it)."""
        return next(k for k, q in enumerate(q for g in self.param_groups for q in g["params"]) if q is p)

    def _stored(self, state: dict, sym: str, h: SimpleNamespace, view=_same):
        """What a path receives for state `sym`: its tensor, a `codec.Coded` holder, or None."""
        key = self.rule.state[sym].key
        if sym in _coded_symbols(type(self)):
            codes_key, absmax_key = codec.keys(key)
            if codes_key in state:
                return codec.Coded(self._codec_chosen(sym, h), state[codes_key], state[absmax_key])
        return view(state.get(key))

    @classmethod
    def _codec_declared(cls, sym: str):
        return cls.codecs.get(sym) or cls.rule.state[sym].codec

    @classmethod
    def _codec_chosen(cls, sym: str, h: SimpleNamespace):
        """The declared codec of state `sym`, or a variant of it a group's hyperparameters choose."""
        return cls._codec_declared(sym)

    @classmethod
    def codec_of(cls, sym: str, p: torch.Tensor, h: SimpleNamespace):
        """The codec that stores state `sym` of parameter p, or None (kept as a tensor like p)."""
        chosen = cls._codec_chosen(sym, h)
        if chosen is None or type(p) not in paths.PLAIN or p.is_complex() or not p.is_floating_point():
            return None
        return chosen if p.numel() >= getattr(h, "min_8bit_size", 0) else None

    def _step_sparse(self, p: torch.Tensor, state: dict, h: SimpleNamespace, kept: dict) -> None:
        """One parameter with a sparse gradient, on the per-tensor path (see `sparse_gradients`)."""
        grad = p.grad.coalesce()  # duplicate indices summed: the update is not linear in them
        targets = {sym: state.get(s.key) for sym, s in kept.items()}
        if self.sparse_gradients == "dense":
            paths.run("tensor", self.rule, h, [p], [grad.to_dense()], {k: [v] for k, v in targets.items()})
            return
        where = tuple(grad.indices())  # "touched": gather those entries, run the rule on them, scatter back
        rows = {sym: None if v is None else v[where] for sym, v in targets.items()}
        θ = p.detach()[where]
        paths.run("tensor", self.rule, h, [θ], [grad.values()], {k: [v] for k, v in rows.items()})
        p.detach().index_put_(where, θ)
        for sym, v in rows.items():
            if v is not None:
                targets[sym].index_put_(where, v)

    def _prepare(self, p: torch.Tensor, h: SimpleNamespace, kept: dict) -> dict:
        """The state of parameter p, with whatever it lacks created (all of it on its first step)."""
        if p.grad.is_sparse:
            self._check_sparse(p, h)
        state = self.state[p]
        if "step" not in state:
            self._check_parameter(p)
            state["step"] = 0.0  # a Python float: see interop.py (a checkpoint keeps it as a tensor)
            state.update(self.rule.scalar_state)
        if self.capturable and not isinstance(state["step"], torch.Tensor):  # new, or from a checkpoint
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32, device=p.device)
        whole = None  # a sharded parameter's whole value, gathered once to make its states
        coded = _coded_symbols(type(self))
        for sym, s in kept.items():
            if s.key in state and sym not in coded:  # every step after the first: nothing to make
                continue
            if not self.rule.keeps(s, p, h):
                continue
            coder, (codes_key, absmax_key) = self.codec_of(sym, p, h), codec.keys(s.key)
            if coder is not None:
                if codes_key not in state:  # new, or a full-precision state (another optimizer's checkpoint)
                    state[codes_key], state[absmax_key] = coder.empty(p)
                    if s.key in state:
                        coder.encode(state.pop(s.key), state[codes_key], state[absmax_key])
                continue
            if s.key not in state and codes_key in state:  # coded in a checkpoint, kept as a tensor here
                stored = self._codec_chosen(sym, h)
                if stored is None:
                    raise ValueError(f"{type(self).__name__}: {self._describe(p)} has state {s.key!r} stored "
                                     f"8-bit ({codes_key!r}, {absmax_key!r}), which this optimizer does not "
                                     "decode; load the checkpoint into the optimizer that wrote it")
                state[s.key] = stored.decode(state.pop(codes_key), state.pop(absmax_key), p.dtype)
            if s.key not in state:  # also one a flag switched on mid-run
                if sharded.is_sharded(p):
                    whole = p.detach().full_tensor() if whole is None else whole
                    state[s.key] = sharded.create_state(s, p, h, whole)
                    continue
                # On the real view for a complex parameter: torch's Adagrad starts it at v + vi.
                made = s.create(_as_real(p.detach()), h)
                state[s.key] = torch.view_as_complex(made) if p.is_complex() else made
        return state

    def elementwise(self) -> bool:
        """Whether every element's update reads that element alone (besides per-step scalars), in every group.

        True for a traceable rule whose traced graph has no per-tensor, row or column value. Then problems
        stacked as the rows of one parameter step exactly as each would alone: the lab races many start
        points at the cost of one this way.
        """
        if self.rule.matrix or not self.rule.traceable:
            return False
        for group in self.param_groups:
            h = self.hyper(group)
            scalars = self.rule.step_scalars(h, 1, dict(self.rule.scalar_state))
            graph = paths.graph_of(self.rule, SimpleNamespace(**vars(h), **scalars))
            if any(node.kind not in (SCALAR, ELEMENT) for node in graph.nodes):
                return False
        return True

    def _describe(self, p: torch.Tensor) -> str:
        """'parameter 3 of group 0 (fc.weight)': how an error names a parameter."""
        for g, group in enumerate(self.param_groups):
            for i, q in enumerate(group["params"]):
                if q is p:
                    names = group.get("param_names")
                    return f"parameter {i} of group {g}" + (f" ({names[i]})" if names else "")
        return "a parameter"

    def _check_parameter(self, p: torch.Tensor) -> None:
        name = type(self).__name__
        if p.is_complex() and not self.complex_as_real:
            raise RuntimeError(f"{name} does not support complex parameters (its rule is not the same on the "
                               "real and imaginary parts taken apart); view them with torch.view_as_real")
        if not p.is_floating_point() and not p.is_complex():
            raise RuntimeError(f"{name} can only optimize floating-point parameters, got {p.dtype}")

    def _check_sparse(self, p: torch.Tensor, h: SimpleNamespace) -> None:
        name = type(self).__name__
        if self.sparse_gradients is None:
            raise RuntimeError(f"{name} does not support sparse gradients (torch.optim's SGD and Adagrad do)")
        if p.grad.shape != p.shape or p.grad.dtype != p.dtype or p.grad.device != p.device:
            raise RuntimeError(f"{name}: the sparse gradient is {tuple(p.grad.shape)} {p.grad.dtype} on "
                               f"{p.grad.device}, its parameter {tuple(p.shape)} {p.dtype} on {p.device}")
        if self.path in ("foreach", "fused"):
            raise RuntimeError(f"{name}: sparse gradients run on the per-tensor path; use path='auto' or "
                               f"'tensor' (or foreach=None), not {self.path!r}")
        if p.is_complex():
            raise RuntimeError(f"{name} does not support sparse gradients of complex parameters")
        if h.weight_decay != 0:
            raise RuntimeError(f"{name}: weight_decay is not compatible with sparse gradients (as torch)")

    def state_dict(self) -> dict:
        """torch's state_dict, with `step` and scalar state as 0-d tensors, as torch.optim keeps them."""
        saved = super().state_dict()
        carried = tuple(self.rule.scalar_state)
        saved["state"] = {i: interop.state_to_torch(s, carried) for i, s in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads optimlab's and torch.optim's checkpoints (tensor steps and scalar state read as floats)."""
        carried = tuple(self.rule.scalar_state)
        keys = [s.key for s in self.rule.state.values()]
        coded_keys = [k for key in keys for k in codec.keys(key)]
        state_dict = {**state_dict, "state": {i: interop.state_from_torch(s, carried, keys + coded_keys)
                                              for i, s in state_dict["state"].items()}}
        # torch casts every state tensor to its parameter's dtype: 8-bit codes and float32 scales must keep
        # theirs (a bf16 absmax would not round-trip), so they bypass that cast and are restored as saved.
        coded = {i: {k: s.pop(k) for k in coded_keys if k in s} for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key, value in coded.get(i, {}).items():
                self.state[p][key] = value.to(device=p.device, copy=True) if isinstance(value, torch.Tensor) \
                    else value
        boundary.check_coded_load(self)
        for group in self.param_groups:  # a torch.optim checkpoint lacks optimlab-only hyperparameters
            for key in [k for k, _ in _signature_defaults(type(self))] + list(lowprec.OPTIONS):
                group.setdefault(key, self.defaults.get(key))
        for state in self.state.values():  # the fused kernel reads state as dense arrays
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() and not value.is_contiguous():
                    state[key] = value.contiguous()
