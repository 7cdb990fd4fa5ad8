"""Sophia (Liu et al. 2023): momentum divided by a diagonal Hessian estimate, clipped per coordinate.

    opt = optimlab.Sophia(model.parameters(), lr=1e-4)           # estimator="gnb" (Sophia-G)
    for x, y in batches:
        opt.update_hessian(lambda: model(x))     # every k-th call estimates ĥ (the closure gives logits)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

`update_hessian` runs its estimator only when the next update is one of the paper's t ≡ 1 (mod k)
steps (otherwise it returns None without calling the closure), and folds the estimate into the EMA
h ← β₂h + (1 − β₂)ĥ. Sophia-H (`estimator="hutchinson"`) takes a closure that returns the loss.

Under DDP, pass `process_group` (DDP's): each rank estimates from its own batch and the estimates are
combined over the ranks in one all-reduce, as one process would estimate on the global batch, so the
replicas keep equal Hessians (and equal parameters). Under FSDP2, pass `update_hessian(..., model=)`:
GNB's gradient then comes from FSDP2's own backward.
"""

from __future__ import annotations

import functools
import warnings
import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..engine import sharded
from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import rule
from . import _checks


@rule(state={"m": "exp_avg", "h_diag": "hessian"})
def sophia(h, θ, g, m, h_diag):
    """Sophia (Liu et al. 2023, Alg. 3); h_diag is the EMA of the estimates `update_hessian` makes."""
    m = h.beta1 * m + (1 - h.beta1) * g  # momentum
    θ = θ * (1 - h.lr * h.weight_decay)  # decoupled weight decay
    ratio = m / torch.clamp(h.gamma * h_diag, h.eps)  # m / max(γ·h, ε): Newton's step where h > 0
    θ = θ - h.lr * torch.clamp(ratio, -1.0, 1.0)  # clip(·, 1): never more than lr per coordinate
    return θ, m, h_diag


def hutchinson(loss: torch.Tensor, params: list, generator=None, group=None) -> list:
    """u ⊙ Hu with Rademacher u: an unbiased estimate of diag(H), from one Hessian-vector product.
    With `group`, the mean over its ranks: the estimate for the mean of their losses (DDP's objective)."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("the Hutchinson estimator needs the closure to return the loss, a tensor with one "
                         f"element; got {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, gr) for p, gr in zip(params, grads) if gr is not None]
    us = [_sampled(lambda device, p=p: torch.randint(0, 2, p.shape, generator=generator, dtype=p.dtype,
                                                      device=device).mul_(2).sub_(1), generator, p.device)
          for p, _ in used]
    try:
        hvps = torch.autograd.grad([gr for _, gr in used], [p for p, _ in used], grad_outputs=us,
                                   allow_unused=True)
    except RuntimeError as error:
        if "derivative for" not in str(error):
            raise
        raise RuntimeError(f"Sophia's Hutchinson estimator needs double backward through the model, which "
                           f"this model does not support ({error}); use estimator='gnb', or for attention "
                           "torch.nn.attention.sdpa_kernel(SDPBackend.MATH)") from error
    found = {p: u * hu for (p, _), u, hu in zip(used, us, hvps) if hu is not None}
    estimates = [found.get(p) for p in params]
    if group is None:
        return estimates
    sums, ranks = _summed_over_ranks(estimates, params, 1, group)
    return [None if s is None else s / ranks for s in sums]


def gauss_newton_bartlett(logits: torch.Tensor, params: list, generator=None, group=None) -> list:
    """B · ĝ ⊙ ĝ, ĝ the gradient of the mean cross-entropy of labels ŷ drawn from softmax(logits).
    With `group`, of the global batch: ĝ = Σ_r B_r·ĝ_r / B, B = Σ_r B_r over its ranks."""
    flat, ŷ = _sampled_labels(logits, generator)
    B = flat.shape[0]  # samples (tokens) the loss averages over
    grads = torch.autograd.grad(F.cross_entropy(flat, ŷ), params, allow_unused=True)
    if group is not None:  # squared after the sum: the global batch's gradient, not a mean of squares
        sums, B = _summed_over_ranks(grads, params, B, group)
        grads = [None if s is None else s / B for s in sums]
    return [None if gr is None else B * gr * gr for gr in grads]


def gauss_newton_bartlett_fsdp2(logits: torch.Tensor, params: list, model, generator=None) -> list:
    """GNB of the global batch for FSDP2's shards: the sampled loss's backward runs through FSDP2 (as the
    official training script's runs through DDP), which leaves each shard W⁻¹·Σ_r B_r·ĝ_r, W its mesh's
    ranks; every gradient of `model` is set aside before and put back after."""
    flat, ŷ = _sampled_labels(logits, generator)
    everything = list(model.parameters())
    if not {id(p) for p in params} <= {id(p) for p in everything}:
        raise ValueError("Sophia.update_hessian: model= must hold the optimizer's parameters")
    kept = [p.grad for p in everything]
    for p in everything:
        p.grad = None
    try:
        F.cross_entropy(flat, ŷ, reduction="sum").backward()
        averaged = [p.grad for p in params]
    finally:
        for p, grad in zip(everything, kept):
            p.grad = grad
    mesh = params[0].device_mesh
    B = torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=flat.device)
    for dim in range(mesh.ndim):  # Σ_r B_r over the mesh
        dist.all_reduce(B, group=mesh.get_group(dim))
    B = B.item()
    ĝs = [None if a is None else a * (mesh.size() / B) for a in averaged]  # the global batch's gradient
    return [None if ĝ is None else B * ĝ * ĝ for ĝ in ĝs]


def _sampled_labels(logits: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits as rows (..., classes) and one label per row drawn from the model's own softmax."""
    if logits.dim() < 2:
        raise ValueError(f"the Gauss-Newton-Bartlett estimator needs logits of shape (..., classes); got a "
                         f"{logits.dim()}-d tensor (a closure for estimator='hutchinson' returns the loss)")
    flat = logits.reshape(-1, logits.shape[-1])
    probs = torch.softmax(flat.detach().double(), dim=-1)
    ŷ = _sampled(lambda device: torch.multinomial(probs.to(device), 1, generator=generator),
                 generator, flat.device).squeeze(-1)
    return flat, ŷ


def _summed_over_ranks(tensors: list, params: list, weight, group) -> tuple[list, float]:
    """(Σ_r weight_r·tensor_r per tensor, Σ_r weight_r) over the ranks of `group`, in one all-reduce per
    device and dtype; a tensor None on a rank counts as zeros there, and stays None if it is on all."""
    _check_same_parameters(params, group)
    by_kind: dict = {}
    for i, p in enumerate(params):
        by_kind.setdefault((p.device, p.dtype), []).append(i)
    sums, total = [None] * len(params), None
    for (device, dtype), indices in by_kind.items():
        # each rank's tensors, then whether it had each one, then its weight: all summed at once
        parts = [(tensors[i] * weight if tensors[i] is not None else torch.zeros_like(params[i])).reshape(-1)
                 for i in indices]
        counts = [float(tensors[i] is not None) for i in indices] + [float(weight)]
        flat = torch.cat([*parts, torch.tensor(counts, dtype=dtype, device=device)])
        dist.all_reduce(flat, group=group)
        values = flat[:-len(counts)].split([params[i].numel() for i in indices])
        for i, value, had in zip(indices, values, flat[-len(counts):-1].tolist()):
            sums[i] = value.view(params[i].shape) if had > 0 else None
        total = flat[-1].item()
    return sums, total


def _check_same_parameters(params: list, group) -> None:
    """Every rank must combine the same shapes in the same order (DDP's replicas do): a rank with other
    parameters (ZeroRedundancyOptimizer's partitions, pipeline stages) would sum unrelated numbers or
    stall its peers, so each rank compares a fingerprint of the layout first and all refuse together."""
    layout = repr([(tuple(p.shape), str(p.dtype)) for p in params]).encode()
    mine = torch.tensor([len(params), sum(p.numel() for p in params), zlib.crc32(layout)],
                        dtype=torch.int64, device=params[0].device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    if any(not torch.equal(other, every[0]) for other in every):
        raise ValueError("Sophia.update_hessian: the ranks of process_group hold different parameters "
                         f"(count, elements, layout hash per rank: {[t.tolist() for t in every]}); "
                         "process_group is for DDP's replicas, where every rank holds the same ones")


def _sampled(draw, generator, device: torch.device) -> torch.Tensor:
    """`draw(d)` on the generator's device d (torch samples only there), moved to `device`: a CPU
    generator seeds a GPU model's estimates too, with the same numbers as on the CPU."""
    return draw(device if generator is None else generator.device).to(device)


ESTIMATORS = {"gnb": gauss_newton_bartlett, "hutchinson": hutchinson}


class Sophia(RuleOptimizer):
    """Sophia with the official code's defaults (lr 1e-4, β = (0.965, 0.99), weight decay 0.1, γ = 0.04
    (the code's `rho`)) and the paper's ε = 1e-12, k = 10. See docs/frontier.md for ρ/γ naming."""

    rule = sophia
    checks = {**_checks.COMMON, "betas": _checks.betas, "gamma": _checks.positive,
              "update_period": lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= 1
              else "must be an integer ≥ 1", "estimator": _checks.one_of(*ESTIMATORS)}

    settings = ("process_group",)
    process_group = None  # where an instance has none (one made by unpickling): no averaging

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), gamma=0.04, eps=1e-12, weight_decay=0.1,
                 update_period=10, estimator="gnb", *, maximize=False, path="auto", process_group=None):
        """`process_group`: DDP's group (e.g. `torch.distributed.group.WORLD`), over whose ranks
        `update_hessian` combines its estimates; None: each process estimates alone."""
        if process_group is not None and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("Sophia: process_group was given but torch.distributed is not initialised")
        super().__init__(params, path, **hyperparameters(locals(), self.settings))
        self.process_group = process_group

    def hessian_due(self) -> bool:
        """Whether the next step() is one at which some group refreshes its estimate (t ≡ 1 mod k)."""
        return bool(self._due())

    def _due(self) -> list[tuple[dict, list]]:
        out = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.requires_grad
                      and int(float(self.state[p].get("step", 0))) % group["update_period"] == 0]
            if params:
                out.append((group, params))
        return out

    @torch.no_grad()
    def update_hessian(self, closure, generator: torch.Generator | None = None, model=None):
        """Refresh the Hessian-diagonal EMA of the parameters that are due; returns the closure's output
        (logits for 'gnb', the loss for 'hutchinson') or None when nothing was due. Under FSDP2 (GNB
        only), `model` is the sharded model: its gradients are set aside around the estimate's backward."""
        due = self._due()
        if not due:
            return None
        estimators = {group["estimator"] for group, _ in due}
        if len(estimators) != 1:
            raise ValueError(f"Sophia: groups due together must share one estimator, got "
                             f"{sorted(estimators)}")
        (estimator,) = estimators
        params = [p for _, ps in due for p in ps]
        if any(sharded.is_sharded(p) for p in params):  # FSDP2 computes with gathered copies, not these
            self._check_fsdp2(params, model, estimator)
            estimate = functools.partial(gauss_newton_bartlett_fsdp2, params=params, model=model,
                                         generator=generator)
        else:
            self._warn_without_group()
            estimate = functools.partial(ESTIMATORS[estimator], params=params, generator=generator,
                                         group=self.process_group)
        with torch.enable_grad():
            output = closure()
            estimates = estimate(output)
        self._fold(due, estimates, estimator)
        return output

    def _warn_without_group(self) -> None:
        several_ranks = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.process_group is None and several_ranks:
            warnings.warn("Sophia.update_hessian: torch.distributed has several ranks but the optimizer has "
                          "no process_group, so each rank keeps its own Hessian estimate; under DDP the "
                          "replicas then drift apart: pass process_group=torch.distributed.group.WORLD "
                          "(DDP's group)",
                          stacklevel=4)  # the caller's line (no_grad's wrapper and this are two more frames)

    @staticmethod
    def _check_fsdp2(params: list, model, estimator: str) -> None:
        """update_hessian where the parameters are FSDP2's shards: autograd.grad cannot reach them (the
        loss sees FSDP2's gathered copies), so the estimate's gradient comes from FSDP2's own backward."""
        if estimator != "gnb" or not all(sharded.is_sharded(p) for p in params) or model is None:
            raise NotImplementedError(
                "Sophia.update_hessian under FSDP2 needs estimator='gnb' (Hutchinson's double backward "
                "does not run through FSDP2), every due parameter sharded, and model=, the FSDP2 model "
                "whose gradients it sets aside while FSDP2 reduces the estimate's; step() works either "
                "way, with the estimate kept in optimizer.state[p]['hessian']")

    def _fold(self, due, estimates: list, estimator: str) -> None:
        """h ← β₂h + (1 − β₂)ĥ for each due parameter the loss reached (estimates in `due`'s order)."""
        index = 0
        for group, ps in due:
            β2 = group["betas"][1]
            # ascending f is descending −f, whose Hessian is −H (GNB's cross-entropy is always minimised)
            sign = -1.0 if group["maximize"] and estimator == "hutchinson" else 1.0
            for p in ps:
                ĥ = estimates[index]
                index += 1
                if ĥ is None:
                    continue  # the loss does not depend on p
                state = self.state[p]
                if "hessian" not in state:
                    state["hessian"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                h_diag = state["hessian"]
                h_diag.copy_(β2 * h_diag + (1 - β2) * sign * ĥ.to(h_diag.dtype))  # h ← β₂h + (1 − β₂)ĥ
