"""Parameter-group policy: one declarative call from a model to optimizer param groups.

    from optimlab import param_groups
    groups = param_groups.build(model, lr=3e-4, weight_decay=0.1, layer_decay=0.75, lr_scale={"head": 10.0})
    opt = optimlab.create("adamw", groups)           # every group carries its own lr and weight_decay

* No weight decay for norm layers and embeddings (found by module type), biases, any other tensor with
  fewer than 2 dims (gains, scales), names in `no_decay_names`, and a model's `no_weight_decay()` names.
* Layer-wise lr decay by depth: the stem is depth 0, block i of the model's main stack depth i+1, what
  comes after the stack (final norm, head) one deeper; lr scale = layer_decay ** (max depth - depth).
* `lr_scale` overrides per module (a name prefix or glob), multiplied into the layer scale.
* `split_matrices`: hidden 2-D+ weights apart from the rest (embeddings, head, vectors), as Muon needs.

It prints a summary table and raises ValueError if any trainable parameter would be dropped or
placed twice. Groups also hold "param_names" (torch's own key), "name" and "lr_factor".
"""

from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn

EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
         getattr(nn, "RMSNorm", nn.LayerNorm))


def _is_norm(module: nn.Module) -> bool:
    # custom norms (LlamaRMSNorm, T5LayerNorm, timm's LayerNorm2d) do not subclass torch's: accept a class
    # name ending in Norm (not merely containing it: a 'Normalizer' may well be a projection)
    return isinstance(module, NORMS) or re.search(r"Norm(\d*d)?$", type(module).__name__) is not None


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (owning module, local name), for trainable parameters, shared ones once."""
    modules = dict(model.named_modules())
    out = {}
    for name, _ in model.named_parameters():
        path, _, local = name.rpartition(".")
        out[name] = (modules[path], local)
    return out


def no_decay_reason(name: str, p: torch.Tensor, module: nn.Module, local: str, patterns=(),
                    decay_embeddings: bool = False) -> str | None:
    """Why a parameter gets no weight decay (None: it decays). By module type and ndim first, names last."""
    if _is_norm(module):
        return "norm"
    if isinstance(module, EMBEDDINGS) and not decay_embeddings:
        return "embedding"
    if local == "bias":
        return "bias"
    if p.ndim < 2:
        return "ndim<2"
    if any(_matches(name, pat) or fnmatch.fnmatchcase(local, pat) for pat in patterns):
        return "name"
    return None


def find_blocks(model: nn.Module) -> str:
    """The model's main stack: the ModuleList/Sequential with >= 2 parameterised children holding the
    most parameters ('' is the model itself)."""
    best, size = None, -1
    for path, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            kids = [c for c in m.children() if any(True for _ in c.parameters())]
            n = sum(p.numel() for c in kids for p in c.parameters())
            if len(kids) >= 2 and n > size:
                best, size = path, n
    if best is None:
        raise ValueError("no ModuleList/Sequential with two or more parameterised blocks found; pass "
                         "blocks='path' (e.g. 'encoder.layers') or blocks=callable(name) -> depth")
    return best


def depths(model: nn.Module, names: list[str], blocks) -> dict[str, int]:
    """Depth of each parameter: 0 before the block stack, i + 1 in block i, last block + 1 after it."""
    if callable(blocks):
        return {n: int(blocks(n)) for n in names}
    container = model.get_submodule(blocks) if blocks else model
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"blocks={blocks!r} is a {type(container).__name__}, not a ModuleList or Sequential")
    prefix = f"{blocks}." if blocks else ""
    index = {}  # child name -> depth, counting only children with parameters
    for child, m in container.named_children():
        if any(True for _ in m.parameters()):
            index[child] = len(index) + 1
    out, seen_block = {}, False
    for n in names:
        child = n[len(prefix):].split(".", 1)[0] if n.startswith(prefix) else None
        if child in index:
            out[n], seen_block = index[child], True
        else:
            out[n] = len(index) + 1 if seen_block else 0
    return out


def _override(name: str, lr_scale: dict) -> str | None:
    hits = [k for k in lr_scale if _matches(name, k)]
    if len(hits) > 1:
        raise ValueError(f"parameter {name!r} matches several lr_scale keys {hits}; it would be placed twice")
    return hits[0] if hits else None


def build(model: nn.Module, lr: float, weight_decay: float = 0.0, *, layer_decay: float | None = None,
          blocks=None, lr_scale: dict[str, float] | None = None, split_matrices: bool = False, head="auto",
          no_decay_names=(), decay_embeddings: bool = False, no_decay_settings: dict | None = None,
          verbose: bool = True) -> list[dict]:
    """Param groups for `model`: see the module docstring. `lr` is the base lr (each group's lr is
    lr × its scale); `blocks` is the block stack's path (default: found by `find_blocks`) or a
    callable name -> depth; `head` is excluded from the matrix split ('auto': the last nn.Linear);
    `no_decay_settings` are further hyperparameters for the groups without decay (LARS:
    {"layer_adaptation": False})."""
    if not (isinstance(lr, (int, float)) and lr >= 0) or not (isinstance(weight_decay, (int, float))
                                                             and weight_decay >= 0):
        raise ValueError(f"lr and weight_decay must be non-negative numbers, got {lr!r}, {weight_decay!r}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
    lr_scale = dict(lr_scale or {})
    if any(not isinstance(v, (int, float)) or v < 0 for v in lr_scale.values()):
        raise ValueError(f"lr_scale values must be non-negative numbers, got {lr_scale}")
    owners = _owners(model)
    params = dict(model.named_parameters())
    patterns = tuple(no_decay_names) + tuple(getattr(model, "no_weight_decay", lambda: ())())
    names = [n for n, p in params.items() if p.requires_grad]
    unused = [k for k in lr_scale if not any(_matches(n, k) for n in names)]
    if unused:
        raise ValueError(f"lr_scale keys {unused} match no trainable parameter")
    if layer_decay is not None and blocks is None:
        blocks = find_blocks(model)
    depth = depths(model, names, blocks) if layer_decay is not None else {}
    top = max(depth.values(), default=0)
    if split_matrices and head == "auto":
        linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None

    groups: dict[tuple, dict] = {}
    reasons: dict[int, dict[str, int]] = {}  # id(group) -> why its tensors get no decay, for the summary
    for n in names:
        p, (module, local) = params[n], owners[n]
        reason = no_decay_reason(n, p, module, local, patterns, decay_embeddings)
        key = _override(n, lr_scale)
        layer = layer_decay ** (top - depth[n]) if layer_decay is not None else 1.0
        factor = layer * lr_scale.get(key, 1.0)
        matrix = (split_matrices and p.ndim >= 2 and reason is None and not (head and _matches(n, head)))
        decays = weight_decay > 0 and reason is None
        split = weight_decay > 0 or no_decay_settings  # decay and no-decay tensors in separate groups
        parts = ([f"depth{depth[n]}"] if layer_decay is not None else []) + ([key] if key else []) \
            + (["matrix" if matrix else "other"] if split_matrices else []) \
            + ((["decay"] if reason is None else ["no_decay"]) if split else [])
        g = groups.setdefault((tuple(parts), factor), {
            "params": [], "param_names": [], "name": "/".join(parts) or "all", "lr": lr * factor,
            "lr_factor": factor, "weight_decay": weight_decay if decays else 0.0,
            **(no_decay_settings or {} if reason is not None else {})})
        why = reasons.setdefault(id(g), {})
        if split_matrices:
            g["matrix"] = matrix
        g["params"].append(p)
        g["param_names"].append(n)
        if reason and weight_decay > 0:
            why[reason] = why.get(reason, 0) + 1
    out = list(groups.values())
    check(model, out)
    if verbose:
        print(summary(out, model, reasons=[reasons[id(g)] for g in out],
                      blocks=blocks if layer_decay is not None else None,
                      head=head if split_matrices else None))
    return out


def check(model: nn.Module, groups: list[dict]) -> None:
    """Raise ValueError if a trainable parameter of `model` is in no group (it would never be trained),
    in two places, or if a group holds a tensor that is not the model's. Works for hand-made groups too."""
    names = {id(p): n for n, p in model.named_parameters()}
    where: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        params = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
        for p in params:
            where.setdefault(id(p), []).append(i)
    twice = [f"{names.get(k, '?')} (groups {v})" for k, v in where.items() if len(v) > 1]
    dropped = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in where]
    foreign = [k for k in where if k not in names]
    problems = ([f"placed twice: {', '.join(twice)}"] if twice else []) + \
        ([f"dropped (never trained): {', '.join(dropped)}"] if dropped else []) + \
        ([f"{len(foreign)} tensor(s) that are not parameters of the model"] if foreign else [])
    if problems:
        raise ValueError("param groups are wrong: " + "; ".join(problems))


def summary(groups: list[dict], model: nn.Module | None = None, reasons=None, blocks=None, head=None) -> str:
    """A table: group, #tensors, #params, lr scale, lr, weight decay (and, from `build`, why no decay)."""
    reasons = reasons or [{} for _ in groups]
    rows = [(g.get("name", str(i)), len(g["params"]), sum(p.numel() for p in g["params"]),
             g.get("lr_factor", 1.0), g.get("lr"), g.get("weight_decay", 0.0),
             ", ".join(f"{k} {v}" for k, v in why.items()))
            for i, (g, why) in enumerate(zip(groups, reasons))]
    w = max([5, *(len(r[0]) for r in rows)])
    lines = [f"{'group':<{w}}  {'tensors':>7}  {'params':>9}  {'lr scale':>8}  {'lr':>9}  {'wd':>6}"
             "  no decay because"]
    for name, k, n, f, lr, wd, why in rows:
        lr_text = f"{lr:9.3g}" if isinstance(lr, (int, float)) else f"{'-':>9}"
        lines.append(f"{name:<{w}}  {k:>7}  {n:>9,}  {f:>8.4g}  {lr_text}  {wd:>6g}  {why}")
    total = sum(r[2] for r in rows)
    lines.append(f"{'total':<{w}}  {sum(r[1] for r in rows):>7}  {total:>9,}")
    if model is not None:
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        if frozen:
            lines.append(f"frozen (requires_grad=False, in no group): {len(frozen)} tensors")
    if blocks is not None:
        lines.append(f"layer decay over the blocks of {blocks!r}" if isinstance(blocks, str) and blocks
                     else "layer decay over the model's own children" if blocks == ""
                     else "layer decay by callable")
    if head:
        lines.append(f"head kept out of the matrix groups: {head!r}")
    return "\n".join(lines)
