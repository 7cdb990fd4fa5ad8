"""Schedule-free safety: no step in eval mode, checkpoints that know their mode, BatchNorm statistics at x."""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from cases import backward, make_params
from optimlab.optimizers.schedulefree import recompute_batchnorm_statistics

NAMES = ["schedulefree_adamw", "schedulefree_sgd"]


@pytest.mark.parametrize("name", NAMES)
def test_step_in_eval_mode_is_a_clear_error_and_changes_nothing(name):
    params = make_params()
    opt = optimlab.create(name, params, lr=0.01)
    backward(params, 0)
    opt.step()
    opt.eval()
    before = [p.detach().clone() for p in params]
    backward(params, 1)
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_records_its_mode_and_resumes_in_it(name):
    params = make_params()
    opt = optimlab.create(name, params, lr=0.01)
    for step in range(10):
        backward(params, step)
        opt.step()
    assert opt.state_dict()["param_groups"][0]["train_mode"] is True
    opt.eval()  # save for evaluation: the parameters now hold x
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    assert saved_opt["param_groups"][0]["train_mode"] is False
    # the uninterrupted run...
    opt.train()
    for step in range(10, 20):
        backward(params, step)
        opt.step()
    # ...and a fresh optimizer (in train mode) restored from the eval-mode checkpoint
    resumed = [p.clone().requires_grad_() for p in saved_params]
    fresh = optimlab.create(name, resumed, lr=0.01)
    fresh.load_state_dict(saved_opt)
    assert not fresh.training  # it took the checkpoint's mode, so it knows the parameters hold x
    backward(resumed, 10)
    with pytest.raises(RuntimeError, match="eval mode"):
        fresh.step()  # stepping x as if it were y would silently train the wrong point
    fresh.train()
    for step in range(10, 20):
        backward(resumed, step)
        fresh.step()
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_without_a_mode_is_refused(name):
    params = make_params()
    opt = optimlab.create(name, params)
    backward(params, 0)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["train_mode"]
    with pytest.raises(ValueError, match="train/eval mode"):
        optimlab.create(name, params).load_state_dict(saved)


def test_train_and_eval_are_inverse_and_idempotent():
    params = make_params()
    opt = optimlab.ScheduleFreeAdamW(params, lr=0.05, betas=(0.7, 0.99))
    for step in range(5):
        backward(params, step)
        opt.step()
    y = [p.detach().clone() for p in params]
    opt.eval()
    opt.eval()  # a second eval() must not move x again
    x = [p.detach().clone() for p in params]
    opt.train()
    opt.train()
    assert all(not torch.allclose(a, b) for a, b in zip(x, y))
    for p, q in zip(params, y):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [{"betas": (0.0, 0.999)}, {"warmup_steps": 2.5}, {"r": -1.0},
                                 {"weight_lr_power": float("nan")}])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        optimlab.ScheduleFreeAdamW(make_params(), **bad)


def test_sgd_momentum_must_be_positive():
    with pytest.raises(ValueError, match="momentum"):
        optimlab.ScheduleFreeSGD(make_params(), momentum=0.0)


def test_batchnorm_statistics_are_recomputed_at_x():
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
    opt = optimlab.ScheduleFreeAdamW(model.parameters(), lr=0.05)
    data = [torch.randn(32, 4) for _ in range(8)]
    model.train()
    for step in range(30):
        model(data[step % 8]).square().mean().backward()
        opt.step()
        opt.zero_grad()
    count = recompute_batchnorm_statistics(model, opt, data)
    assert count == 8 and not model.training and not opt.training
    bn = model[1]
    with torch.no_grad():
        hidden = [model[0](batch) for batch in data]  # the BatchNorm's inputs, at x
    torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in hidden]).mean(0))
    assert bn.momentum == 0.1  # the layer's own momentum is restored for later training
