"""The plan: bytes of each thing training keeps, for the whole model and on each rank."""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from .precision import recipe as precision_named
from .transformer import Transformer

COMPONENTS = ("parameters", "gradients", "optimizer_state", "master_weights", "activations")
# The ZeRO stage from which each component is split across ranks (Rajbhandari et al. 2020):
# 1 partitions optimizer state (with the fp32 master weights it updates), 2 also gradients, 3 also
# parameters. Activations belong to each rank's own micro-batch and are never split.
SHARDED_FROM = {"optimizer_state": 1, "master_weights": 1, "gradients": 2, "parameters": 3}


@dataclasses.dataclass(frozen=True)
class Plan:
    optimizer: str
    precision: str
    zero: int
    ranks: int
    parameter_count: int
    trainable_count: int
    tensors: int
    whole: dict[str, int]  # component -> bytes for the whole model, unsharded
    per_rank: dict[str, int]  # component -> bytes on each rank (the same as `whole` on one rank)
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        """Per rank: what one device must hold."""
        return sum(self.per_rank.values())

    @property
    def whole_bytes(self) -> int:
        return sum(self.whole.values())

    def __getattr__(self, name):  # plan.parameters, plan.optimizer_state, …: per-rank bytes
        if name in COMPONENTS:
            return self.per_rank[name]
        raise AttributeError(name)

    def as_dict(self) -> dict:
        return {"optimizer": self.optimizer, "precision": self.precision, "zero": self.zero,
                "ranks": self.ranks,
                "parameter_count": self.parameter_count, "trainable_count": self.trainable_count,
                "tensors": self.tensors, "per_rank": self.ranks > 1,
                **{f"{c}_bytes": self.per_rank[c] for c in COMPONENTS}, "total_bytes": self.total_bytes,
                "whole_model": {**{f"{c}_bytes": self.whole[c] for c in COMPONENTS},
                                "total_bytes": self.whole_bytes},
                "bytes_per_parameter": {c: self.whole[c] / self.parameter_count for c in COMPONENTS},
                "notes": list(self.notes)}

    def table(self) -> str:
        from .report import table

        return table(self)


def plan(model, optimizer: str = "adamw", precision: str = "bf16-mixed", *, zero: int = 0, ranks: int = 1,
         batch: int | None = None, seq: int | None = None, recompute: str = "none") -> Plan:
    """Bytes of parameters, gradients, optimizer state, master weights (and activations) in training.

    model: a parameter count (13e9), a torch module (its trainable parameters get gradients and state;
        build it on the meta device to plan without allocating), a `Transformer` shape, or a list of
        parameter shapes.
    optimizer: a registry name, preset or 'name:key=value,…'; its state is what its rule declares for
        each parameter's shape (spec.state_tensors); the step counter is a Python float, not a tensor.
    precision: 'fp32', 'bf16-mixed', 'fp16-mixed' or 'bf16' (see precision.PRECISIONS).
    zero, ranks: ZeRO stage 0–3 and data-parallel ranks; per-rank bytes split the sharded components.
    batch, seq, recompute: with a Transformer, add activations for one micro-batch per rank.
    """
    import optimlab

    spec, hyper = optimlab.resolve(optimizer)
    recipe = precision_named(precision)
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero!r}")
    if not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be a positive integer, got {ranks!r}")
    if zero == 0 and ranks > 1:
        raise ValueError(f"{ranks} ranks with ZeRO stage 0 shard nothing: each rank holds everything, as one "
                         "rank does; give a ZeRO stage 1–3, or leave ranks at 1")
    shapes, notes = parameter_shapes(model)
    trainable = [shape for shape, grad in shapes if grad]
    count, trainable_count = sum(map(math.prod, (s for s, _ in shapes))), sum(map(math.prod, trainable))

    whole = {
        "parameters": count * recipe.params.itemsize,
        "gradients": trainable_count * recipe.grads.itemsize,
        "optimizer_state": _state_bytes(spec, {**hyper, **dict(recipe.options)}, trainable, recipe.state),
        "master_weights": trainable_count * recipe.master.itemsize if recipe.master else 0,
        "activations": _activations(model, batch, seq, recompute, recipe.activation),
    }
    per_rank = {c: -(-b // ranks) if zero >= SHARDED_FROM.get(c, 4) else b for c, b in whole.items()}
    if "factored" in spec.capabilities and not isinstance(model, (torch.nn.Module, Transformer, list, tuple)):
        notes.append(f"{spec.name} factors matrices, but a bare count has no shapes: its state is counted "
                     "as for one flat vector (an upper bound); give a model or a transformer shape")
    if zero and ranks == 1:
        notes.append(f"ZeRO-{zero} on one rank shards nothing: give the number of ranks")
    options = {**hyper, **dict(recipe.options)}
    if options.get("kahan_summation") and recipe.state in (torch.bfloat16, torch.float16):
        notes.append("optimizer state includes the Kahan buffer (one weight-sized tensor in the weights' "
                     "dtype, optimizer.state['kahan_compensation']) in place of an fp32 master copy")
    if options.get("stochastic_rounding"):
        notes.append("stochastic rounding costs no bytes: its random bits are a hash of (seed, step, index)")
    if batch is None:
        notes.append("activations not included (give batch and seq with a transformer shape)")
    else:
        notes.append(f"activations: one micro-batch of {batch} × {seq} tokens, recompute={recompute}, "
                     "kept by each rank (Korthikanti et al. 2022; embedding and logit activations not "
                     "counted)")
    return Plan(optimizer, recipe.name, zero, ranks, count, trainable_count, len(shapes), whole, per_rank,
                tuple(notes))


def parameter_shapes(model) -> tuple[list[tuple[tuple[int, ...], bool]], list[str]]:
    """(shape, trainable) per parameter tensor, and notes on how they were read."""
    if isinstance(model, torch.nn.Module):
        shapes = [(tuple(p.shape), p.requires_grad) for p in model.parameters()]
        frozen = sum(not grad for _, grad in shapes)
        return shapes, [f"{frozen} frozen tensors: no gradients, state or master copy"] if frozen else []
    if isinstance(model, Transformer):
        return [(s, True) for s in model.shapes()], []
    if isinstance(model, (list, tuple)):
        return [(tuple(int(d) for d in s), True) for s in model], []
    if isinstance(model, bool) or not isinstance(model, (int, float)):
        raise ValueError(f"plan needs a parameter count, a torch module, a Transformer or a list of shapes, "
                         f"got {type(model).__name__}")
    if not (math.isfinite(model) and model == int(model) and model >= 1):
        raise ValueError(f"the parameter count must be a positive whole number, got {model!r}")
    return [((int(model),), True)], []


def _state_bytes(spec, hyper: dict, shapes: list, dtype: torch.dtype) -> int:
    """The rule's declared state for every trainable tensor."""
    per_shape: dict[tuple, int] = {}
    for shape in shapes:
        if shape not in per_shape:
            per_shape[shape] = spec.state_bytes(shape, dtype, **hyper)
    return sum(per_shape[s] for s in shapes)


def _activations(model, batch, seq, recompute, element) -> int:
    if batch is None and seq is None:
        return 0
    if batch is None or seq is None:
        raise ValueError("an activation estimate needs both batch and seq")
    if not isinstance(model, Transformer):
        raise ValueError("an activation estimate needs a transformer shape (layers, hidden, vocab, heads)")
    return model.activation_bytes(batch, seq, recompute, element)


def measured_state_bytes(model: torch.nn.Module, optimizer: str = "adamw", precision: str = "fp32") -> int:
    """Bytes of the tensors in `optimizer.state` after one real step on a copy of `model` (left unchanged):
    what the optimizer actually allocates, to hold `plan(...).optimizer_state` against."""
    import optimlab

    recipe = precision_named(precision)
    twin = copy.deepcopy(model).to(recipe.state)  # mixed recipes: the optimizer updates the fp32 master copy
    params = [p for p in twin.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    spec, hyper = optimlab.resolve(optimizer)
    opt = spec.create(params, **{**hyper, **dict(recipe.options)})
    opt.step()
    tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)
