"""optimlab.lab.sweep: final loss across a log grid of learning rates, and how wide the good band is.

    from optimlab.lab import sweep
    s = sweep(["sgd", "adam"], task="digits", lrs="1e-4:10:16", steps=300, seeds=3, workers=2)
    print(s.table())                 # final loss per lr per optimizer, best lr, band and its width
    s.width("adam")                  # decades of lr whose median final loss is within `factor`× the best
    s.plot("sweep.png")

Every (optimizer, lr, seed) is one independent run on one thread, so the grid runs in parallel
processes and each result depends only on its seed. A run whose loss turns NaN or infinite has
diverged and counts as an infinite loss.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import statistics
import sys
from typing import Callable, Sequence

from ..settings import parse, split_list
from .common import single_thread

# The band is a ratio of losses, so only losses (lower is better). The default is the held-out loss: it has
# a floor set by the data, so "within 2× of the best" means something; a training loss that heads to 0
# (an MLP memorising 1,437 digits) makes 3e-4 vs 6e-4 a "2×" difference.
METRICS = ("val_loss", "train_loss")
DEFAULT_LRS = "1e-4:10:16"  # six decades, three points per decade


def parse_lrs(lrs: str | Sequence[float]) -> list[float]:
    """'1e-4:1:13' (13 log-spaced values from 1e-4 to 1), '1e-3,1e-2,0.1', or a sequence of numbers."""
    if isinstance(lrs, str):
        text = lrs.strip()
        if text.count(":") == 2:
            try:
                lo, hi, n = (float(v) for v in text.split(":"))
            except ValueError:
                raise ValueError(f"lrs range must be LO:HI:N, e.g. 1e-4:1:13; got {lrs!r}") from None
            if n != int(n) or n < 2:
                raise ValueError(f"lrs range needs N ≥ 2 points, got {lrs!r}")
            if not (0 < lo < hi) or not math.isfinite(hi):
                raise ValueError(f"lrs range needs 0 < LO < HI, got {lrs!r}")
            n = int(n)
            a, b = math.log10(lo), math.log10(hi)
            return [10 ** (a + i * (b - a) / (n - 1)) for i in range(n)]
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"lrs must be LO:HI:N or comma-separated numbers, got {lrs!r}") from None
    else:
        values = [float(v) for v in lrs]
    if not values:
        raise ValueError("lrs is empty")
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"every lr must be a positive finite number, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"lrs repeat a value: {values}")
    return sorted(values)


def split_optimizers(items: str | Sequence[str]) -> list[str]:
    """'sgd:momentum=0.9,nesterov=True,adam' -> ['sgd:momentum=0.9,nesterov=True', 'adam']
    (settings.split_list)."""
    out = split_list(items)
    if not out:
        raise ValueError("no optimizers given")
    return out


def parse_task(text: str) -> tuple[str, dict]:
    """'digits' or 'digits:hidden=128,depth=4' -> (name, build options); values are Python literals."""
    return parse(text, strict=True)


def band(lrs: Sequence[float], losses: Sequence[float], factor: float) -> tuple[int, int] | None:
    """Indices (lo, hi) of the contiguous run of lrs around the best whose loss is ≤ factor × best.

    None when every loss is infinite. Contiguous: a good lr beyond a bad one does not widen the band.
    """
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    if not finite:
        return None
    best = min(finite, key=lambda i: losses[i])
    limit = factor * losses[best]
    lo = hi = best
    while lo > 0 and losses[lo - 1] <= limit:
        lo -= 1
    while hi < len(lrs) - 1 and losses[hi + 1] <= limit:
        hi += 1
    return lo, hi


@dataclasses.dataclass
class Sweep:
    task: str
    steps: int
    seeds: int
    metric: str
    factor: float
    lrs: list[float]
    optimizers: list[str]
    runs: dict[str, list[list[float]]]  # optimizer -> [lr index][seed] -> final metric (inf: diverged)

    def median(self, opt: str) -> list[float]:
        return [statistics.median(r) for r in self.runs[opt]]

    def diverged(self, opt: str) -> list[int]:
        """How many seeds diverged at each lr."""
        return [sum(math.isinf(v) for v in r) for r in self.runs[opt]]

    def best(self, opt: str) -> tuple[float, float]:
        """(lr, median final loss) of the best lr; (nan, inf) if every lr diverged."""
        b = band(self.lrs, self.median(opt), self.factor)
        if b is None:
            return math.nan, math.inf
        med = self.median(opt)
        i = min(range(len(med)), key=lambda k: med[k])
        return self.lrs[i], med[i]

    def band(self, opt: str) -> tuple[float, float] | None:
        b = band(self.lrs, self.median(opt), self.factor)
        return None if b is None else (self.lrs[b[0]], self.lrs[b[1]])

    def width(self, opt: str) -> float:
        """Decades spanned by the band: log10(hi / lo); 0 when only the best lr qualifies."""
        b = self.band(opt)
        return math.nan if b is None else math.log10(b[1] / b[0])

    def open_ended(self, opt: str) -> bool:
        """Whether the band runs into the end of the grid (so the true band may be wider)."""
        b = band(self.lrs, self.median(opt), self.factor)
        return b is not None and len(self.lrs) > 1 and (b[0] == 0 or b[1] == len(self.lrs) - 1)

    def table(self) -> str:
        """Median final loss per lr (* inside the band), then the best lr, best loss, band and width."""
        w = max(14, *(len(o) + 1 for o in self.optimizers))
        head = (f"{self.task}: final {self.metric} after {self.steps} steps, median over {self.seeds} "
                f"seed(s); band = lrs within {self.factor:g}× of the best loss")
        lines = [head, "  ".join([f"{'lr':>11}", *(f"{o:>{w}}" for o in self.optimizers)])]
        bands = {o: band(self.lrs, self.median(o), self.factor) or (-1, -2) for o in self.optimizers}
        for i, lr in enumerate(self.lrs):
            cells = [self._cell(o, i, bands[o]).rjust(w) for o in self.optimizers]
            lines.append("  ".join([f"{lr:>11.3g}", *cells]))
        summary = {"best lr": lambda o: f"{self.best(o)[0]:.3g}",
                   "best loss": lambda o: f"{self.best(o)[1]:.4g}",
                   "band": lambda o: "—" if (b := self.band(o)) is None else f"{b[0]:.2g}–{b[1]:.2g}",
                   "width (dec)": lambda o: ("≥" if self.open_ended(o) else "") + f"{self.width(o):.2f}"}
        for name, cell in summary.items():
            lines.append("  ".join([f"{name:>11}", *(f"{cell(o)} ".rjust(w) for o in self.optimizers)]))
        lines.append("(* = inside the band; n/k✗ = n of k seeds diverged, counted as infinite loss; "
                     "≥ = the band reaches the end of the grid)")
        return "\n".join(lines)

    def _cell(self, opt: str, i: int, inside: tuple[int, int]) -> str:
        value, gone = self.median(opt)[i], self.diverged(opt)[i]
        text = "diverged" if math.isinf(value) else f"{value:.4g}"
        if gone and math.isfinite(value):
            text += f" ({gone}/{self.seeds}✗)"
        return text + ("*" if inside[0] <= i <= inside[1] else " ")

    def to_json(self) -> dict:
        def clean(v):
            return v if math.isfinite(v) else str(v)

        return {"task": self.task, "steps": self.steps, "seeds": self.seeds, "metric": self.metric,
                "factor": self.factor, "lrs": self.lrs,
                "optimizers": {o: {"runs": [[clean(v) for v in r] for r in self.runs[o]],
                                   "median": [clean(v) for v in self.median(o)],
                                   "best_lr": clean(self.best(o)[0]), "best_loss": clean(self.best(o)[1]),
                                   "band": self.band(o), "width_decades": clean(self.width(o)),
                                   "band_reaches_grid_end": self.open_ended(o)}
                               for o in self.optimizers}}

    def plot(self, path) -> None:
        """Median final loss against lr (log-log), min–max over seeds shaded, ✗ where the median diverged."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.subplots()
        # the axes follow the medians: one wild seed (see the shading) should not flatten every curve
        finite = [v for o in self.optimizers for v in self.median(o) if math.isfinite(v)]
        top = max(finite) * 3 if finite else 10.0
        bottom = min(finite) / 3 if finite else 0.1
        for k, o in enumerate(self.optimizers):
            med = self.median(o)
            shown = [v if math.isfinite(v) else math.nan for v in med]
            line, = ax.plot(self.lrs, shown, "o-", ms=3.5, label=o)
            lo = [min(r) for r in self.runs[o]]
            hi = [max((v for v in r if math.isfinite(v)), default=math.nan) for r in self.runs[o]]
            ax.fill_between(self.lrs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            gone = [lr for lr, v in zip(self.lrs, med) if math.isinf(v)]
            ax.plot(gone, [top * 1.25 ** k] * len(gone), "x", color=line.get_color(), ms=7)
            if (b := self.band(o)) is not None:
                y = bottom * (1.35 ** k)
                ax.plot(b, [y, y], "-|", color=line.get_color(), lw=5, ms=9, alpha=0.6, solid_capstyle="butt")
                label = ("≥" if self.open_ended(o) else "") + f"{self.width(o):.2f} dec"
                ax.annotate(label, (b[1], y), xytext=(4, -3), textcoords="offset points", fontsize=7,
                            color=line.get_color())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom / 1.5, top * 1.25 ** len(self.optimizers) * 1.2)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {self.metric}")
        ax.set_title(f"{self.task}, {self.steps} steps, {self.seeds} seed(s); bars: within {self.factor:g}× "
                     "of best; ✗ diverged", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=80)


MAX_STEPS = 100_000  # updates per run: minutes per run on digits already


def sweep(optimizers: str | Sequence[str] = ("sgd", "adam"), task: str = "digits",
          lrs: str | Sequence[float] = DEFAULT_LRS, steps: int = 300, seeds: int = 3, *, factor: float = 2.0,
          metric: str = "val_loss", workers: int = 1, progress: bool = False,
          task_options: dict | None = None, out: str | None = None) -> Sweep:
    """Train every optimizer at every lr for `steps` updates on `task`, `seeds` times; see `Sweep`.

    optimizers: registry names or 'name:key=value,…' texts (no lr: the sweep sets it). factor: the band
    holds lrs whose median final `metric` ('val_loss' or 'train_loss') is ≤ factor × the best.
    workers > 1 spawns processes: call it from under `if __name__ == "__main__":` in a script.
    out: also write the plot there.
    """
    import optimlab
    import optimlab.tasks

    names = split_optimizers(optimizers)
    for text in names:
        _, hyper = optimlab.resolve(text)
        if "lr" in hyper:
            raise ValueError(f"{text!r} sets lr; the sweep chooses lr, remove it")
    task, parsed = parse_task(task)
    task_options = {**parsed, **(task_options or {})}
    _check_task_options(optimlab.tasks.get(task), task_options)
    grid = parse_lrs(lrs)
    for name, value in (("steps", steps), ("seeds", seeds), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS:,} updates per run, got {steps:,}")
    if not (isinstance(factor, (int, float)) and factor > 1 and math.isfinite(factor)):
        raise ValueError(f"factor must be a number > 1, got {factor!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"an optimizer is listed twice: {names}")
    jobs = [(task, task_options, o, lr, seed, steps) for o in names for lr in grid for seed in range(seeds)]
    results = run_jobs(train_once, jobs, workers=workers, progress=progress, unit="run")
    it = iter(r[metric] for r in results)
    runs = {o: [[next(it) for _ in range(seeds)] for _ in grid] for o in names}
    result = Sweep(task, steps, seeds, metric, float(factor), grid, names, runs)
    if out is not None:
        result.plot(out)
    return result


def _check_task_options(task, options: dict) -> None:
    import inspect

    valid = [k for k in inspect.signature(task.build).parameters if k != "seed"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"task {task.name!r} has no option {unknown[0]!r}; valid: {', '.join(valid)}")


def train_once(job: tuple) -> dict[str, float]:
    """One run: a fresh problem for the seed, `steps` updates at this lr, the final evaluation.

    A non-finite minibatch loss stops the run: every metric is then inf (diverged).
    """
    import torch

    import optimlab
    import optimlab.tasks

    task, options, text, lr, seed, steps = job
    with single_thread():
        problem = optimlab.tasks.get(task).build(seed=seed, **options)
        opt = optimlab.create(text, problem.model.parameters(), lr=lr)
        for step in range(steps):
            opt.zero_grad()
            loss = problem.loss(step)
            if not torch.isfinite(loss):
                return {m: math.inf for m in METRICS}
            loss.backward()
            opt.step()
        final = problem.evaluate()
    return {m: final[m] if math.isfinite(final[m]) else math.inf for m in METRICS}


def run_jobs(fn: Callable, jobs: list, *, workers: int = 1, progress: bool = False,
             unit: str = "job") -> list:
    """[fn(job) for job in jobs], in that order; across `workers` fresh processes when > 1.

    Processes are spawned, not forked: a forked child inherits torch's thread pool in an unknown state.
    """
    bar = progress_bar(len(jobs), unit) if progress else _NoBar()
    out: list = [None] * len(jobs)
    try:
        if workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                out[i] = fn(job)
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for i, value in pool.imap_unordered(_indexed, [(i, fn, job) for i, job in enumerate(jobs)]):
                    out[i] = value
                    bar.update()
    finally:
        bar.close()
    return out


def progress_bar(total: int, unit: str):
    """A tqdm bar on stderr (tqdm is imported only when a bar is drawn: a core install lacks it)."""
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit=unit, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _indexed(item: tuple) -> tuple:
    i, fn, job = item
    return i, fn(job)
