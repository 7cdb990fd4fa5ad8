"""optimlab.lab.race: real optimizers racing on a small landscape, step by step.

    from optimlab.lab import race
    r = race("canyon", "sgd,momentum,adam", steps=100)
    r["sgd"].positions[:4]          # (1, 1), (−1, 0.98), (1, 0.9604), (−1, 0.941192): the lesson's bounce
    print(r.format())               # final loss and distance to the minimum, one row per optimizer
    race("canyon", {"torch adam": torch.optim.Adam, "mine": lambda params: MyOpt(params, lr=0.1)})

An optimizer is a registry name or preset ('momentum'), 'name:key=value,…' text, a
`torch.optim.Optimizer` class, or a factory `params -> optimizer`. Names and classes that match a
registered optimizer get the landscape's default learning rate (and, on 'reddi', the paper's betas)
unless the text says otherwise; a factory is used exactly as the user wrote it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable

import numpy as np
import torch

import optimlab
from optimlab import landscapes
from optimlab.engine.optimizer import RuleOptimizer
from optimlab.settings import split_list

ESCAPED = 1e12  # |θ| beyond this counts as gone (diverged, or off down the saddle): the run stops


@dataclasses.dataclass
class Run:
    label: str
    settings: str  # the hyperparameters it ran with, as text
    positions: np.ndarray  # (steps + 1, dim): the start, then the point after each step
    losses: np.ndarray  # (steps + 1,): the landscape's (noise-free, average) loss at each point
    stopped: int | None = None  # the step at which it became non-finite or left |θ| ≤ ESCAPED

    @property
    def final(self) -> np.ndarray:
        return self.positions[-1]


@dataclasses.dataclass
class Race:
    landscape: landscapes.Landscape
    runs: list[Run]
    steps: int
    start: tuple

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    def __getitem__(self, label: str) -> Run:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(f"no optimizer labelled {label!r}; labels: {', '.join(self.labels)}")

    def table(self) -> list[dict]:
        """One row per optimizer: final loss, gap to the minimum value, distance to the nearest minimum."""
        best = self.landscape.min_value
        rows = []
        for r in self.runs:  # None where there is no number: no minimum, or a run that left (JSON has no NaN)
            loss = _or_none(float(r.losses[-1]))
            rows.append({"optimizer": r.label, "settings": r.settings, "final_loss": loss,
                         "gap": None if best is None or loss is None else loss - best,
                         "distance": _or_none(self.landscape.distance(r.final)),
                         "final_position": None if r.stopped else [float(v) for v in r.final],
                         "stopped": r.stopped})
        return rows

    def format(self) -> str:
        L = self.landscape
        head = f"{L.text}: {L.formula}   start {_fmt_point(self.start)}   {self.steps} steps"
        if L.noise:
            head += f"   noise σ={L.noise:g} (seed {L.seed})"
        cells = [("optimizer", "settings", "final loss", "distance to min", "final position")]
        for row in self.table():
            dist = "—" if row["distance"] is None else f"{row['distance']:.4g}"
            if row["stopped"]:  # nothing finite to report: say when it left
                cells.append((row["optimizer"], row["settings"], "—", "—", f"gone at step {row['stopped']}"))
                continue
            cells.append((row["optimizer"], row["settings"], f"{row['final_loss']:.6g}", dist,
                          _fmt_point(row["final_position"])))
        widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join([head, *lines])


def _or_none(x: float):
    return None if math.isnan(x) else x


def _fmt_point(p) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in p) + ")"


def landscape_defaults(landscape: landscapes.Landscape, name: str, base: str | None = None) -> dict:
    """The hyperparameters a landscape suggests for a registered optimizer (or preset of `base`).

    Looked up by name, then by base; failing both, SGD-family optimizers get the landscape's "sgd"
    learning rate and every other (normalised) optimizer its "adam" one.
    """
    base = base or name
    lr = landscape.lr.get(name, landscape.lr.get(base))
    if lr is None:
        lr = landscape.lr["sgd" if base == "sgd" else "adam"]
    return {"lr": lr, **landscape.hyper.get(name, landscape.hyper.get(base, {}))}


def _from_text(text: str, landscape) -> tuple[str, str, Callable]:
    spec, given = optimlab.resolve(text)
    suggested = landscape_defaults(landscape, spec.name, spec.base)
    # the text wins over the preset, the preset over the landscape's suggestions
    hyper = {k: v for k, v in suggested.items() if k not in spec.preset and k not in given}
    hyper.update(given)
    # two numbers: the plain path (the rule as written) beats a kernel call; the core tests that paths agree
    hyper.setdefault("path", "tensor")
    shown = {**spec.preset, **hyper}
    settings = ", ".join(f"{k}={_fmt_value(v)}" for k, v in shown.items() if k != "path" or "path" in given)
    return text.strip(), settings, lambda params: spec.create(params, **hyper)


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt_value(x) for x in v) + ")"
    return str(v)


def _from_class(cls: type, landscape) -> tuple[str, str, Callable]:
    """A torch.optim.Optimizer class: a registered name (torch.optim.Adam -> 'adam') gets its defaults."""
    name = cls.__name__.lower()
    hyper = {}
    if name in optimlab.available() or name in optimlab.presets:
        spec = optimlab.spec(name)
        accepted = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        hyper = {k: v for k, v in landscape_defaults(landscape, spec.name, spec.base).items()
                 if takes_any or k in accepted}
    settings = ", ".join(f"{k}={_fmt_value(v)}" for k, v in hyper.items()) or "its defaults"
    return cls.__name__, settings, lambda params: cls(params, **hyper)


def _entries(optimizers) -> list[tuple[str | None, object]]:
    if isinstance(optimizers, str):
        return [(None, t) for t in split_list(optimizers)]
    if isinstance(optimizers, dict):
        return list(optimizers.items())
    if isinstance(optimizers, type) or callable(optimizers):
        return [(None, optimizers)]
    if not isinstance(optimizers, (list, tuple)):
        raise ValueError("optimizers: a text such as 'sgd,momentum,adam', a list or a dict; "
                         f"got {optimizers!r}")
    entries = []
    for item in optimizers:
        entries += [(None, t) for t in split_list(item)] if isinstance(item, str) else [(None, item)]
    return entries


def _build(label: str | None, item, landscape) -> tuple[str, str, Callable]:
    if isinstance(item, str):
        made = _from_text(item, landscape)
    elif isinstance(item, type) and issubclass(item, torch.optim.Optimizer):
        made = _from_class(item, landscape)
    elif isinstance(item, torch.optim.Optimizer):
        raise ValueError("pass the optimizer's class or a factory `lambda params: ...`, not an instance: "
                         "the race creates the parameters")
    elif callable(item):
        name = getattr(item, "__name__", "custom")
        made = ("custom" if name == "<lambda>" else name), "user factory", item
    else:
        raise ValueError(f"an optimizer is a name, 'name:key=value,…', a torch.optim.Optimizer class or a "
                         f"factory params -> optimizer; got {item!r}")
    return (label or made[0]), made[1], made[2]


def _schedule(schedule, landscape) -> Callable[[int], float] | None:
    if schedule == "landscape":
        return landscape.schedule
    if schedule in (None, "constant"):
        return None
    if schedule == "inv_sqrt":
        return lambda t: 1 / math.sqrt(t)
    if callable(schedule):
        return schedule
    raise ValueError("schedule must be 'landscape', 'constant', 'inv_sqrt' or a function of the step t; "
                     f"got {schedule!r}")


MAX_STEPS = 20_000  # every position is kept for the pictures; 20,000 steps take ~5-10 s per optimizer


def race(landscape, optimizers, steps: int | None = None, start=None, noise: float | None = None,
         seed: int | None = None, schedule="landscape", dtype: torch.dtype = torch.float64) -> Race:
    """Run each optimizer from the same start for `steps` steps; return every position and loss.

    landscape: a name ('canyon'), text ('quadratic:kappa=100'), or a `landscapes.Landscape`.
    optimizers: 'sgd,momentum,adam', a list of such items / classes / factories, or {label: item}.
    noise, seed: override the landscape's gradient noise σ and its seed; every optimizer sees the
    same noise sequence. schedule: the landscape's lr schedule ('landscape'; Reddi's α/√t),
    'constant', 'inv_sqrt', or t -> multiplier (t = 1, 2, …), applied with torch's LambdaLR.
    """
    return race_many(landscape, optimizers, [start], steps, noise, seed, schedule, dtype)[0]


def race_many(landscape, optimizers, starts, steps: int | None = None, noise: float | None = None,
              seed: int | None = None, schedule="landscape", dtype: torch.dtype = torch.float64,
              only: int | None = None) -> list[Race]:
    """`race` from each of several start points (None: the landscape's), one Race per start.

    An optimizer whose update is elementwise (`RuleOptimizer.elementwise`) steps every start at once, as
    the rows of one parameter: the same numbers as racing each start alone (tested bit for bit), for
    about the cost of one race, since a step on a few numbers costs its overhead, not its arithmetic.
    Any other optimizer (norms, matrices, torch.optim classes, factories) races each start alone.
    only: race just the optimizer at this index of the list, labelled as in the whole race (the
    playground spreads one race over its worker processes this way).
    """
    L = landscapes.get(landscape)
    if noise is not None or seed is not None:
        L = L.with_noise(L.noise if noise is None else noise, L.seed if seed is None else seed)
    steps = L.steps if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS:,} (a race keeps every "
                         f"position), got {steps!r}")
    starts = [_start(L, s) for s in starts]
    if not starts:
        raise ValueError("no start points to race from")
    multiplier = _schedule(schedule, L)
    built = [_build(label, item, L) for label, item in _entries(optimizers)]
    if not built:
        raise ValueError("no optimizers to race")
    seen: dict[str, int] = {}
    runs: list[list[Run]] = [[] for _ in starts]
    if only is not None and not (isinstance(only, int) and 0 <= only < len(built)):
        raise ValueError(f"only must be the index of one of the {len(built)} optimizers, got {only!r}")
    for index, (label, settings, make) in enumerate(built):
        seen[label] = seen.get(label, 0) + 1
        label = label if seen[label] == 1 else f"{label}#{seen[label]}"
        if only is not None and index != only:
            continue
        for each, (positions, stopped) in zip(runs, _trajectories(L, make, starts, steps, multiplier, dtype)):
            with torch.no_grad():
                losses = L.loss(torch.from_numpy(positions)).numpy()
            each.append(Run(label, settings, positions, losses, stopped))
    return [Race(L, each, steps, start) for each, start in zip(runs, starts)]


def _start(L, start) -> tuple:
    start = L.start if start is None else (start,) if isinstance(start, (int, float)) else start
    start = tuple(float(v) for v in start)
    if len(start) != L.dim:
        raise ValueError(f"{L.name} is {L.dim}-D: start needs {L.dim} number(s), got {start}")
    return start


def _made(make, p: torch.Tensor) -> torch.optim.Optimizer:
    opt = make([p])
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(f"the factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def _trajectories(L, make, starts, steps, multiplier, dtype) -> list[tuple[np.ndarray, int | None]]:
    """(positions, stopped) from each start: all at once as rows where the update is elementwise."""
    if len(starts) > 1:
        rows = torch.tensor(starts, dtype=dtype, requires_grad=True)
        opt = _made(make, rows)
        if isinstance(opt, RuleOptimizer) and opt.elementwise():
            return _run(L, rows, opt, steps, multiplier)
    # alone, as a vector of the landscape's dimension: a matrix would change what a matrix rule does
    made = [(p, _made(make, p)) for p in (torch.tensor(s, dtype=dtype, requires_grad=True) for s in starts)]
    return [_run(L, p, opt, steps, multiplier)[0] for p, opt in made]


def _run(L, p, opt, steps, multiplier) -> list[tuple[np.ndarray, int | None]]:
    """Step p (one start, or one start per row) until `steps` or until every row has left."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: multiplier(k + 1)) if multiplier else None
    noise = torch.Generator().manual_seed(L.seed)  # a fresh generator per optimizer: the same noise for all
    now = p.detach().view(-1, L.dim).numpy()
    positions = np.full((len(now), steps + 1, L.dim), np.nan)
    positions[:, 0] = now
    stopped: list[int | None] = [None] * len(now)
    live = np.ones(len(now), dtype=bool)
    for t in range(1, steps + 1):
        ξ = L.noise * torch.randn(L.dim, generator=noise, dtype=p.dtype) if L.noise else None

        def closure():
            p.grad = None  # the race's one parameter: what zero_grad() does, without its bookkeeping
            # rows are independent problems: the sum's gradient is each row's own
            loss = L.loss_at(p, t).sum()
            # ξ·θ adds exactly ξ to the gradient; drawn once per step, so a closure called twice sees the same
            (loss if ξ is None else loss + (ξ * p).sum()).backward()
            return loss

        if isinstance(opt, RuleOptimizer):  # it reads the gradient once, as its step begins: computed
            closure()  # first, it skips the cost of torch's grad-mode switches around a closure
            opt.step()
        else:  # torch.optim's and user optimizers may evaluate the loss several times (L-BFGS)
            opt.step(closure)
        with torch.no_grad():
            L.project(p)
        if scheduler:
            scheduler.step()
        now = p.detach().view(-1, L.dim).numpy()
        gone = live & ~(np.abs(now) <= ESCAPED).all(axis=1)  # NaN compares False: gone too
        for k in np.flatnonzero(gone):
            stopped[k] = t
        live &= ~gone
        positions[live, t] = now[live]
        if not live.any():
            break
    return list(zip(positions, stopped))
