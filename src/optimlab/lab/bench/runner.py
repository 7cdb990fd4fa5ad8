"""One benchmark run, and the hooks that let any registered optimizer take part in it.

An optimizer that needs more than `zero_grad(); loss.backward(); step()` says so, and the bench asks
generically (never by name):

* `needs_closure` (attribute, or the capability "needs-closure" in its Spec): `step(closure)` is called
  with a closure that zeroes the gradients, computes the minibatch loss and back-propagates it, with
  `create_graph=True` where the optimizer has `create_graph = True` (Hessian-vector products);
* `train()` / `eval()` methods (schedule-free optimizers): `train()` before updates, `eval()` before each
  held-out evaluation, so the evaluated weights are the ones the method means to be used;
* `matrix_only` (attribute of its class, or the capability "matrix-only"): it gets the parameters with
  two or more dimensions, and the others (biases, norms, embeddings' vectors) go to AdamW at its
  defaults, the usual recipe for Muon.

A run that raises is recorded with its error; a loss or metric that turns non-finite is a divergence.
"""

from __future__ import annotations

import copy
import math
import time
import traceback

from .protocol import BenchTask


class Pair:
    """Two optimizers stepped as one: a matrix-only optimizer and AdamW for the remaining parameters."""

    def __init__(self, main, rest):
        self.main, self.rest = main, rest

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.main.zero_grad(set_to_none)
        self.rest.zero_grad(set_to_none)

    def step(self, closure=None):
        loss = self.main.step(closure)
        self.rest.step()
        return loss

    def __getattr__(self, name):  # needs_closure, train, eval, create_graph: the main optimizer's
        return getattr(self.main, name)


def wants(spec, attribute: str, capability: str) -> bool:
    return bool(getattr(spec.cls, attribute, False)) or capability in spec.capabilities


def make_optimizer(text: str, model, hyper: dict):
    """The optimizer named by `text` ('name' or 'name:key=value,…') with `hyper` on top, over the model."""
    import optimlab

    spec, fixed = optimlab.resolve(text)
    params = [p for p in model.parameters() if p.requires_grad]
    if wants(spec, "matrix_only", "matrix-only"):
        matrices = [p for p in params if p.ndim >= 2]
        others = [p for p in params if p.ndim < 2]
        main = spec.create(matrices, **{**fixed, **hyper})
        return Pair(main, optimlab.create("adamw", others)) if others else main
    return spec.create(params, **{**fixed, **hyper})


def needs_closure(opt, spec) -> bool:
    return bool(getattr(opt, "needs_closure", False)) or "needs-closure" in spec.capabilities


def warm_up(text: str, model, hyper: dict) -> None:
    """One untimed step on a copy, so that tracing and kernel compilation are not charged to the run."""
    import torch

    clone = copy.deepcopy(model)
    try:
        opt = make_optimizer(text, clone, hyper)
        for p in clone.parameters():
            p.grad = torch.zeros_like(p)
        opt.step((lambda: torch.zeros(())) if getattr(opt, "needs_closure", False) else None)
    except Exception:  # the real run reports what is wrong
        pass


def run_one(job: tuple) -> dict:
    """Train one (task, optimizer, hyperparameters, seed) and return its record (see `record`)."""
    task, text, hyper, seed = job
    from ..common import single_thread

    wall, cpu = time.perf_counter(), time.process_time()
    with single_thread():
        try:
            rec = _train(task, text, hyper, seed)
        except Exception as err:  # a broken optimizer is a result, never a crash of the bench
            last = traceback.extract_tb(err.__traceback__)[-1]
            where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
            error = f"{type(err).__name__}: {err}{where}"
            rec = record(task, text, hyper, seed, "error", [], [], [], error=error)
    # the whole run, set-up and evaluations included; CPU time is what a quiet machine's wall time would be
    rec["run_seconds"] = round(time.perf_counter() - wall, 3)
    rec["run_cpu_seconds"] = round(time.process_time() - cpu, 3)
    return rec


def _train(task: BenchTask, text: str, hyper: dict, seed: int) -> dict:
    import torch

    import optimlab
    import optimlab.tasks

    problem = optimlab.tasks.get(task.name).build(seed=seed, **dict(task.options))
    spec, _ = optimlab.resolve(text)
    warm_up(text, problem.model, hyper)
    opt = make_optimizer(text, problem.model, hyper)
    closure_needed = needs_closure(opt, spec)
    create_graph = bool(getattr(opt, "create_graph", False))
    steps, values, seconds = [], [], []
    elapsed = 0.0

    def evaluate(step: int) -> bool:
        _mode(opt, "eval")
        value = problem.evaluate()[task.metric]
        _mode(opt, "train")
        steps.append(step)
        values.append(value if math.isfinite(value) else math.inf)
        seconds.append(elapsed)
        return math.isfinite(value)

    evaluate(0)
    for step in range(task.steps):
        start = time.perf_counter()
        if closure_needed:
            seen = []  # the closure's loss: step(closure) need not return it

            def closure(step=step, seen=seen):
                opt.zero_grad()
                loss = problem.loss(step)
                loss.backward(create_graph=create_graph)
                seen.append(loss.detach())
                return loss

            opt.step(closure)
            loss = seen[0] if seen else None
        else:
            opt.zero_grad()
            loss = problem.loss(step)
            loss.backward()
            opt.step()
        elapsed += time.perf_counter() - start
        if loss is not None and not torch.isfinite(loss.detach()):
            return record(task, text, hyper, seed, "diverged", steps, values, seconds)
        if (step + 1) % task.eval_every == 0 and not evaluate(step + 1):
            return record(task, text, hyper, seed, "diverged", steps, values, seconds)
    return record(task, text, hyper, seed, "ok", steps, values, seconds)


def _mode(opt, mode: str) -> None:
    """Call opt.train() / opt.eval() where the optimizer has them (schedule-free); nothing otherwise."""
    method = getattr(opt, mode, None)
    if callable(method):
        method()


def record(task: BenchTask, text: str, hyper: dict, seed: int, status: str, steps: list, values: list,
           seconds: list, error: str | None = None) -> dict:
    """One line of results.jsonl. Non-finite numbers are written as null (JSON has no inf)."""
    from .scoring import first_hit

    hit_step = first_hit(steps, values, task.target, task.goal)
    hit_second = first_hit(seconds, values, task.target, task.goal)
    final = values[-1] if status == "ok" and values else math.inf
    best = [v for v in values if math.isfinite(v)]

    def clean(v):
        return v if isinstance(v, (int, float)) and math.isfinite(v) else None

    return {"task": task.name, "optimizer": text, "hyper": hyper, "seed": seed, "status": status,
            "error": error, "steps_to_target": clean(hit_step), "seconds_to_target": clean(hit_second),
            "final": clean(final),
            "best": clean((max if task.goal == "max" else min)(best)) if best else None,
            "steps": steps, "values": [clean(v) for v in values], "seconds": [round(s, 4) for s in seconds]}
