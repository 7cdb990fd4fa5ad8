"""Gradient tools: global-norm, value and adaptive (AGC) clipping, and a gradient-norm monitor.

    from optimlab.gradients import clip_grad_norm_, adaptive_clip_grad_, GradNormMonitor
    norm = clip_grad_norm_(model, max_norm=1.0)      # returns the norm *before* clipping (a tensor)
    monitor = GradNormMonitor(model, optimizer, max_norm=1.0)   # one line: records, clips, flags
    ...                                              # the training loop is unchanged
    print(monitor.summary()); monitor.plot("/tmp/gradnorm.png")

`params` arguments take a module, an optimizer (all its groups) or an iterable of tensors. Clipping
functions return tensors and never call .item(), so they do not synchronise with an accelerator.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import statistics

import torch

from .engine import sharded

log = logging.getLogger("optimlab.gradients")


def _params(params) -> list[torch.Tensor]:
    if isinstance(params, torch.nn.Module):
        return list(params.parameters())
    if isinstance(params, torch.optim.Optimizer):
        return [p for g in params.param_groups for p in g["params"]]
    if isinstance(params, torch.Tensor):
        return [params]
    return list(params)


def _positive(name: str, value: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _local(x: torch.Tensor) -> torch.Tensor:
    return x.to_local() if sharded.is_sharded(x) else x


def squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖x‖² of each tensor (float64), of the whole tensor where it is sharded (an FSDP2 DTensor): the
    local sums of all sharded tensors are summed over the ranks in one all-reduce, never one per tensor.
    (`.item()` on a DTensor's norm would silently give the local shard's.)"""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    local = [_local(x) for x in tensors]
    wide = [torch.promote_types(x.dtype, torch.float32) for x in local]
    sq = torch.stack([torch.linalg.vector_norm(x, dtype=w).double().to("cpu") for x, w in zip(local, wide)])
    sq = sq.square()
    split = [i for i, x in enumerate(tensors) if sharded.is_sharded(x)
             and any(q.is_shard() for q in x.placements)]
    if split:
        part = sq[split].clone()
        torch.distributed.all_reduce(part, group=tensors[split[0]].device_mesh.get_group())
        sq[split] = part
    return sq


def _any_sharded(tensors) -> bool:
    return any(sharded.is_sharded(x) for x in tensors)


def grad_norm(params, norm_type: float = 2.0) -> torch.Tensor:
    """The global norm of all gradients, as if concatenated into one vector (no clipping)."""
    grads = [p.grad for p in _params(params) if p.grad is not None]
    if _any_sharded(grads) and norm_type == 2:
        return squared_norms(grads).sum().sqrt().to(_local(grads[0]).dtype)
    return torch.nn.utils.get_total_norm(grads, norm_type)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> torch.Tensor:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)); return the global norm *before* clipping.

    This is torch.nn.utils.clip_grad_norm_ (which also returns the pre-clip norm, whatever some
    tutorials say), accepting a module or optimizer and checking max_norm.
    """
    ps, max_norm = _params(params), _positive("max_norm", max_norm)
    grads = [p.grad for p in ps if p.grad is not None]
    if not _any_sharded(grads):
        return torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type, error_if_nonfinite, foreach)
    if norm_type != 2:
        raise ValueError(f"clip_grad_norm_ of sharded gradients takes norm_type=2, got {norm_type!r}")
    total = squared_norms(grads).sum().sqrt().to(_local(grads[0]).dtype)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(f"the total norm of gradients is non-finite ({float(total)}), so it cannot be "
                           "clipped; set error_if_nonfinite=False to clip anyway")
    scale_grads(grads, max_norm, total)
    return total


def scale_grads(grads: list[torch.Tensor], max_norm: float, total: torch.Tensor) -> None:
    """torch's clipping of gradients (plain or sharded) whose global norm is `total`:
    g ← g · min(1, max_norm / (total + 1e-6)), on each rank's local shard."""
    local = [_local(g) for g in grads]
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in local:
        g.mul_(coefficient.to(g.dtype))


def clip_grad_value_(params, clip_value: float, foreach: bool | None = None) -> torch.Tensor:
    """Clamp every gradient entry to [-clip_value, clip_value]; return the largest |g| before clipping."""
    ps = _params(params)
    largest = grad_norm(ps, math.inf)
    torch.nn.utils.clip_grad_value_(ps, _positive("clip_value", clip_value), foreach)
    return largest


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit: over all dims but the first (PyTorch stores out-features first);
    a vector (bias, gain) or scalar is one unit. As in the NFNets code."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(params, clipping: float = 0.01, eps: float = 1e-3) -> torch.Tensor:
    """Adaptive gradient clipping (AGC, Brock et al. 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization", eq. 3), unit-wise.

    For each unit i (a row of a weight, a whole bias): if ||G_i|| / max(||W_i||, eps) > clipping, then
    G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i. The paper leaves the final linear layer
    unclipped: pass the other parameters. Returns the number of clipped units (a tensor).
    """
    clipping, eps = _positive("clipping", clipping), float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    clipped = torch.zeros((), dtype=torch.long)
    ps = [p for p in _params(params) if p.grad is not None]
    # A sharded vector (FSDP2 splits its one unit across ranks): its norms over the ranks, in one call.
    # A sharded matrix's units are its rows (dim 0), which lie whole on one rank: their norms are local.
    split = [p for p in ps if sharded.is_sharded(p) and p.ndim <= 1]
    sq = squared_norms([p.detach() for p in split] + [p.grad for p in split])
    whole = {id(p): (sq[i].sqrt(), sq[i + len(split)].sqrt()) for i, p in enumerate(split)}
    for p in ps:
        w, g = _local(p.detach()), _local(p.grad)
        if id(p) in whole:
            w_norm, g_norm = (x.to(g.dtype) for x in whole[id(p)])
        else:
            w_norm, g_norm = unitwise_norm(w), unitwise_norm(g)
        limit = w_norm.clamp(min=eps) * clipping
        over = g_norm > limit
        # the 1e-6 only guards the division where the unit is not clipped anyway
        g.mul_(torch.where(over, limit / g_norm.clamp(min=1e-6), torch.ones_like(g_norm)))
        if id(p) in whole and p.device_mesh.get_local_rank() != 0:
            continue  # a split vector is one unit: counted once, by the first rank
        clipped = clipped + over.sum().to(clipped.device)
    if _any_sharded(ps):
        torch.distributed.all_reduce(clipped, group=next(p for p in ps if sharded.is_sharded(p))
                                     .device_mesh.get_group())
    return clipped


@dataclasses.dataclass
class Event:
    """Something the monitor flagged: kind is 'spike', 'vanishing' or 'nonfinite'."""

    step: int  # optimizer updates taken before this one
    kind: str
    norm: float
    params: tuple[str, ...]  # nonfinite: the offending parameters; spike: the largest gradients
    message: str


class GradNormMonitor:
    """Records the global gradient norm at every optimizer update, with per-group norms and the
    update-to-parameter ratio ||Δθ|| / ||θ|| per group, and flags trouble.

    Flags (each an `Event`, logged as a warning on logger 'optimlab.gradients'):
      spike      norm > spike_factor × the median of the last `window` finite norms (after `min_history`)
      vanishing  norm < vanish_below
      nonfinite  NaN or inf anywhere, naming the parameters whose gradients hold them

    With an optimizer it hooks into `optimizer.step()` (torch step pre/post hooks), so the training
    loop does not change; `max_norm` then clips there too (torch's formula, pre-clip norm recorded),
    and `skip_nonfinite=True` drops every gradient (sets it to None) when one is NaN/inf, so that
    update changes nothing. Without an optimizer call `monitor.record()` after `backward()`.
    The ratio costs one copy of the parameters per update; `ratio_every=k` computes it every k-th
    update, 0 never. Each update costs one small device-to-host copy (one norm per tensor).
    """

    LOGGED = 10  # events of each kind written to the log; all are kept in `events`

    def __init__(self, model: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, *,
                 max_norm: float | None = None, window: int = 100, spike_factor: float = 5.0,
                 vanish_below: float = 1e-7, min_history: int = 10, ratio_every: int = 1,
                 skip_nonfinite: bool = False, log_events: bool = True):
        if model is None and optimizer is None:
            raise ValueError("GradNormMonitor needs a model, an optimizer, or both")
        self.max_norm = None if max_norm is None else _positive("max_norm", max_norm)
        self.spike_factor, self.vanish_below = _positive("spike_factor", spike_factor), float(vanish_below)
        if window < 1 or min_history < 1 or ratio_every < 0:
            raise ValueError("window and min_history must be >= 1 and ratio_every >= 0")
        self.min_history, self.ratio_every, self.skip_nonfinite = min_history, ratio_every, skip_nonfinite
        self.log_events = log_events
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        if optimizer is not None:
            self.groups = [list(g["params"]) for g in optimizer.param_groups]
            self.group_names = [str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)]
            for i, g in enumerate(optimizer.param_groups):
                labels = g.get("param_names") or [f"group{i}.param{j}" for j in range(len(g["params"]))]
                for p, label in zip(g["params"], labels):
                    names.setdefault(id(p), label)
        else:
            self.groups, self.group_names = [list(model.parameters())], ["all"]
        self.names = names
        self.recent: collections.deque = collections.deque(maxlen=window)  # finite norms, for the median
        self.steps: list[int] = []
        self.norms: list[float] = []
        self.group_norms: list[list[float]] = []
        self.ratios: dict[int, list[float]] = {}  # step -> per-group ||Δθ|| / ||θ||
        self.clipped: list[int] = []
        self.events: list[Event] = []
        self._before: list[list[torch.Tensor]] | None = None
        self._hooks = []
        if optimizer is not None:
            self._hooks = [optimizer.register_step_pre_hook(lambda opt, a, k: self._pre_step()),
                           optimizer.register_step_post_hook(lambda opt, a, k: self._post_step())]

    # -- recording ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def record(self) -> float:
        """Measure the current gradients (call after backward); returns the global norm as a float."""
        step = len(self.steps)
        grads = [[p.grad for p in ps if p.grad is not None] for ps in self.groups]
        flat = [g for gs in grads for g in gs]
        per = self._per_tensor_norms(flat)
        # the one host copy of this update
        norms = torch.stack([n.to(per[0].device, torch.float64) for n in per]).tolist() if flat else []
        group_norms, i = [], 0
        for gs in grads:
            group_norms.append(math.sqrt(sum(x * x for x in norms[i:i + len(gs)])))
            i += len(gs)
        norm = math.sqrt(sum(x * x for x in norms))
        self.steps.append(step)
        self.norms.append(norm)
        self.group_norms.append(group_norms)
        owners = [p for ps in self.groups for p in ps if p.grad is not None]
        label = [self.names.get(id(p), "?") for p in owners]
        if not math.isfinite(norm):
            bad = tuple(n for n, x in zip(label, norms) if not math.isfinite(x))
            self._flag(step, "nonfinite", norm, bad, f"non-finite gradient norm ({norm}) at step {step} in "
                       f"{len(bad)} parameter(s): {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else ""))
            return norm
        if len(self.recent) >= self.min_history:
            median = statistics.median(self.recent)
            if norm > self.spike_factor * median:
                top = tuple(n for _, n in sorted(zip(norms, label), reverse=True)[:3])
                self._flag(step, "spike", norm, top, f"gradient norm spike at step {step}: {norm:.4g} is "
                           f"{norm / median:.1f}x the running median {median:.4g}; largest: {', '.join(top)}")
        if norm < self.vanish_below:
            self._flag(step, "vanishing", norm, (), f"vanishing gradient norm at step {step}: {norm:.3g} "
                       f"< {self.vanish_below:g}")
        self.recent.append(norm)
        return norm

    __call__ = record

    def _per_tensor_norms(self, flat: list[torch.Tensor]) -> list[torch.Tensor]:
        """Norm of each gradient, by torch._foreach_norm per (device, dtype) as torch's clipping does,
        in at least fp32 (bf16 norms are coarse). Keeps the bucket order for `_total` (torch's order)."""
        if _any_sharded(flat):  # whole tensors' norms (one all-reduce), in torch's order
            per = list(squared_norms(flat).sqrt())
            self._order, self._per = list(range(len(flat))), per
            return per
        buckets: dict[tuple, list[int]] = {}
        for i, g in enumerate(flat):
            buckets.setdefault((g.device, g.dtype), []).append(i)
        per: list = [None] * len(flat)
        for (_, dtype), idx in buckets.items():
            wide = torch.promote_types(dtype, torch.float32)
            out = torch._foreach_norm([flat[i] for i in idx], 2, dtype=wide)
            for i, n in zip(idx, out):
                per[i] = n
        self._order = [i for idx in buckets.values() for i in idx]
        self._per = per
        return per

    def _flag(self, step, kind, norm, params, message) -> None:
        self.events.append(Event(step, kind, norm, params, message))
        seen = sum(e.kind == kind for e in self.events)
        if self.log_events and seen <= self.LOGGED:  # a diverged run would otherwise log every update
            log.warning(message + (f" (further {kind} events are kept in monitor.events, not logged)"
                                   if seen == self.LOGGED else ""))

    @torch.no_grad()
    def _pre_step(self) -> None:
        norm = self.record()
        step = self.steps[-1]
        if not math.isfinite(norm):
            if self.skip_nonfinite:
                for ps in self.groups:
                    for p in ps:
                        p.grad = None
            return
        if self.max_norm is not None:
            # torch's own scaling with the total norm torch would compute, so results match clip_grad_norm_
            per = self._per
            total = torch.linalg.vector_norm(torch.stack([per[i].to(per[0].device) for i in self._order]))
            grads = [p.grad for ps in self.groups for p in ps if p.grad is not None]
            if _any_sharded(grads):
                scale_grads(grads, self.max_norm, total.to(_local(grads[0]).dtype))
            else:
                torch.nn.utils.clip_grads_with_norm_([p for ps in self.groups for p in ps], self.max_norm,
                                                     total)
            if norm > self.max_norm:
                self.clipped.append(step)
        if self.ratio_every and step % self.ratio_every == 0:
            self._before = [[p.detach().clone() for p in ps] for ps in self.groups]

    @torch.no_grad()
    def _post_step(self) -> None:
        if self._before is None:
            return
        ratios = []
        for ps, old in zip(self.groups, self._before):
            if not ps:
                ratios.append(math.nan)
                continue
            if _any_sharded(ps):  # whole tensors' norms: one all-reduce for the changes and the sizes
                sq = squared_norms([p.detach() - o for p, o in zip(ps, old)] + old)
                d, s = sq[:len(ps)].sum().sqrt().item(), sq[len(ps):].sum().sqrt().item()
                ratios.append(d / s if s > 0 else math.nan)
                continue
            delta = torch.stack([torch.linalg.vector_norm(p.detach() - o).double() for p, o in zip(ps, old)])
            size = torch.stack([torch.linalg.vector_norm(o).double() for o in old])
            d, s = torch.linalg.vector_norm(delta).item(), torch.linalg.vector_norm(size).item()
            ratios.append(d / s if s > 0 else math.nan)
        self.ratios[self.steps[-1]] = ratios
        self._before = None

    def remove(self) -> None:
        """Detach from the optimizer (the recorded history stays)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- reporting -----------------------------------------------------------------------------------------

    def summary(self) -> str:
        """A table: global norm statistics, per-group norms and update ratios, and the events."""
        if not self.norms:
            return "GradNormMonitor: nothing recorded yet"
        finite = [x for x in self.norms if math.isfinite(x)] or [math.nan]
        clipped = (f", clipped to max_norm={self.max_norm:g} at {len(self.clipped)} of them"
                   if self.max_norm else "")
        lines = [f"GradNormMonitor: {len(self.norms)} updates recorded{clipped}",
                 f"global grad norm  first {self.norms[0]:.4g}  median {statistics.median(finite):.4g}  "
                 f"min {min(finite):.4g}  max {max(finite):.4g}  last {self.norms[-1]:.4g}"]
        width = max(8, *map(len, self.group_names))
        lines.append(f"{'group':<{width}}  {'median norm':>11}  {'max norm':>10}  {'median |Δθ|/|θ|':>15}")
        for i, name in enumerate(self.group_names):
            col = [n[i] for n in self.group_norms if math.isfinite(n[i])] or [math.nan]
            rat = [r[i] for r in self.ratios.values() if math.isfinite(r[i])]
            ratio = f"{statistics.median(rat):.3g}" if rat else "-"
            lines.append(f"{name:<{width}}  {statistics.median(col):>11.4g}  {max(col):>10.4g}  {ratio:>15}")
        kinds = collections.Counter(e.kind for e in self.events)
        lines.append("events: " + (", ".join(f"{kinds[k]} {k}" for k in ("spike", "vanishing", "nonfinite")
                                             if kinds[k]) or "none"))
        lines += [f"  step {e.step}: {e.message}" for e in self.events[:10]]
        if len(self.events) > 10:
            lines.append(f"  ... {len(self.events) - 10} more in monitor.events")
        return "\n".join(lines)

    def plot(self, path: str | None = None):
        """Global and per-group norms (log scale) with flagged steps, and the update ratios; saved to
        `path` if given. Returns the matplotlib Figure."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

        fig = Figure(figsize=(8, 5.5), dpi=110)
        top, bottom = fig.subplots(2, 1, sharex=True)
        for i, name in enumerate(self.group_names if len(self.group_names) > 1 else []):
            top.plot(self.steps, [n[i] for n in self.group_norms], lw=0.8, alpha=0.7, label=f"group {name}")
        top.plot(self.steps, self.norms, color="k", lw=1.4, label="global")
        colors = {"spike": "tab:red", "vanishing": "tab:blue", "nonfinite": "tab:purple"}
        ceiling = max([x for x in self.norms if math.isfinite(x)] or [1.0])  # non-finite steps drawn here
        for kind, color in colors.items():
            hits = [e for e in self.events if e.kind == kind]
            if hits:
                ys = [e.norm if math.isfinite(e.norm) else ceiling for e in hits]
                top.scatter([e.step for e in hits], ys, color=color, zorder=3, label=kind)
        top.set_yscale("log")
        top.set_ylabel("gradient norm")
        top.legend(fontsize=7)
        for i, name in enumerate(self.group_names):
            steps = sorted(self.ratios)
            bottom.plot(steps, [self.ratios[s][i] for s in steps], lw=0.9, label=f"group {name}")
        bottom.set_yscale("log")
        bottom.set_ylabel("|Δθ| / |θ| per update")
        bottom.set_xlabel("step (optimizer updates taken)")
        if self.ratios:
            bottom.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig
