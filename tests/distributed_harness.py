"""One rank of the distributed contract (tests/test_distributed.py spawns two, once for the whole suite).

    python tests/distributed_harness.py RANK WORLD PORT OUT [NAME ...]

For every registered optimizer and preset (or the NAMEs given), on a small model whose layers shard
unevenly (5, 3 and 1 rows on two ranks: 3+2, 2+1 and 1+0), it trains a few steps under FSDP2
(`fully_shard`, fp32 and fp64), DDP (fp32 and fp64) and ZeroRedundancyOptimizer, and compares with
single-process training on the same global batch; it saves a distributed checkpoint after two steps,
checks that loading it on both ranks resumes exactly, and leaves it (and the parameters two steps later)
for the test to load on one process. Collectives during `optimizer.step()` are counted by a dispatch
mode. Rank 0 writes OUT/results.json: one entry per optimizer and setting, a number or an error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel
from torch.utils._python_dispatch import TorchDispatchMode

import optimlab
from optimlab import registry
from optimlab.gradients import GradNormMonitor, clip_grad_norm_

STEPS = 4
BATCH = 8


def names() -> list[str]:
    return [*registry.available(), *sorted(registry.presets)]


class Gain(torch.nn.Module):
    """y = γ·Σx: a parameter of one element, which leaves the second rank an empty shard."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x):
        return self.gain * x.sum(-1)


def make_model(dtype=torch.float32) -> torch.nn.Module:
    """Matrices of 5 rows (3 + 2 on two ranks) whose Gram factors have full rank, or a null space of one
    dimension (so eigenbases, SOAP's, are unique up to sign), and a gain of one element (1 + 0)."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Tanh(), Gain()]
    return torch.nn.Sequential(*layers).to(dtype)


def batches(dtype, steps=STEPS):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 6, generator=g, dtype=dtype) for _ in range(steps)]


def loss_of(model, x):
    return (model(x) - 1).square().mean()


def shard(model):
    for layer in model:
        if list(layer.parameters()):
            fully_shard(layer)
    fully_shard(model)
    return model


def whole(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def train(model, opt, xs, rank, world, hook=None):
    for x in xs:
        opt.zero_grad()
        local = x[rank * len(x) // world:(rank + 1) * len(x) // world]
        loss_of(model, local).backward()
        if hook is not None:
            hook(model)
        opt.step()


def max_difference(model, reference) -> float:
    """The largest difference of any parameter from the reference model's (DDP's "module." stripped)."""
    ours = {k.removeprefix("module."): whole(v).detach() for k, v in model.state_dict().items()}
    return max((ours[k] - v).abs().max().item() for k, v in reference.state_dict().items())


def reference(name, dtype, xs, hook=None, world=2, attach=None):
    """Single-process training on the same global batches, each in `world` micro-batches whose gradients
    are averaged (gradient accumulation): bit for bit the gradient the ranks average."""
    model = make_model(dtype)
    opt = optimlab.create(name, model.parameters())
    if attach is not None:
        attach(model, opt)
    for x in xs:
        opt.zero_grad()
        for part in x.chunk(world):
            loss_of(model, part).backward()
        for p in model.parameters():
            p.grad /= world
        if hook is not None:
            hook(model)
        opt.step()
    return model


COLLECTIVES = ("all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter", "broadcast", "scatter",
               "all_to_all", "alltoall")


class CountCollectives(TorchDispatchMode):
    """Counts the collectives (c10d ops) dispatched inside it, and the bytes each rank hands them (an
    all-reduce's buffer, an all-to-all's input, a gather's input)."""

    def __init__(self):
        super().__init__()
        self.calls, self.bytes = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace = func.namespace
        if namespace in ("c10d", "_c10d_functional") and any(w in func.__name__ for w in COLLECTIVES):
            kind = func.__name__.split(".")[0].strip("_")
            self.calls[kind] += 1
            sent = args[1:2] if kind.startswith("alltoall") else args  # (output, input, ...): the input
            flat = [a for a in sent if isinstance(a, torch.Tensor)]
            flat += [t for a in sent if isinstance(a, (list, tuple))
                     for t in a if isinstance(t, torch.Tensor)]
            self.bytes[kind] += sum(t.numel() * t.element_size() for t in flat)
        return func(*args, **(kwargs or {}))


def fsdp_case(name, dtype, rank, world, xs, count=False):
    model = shard(make_model(dtype))
    opt = optimlab.create(name, model.parameters())
    train(model, opt, xs[:-1], rank, world)
    counter = CountCollectives()
    opt.zero_grad()
    x = xs[-1]
    loss_of(model, x[rank * len(x) // world:(rank + 1) * len(x) // world]).backward()
    with counter:
        opt.step()
    result = {"error": max_difference(model, reference(name, dtype, xs))}
    if count:
        result["collectives"] = dict(counter.calls)
        result["bytes"] = dict(counter.bytes)
        params = list(model.parameters())
        result["memory"] = {"parameters": local_bytes(params),
                            "gradients": local_bytes(p.grad for p in params),
                            "optimizer_state": state_bytes(opt)}
    return result


def local_bytes(tensors) -> int:
    """Bytes this rank holds of the tensors (its shards of DTensors)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def state_bytes(opt) -> int:
    return local_bytes(t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))


def ddp_case(name, dtype, rank, world, xs):
    model = DistributedDataParallel(make_model(dtype))
    opt = optimlab.create(name, model.parameters())
    train(model, opt, xs, rank, world)
    return {"error": max_difference(model, reference(name, dtype, xs))}


def zero_case(name, rank, world, xs):
    spec = registry.spec(name)
    model = DistributedDataParallel(make_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=spec.cls, **spec.preset)
    train(model, opt, xs, rank, world)
    held = torch.tensor([state_bytes(opt.optim)])  # this rank's partition
    largest, total = held.clone(), held.clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    dist.all_reduce(total)
    return {"error": max_difference(model, reference(name, torch.float32, xs)),
            "memory": {"largest_rank_state": int(largest), "all_ranks_state": int(total)}}


def dcp_case(name, rank, world, out):
    """Save after two steps on two ranks; resume on both from the checkpoint; leave it for one rank."""
    xs = batches(torch.float32)
    model = shard(make_model())
    opt = optimlab.create(name, model.parameters())
    train(model, opt, xs[:2], rank, world)
    folder = os.path.join(out, "checkpoints", name)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=folder)
    train(model, opt, xs[2:], rank, world)
    resumed = shard(make_model())
    again = optimlab.create(name, resumed.parameters())
    state = {"model": get_model_state_dict(resumed), "optim": get_optimizer_state_dict(resumed, again)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(resumed, state["model"])
    set_optimizer_state_dict(resumed, again, state["optim"])
    train(resumed, again, xs[2:], rank, world)
    final = {k: whole(v).detach() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(final, os.path.join(folder, "after.pt"))
    err = max((final[k] - whole(v).detach()).abs().max().item() for k, v in resumed.state_dict().items())
    return {"error": err}


def mixed_case(name, rank, world, columns=False):
    """DTensor parameters made by hand, some split on dim 0 and one replicated on every rank, in one
    group (fp64): a replicated tensor's sums are already global and must not be summed over the ranks.
    columns=True: matrices split on dim 1 instead, which only the gathering fallback steps."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(2)
    split_on = Shard(1) if columns else Shard(0)
    shapes = [((5, 6), split_on), ((5,), Replicate()), ((3, 4), split_on), ((4, 3), Replicate())]
    wholes = [torch.randn(s, generator=g, dtype=torch.float64) for s, _ in shapes]
    plain = [torch.nn.Parameter(w.clone()) for w in wholes]
    split = [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [q])) for w, (_, q) in zip(wholes, shapes)]
    ours, theirs = optimlab.create(name, split), optimlab.create(name, plain)
    for _ in range(3):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s, _ in shapes]
        for p, q, grad, (_, placement) in zip(split, plain, grads, shapes):
            p.grad, q.grad = distribute_tensor(grad, mesh, [placement]), grad
        ours.step()
        theirs.step()
    return {"error": max((p.full_tensor() - q).abs().max().item() for p, q in zip(split, plain))}


def sophia_hessian_case(rank, world):
    """Sophia's Hutchinson estimate under FSDP2: a clear refusal, not a crash inside autograd."""
    model = shard(make_model())
    opt = optimlab.create("sophia", model.parameters(), estimator="hutchinson")
    x = batches(torch.float32)[0]
    try:
        opt.update_hessian(lambda: loss_of(model, x[rank * 4:(rank + 1) * 4]))
    except NotImplementedError as err:
        return {"refused": str(err)}
    return {"refused": ""}


def classifier(dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)


SOPHIA = {"lr": 0.05, "weight_decay": 0.1, "update_period": 2}


def grads_of(model) -> list:
    """Each parameter's whole gradient as a list of numbers (None where it has none): comparable by ==."""
    return [None if p.grad is None else whole(p.grad).tolist() for p in model.parameters()]


def sophia_ddp_case(estimator, rank, world, group=True, fsdp2=False):
    """Sophia under DDP (fp64) with its Hessian refreshed at steps 0 and 2, each rank from its own half of
    the batch (its own sampled labels for GNB, the same probe vector for Hutchinson), against one process
    on the whole batch. With group=False: the warning, and how far the ranks' Hessians drift apart.
    fsdp2=True: the same under FSDP2 (GNB, model= given), and whether the gradients present when
    update_hessian is called are there, unchanged, after it."""
    import warnings

    dtype, labels = torch.float64, torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    xs = batches(dtype)
    half = len(labels) // world
    local = slice(rank * half, (rank + 1) * half)
    seed = {"gnb": lambda step, r: 100 * step + r, "hutchinson": lambda step, r: 100 * step}[estimator]
    model = shard(classifier(dtype)) if fsdp2 else DistributedDataParallel(classifier(dtype))
    opt = optimlab.create("sophia", model.parameters(), estimator=estimator, **SOPHIA,
                          process_group=dist.group.WORLD if group and not fsdp2 else None)
    grads_kept = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, x in enumerate(xs):
            if fsdp2:
                before = grads_of(model)
                opt.update_hessian(lambda x=x: model(x[local]), model=model,
                                   generator=torch.Generator().manual_seed(seed(step, rank)))
                grads_kept &= grads_of(model) == before
            elif estimator == "gnb":
                opt.update_hessian(lambda x=x: model(x[local]),
                                   generator=torch.Generator().manual_seed(seed(step, rank)))
            else:
                opt.update_hessian(lambda x=x: F.cross_entropy(model(x[local]), labels[local]),
                                   generator=torch.Generator().manual_seed(seed(step, rank)))
            opt.zero_grad()
            F.cross_entropy(model(x[local]), labels[local]).backward()
            opt.step()
    warned = any("process_group" in str(w.message) for w in caught)
    hessians = torch.cat([whole(opt.state[p]["hessian"]).reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(hessians) for _ in range(world)]
    dist.all_gather(gathered, hessians)
    drift = (gathered[0] - gathered[1]).abs().max().item()
    if not group:
        return {"warned": warned, "hessian_drift": drift}
    # one process on the whole batch: the same labels drawn (GNB) or probe vector (Hutchinson)
    ref = classifier(dtype)
    ref_opt = optimlab.create("sophia", ref.parameters(), estimator=estimator, **SOPHIA)
    params, β2 = list(ref.parameters()), ref_opt.defaults["betas"][1]
    for step, x in enumerate(xs):
        if step % SOPHIA["update_period"] == 0 and estimator == "gnb":
            drawn = []
            for r in range(world):
                probs = torch.softmax(ref(x[r * half:(r + 1) * half]).detach().double(), -1)
                own = torch.Generator().manual_seed(seed(step, r))
                drawn.append(torch.multinomial(probs, 1, generator=own).squeeze(-1))
            ĝ = torch.autograd.grad(F.cross_entropy(ref(x), torch.cat(drawn)), params)
            for p, g in zip(params, ĝ):  # h ← β₂h + (1 − β₂)·B·ĝ², B the whole batch
                h = ref_opt.state[p].get("hessian", torch.zeros_like(p))
                ref_opt.state[p]["hessian"] = β2 * h + (1 - β2) * len(labels) * g * g
        elif step % SOPHIA["update_period"] == 0:  # the mean of the halves' losses: the whole batch's
            ref_opt.update_hessian(lambda x=x: F.cross_entropy(ref(x), labels),
                                   generator=torch.Generator().manual_seed(seed(step, 0)))
        ref_opt.zero_grad()
        for r in range(world):
            F.cross_entropy(ref(x[r * half:(r + 1) * half]), labels[r * half:(r + 1) * half]).backward()
        for p in params:
            p.grad /= world
        ref_opt.step()
    error = torch.tensor([max_difference(model, ref)])
    dist.all_reduce(error, op=dist.ReduceOp.MAX)  # both ranks' parameters
    return {"error": error.item(), "hessian_drift": drift, "warned": warned, "grads_kept": grads_kept}


def sophia_mismatched_case(rank, world):
    """process_group where the ranks hold different parameters (as ZeroRedundancyOptimizer's partitions
    do): every rank refuses, none waits on the others."""
    width = 5 if rank == 0 else 4
    model = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 3))
    opt = optimlab.create("sophia", model.parameters(), process_group=dist.group.WORLD)
    try:
        opt.update_hessian(lambda: model(batches(torch.float32)[0]))
    except ValueError as err:
        refused = torch.tensor([1])
        dist.all_reduce(refused)  # both ranks got here: nobody hangs
        return {"refused": str(err), "ranks_refusing": int(refused)}
    return {"refused": ""}


def clip_and_monitor_case(rank, world, xs):
    """AdamW with clip_grad_norm_ before each step, and LAMB with a clipping GradNormMonitor: the norms
    they see and the training they give equal the single process's."""
    out = {}
    norms = {"sharded": [], "single": []}
    model = shard(make_model())
    opt = optimlab.create("adamw", model.parameters())
    train(model, opt, xs, rank, world,
          hook=lambda m: norms["sharded"].append(float(clip_grad_norm_(m, 0.05))))
    ref = reference("adamw", torch.float32, xs, hook=lambda m: norms["single"].append(
        float(clip_grad_norm_(m, 0.05))))
    out["adamw+clip_grad_norm"] = {"error": max_difference(model, ref), "clipped": sum(
        n > 0.05 for n in norms["single"]), "norm_error": max(abs(a - b) for a, b in zip(*norms.values()))}
    monitors = []

    def attach(m, o):
        monitors.append(GradNormMonitor(m, o, max_norm=0.05, log_events=False))

    model = shard(make_model())
    opt = optimlab.create("lamb", model.parameters())
    attach(model, opt)
    train(model, opt, xs, rank, world)
    ref = reference("lamb", torch.float32, xs, attach=attach)
    ours, theirs = monitors
    out["lamb+GradNormMonitor"] = {
        "error": max_difference(model, ref), "clipped": len(theirs.clipped),
        "norm_error": max(abs(a - b) for a, b in zip(ours.norms, theirs.norms)),
        "ratio_error": max(abs(a[0] - b[0]) for a, b in zip(ours.ratios.values(), theirs.ratios.values()))}
    return out


def main():
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    chosen = sys.argv[5:] or names()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}

    def attempt(key, fn, *args, **kw):
        try:
            results[key] = fn(*args, **kw)
        except Exception as err:  # recorded, so that one failure names itself and the others still run
            results[key] = {"failure": f"{type(err).__name__}: {err}"[:600]}
            if rank == 0:
                traceback.print_exc()
        dist.barrier()

    for name in chosen:
        for dtype, label in ((torch.float32, "fp32"), (torch.float64, "fp64")):
            xs = batches(dtype)
            attempt(f"{name}/fsdp2/{label}", fsdp_case, name, dtype, rank, world, xs, count=label == "fp32")
            attempt(f"{name}/ddp/{label}", ddp_case, name, dtype, rank, world, xs)
        attempt(f"{name}/zero1/fp32", zero_case, name, rank, world, batches(torch.float32))
        attempt(f"{name}/dcp/fp32", dcp_case, name, rank, world, out)
        attempt(f"{name}/mixed/fp64", mixed_case, name, rank, world)
        attempt(f"{name}/columns/fp64", mixed_case, name, rank, world, columns=True)
    attempt("sophia/update_hessian", sophia_hessian_case, rank, world)
    for estimator in ("gnb", "hutchinson"):
        attempt(f"sophia/ddp/{estimator}", sophia_ddp_case, estimator, rank, world)
        attempt(f"sophia/ddp-without-group/{estimator}", sophia_ddp_case, estimator, rank, world, group=False)
    attempt("sophia/mismatched", sophia_mismatched_case, rank, world)
    attempt("sophia/fsdp2/gnb", sophia_ddp_case, "gnb", rank, world, fsdp2=True)
    try:
        results.update(clip_and_monitor_case(rank, world, batches(torch.float32)))
    except Exception as err:
        results["clip"] = {"failure": f"{type(err).__name__}: {err}"[:600]}
    if rank == 0:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
