"""The LR range test: the ramp, the smoothing and stopping rule, the suggestions, exact restoration."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import optimlab
import optimlab.tasks
from optimlab.cli import main
from optimlab.lr_find import batch_loss, lr_find, suggest


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run ~50x faster single-threaded on a shared CPU; put the setting back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits(seed=0):
    return optimlab.tasks.get("digits").build(seed=seed)


def constant_losses(values):
    """A model with one weight and a loss(step) that returns values[step] whatever the lr (zero gradient)."""
    w = nn.Linear(1, 1, bias=False)
    return w, lambda step: w.weight.sum() * 0 + values[step]


def snapshot(model, optimizer):
    return ([p.detach().clone() for p in model.parameters()], copy.deepcopy(optimizer.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()], torch.get_rng_state())


def assert_same(a, b):
    """Bit-identical: parameters, optimizer state tensors and groups, gradients, RNG."""
    (params_a, opt_a, grads_a, rng_a), (params_b, opt_b, grads_b, rng_b) = a, b
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b))
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for key in opt_a["state"]:
        sa, sb = opt_a["state"][key], opt_b["state"][key]
        assert sa.keys() == sb.keys()
        for name in sa:
            x, y = sa[name], sb[name]
            assert torch.equal(x, y) and x.dtype == y.dtype if torch.is_tensor(x) else x == y, (key, name)
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert torch.equal(rng_a, rng_b)


@pytest.mark.parametrize("name", ["adamw", "sgd:momentum=0.9", "adafactor", "lion"])
def test_model_and_optimizer_state_are_restored_bit_identically(name):
    problem = digits()
    optimizer = optimlab.create(name, problem.model.parameters())
    for step in range(3):  # state that exists before the test must come back, not just be emptied
        optimizer.zero_grad()
        problem.loss(step).backward()
        optimizer.step()
    before = snapshot(problem.model, optimizer)
    result = lr_find(problem, optimizer, steps=40)
    assert len(result.lrs) > 5  # it did train (and change things) in between
    assert_same(snapshot(problem.model, optimizer), before)


def test_empty_state_stays_empty_and_training_afterwards_is_unchanged():
    """With dropout (torch's RNG) in the model: training after lr_find equals training without it."""
    def build():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(0)), torch.ones(32, 1)

    def train(model, optimizer):
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    model, optimizer = build()
    expected = train(model, optimizer)
    model, optimizer = build()
    lr_find(model, optimizer, lambda step: nn.functional.mse_loss(model(x), y), steps=30)
    assert len(optimizer.state) == 0 and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(train(model, optimizer), expected))


def test_ramp_is_geometric_and_keeps_group_ratios():
    w_head, w_body = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [w_head], "lr": 1.0}, {"params": [w_body], "lr": 0.1}])
    seen = []

    def loss(step):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return (w_head * 0).sum() + (w_body * 0).sum() + 1.0

    result = lr_find(nn.ParameterList([w_head, w_body]), optimizer, loss, start_lr=1e-4, end_lr=1e2, steps=7)
    assert result.stop == "completed" and len(result.lrs) == 7
    by_hand = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100]  # ×10 an update
    np.testing.assert_allclose(result.lrs, by_hand, rtol=1e-12)
    np.testing.assert_allclose([s[0] for s in seen], result.lrs, rtol=1e-12)
    np.testing.assert_allclose([s[1] for s in seen], np.array(result.lrs) * 0.1, rtol=1e-12)
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 0.1]  # restored


def test_smoothing_is_a_bias_corrected_average():
    model, loss = constant_losses([2.0, 4.0, 1.0])
    sgd = torch.optim.SGD(model.parameters(), lr=1)
    result = lr_find(model, sgd, loss, steps=3, smoothing=0.5, diverge=100)
    # by hand, a = 0.5 a + 0.5 x, corrected by 1 − 0.5^t: a1 = 1 → 2; a2 = 2.5 → 3.333…; a3 = 1.75 → 2
    np.testing.assert_allclose(result.smoothed, [2.0, 2.5 / 0.75, 1.75 / 0.875])
    assert result.losses == [2.0, 4.0, 1.0]


def test_stops_when_the_smoothed_loss_exceeds_diverge_times_its_best():
    values = [3.0, 2.0, 1.0, 3.875, 4.125, 1.0, 1.0]  # exact in float32
    model, loss = constant_losses(values)
    result = lr_find(model, torch.optim.SGD(model.parameters(), lr=1), loss, steps=7, smoothing=1.0)
    assert result.stop == "diverged" and result.losses == values[:5]  # 4.125 > 4 × 1.0; 3.875 is not
    model, loss = constant_losses(values)
    sgd = torch.optim.SGD(model.parameters(), lr=1)
    result = lr_find(model, sgd, loss, steps=7, smoothing=1.0, diverge=5)
    assert result.stop == "completed" and len(result.losses) == 7


def test_stops_on_a_non_finite_loss_and_suggests_from_the_finite_part():
    values = [3.0, 2.0, 1.0, 0.5, math.nan, 1.0]
    model, loss = constant_losses(values)
    result = lr_find(model, torch.optim.SGD(model.parameters(), lr=1), loss, steps=6, smoothing=1.0)
    assert result.stop == "non-finite" and len(result.losses) == 5
    assert result.picks["minimum/10"].index == 3


def test_suggestions_on_a_curve_with_known_answers():
    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    curve = 2 - np.tanh(2 * (x + 3))  # falls fastest at lr = 1e-3 (index 30)
    curve[50:] = curve[49] + (x[50:] - x[49]) ** 2  # lowest at index 49, then rises
    picks = suggest(lrs, list(curve))
    assert picks["steepest"].index == 30 and picks["steepest"].lr == pytest.approx(1e-3)
    assert picks["minimum/10"].index == 49 and picks["minimum/10"].lr == pytest.approx(lrs[49] / 10)
    # strictly decreasing from 0 to 49: the longest decreasing subsequence is all 50 points; its middle is 25
    assert picks["valley"].index == 25


def test_valley_ignores_a_flat_noisy_start_and_anything_after_the_minimum():
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-7, 1, 81))
    flat = 2.3 + 0.01 * rng.standard_normal(50)
    curve = np.concatenate([flat, np.linspace(2.2, 0.7, 20), np.linspace(1, 9, 11)])
    picks = suggest(lrs, list(curve))
    assert 50 <= picks["valley"].index <= 69  # inside the falling stretch, not in the noise before it
    assert 50 <= picks["steepest"].index <= 69 and picks["minimum/10"].index == 69


@pytest.mark.parametrize("name", ["adamw", "sgd:momentum=0.9"])
def test_suggestions_train_digits_well(name):
    """Independent check: 300 updates at each of the robust suggestions reach ≥ 90 % validation accuracy
    (at lr 1e-5, far left of the valley, the same budget does not reach 50 %)."""
    result = lr_find(digits(), name)
    assert result.stop == "diverged"  # the ramp to 10 blows up both
    for lr in (result.suggestions["valley"], result.suggestions["minimum/10"], 1e-5):
        problem = digits()
        optimizer = optimlab.create(name, problem.model.parameters(), lr=lr)
        for step in range(300):
            optimizer.zero_grad()
            problem.loss(step).backward()
            optimizer.step()
        accuracy = problem.evaluate()["val_accuracy"]
        assert accuracy >= 0.9 if lr != 1e-5 else accuracy < 0.5, (lr, accuracy)


def test_batches_and_a_criterion_instead_of_a_loss_function():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(3)]
    model = nn.Linear(4, 1)
    loss = batch_loss(model, batches, nn.MSELoss())
    result = lr_find(model, optimlab.create("adam", model.parameters()), loss, steps=10, diverge=1e9)
    assert result.stop == "completed" and len(result.losses) == 10
    assert result.losses[0] == pytest.approx(nn.MSELoss()(model(batches[0][0]), batches[0][1]).item())


def test_bad_settings_raise_clear_errors():
    model, loss = constant_losses([1.0] * 10)
    opt = torch.optim.SGD(model.parameters(), lr=1)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(model, opt, loss, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        lr_find(model, opt, loss, steps=2)
    with pytest.raises(ValueError, match="smoothing"):
        lr_find(model, opt, loss, smoothing=0)
    with pytest.raises(ValueError, match="diverge"):
        lr_find(model, opt, loss, diverge=1)
    with pytest.raises(ValueError, match="give loss"):
        lr_find(model, opt)
    with pytest.raises(ValueError, match="unknown optimizer"):
        lr_find(model, "adamx", loss)


def test_plot_writes_a_png(tmp_path):
    model, loss = constant_losses([3.0, 2.0, 1.0, 0.5, 0.7, 9.0])
    result = lr_find(model, torch.optim.SGD(model.parameters(), lr=1), loss, steps=6, smoothing=1.0)
    path = tmp_path / "lr.png"
    fig = result.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert len(fig.axes[0].lines) == 2 + 3  # raw, smoothed, one marker per suggestion


def test_command_line(tmp_path, capsys):
    out = tmp_path / "plot.png"
    assert main(["lr-find", "--optimizer", "adamw", "--steps", "60", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("steepest", "valley", "minimum/10"):
        assert name in text
    assert out.exists()
    assert main(["lr-find", "--optimizer", "sgd:momentum=0.9", "--steps", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["suggestions"]) == {"steepest", "valley", "minimum/10"} and len(data["lrs"]) == 20
    assert main(["lr-find", "--optimizer", "adamx"]) == 2
    assert "unknown optimizer 'adamx'" in capsys.readouterr().err
