"""The registry: one declarative spec per optimizer, and the names people use for them.

    optimlab.available()                       registered names, sorted
    optimlab.create("adamw", params, lr=3e-4)  an optimizer by name
    optimlab.spec("adamw")                     its spec: class, defaults, reference, capabilities, state
    optimlab.resolve("sgd:lr=0.01,momentum=0.9")   a name or preset with hyperparameters, as text

Every generic test runs over every spec, so a new optimizer gets all of them by registering.
"""

from __future__ import annotations

import dataclasses
import difflib
from types import SimpleNamespace

import torch

from .engine import codec
from .engine.interop import TORCH_KEYWORDS
from .engine.lowprec import KAHAN_KEY, LOW as LOW_PRECISION, OPTIONS as ROUNDING_OPTIONS
from .engine.optimizer import RuleOptimizer
from .settings import parse

CAPABILITIES = {
    "elementwise": "each coordinate's update depends only on that coordinate",
    "per-tensor-norm": "elementwise, plus norms of whole tensors (a trust ratio)",
    "factored": "keeps row and column statistics of matrices, not a full second moment",
    "matrix": "sees whole matrices (orthogonalised or Kronecker-factored), batched over same-shape ones",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    cls: type[RuleOptimizer]
    idea: str  # one line
    reference: str  # what its tests compare against
    capabilities: frozenset[str]
    preset: dict = dataclasses.field(default_factory=dict)  # hyperparameters a preset fixes
    base: str = ""  # for a preset: the registered optimizer it configures

    @property
    def rule(self):
        return self.cls.rule

    @property
    def defaults(self) -> dict:
        """Hyperparameters and their defaults (a preset's values included), from the class signature."""
        return {**self.cls.defaults_signature(), **self.preset}

    def check_names(self, hyper: dict) -> None:
        valid = self.defaults
        for key in hyper:
            known = ("path", *TORCH_KEYWORDS, *ROUNDING_OPTIONS, *self.cls.settings)
            if key not in valid and key not in known:
                hint = difflib.get_close_matches(key, list(valid), n=1)
                raise ValueError(
                    f"{self.name} has no hyperparameter {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; valid: {', '.join(valid)}, path"
                )

    def create(self, params, **hyper) -> RuleOptimizer:
        self.check_names(hyper)
        return self.cls(params, **{**self.preset, **hyper})

    def hyper(self, **hyper) -> SimpleNamespace:
        """The static view `h` of the rule under these hyperparameters (flags derived, betas unpacked)."""
        self.check_names(hyper)
        return self.cls.namespace({**self.cls.fixed, **self.defaults, **hyper})

    def state_tensors(self, shape, dtype=torch.float32, **hyper) -> dict[str, tuple[tuple, torch.dtype]]:
        """The state tensors the rule keeps for one parameter of this shape: key -> (shape, dtype).

        Computed on the meta device from the rule's own declaration; nothing is allocated.
        """
        θ = torch.empty(shape, dtype=dtype, device="meta")
        kahan = hyper.pop("kahan_summation", False) and dtype in LOW_PRECISION  # a bf16/fp16 weight's buffer
        hyper = {k: v for k, v in hyper.items() if k not in ROUNDING_OPTIONS}  # the rule never sees these
        h = self.hyper(**hyper)
        out = {}
        for sym, s in self.rule.kept(h).items():
            if not self.rule.keeps(s, θ, h):
                continue
            coder = self.cls.codec_of(sym, θ, h)
            if coder is None:
                t = s.create(θ, h)
                out[s.key] = (tuple(t.shape), t.dtype)
            else:  # 8-bit codes and a float32 absmax per block (engine/codec.py)
                codes, absmax = codec.keys(s.key)
                out[codes] = (tuple(θ.shape), torch.uint8)
                out[absmax] = ((coder.blocks(θ.numel()),), torch.float32)
        if kahan:
            out[KAHAN_KEY] = (tuple(θ.shape), θ.dtype)
        return out

    def state_bytes(self, shape, dtype=torch.float32, **hyper) -> int:
        """Bytes of state tensors for one parameter (the step counter, a Python float, not included)."""
        tensors = self.state_tensors(shape, dtype, **hyper).values()
        return sum(torch.Size(s).numel() * d.itemsize for s, d in tensors)


_specs: dict[str, Spec] = {}
presets: dict[str, Spec] = {}


def register(spec: Spec, *, replace: bool = False) -> Spec:
    """Add an optimizer (or, with `preset` set, a preset); an existing name is kept unless `replace`."""
    unknown = set(spec.capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{spec.name}: unknown capabilities {sorted(unknown)}")
    if spec.name != spec.name.lower():
        raise ValueError(f"registry names are lower-case (lookups ignore case); got {spec.name!r}")
    taken = spec.name in _specs or spec.name in presets
    if taken and not replace:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered; pass replace=True to "
                         "replace it, or choose another name")
    _specs.pop(spec.name, None)
    presets.pop(spec.name, None)
    (presets if spec.preset else _specs)[spec.name] = spec
    return spec


def preset(name: str, base: str, idea: str, **hyper) -> Spec:
    """A friendly name for a registered optimizer with some hyperparameters fixed."""
    return register(dataclasses.replace(_specs[base], name=name, idea=idea, preset=hyper, base=base))


def available() -> list[str]:
    """Registered optimizer names, sorted (presets such as 'momentum' are in `presets`)."""
    return sorted(_specs)


def spec(name: str) -> Spec:
    """The spec of a registered optimizer or preset; names are matched in any case ('AdamW' is 'adamw')."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in _specs:
        return _specs[key]
    if key in presets:
        return presets[key]
    known = sorted([*_specs, *presets])
    # suggestions compare case-folded names, so 'AdamW' can never be steered to 'adam'
    hint = difflib.get_close_matches(str(key), known, n=1)
    raise ValueError(f"unknown optimizer {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                     + f"; available: {', '.join(known)}")


def resolve(text: str) -> tuple[Spec, dict]:
    """'name' or 'name:key=value,key=value' -> (spec, hyperparameters). Values are Python literals."""
    name, hyper = parse(text)
    found = spec(name)
    found.check_names(hyper)
    return found, hyper


def create(name: str, params, **hyper) -> RuleOptimizer:
    """An optimizer by registry name, preset or 'name:key=value,…' text; keyword arguments override."""
    found, fixed = resolve(name)
    return found.create(params, **{**fixed, **hyper})
