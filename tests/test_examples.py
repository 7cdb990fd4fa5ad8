"""The lessons' worked examples (`optimlab claims --examples`): each example's setup is the lesson's, its
numbers repeat on the same machine, its verdict rules give the right verdict on hand-made numbers, and the
differences it reports (the AdamW classes' decay order, the clipping guard) match independent arithmetic."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optimlab
from optimlab.cli import main
from optimlab.lab import examples as ex
from optimlab.lab.common import single_thread
from optimlab.lab.examples import (
    adamw_class,
    canyon_steps,
    compare_on_task,
    grad_monitoring,
    lr_sensitivity,
    numpy_adam,
    param_group_recipes,
    schedule_recipe,
)
from optimlab.lab.examples.core import LESSONS, Example, agree, bounded, run_example


@pytest.fixture(autouse=True)
def one_thread():
    """As the examples run: tiny models are fastest on one thread, and the numbers then repeat exactly."""
    with single_thread():
        yield

# --- the lessons' setups --------------------------------------------------------------------------------


def test_lr_sensitivity_setup_is_the_lessons():
    model = lr_sensitivity.make_model()
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    shapes = (model[0].in_features, model[0].out_features, model[2].in_features, model[2].out_features)
    assert shapes == (1, 16, 16, 1)
    x, y = lr_sensitivity.data()
    assert x.shape == (100, 1) and x[0].item() == -1 and x[-1].item() == 1
    assert torch.equal(y, torch.sin(2 * np.pi * x))
    assert lr_sensitivity.LRS == (1e-4, 1e-3, 1e-2, 0.1, 1.0) and lr_sensitivity.STEPS == 500
    assert lr_sensitivity.SEED == 0
    assert set(lr_sensitivity.IMPLEMENTATIONS) == {"optimlab", "torch"}
    # torch.manual_seed(0) before each model: every run starts from the same weights
    torch.manual_seed(0)
    a = lr_sensitivity.make_model()
    torch.manual_seed(0)
    b = lr_sensitivity.make_model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_numpy_adam_setup_is_the_lessons():
    assert numpy_adam.START == (5.0, 2.0) and numpy_adam.LR == 0.1 and numpy_adam.STEPS == 50
    assert numpy_adam.PRINT_EVERY == 10
    assert numpy_adam.gradient(3.0, 2.0) == (6.0, 40.0)  # of x² + 10y²
    rows, path = numpy_adam.lesson_run()
    assert [r[0] for r in rows] == [0, 10, 20, 30, 40] and path.shape == (50, 2)
    assert rows[0][3] == 5.0 ** 2 + 10 * 2.0 ** 2  # the loss printed at step 0 is the start's


def test_compare_on_task_setup_is_the_lessons():
    assert compare_on_task.BATCH == 64 and compare_on_task.SEED == 42
    model = compare_on_task.model_fn()
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [64, 64, 10]
    expected = {"SGD+Nesterov": dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4),
                "Adam": dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4),
                "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
                "RMSProp": dict(lr=1e-3, alpha=0.99)}
    for lib in (torch.optim, optimlab):
        made = {name: make(model) for name, make in compare_on_task.configs(lib).items()}
        assert list(made) == list(expected)
        for name, opt in made.items():
            group = opt.param_groups[0]
            assert {k: group[k] for k in expected[name]} == expected[name], (lib.__name__, name)
    x_train, y_train, x_val, y_val = compare_on_task.split()
    assert (len(x_train), len(x_val)) == (1437, 360) and x_train.shape[1] == 64


def test_compare_on_task_draws_the_same_batches_as_the_lessons_dataloader():
    x_train, y_train, *_ = compare_on_task.split()
    torch.manual_seed(42)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
    theirs = [bx for _ in range(2) for bx, _ in loader]
    torch.manual_seed(42)
    indices = DataLoader(range(len(x_train)), batch_size=64, shuffle=True)
    ours = [x_train[i] for _ in range(2) for i in indices]
    assert len(ours) == len(theirs) == 2 * math.ceil(1437 / 64)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_schedule_recipe_setup_is_the_lessons():
    assert (schedule_recipe.WARMUP, schedule_recipe.TOTAL) == (2000, 100_000)
    assert schedule_recipe.ADAMW == dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    assert schedule_recipe.MAX_NORM == 1.0
    f = schedule_recipe.lesson_lr_lambda
    assert f(0) == 0 and f(1000) == 0.5 and f(2000) == 1.0 and abs(f(100_000) - 0.1) < 1e-7


def test_param_group_and_monitor_setups_are_the_lessons():
    assert (param_group_recipes.N_LAYERS, param_group_recipes.LR_DECAY) == (12, 0.8)
    model = param_group_recipes.fresh()
    prefix = "backbone.encoder.layers."
    blocks = {n.split(".")[3] for n, _ in model.named_parameters() if n.startswith(prefix)}
    assert blocks == {str(i) for i in range(12)}
    assert (grad_monitoring.WINDOW, grad_monitoring.FACTOR, grad_monitoring.MAX_NORM) == (100, 10.0, 1.0)


def test_every_example_is_declared_with_a_lesson_named_by_topic():
    assert len(ex.catalogue()) == 8 and ex.ids()[0] == "lr-sensitivity"
    for e in ex.catalogue():
        assert e.lesson in LESSONS and e.setup.strip() and e.title.strip()
    for name in LESSONS.values():
        assert name.startswith("the ") and not any(ch.isdigit() for ch in name)
    with pytest.raises(ValueError, match="lesson must be one of"):
        Example("x", "seed 002", "t", "s", lambda: ("", [], {}))
    with pytest.raises(ValueError, match="numpy-adam"):
        ex.get("numpy-adma")


# --- numbers repeat on the same machine -----------------------------------------------------------------

def test_lr_sensitivity_runs_repeat_exactly():
    for cls in (optimlab.Adam, torch.optim.SGD):
        assert lr_sensitivity.train(cls, 0.1) == lr_sensitivity.train(cls, 0.1)


def test_compare_on_task_repeats_exactly():
    assert compare_on_task.compare(optimlab, n_epochs=2) == compare_on_task.compare(optimlab, n_epochs=2)


@pytest.mark.parametrize("example_id", ["numpy-adam", "adamw-class", "param-group-recipes", "canyon-steps"])
def test_cheap_examples_repeat_exactly(example_id):
    a, b = (run_example(ex.get(example_id)) for _ in range(2))
    assert a.output == b.output and a.numbers == b.numbers
    assert [c.to_json() for c in a.checks] == [c.to_json() for c in b.checks]


# --- verdict rules on hand-made numbers -----------------------------------------------------------------

def test_agree_confirms_refutes_and_names_the_disagreement():
    assert agree({"optimlab": True, "torch": True}).verdict == "confirmed"
    assert agree({"optimlab": False, "torch": False}).verdict == "refuted"
    split = agree({"optimlab": True, "torch": False})
    assert split.verdict == "depends" and "optimlab" in split.condition and "torch" in split.condition
    with pytest.raises(ValueError):
        agree({})


def test_bounded_has_three_bands_and_treats_nan_as_refuted():
    assert bounded(0.005, 0.01, 0.1, "c").verdict == "confirmed"
    assert bounded(0.01, 0.01, 0.1, "c").verdict == "confirmed"
    v = bounded(0.05, 0.01, 0.1, "between")
    assert v.verdict == "depends" and v.condition == "between"
    assert bounded(0.2, 0.01, 0.1, "c").verdict == "refuted"
    assert bounded(math.nan, 0.01, 0.1, "c").verdict == "refuted"
    with pytest.raises(ValueError):
        bounded(0.0, 1.0, 0.1, "c")


def test_lr_sensitivity_words_as_rules():
    L0 = 0.6
    assert lr_sensitivity.diverges(math.nan, L0) and lr_sensitivity.diverges(math.inf, L0)
    assert lr_sensitivity.diverges(0.61, L0) and not lr_sensitivity.diverges(0.6, L0)
    assert lr_sensitivity.converges(0.3, L0) and not lr_sensitivity.converges(0.31, L0)
    assert not lr_sensitivity.converges(math.nan, L0)
    assert lr_sensitivity.barely_moves(0.54, L0) and not lr_sensitivity.barely_moves(0.53, L0)
    assert lr_sensitivity.slowly(0.5, L0) and not lr_sensitivity.slowly(0.3, L0)
    assert not lr_sensitivity.slowly(0.6, L0)
    assert lr_sensitivity.threshold({0.1: 0.2, 1.0: 7.0}, L0) == 1.0
    assert lr_sensitivity.threshold({0.1: 0.2, 1.0: 0.2}, L0) == math.inf


def test_lr_sensitivity_statements_on_the_lessons_pattern_and_on_the_measured_one():
    L0 = 0.6
    # the pattern the lesson's comment promises: every statement holds
    promised = {"SGD": {1e-4: 0.59, 1e-3: 0.25, 1e-2: 0.1, 0.1: math.inf, 1.0: math.nan},
                "Adam": {1e-4: 0.45, 1e-3: 0.1, 1e-2: 0.05, 0.1: 0.01, 1.0: 9.0}}
    assert [s[2] for s in lr_sensitivity.statements(promised, L0)] == [True, True, True, True]
    promised["Adam"][1.0] = 0.2  # Adam must diverge at 1.0 too for the fourth
    assert [s[2] for s in lr_sensitivity.statements(promised, L0)] == [True, True, True, False]
    # what the issue reports: SGD does not diverge at 0.1, Adam not at 1.0
    seen = {"SGD": {1e-4: 0.555, 1e-3: 0.478, 1e-2: 0.42, 0.1: 0.38, 1.0: 126.0},
            "Adam": {1e-4: 0.487, 1e-3: 0.398, 1e-2: 0.339, 0.1: 0.0085, 1.0: 0.339}}
    held = lr_sensitivity.statements(seen, L0)
    assert [s[2] for s in held] == [True, False, False, False]
    assert "SGD diverges ✗" in held[2][1] and "Adam diverges ✗" in held[3][1]


def test_numpy_adam_distance_rule_and_the_table_rows():
    assert bounded(0.168, 0.01, 0.10, "c").verdict == "refuted"
    rows, _ = numpy_adam.lesson_run()
    step, x, y, loss = rows[0]
    # the row's x, y are after the update, its loss before it (4.9² + 10·1.9² ≠ 65)
    assert loss == 65.0 and abs(x ** 2 + 10 * y ** 2 - 60.11) < 1e-6


def test_monitor_rule_on_hand_made_norms_matches_the_threshold_formula():
    # after k steady norms b, the lesson's test flags x only if x > 10·k·b/(k − 9): 11·b at k = 99
    k = 99
    for x, flagged in ((10.9, False), (11.1, True)):
        flags = grad_monitoring.both_monitors([1.0] * k + [x])
        assert (k in flags["lesson exploding"]) is flagged
        assert k in flags["optimlab spike"]  # median of the earlier norms: 10× is enough
    early = grad_monitoring.both_monitors([1.0] * 5 + [1e6])
    assert early["lesson exploding"] == []  # x > 10·(5 + x)/6 has no solution: never in the first 10
    assert grad_monitoring.both_monitors([1e-9] * 101)["lesson vanishing"] == [100]


def test_canyon_compare_finds_a_hand_made_misprint():
    run = canyon_steps.canyon_steps(lambda ps: optimlab.SGD(ps, lr=0.01))
    assert canyon_steps.compare(canyon_steps.SGD_PRINTED, run) == []
    wrong = [("position", 1, "-1.000", "0.981")]
    assert canyon_steps.compare(wrong, run) == [("position y at step 1", "0.981", pytest.approx(0.98))]


# --- differences against independent arithmetic ---------------------------------------------------------

def test_numpy_class_minus_adamw_is_lr2_lambda_u_after_one_step():
    lr, lam = numpy_adam.LR, 0.3
    lesson = numpy_adam.lesson_run(steps=1, weight_decay=lam)[1][0]
    # the paper's AdamW (decay of θ_{t−1}) by hand in float64: at t = 1, m̂ = g and √v̂ = |g|
    start = np.array(numpy_adam.START)
    g = np.array(numpy_adam.gradient(*start))
    u = g / (np.abs(g) + 1e-8)
    paper = start - lr * u - lr * lam * start
    assert np.allclose(lesson - paper, lr ** 2 * lam * u, rtol=0, atol=1e-15)
    library = numpy_adam.library_run(lambda ps: optimlab.AdamW(ps, lr=lr, weight_decay=lam), steps=1)[0]
    assert np.allclose(library, paper, rtol=0, atol=1e-15)


def test_numpy_class_clipping_differs_from_torch_only_by_the_guard():
    grads = [np.array([30.0]), np.array([40.0])]  # norm 50
    opt = numpy_adam.LessonAdam([np.zeros(1), np.zeros(1)], max_grad_norm=1.0)
    clipped = opt.clip_grad_norm(grads)
    assert clipped[0][0] == 30.0 / (50 + 1e-12)
    t = [torch.tensor([30.0], dtype=torch.float64), torch.tensor([40.0], dtype=torch.float64)]
    for p, g in zip(t, [g.clone() for g in t]):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(t, 1.0)
    assert t[0].grad.item() == pytest.approx(30.0 / (50 + 1e-6), rel=1e-15)


def test_torch_adamw_class_is_adam_without_decay_and_differs_by_lr2_lambda_u_with_it():
    gap, error = adamw_class.one_step_check(0.01)
    assert error < 1e-15 and gap == pytest.approx(adamw_class.LR ** 2 * 0.01, rel=1e-6)
    zero = adamw_class.train(lambda ps: adamw_class.LessonAdamW(ps, weight_decay=0.0), steps=20)
    ref = adamw_class.train(lambda ps: torch.optim.Adam(ps, lr=1e-3), steps=20)
    assert adamw_class.gap(zero, ref) < 1e-14


def test_lesson_lambda_matches_optimlab_schedule_until_total_steps_then_climbs():
    ours = optimlab.schedules.warmup_cosine(100_000, 2000, floor=0.1)
    f = schedule_recipe.lesson_lr_lambda
    for t in (0, 1999, 2000, 30_000, 99_999, 100_000):
        assert abs(f(t) - ours(t)) < 1e-6
    assert f(198_000) == pytest.approx(1.0, abs=1e-6) and ours(198_000) == 0.1


# --- the whole set, the report and the command ----------------------------------------------------------

@functools.cache
def all_outcomes():
    return ex.examples()


@pytest.mark.slow
def test_every_example_runs_with_a_verdict_per_statement_and_json_output():
    outcomes = all_outcomes()
    assert [o.id for o in outcomes] == ex.ids()
    for o in outcomes:
        assert o.output.strip() and o.checks
        for c in o.checks:
            assert c.verdict.verdict in ("confirmed", "refuted", "depends")
            assert (c.verdict.verdict == "depends") == bool(c.verdict.condition)
    json.dumps(ex.to_json(outcomes), allow_nan=False)
    text = ex.report_markdown(outcomes)
    assert text.startswith("# The lessons' own worked examples, re-run")
    assert text.count("\n## `") == len(outcomes)
    assert "seed 0" not in text.replace("torch.manual_seed(0", "")


def test_the_command_runs_one_example_alone_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "ex.md"
    assert main(["claims", "--examples", "canyon-steps", "--out", str(out)]) == 0
    text = out.read_text()
    assert "`optimlab claims --examples canyon-steps`: 1 example," in text and "## `canyon-steps`" in text
    assert main(["claims", "--examples", "--list"]) == 0
    assert "lr-sensitivity" in capsys.readouterr().out
    assert main(["claims", "--examples", "numpy-adam", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"][0]["id"] == "numpy-adam"
    assert main(["claims", "--examples", "no-such-example"]) == 2
