"""optimlab.gradients: clipping against hand computations and torch, AGC against a float64 loop, monitor."""

import logging
import math

import pytest
import torch

from optimlab.gradients import (GradNormMonitor, adaptive_clip_grad_, clip_grad_norm_, clip_grad_value_,
                                grad_norm, unitwise_norm)


def two_params(g1=(3.0, 4.0), g2=(12.0,)):
    a = torch.nn.Parameter(torch.ones(len(g1)))
    b = torch.nn.Parameter(torch.ones(len(g2)))
    a.grad, b.grad = torch.tensor(g1), torch.tensor(g2)
    return a, b


def test_clip_grad_norm_returns_the_norm_before_clipping():
    a, b = two_params()  # norms 5 and 12: global sqrt(25 + 144) = 13
    norm = clip_grad_norm_([a, b], max_norm=1.3)
    assert norm.item() == pytest.approx(13.0)
    scale = 1.3 / (13.0 + 1e-6)
    assert a.grad.tolist() == pytest.approx([3 * scale, 4 * scale])
    assert b.grad.tolist() == pytest.approx([12 * scale])
    assert grad_norm([a, b]).item() == pytest.approx(1.3, rel=1e-6)  # after: the max norm
    a, b = two_params()
    assert clip_grad_norm_([a, b], max_norm=20.0).item() == pytest.approx(13.0)
    assert a.grad.tolist() == [3.0, 4.0]  # under the limit: untouched


def test_clip_grad_norm_takes_modules_and_optimizers_like_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    model(torch.randn(3, 5)).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for t, g in zip(twin, expected):
        t.grad = g.clone()
    theirs = torch.nn.utils.clip_grad_norm_(twin, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours = clip_grad_norm_(opt, 0.1)
    assert ours.item() == theirs.item()
    assert all(torch.equal(p.grad, t.grad) for p, t in zip(model.parameters(), twin))
    with pytest.raises(ValueError, match="max_norm must be a positive"):
        clip_grad_norm_(model, 0.0)


def test_clip_grad_value_returns_the_largest_entry_before_clipping():
    a, b = two_params((3.0, -4.0), (0.5,))
    assert clip_grad_value_([a, b], 1.0).item() == 4.0
    assert a.grad.tolist() == [1.0, -1.0] and b.grad.tolist() == [0.5]
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value_([a], -1.0)


def agc_reference(weight, grad, clipping, eps):
    """AGC eq. 3 of Brock et al. 2021, one unit (output row) at a time, in float64 with plain loops."""
    w, g = weight.double(), grad.double().clone()
    units, clipped = [slice(None)] if w.ndim <= 1 else range(w.shape[0]), 0
    for i in units:
        w_norm = max(math.sqrt(float((w[i] ** 2).sum())), eps)
        g_norm = math.sqrt(float((g[i] ** 2).sum()))
        if g_norm / w_norm > clipping:
            g[i] = g[i] * (clipping * w_norm / g_norm)
            clipped += 1
    return g, clipped


def test_agc_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    w.grad = torch.tensor([[0.3, 0.4], [1.0, 0.0], [0.001, 0.0]])
    clipped = adaptive_clip_grad_([w], clipping=0.01, eps=1e-3)
    # row 0: |G|/|W| = 0.5/5 = 0.1 > 0.01 -> scaled to norm 0.01 * 5 = 0.05
    # row 1: |W| = 0 -> eps: limit 0.01 * 1e-3 = 1e-5 -> scaled to norm 1e-5
    # row 2: 0.001 / 1 = 0.001 <= 0.01 -> untouched
    assert w.grad.flatten().tolist() == pytest.approx([0.03, 0.04, 1e-5, 0.0, 0.001, 0.0], rel=1e-5)
    assert clipped.item() == 2


def test_agc_matches_the_reference_on_linear_conv_and_bias():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 5))
    model(torch.randn(2, 3, 6, 6)).pow(2).sum().backward()
    for p in model.parameters():  # some units far over the limit, some under it
        p.grad.mul_(torch.rand_like(p.grad) * 10)
        p.grad[::2].mul_(1e-4) if p.ndim > 1 else None
    model[0].bias.grad.mul_(1e-4)
    expected = [agc_reference(p.detach(), p.grad, 0.05, 1e-3) for p in model.parameters()]
    n_clipped = adaptive_clip_grad_(model, clipping=0.05)
    for p, (e, _) in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-9)
    # clipped: conv rows 1, 3; linear rows 1, 3; the linear bias. The rows and bias scaled by 1e-4 are not.
    assert n_clipped.item() == sum(c for _, c in expected) == 5
    assert unitwise_norm(torch.ones(4, 3, 2, 2)).flatten().tolist() == pytest.approx([math.sqrt(12)] * 4)


# --- the monitor ---------------------------------------------------------------------------------------

def toy(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return model


def loss_at(model, step, scale=1.0):
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(step))
    return model(x).pow(2).mean() * scale


def test_monitor_records_global_and_group_norms_and_flags_a_spike(caplog):
    model = toy()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "name": "first"},
                           {"params": model[2].parameters(), "name": "last"}], lr=0.01)
    monitor = GradNormMonitor(model, opt, spike_factor=5.0, min_history=10)
    with caplog.at_level(logging.WARNING, logger="optimlab.gradients"):
        for step in range(40):
            opt.zero_grad()
            loss_at(model, step, scale=100.0 if step == 30 else 1.0).backward()
            first = torch.cat([p.grad.flatten() for p in model[0].parameters()]).norm().item()
            last = torch.cat([p.grad.flatten() for p in model[2].parameters()]).norm().item()
            opt.step()
            assert monitor.group_norms[-1] == pytest.approx([first, last], rel=1e-6)
            assert monitor.norms[-1] == pytest.approx(math.hypot(first, last), rel=1e-6)
    assert [(e.step, e.kind) for e in monitor.events] == [(30, "spike")]
    assert "spike at step 30" in caplog.text and monitor.group_names == ["first", "last"]
    assert set(monitor.events[0].params) <= {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_update_ratio_is_lr_times_grad_norm_over_weight_norm_for_sgd():
    model = toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradNormMonitor(model, opt)
    opt.zero_grad()
    loss_at(model, 0).backward()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    opt.step()
    assert monitor.ratios[0] == pytest.approx([0.1 * grads / weights], rel=1e-5)


def test_monitor_clipping_equals_torch_clipping():
    a, b = toy(), toy()
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=0.05), torch.optim.AdamW(b.parameters(), lr=0.05)
    monitor = GradNormMonitor(b, opt_b, max_norm=0.05)
    pre = []
    for step in range(15):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_at(model, step).backward()
        pre.append(torch.nn.utils.clip_grad_norm_(a.parameters(), 0.05).item())
        opt_a.step()
        opt_b.step()
    assert monitor.norms == pytest.approx(pre, rel=1e-6)  # the pre-clip norm is what is recorded
    assert len(monitor.clipped) == sum(n > 0.05 for n in pre) > 0
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # bit for bit: the same total norm and the same scaling as torch


def test_nonfinite_names_the_parameter_and_can_skip_the_update(caplog):
    model = toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = GradNormMonitor(model, opt, skip_nonfinite=True)
    opt.zero_grad()
    loss_at(model, 0).backward()
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    state_steps = [opt.state[p]["step"].item() for p in model.parameters()]
    opt.zero_grad()
    loss_at(model, 1).backward()
    model[2].bias.grad[0] = float("inf")
    with caplog.at_level(logging.WARNING, logger="optimlab.gradients"):
        opt.step()
    assert monitor.events[-1].kind == "nonfinite" and monitor.events[-1].params == ("2.bias",)
    assert monitor.events[-1].step == 1 and "2.bias" in caplog.text
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the update was skipped
    assert [opt.state[p]["step"].item() for p in model.parameters()] == state_steps


def test_vanishing_and_manual_recording():
    model = toy()
    monitor = GradNormMonitor(model, log_events=False)  # no optimizer: call record() after backward
    loss_at(model, 0).backward()
    assert monitor.record() == pytest.approx(grad_norm(model).item(), rel=1e-6)
    model.zero_grad(set_to_none=False)  # all-zero gradients
    assert monitor() == 0.0
    assert [(e.step, e.kind) for e in monitor.events] == [(1, "vanishing")]


def test_summary_and_plot(tmp_path):
    model = toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = GradNormMonitor(model, opt, max_norm=0.5, log_events=False)
    for step in range(25):
        opt.zero_grad()
        loss_at(model, step, scale=1000.0 if step == 20 else 1.0).backward()
        opt.step()
    text = monitor.summary()
    assert text.splitlines()[0].startswith("GradNormMonitor: 25 updates recorded, clipped to max_norm=0.5 at")
    assert "1 spike" in text and "step 20: gradient norm spike" in text
    monitor.plot(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    monitor.remove()
    opt.step()
    assert len(monitor.norms) == 25  # detached


def test_monitor_arguments():
    with pytest.raises(ValueError, match="needs a model"):
        GradNormMonitor()
    with pytest.raises(ValueError, match="spike_factor"):
        GradNormMonitor(toy(), spike_factor=0)
