"""optimlab.lab.bench: every optimizer on the same real tasks, under one fixed protocol (AlgoPerf-style).

    from optimlab.lab.bench import bench
    result = bench(out="bench", workers=2)          # all registered optimizers, all five tasks
    result = bench(quick=True, out="bench-quick")    # the two-minute version
    print(result.report_path)

Runs are (task, optimizer, hyperparameters, seed); each is one process-independent job on one thread,
appended to DIR/results.jsonl the moment it finishes, so an interrupted bench continues where it
stopped. See `protocol` for what is run, `scoring` for how it is scored, `report` for what is written.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path

from . import protocol
from .protocol import TASKS, BenchTask
from .runner import run_one


@dataclasses.dataclass
class Plan:
    """What one bench invocation runs: tasks (already scaled for --quick), optimizers, budget, seeds."""
    tasks: list[BenchTask]
    optimizers: list[str]
    budget: int
    seeds: int
    quick: bool = False

    def defaults(self, text: str) -> dict:
        import optimlab

        spec, fixed = optimlab.resolve(text)
        return {**spec.defaults, **fixed}

    def trials(self, task: BenchTask, text: str) -> list[dict]:
        return protocol.trials(self.defaults(text), self.budget, task.decay)


def key(task: BenchTask, text: str, hyper: dict, seed: int) -> str:
    """What identifies a run: the task's whole configuration, the optimizer, its overrides, the seed."""
    return json.dumps([dataclasses.asdict(task), text, hyper, seed], sort_keys=True, default=str)


def make_plan(tasks=None, optimizers=None, budget: int | None = None, seeds: int | None = None,
              quick: bool = False) -> Plan:
    import optimlab

    from ..sweeps import split_optimizers

    names = list(TASKS) if tasks is None else _split(tasks)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown bench task {unknown[0]!r}; available: {', '.join(TASKS)}")
    if not names:
        raise ValueError("tasks: name at least one task")
    texts = optimlab.available() if optimizers is None else split_optimizers(optimizers)
    for text in texts:
        _, hyper = optimlab.resolve(text)  # unknown names and hyperparameters: a clear ValueError
        if "lr" in hyper:
            raise ValueError(f"{text!r} sets lr; the bench tunes lr, remove it")
    if len(set(texts)) != len(texts) or not texts:
        raise ValueError(f"optimizers: name each at least once and only once, got {texts}")
    budget = (protocol.QUICK_BUDGET if quick else protocol.DEFAULT_BUDGET) if budget is None else budget
    seeds = (protocol.QUICK_SEEDS if quick else protocol.DEFAULT_SEEDS) if seeds is None else seeds
    for name, value in (("budget", budget), ("seeds", seeds)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    chosen = [TASKS[n].scaled(protocol.QUICK_FRACTION) if quick else TASKS[n] for n in dict.fromkeys(names)]
    return Plan(chosen, texts, budget, seeds, quick)


def _split(text) -> list[str]:
    items = [text] if isinstance(text, str) else list(text)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def load(path: Path) -> dict[str, dict]:
    """The records already in results.jsonl, by key. A line cut short by an interruption is skipped."""
    found: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                found[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return found


def tuned_setting(plan: Plan, task: BenchTask, text: str, done: dict[str, dict]) -> dict:
    """The trial that reached the target in the fewest steps on the tuning seed; ties: best final metric."""
    best, best_rec = None, None
    for hyper in plan.trials(task, text):
        rec = done[key(task, text, hyper, 0)]
        if best_rec is None or _beats(task, rec, best_rec):
            best, best_rec = hyper, rec
    return best


def _beats(task: BenchTask, a: dict, b: dict) -> bool:
    inf = float("inf")
    sa, sb = a["steps_to_target"] or inf, b["steps_to_target"] or inf
    if sa != sb:
        return sa < sb
    fa, fb = (inf if r["final"] is None else r["final"] for r in (a, b))
    if task.goal == "max":
        fa, fb = (-v if v != inf else inf for v in (fa, fb))
    return fa < fb


@dataclasses.dataclass
class Result:
    plan: Plan
    records: dict[str, dict]
    out: Path

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


def bench(tasks=None, optimizers: str | Sequence[str] | None = None, budget: int | None = None,
          seeds: int | None = None, quick: bool = False, out: str | Path = "bench", workers: int = 1,
          progress: bool = False, pictures: bool = True, stop_after: int | None = None) -> Result:
    """Run the protocol (skipping runs already in out/results.jsonl) and write out/report.md and pictures.

    tasks, optimizers: names (comma-separated text or a list); default every bench task and every
    registered optimizer. workers > 1 spawns processes: call it under `if __name__ == "__main__":`.
    stop_after: stop after that many new runs (what an interruption does; the tests use it).
    """
    from .report import write_report

    plan = make_plan(tasks, optimizers, budget, seeds, quick)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = load(path)
    # phase 1: the default setting on every seed, and every tuning trial on seed 0
    first = [(task, text, hyper, seed) for task in plan.tasks for text in plan.optimizers
             for hyper, seed in [({}, s) for s in range(plan.seeds)]
             + [(h, 0) for h in plan.trials(task, text)]]
    bar = _bar(progress, len(first) + len(plan.tasks) * len(plan.optimizers) * (plan.seeds - 1))
    try:
        budget_left = _run(first, done, path, workers, bar, stop_after)
        if budget_left is not None and budget_left <= 0:
            return Result(plan, done, out)
        # phase 2: the chosen trial on the other seeds
        second = [(task, text, tuned_setting(plan, task, text, done), seed) for task in plan.tasks
                  for text in plan.optimizers for seed in range(1, plan.seeds)]
        budget_left = _run(second, done, path, workers, bar, budget_left)
        if budget_left is not None and budget_left <= 0:
            return Result(plan, done, out)
    finally:
        if bar is not None:
            bar.close()
    result = Result(plan, done, out)
    write_report(result, pictures=pictures)
    return result


def _run(jobs: list, done: dict, path: Path, workers: int, bar, stop_after: int | None) -> int | None:
    """Run the jobs not yet done, appending each record as it arrives; returns what is left of stop_after."""
    todo, seen = [], set()
    for job in jobs:
        k = key(*job)
        if k in done or k in seen:
            if bar is not None and k not in seen:
                bar.update()
            seen.add(k)
            continue
        seen.add(k)
        todo.append(job)
    if bar is not None:
        bar.total -= len(jobs) - len(seen)  # duplicates (the default lr on the tuning seed) run once
        bar.refresh()
    if stop_after is not None:
        todo = todo[:stop_after]
    # the slowest tasks first, so that no worker is left alone with a long run at the end
    todo.sort(key=lambda job: -job[0].steps * (3 if job[0].name == "charlm" else 1))
    if not todo:
        return None if stop_after is None else stop_after
    cut = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as sink:
        if cut:  # an interruption left half a line: start on a fresh one
            sink.write("\n")
        def keep(rec):
            done[rec["key"]] = rec
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
            if bar is not None:
                bar.update()

        if workers == 1 or len(todo) <= 1:
            for job in todo:
                keep(_keyed(job))
        elif todo:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(todo))) as pool:
                for rec in pool.imap_unordered(_keyed, todo):
                    keep(rec)
    return None if stop_after is None else stop_after - len(todo)


def _keyed(job: tuple) -> dict:
    return {"key": key(*job), **run_one(job)}


def _bar(progress: bool, total: int):
    if not progress:
        return None
    from tqdm import tqdm  # imported only when a bar is drawn

    return tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
