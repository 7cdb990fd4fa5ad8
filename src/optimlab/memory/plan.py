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
    per_rank: dict[str, int]  # component -> bytes on each rank's device (the same as `whole` on one rank)
    notes: tuple[str, ...] = ()
    host: dict[str, int] = dataclasses.field(default_factory=dict)  # offloaded: component -> host bytes/rank

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
                "host_bytes": dict(self.host),
                "whole_model": {**{f"{c}_bytes": self.whole[c] for c in COMPONENTS},
                                "total_bytes": self.whole_bytes},
                "bytes_per_parameter": {c: self.whole[c] / self.parameter_count for c in COMPONENTS},
                "notes": list(self.notes)}

    def table(self) -> str:
        from .report import table

        return table(self)


def plan(model, optimizer: str = "adamw", precision: str = "bf16-mixed", *, zero: int = 0, ranks: int = 1,
         batch: int | None = None, seq: int | None = None, recompute: str = "none", fsdp2: bool = False,
         offload: bool = False) -> Plan:
    """Bytes of parameters, gradients, optimizer state, master weights (and activations) in training.

    model: a parameter count (13e9), a torch module (its trainable parameters get gradients and state;
        build it on the meta device to plan without allocating), a `Transformer` shape, or a list of
        parameter shapes.
    optimizer: a registry name, preset or 'name:key=value,…'; its state is what its rule declares for
        each parameter's shape (spec.state_tensors); the step counter is a Python float, not a tensor.
    precision: 'fp32', 'bf16-mixed', 'fp16-mixed' or 'bf16' (see precision.PRECISIONS).
    zero, ranks: ZeRO stage 0–3 and data-parallel ranks; per-rank bytes split the sharded components.
    batch, seq, recompute: with a Transformer, add activations for one micro-batch per rank.
    fsdp2: shard as torch's `fully_shard` does (ZeRO-3 tensor by tensor): each tensor split on dim 0,
        unevenly where it does not divide (the first rank, whose figures these are, holds ⌈rows/ranks⌉);
        optimlab's states follow their parameter's rows, per-column statistics are replicated.
    offload: optimizer state (and master weights) live in host memory, stepped there (the fourth remedy
        after sharding, factored state and 8-bit state): they leave the device's figures for `host`.
    """
    import optimlab

    spec, hyper = optimlab.resolve(optimizer)
    recipe = precision_named(precision)
    if fsdp2:
        if not isinstance(ranks, int) or ranks < 2 or zero not in (0, 3):
            raise ValueError(f"fsdp2 shards everything (ZeRO-3) over 2 or more ranks; got ranks={ranks!r}, "
                             f"zero={zero!r}")
        zero = 3
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
    matrix = matrix_policy(model, spec, hyper)
    if matrix and not all(matrix):
        notes.append(f"{spec.name}: {matrix.count(False)} embedding, head or vector tensors are not its "
                     "matrices (stepped by AdamW, as the parameter-group policy decides)")

    whole = {
        "parameters": count * recipe.params.itemsize,
        "gradients": trainable_count * recipe.grads.itemsize,
        "optimizer_state": _state_bytes(spec, {**hyper, **dict(recipe.options)}, trainable, recipe.state,
                                        matrix),
        "master_weights": trainable_count * recipe.master.itemsize if recipe.master else 0,
        "activations": _activations(model, batch, seq, recompute, recipe.activation),
    }
    if fsdp2:
        if recipe.options:  # the optimizers refuse these options on sharded (DTensor) parameters
            raise ValueError(f"precision {precision!r} (stochastic rounding or Kahan summation) is not "
                             "supported under FSDP2: its parameters are DTensors")
        per_rank = _fsdp2_per_rank(spec, hyper, recipe, shapes, ranks, whole["activations"])
    else:
        per_rank = {c: -(-b // ranks) if zero >= SHARDED_FROM.get(c, 4) else b for c, b in whole.items()}
    host = {}
    if offload:
        host = {c: per_rank.pop(c) for c in OFFLOADED}
        per_rank.update({c: 0 for c in OFFLOADED})
        notes.append("offload: optimizer state and master weights in host memory (and the update run there); "
                     "each step moves the gradients to the host and the new weights back")
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
                tuple(notes), host)


OFFLOADED = ("optimizer_state", "master_weights")


def rows_split(shape: tuple, ranks: int) -> int:
    """Elements of a tensor that the first rank holds when it is split on dim 0 over `ranks` (torch.chunk)."""
    if not shape:
        return 1
    return -(-shape[0] // ranks) * math.prod(shape[1:])


def _fsdp2_per_rank(spec, hyper, recipe, shapes, ranks: int, activations: int) -> dict[str, int]:
    """Per-rank bytes under FSDP2, tensor by tensor (see `plan`)."""
    trainable = [s for s, grad in shapes if grad]
    per_key = {s.key: s.per for s in spec.rule.state.values()}
    state = 0
    for shape in trainable:
        for key, (state_shape, dtype) in spec.state_tensors(shape, recipe.state, **hyper).items():
            split = per_key.get(key) != "col" and len(state_shape) > 0
            state += (rows_split(state_shape, ranks) if split else math.prod(state_shape)) * dtype.itemsize
    return {"parameters": sum(rows_split(s, ranks) for s, _ in shapes) * recipe.params.itemsize,
            "gradients": sum(rows_split(s, ranks) for s in trainable) * recipe.grads.itemsize,
            "optimizer_state": state,
            "master_weights": sum(rows_split(s, ranks) for s in trainable) * recipe.master.itemsize
            if recipe.master else 0,
            "activations": activations}


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


def matrix_policy(model, spec, hyper: dict) -> list[bool] | None:
    """For an optimizer with a `matrix` group setting (Muon), per trainable tensor: whether it is one of
    the optimizer's matrices, as `param_groups.build(..., split_matrices=True)` groups a module (its
    embeddings and output head are not) and as `Transformer.kinds` says for a shape. None where the
    policy does not apply: another optimizer, `matrix` set by hand, or a bare count or list of shapes
    (plain tensors, which Muon takes as matrices, as torch does)."""
    if "matrix" not in spec.defaults or hyper.get("matrix") is not None:
        return None
    if isinstance(model, Transformer):
        return [kind == "block" and len(shape) >= 2 for shape, kind in zip(model.shapes(), model.kinds())]
    if isinstance(model, torch.nn.Module):
        return [g["matrix"] for g in _policy_groups(model) for _ in g["params"]]
    return None


def _policy_groups(model: torch.nn.Module) -> list[dict]:
    """The trainable parameters of `model` in model.parameters() order, one group each, with `matrix`."""
    from .. import param_groups

    groups = param_groups.build(model, lr=0.0, split_matrices=True, verbose=False)
    matrix = {id(p): g["matrix"] for g in groups for p in g["params"]}
    return [{"params": [p], "matrix": matrix[id(p)]} for p in model.parameters() if p.requires_grad]


def _state_bytes(spec, hyper: dict, shapes: list, dtype: torch.dtype, matrix: list[bool] | None) -> int:
    """The rule's declared state for every trainable tensor (with its group's `matrix` where given)."""
    per_shape: dict[tuple, int] = {}
    keys = [(shape, None if matrix is None else matrix[i]) for i, shape in enumerate(shapes)]
    for shape, is_matrix in keys:
        if (shape, is_matrix) not in per_shape:
            extra = {} if is_matrix is None else {"matrix": is_matrix}
            per_shape[shape, is_matrix] = spec.state_bytes(shape, dtype, **hyper, **extra)
    return sum(per_shape[k] for k in keys)


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
    policy = matrix_policy(twin, spec, hyper) is not None  # Muon: its matrices apart, as in training
    opt = spec.create(_policy_groups(twin) if policy else params, **{**hyper, **dict(recipe.options)})
    opt.step()
    tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)
