"""optimlab bench: the scoring arithmetic against hand-worked cases, the protocol's equal budget, the
generic optimizer hooks, failures recorded (never raised), resume after an interruption, and the CLI."""

from __future__ import annotations

import json
import math

import pytest

import optimlab
from optimlab.cli import main
from optimlab.lab.bench import bench, key, make_plan, protocol
from optimlab.lab.bench.protocol import TASKS, lr_factors, trials
from optimlab.lab.bench.report import report_text
from optimlab.lab.bench.runner import record, run_one
from optimlab.lab.bench.scoring import INF, first_hit, median_spread, profile, ratios

SMALL = dict(tasks="cancer,diabetes", optimizers="adamw,sgd", quick=True, budget=2, seeds=2, workers=1,
             pictures=False)


def test_first_hit_is_the_first_evaluated_point_meeting_the_target():
    steps, acc = [0, 10, 20, 30], [0.1, 0.7, 0.92, 0.95]
    assert first_hit(steps, acc, 0.9, "max") == 20
    assert first_hit(steps, acc, 0.95, "max") == 30  # met exactly counts
    assert first_hit(steps, acc, 0.96, "max") == INF  # a miss is infinite
    loss = [2.0, 1.0, math.nan, 0.4]
    assert first_hit(steps, loss, 0.5, "min") == 30  # nan never meets a target
    assert first_hit([0.0, 1.5, 3.25], [2.0, 0.8, 0.3], 1.0, "min") == 1.5  # seconds work alike
    with pytest.raises(ValueError, match="goal"):
        first_hit(steps, acc, 0.9, "up")
    with pytest.raises(ValueError, match="points"):
        first_hit(steps, acc[:2], 0.9, "max")


def test_median_and_spread_count_a_miss_as_infinite():
    assert median_spread([30, 10, 20]) == (20, 10, 30)
    assert median_spread([10, INF, 20]) == (20, 10, INF)
    assert median_spread([INF, 10, INF]) == (INF, 10, INF)  # most seeds miss: the median misses
    assert median_spread([10, 20]) == (15, 10, 20)


def test_performance_profile_against_a_hand_worked_table():
    # best per task: p1 10 (a), p2 15 (b), p3 nobody
    times = {"a": {"p1": 10, "p2": 30, "p3": INF},
             "b": {"p1": 20, "p2": 15, "p3": INF},
             "c": {"p1": 40, "p2": INF, "p3": INF}}
    r = ratios(times)
    assert r["a"] == {"p1": 1.0, "p2": 2.0, "p3": INF}
    assert r["c"]["p1"] == 4.0 and r["c"]["p2"] == INF
    rho = profile(times, [1.0, 1.9, 2.0, 4.0, INF])
    assert rho["a"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["b"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["c"] == pytest.approx([0, 0, 0, 1 / 3, 1 / 3])  # ρ(∞): solved at all, never more
    tie = profile({"a": {"p": 5}, "b": {"p": 5}}, [1.0])
    assert tie == {"a": [1.0], "b": [1.0]}  # joint fastest both count


def test_lr_grid_is_half_decades_around_the_default():
    assert lr_factors(5) == pytest.approx([1, 10 ** 0.5, 10 ** -0.5, 10, 0.1])
    grid = trials({"lr": 1e-3, "weight_decay": 0.0}, 3, decay=False)
    assert grid == [{}, {"lr": 0.00316}, {"lr": 0.000316}]  # {}: the default run is the first trial
    with_decay = trials({"lr": 1e-3, "weight_decay": 0.01}, 4, decay=True)
    assert with_decay == [{}, {"weight_decay": 0.1}, {"lr": 0.00316}, {"lr": 0.00316, "weight_decay": 0.1}]
    assert trials({"lr": None}, 5, decay=False) == [{}]  # nothing to tune
    with pytest.raises(ValueError, match="budget"):
        trials({"lr": 1e-3}, 0, decay=False)


@pytest.mark.parametrize("name", optimlab.available())
def test_every_optimizer_gets_the_same_budget(name):
    defaults = optimlab.spec(name).defaults
    for task in TASKS.values():
        grid = trials(defaults, protocol.DEFAULT_BUDGET, task.decay)
        lr = defaults.get("lr")
        tunable = isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0
        assert len(grid) == (protocol.DEFAULT_BUDGET if tunable else 1)  # nothing to tune: the default once
        assert len({json.dumps(g, sort_keys=True) for g in grid}) == len(grid)
        optimlab.spec(name).check_names({k: v for g in grid for k, v in g.items()})


def test_quick_configuration_covers_the_whole_registry_and_every_task():
    plan = make_plan(quick=True)
    assert plan.optimizers == optimlab.available()
    assert [t.name for t in plan.tasks] == list(TASKS)
    assert all(t.steps < TASKS[t.name].steps and t.steps % t.eval_every == 0 for t in plan.tasks)
    assert (plan.budget, plan.seeds) == (protocol.QUICK_BUDGET, protocol.QUICK_SEEDS)


def test_record_scores_a_curve():
    task = TASKS["digits"]
    rec = record(task, "adamw", {}, 0, "ok", [0, 30, 60], [0.1, 0.96, 0.97], [0.0, 0.5, 1.0])
    scored = (rec["steps_to_target"], rec["seconds_to_target"], rec["final"], rec["best"])
    assert scored == (30, 0.5, 0.97, 0.97)
    gone = record(task, "sgd", {}, 0, "diverged", [0, 30], [0.1, 0.96], [0.0, 0.4])
    assert gone["final"] is None and gone["steps_to_target"] == 30  # it did reach it before diverging
    json.dumps(rec), json.dumps(gone)


def test_divergence_and_errors_are_recorded_not_raised():
    task = TASKS["diabetes"].scaled(0.1)  # squared error: a huge step makes the next gradient huger
    gone = run_one((task, "sgd", {"lr": 1e3}, 0))
    assert gone["status"] == "diverged" and gone["final"] is None and gone["steps_to_target"] is None
    broken = run_one((task, "sgd:momentum=-1.0", {}, 0))
    assert broken["status"] == "error" and "momentum" in broken["error"]


class ClosureSGD(optimlab.SGD):
    """A stand-in for Sophia and schedule-free optimizers: wants a closure, has train()/eval()."""
    needs_closure = True
    calls: list = []

    def step(self, closure=None):
        assert closure is not None, "the bench must pass a closure"
        self.calls.append("step")
        super().step(closure)  # returns nothing, as some closure optimizers do

    def train(self):
        self.calls.append("train")

    def eval(self):
        self.calls.append("eval")


def test_generic_hooks_closure_and_train_eval(monkeypatch):
    from optimlab import registry

    spec = registry.Spec("closure_sgd", ClosureSGD, "test double", "none", frozenset({"elementwise"}))
    monkeypatch.setitem(registry._specs, "closure_sgd", spec)
    ClosureSGD.calls.clear()
    task = TASKS["cancer"].scaled(0.1)
    rec = run_one((task, "closure_sgd", {"lr": 0.1}, 0))
    assert rec["status"] == "ok", rec["error"]
    evaluated = list(range(0, task.steps + 1, task.eval_every))  # at 0 and every eval_every steps
    assert rec["steps"] == evaluated and len(evaluated) >= 3
    calls = ClosureSGD.calls
    assert calls.count("eval") == calls.count("train") == len(evaluated)  # around each evaluation
    assert calls.index("train") < calls.index("step", 2)  # in training mode before the timed updates
    assert calls.count("step") >= task.steps and calls[-2:] == ["eval", "train"]


def test_resume_after_an_interruption_gives_the_same_report(tmp_path):
    whole = bench(out=tmp_path / "whole", **SMALL)
    part = tmp_path / "part"
    bench(out=part, stop_after=3, **SMALL)  # interrupted: three runs written, no report yet
    assert len((part / "results.jsonl").read_text().splitlines()) == 3
    assert not (part / "report.md").exists()
    with open(part / "results.jsonl", "a") as f:
        f.write('{"key": "cut off by the interrupt')  # a half-written last line
    resumed = bench(out=part, **SMALL)
    assert report_text(resumed, timings=False) == report_text(whole, timings=False)
    n = len(whole.records)
    assert len((tmp_path / "whole" / "results.jsonl").read_text().splitlines()) == n
    # 2 tasks × 2 optimizers × (2 default seeds + 1 more trial + 1 re-run of the chosen trial at most)
    assert 2 * 2 * 3 <= n <= 2 * 2 * 4
    assert len((part / "results.jsonl").read_text().splitlines()) == n + 1  # the cut line stays, unread
    bench(out=part, **SMALL)  # nothing left to run
    assert len((part / "results.jsonl").read_text().splitlines()) == n + 1


def test_results_are_keyed_by_everything_that_changes_a_run():
    t = TASKS["digits"]
    assert key(t, "adamw", {}, 0) != key(t.scaled(0.5), "adamw", {}, 0)
    assert key(t, "adamw", {}, 0) != key(t, "adamw", {}, 1)
    assert key(t, "adamw", {"lr": 0.1}, 0) != key(t, "adamw", {}, 0)


def test_bad_arguments_are_clear_errors():
    for kwargs, match in [(dict(tasks="nope"), "unknown bench task"), (dict(budget=0), "budget"),
                          (dict(seeds=1.5), "seeds"), (dict(optimizers="adamw:lr=0.1"), "sets lr"),
                          (dict(optimizers="adamw,adamw"), "once"),
                          (dict(optimizers="adamx"), "unknown optimizer")]:
        with pytest.raises(ValueError, match=match):
            make_plan(**kwargs)


def test_cli_quick_writes_report_runs_and_pictures(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--quick", "--tasks", "cancer,digits", "--optimizers", "adamw", "lion",
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| adamw |" in printed and "| lion |" in printed and "report:" in printed
    for name in ("report.md", "results.jsonl", "profile.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["optimizer"] for r in lines} == {"adamw", "lion"}
    assert {r["task"] for r in lines} == {"cancer", "digits"}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bench", "--quick", "--out", str(blocker)]) == 2
    assert main(["bench", "--tasks", "nope", "--out", str(out)]) == 2


@pytest.mark.slow  # spawning two fresh interpreters that import torch takes a while
def test_two_worker_processes_give_the_same_runs_as_one(tmp_path):
    small = {**SMALL, "tasks": "cancer", "seeds": 1}

    def deterministic(result):
        timed = ("seconds", "seconds_to_target", "run_seconds", "run_cpu_seconds")
        return {k: {f: v for f, v in r.items() if f not in timed} for k, r in result.records.items()}

    one = bench(out=tmp_path / "one", **small)
    two = bench(out=tmp_path / "two", **{**small, "workers": 2})
    assert deterministic(one) == deterministic(two)
    assert len(one.records) == 2 * 2  # 2 optimizers × (the default + one more trial)
