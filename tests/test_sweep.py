"""optimlab sweep: the grid and band arithmetic against hand-worked cases, each run against an
independent training loop, process-parallel results identical to serial ones, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import optimlab
import optimlab.tasks
from optimlab.cli import main
from optimlab.lab import sweep
from optimlab.lab.sweeps import band, parse_lrs, parse_task, split_optimizers


def test_parse_lrs_log_grid_and_lists():
    assert parse_lrs("1e-4:1:5") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    grid = parse_lrs("1e-3:1e-1:7")  # three points per decade
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(0.1)
    assert [b / a for a, b in zip(grid, grid[1:])] == pytest.approx([10 ** (1 / 3)] * 6)
    assert parse_lrs("0.1, 1e-3,0.01") == [1e-3, 0.01, 0.1]
    assert parse_lrs([0.5, 0.05]) == [0.05, 0.5]
    for bad in ["1:1e-4:5", "1e-4:1:1", "1e-4:1:2.5", "a:b:c", "0,0.1", "-1e-3", "0.1,0.1", "", "1e-3:inf:3"]:
        with pytest.raises(ValueError):
            parse_lrs(bad)


def test_split_optimizers_keeps_hyperparameters_with_their_optimizer():
    text = "sgd:momentum=0.9,nesterov=True,adam"
    assert split_optimizers(text) == ["sgd:momentum=0.9,nesterov=True", "adam"]
    items = ["sgd,adam:betas=(0.9,0.95)", "adamw"]
    assert split_optimizers(items) == ["sgd", "adam:betas=(0.9,0.95)", "adamw"]
    assert split_optimizers("sgd,momentum=0.9") == ["sgd:momentum=0.9"]
    with pytest.raises(ValueError, match="needs an optimizer before it"):
        split_optimizers("momentum=0.9,adam")
    with pytest.raises(ValueError):
        split_optimizers(" , ")


def test_parse_task():
    assert parse_task("digits") == ("digits", {})
    assert parse_task("digits:hidden=32,depth=3") == ("digits", {"hidden": 32, "depth": 3})
    with pytest.raises(ValueError):
        parse_task("digits:hidden")


def test_band_is_the_contiguous_run_around_the_best_within_the_factor():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    # best 1.0 at index 2; 1.9 ≤ 2 joins; 4.0 does not; 2.5 > 2 stops the right side, so the 1.5 beyond is out
    assert band(lrs, [4.0, 1.9, 1.0, 2.5, 1.5], 2.0) == (1, 2)
    assert band(lrs, [4.0, 1.9, 1.0, 2.5, 1.5], 3.0) == (1, 4)
    assert band(lrs, [math.inf, 0.3, 0.2, math.inf, 0.1], 2.0) == (4, 4)
    assert band(lrs, [math.inf] * 5, 2.0) is None


def independent_run(text: str, lr: float, seed: int, steps: int) -> float:
    """The training loop written out again with the public API, to check the sweep's numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's runs: one thread, so the arithmetic is the same
    try:
        problem = optimlab.tasks.get("digits").build(seed=seed)
        opt = optimlab.create(text, problem.model.parameters(), lr=lr)
        for step in range(steps):
            opt.zero_grad()
            problem.loss(step).backward()
            opt.step()
        return problem.evaluate()["val_loss"]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small():
    return sweep("sgd,adam", task="digits", lrs="1e-2,1e-1,1e3", steps=30, seeds=2, workers=1)


def test_each_entry_is_the_final_loss_of_that_run(small):
    assert small.lrs == [1e-2, 1e-1, 1e3] and small.optimizers == ["sgd", "adam"]
    assert small.runs["adam"][1][1] == independent_run("adam", 0.1, seed=1, steps=30)
    assert small.runs["sgd"][0][0] == independent_run("sgd", 0.01, seed=0, steps=30)
    assert small.runs["adam"][0][0] != small.runs["adam"][0][1]  # seeds differ


def test_divergence_counts_as_infinite_loss(small):
    assert small.runs["sgd"][2] == [math.inf, math.inf]  # plain SGD at lr 1000 overflows
    assert small.diverged("sgd") == [0, 0, 2]
    table = small.table()
    assert "diverged" in table and "best lr" in table


def test_best_band_and_width_follow_the_medians(small):
    for o in small.optimizers:
        med = small.median(o)
        i = min(range(3), key=lambda k: med[k])
        assert small.best(o) == (small.lrs[i], med[i])
        lo, hi = band(small.lrs, med, 2.0)
        assert small.width(o) == pytest.approx(math.log10(small.lrs[hi] / small.lrs[lo]))
        assert all(med[k] <= 2 * med[i] for k in range(lo, hi + 1))
    data = small.to_json()
    assert data["optimizers"]["sgd"]["median"][2] == "inf"
    json.dumps(data)  # strict JSON: no bare inf


def test_parallel_processes_give_identical_results():
    args = dict(task="digits", lrs="3e-3,3e-2", steps=15, seeds=2)
    serial = sweep("adam", workers=1, **args)
    parallel = sweep("adam", workers=2, **args)
    assert parallel.runs == serial.runs


def test_bad_arguments_raise_value_errors():
    cases = [(dict(optimizers="sgd:lr=0.1"), "sets lr"), (dict(optimizers="nope"), "unknown optimizer"),
             (dict(task="mnist"), "unknown task"), (dict(metric="val_accuracy"), "metric"),
             (dict(factor=1.0), "factor"), (dict(steps=0), "steps"), (dict(seeds=1.5), "seeds"),
             (dict(task="digits:width=3"), "no option 'width'"), (dict(optimizers="adam,adam"), "twice")]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            sweep(**{"lrs": "1e-3,1e-2", "steps": 1, "seeds": 1, **kwargs})


def test_cli_prints_the_same_numbers_and_writes_the_plot(tmp_path, capsys):
    out = tmp_path / "sweep.png"
    assert main(["sweep", "-o", "adam", "--lrs", "1e-2,1e-1", "--steps", "10", "--seeds", "1",
                 "--workers", "1", "--metric", "train_loss", "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    direct = sweep("adam", lrs="1e-2,1e-1", steps=10, seeds=1, metric="train_loss")
    assert data["optimizers"]["adam"]["runs"] == direct.runs["adam"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sweep", "--lrs", "1:0.1:3", "--workers", "1"]) == 2
    assert "0 < LO < HI" in capsys.readouterr().err
