"""What every optimizer promises, checked on every registered optimizer and every path it has."""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from cases import backward, loss_fn, make_params, paths, snapshot, train

CASES = [pytest.param(name, path, id=f"{name}-{path}")
         for name in optimlab.available() for path in paths(name)]


def make(name, path, **hp):
    return lambda ps: optimlab.create(name, ps, path=path, **hp)


@pytest.mark.parametrize("name,path", CASES)
def test_state_dict_round_trip_continues_bit_identically(name, path):
    params, opt = train(make(name, path), steps=10)
    saved_params = [p.detach().clone() for p in params]
    saved = copy.deepcopy(opt.state_dict())
    for step in range(10, 20):
        backward(params, step)
        opt.step()
    resumed = [p.clone().requires_grad_() for p in saved_params]
    fresh = optimlab.create(name, resumed, path=path)
    fresh.load_state_dict(saved)
    for step in range(10, 20):
        backward(resumed, step)
        fresh.step()
    a, state_a = snapshot(params, opt)
    b, state_b = snapshot(resumed, fresh)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        for key, value in state_a[i].items():
            other = state_b[i][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


@pytest.mark.parametrize("name,path", CASES)
def test_parameters_without_grad_are_skipped_and_keep_no_state(name, path):
    params = make_params()
    frozen = params[2]
    before = frozen.detach().clone()
    opt = optimlab.create(name, params, path=path)
    for step in range(3):
        backward(params, step)
        frozen.grad = None
        opt.step()
    assert torch.equal(frozen, before)
    assert frozen not in opt.state
    assert all(p in opt.state for p in params if p is not frozen)


@pytest.mark.parametrize("name,path", CASES)
def test_zero_gradients_make_no_nan(name, path):
    params = make_params()
    opt = optimlab.create(name, params, path=path)
    for _ in range(5):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    tensors = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert all(torch.isfinite(v).all() for v in tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name,path", CASES)
def test_parameter_and_state_dtype_are_preserved(name, path, dtype):
    params, opt = train(make(name, path), steps=5, dtype=dtype)
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params)
    for p in params:
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor) and key != "step":
                assert value.dtype == dtype, key


@pytest.mark.parametrize("name,path", CASES)
def test_step_never_mutates_param_group_hyperparameters(name, path):
    params = make_params()
    opt = optimlab.create(name, [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], path=path)
    before = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    for step in range(5):
        backward(params, step)
        opt.step()
    after = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    assert after == before


@pytest.mark.parametrize("name,path", CASES)
def test_results_do_not_depend_on_parameter_order(name, path):
    forward, _ = train(make(name, path), steps=20)
    reversed_order, _ = train(lambda ps: optimlab.create(name, list(reversed(ps)), path=path), steps=20)
    assert all(torch.equal(p, q) for p, q in zip(forward, reversed_order))


@pytest.mark.parametrize("name,path", CASES)
def test_grad_scaler_with_inf_gradients_changes_nothing(name, path):
    params = make_params(torch.float32)
    opt = optimlab.create(name, params, path=path)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(2):  # one good step creates the state; the second has an inf gradient
        for p in params:
            p.grad = None
        scaler.scale(loss_fn(params, step).float()).backward()
        if step == 1:
            params[0].grad[0, 0] = float("inf")
            before = snapshot(params, opt)
        scaler.step(opt)
        scaler.update()
    after = snapshot(params, opt)
    assert all(torch.equal(x, y) for x, y in zip(before[0], after[0]))
    for i in before[1]:
        for key, value in before[1][i].items():
            other = after[1][i][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    assert scaler.get_scale() == 512.0  # the scaler saw the inf and backed off


@pytest.mark.parametrize("name,path", CASES)
def test_closure_is_evaluated_and_its_loss_returned(name, path):
    params = make_params()
    opt = optimlab.create(name, params, path=path)
    twin, _ = train(make(name, path), steps=1)
    calls = []

    def closure():
        calls.append(1)
        return backward(params, 0)

    loss = opt.step(closure)
    assert calls == [1]
    assert loss == pytest.approx(backward(make_params(), 0))
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


FAST = [pytest.param(n, p, id=f"{n}-{p}") for n in optimlab.available() for p in paths(n) if p != "tensor"]


# A few ulps of each dtype after 50 updates. Not bit for bit: torch's eager sqrt (MKL VML on x86 builds)
# is occasionally 1 ulp from the correctly rounded value the fused kernel computes, and norms are
# summed in a different order. A wrong formula misses these bounds by orders of magnitude.
ULPS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2**-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name,fast", FAST)
def test_fast_path_equals_per_tensor_path(name, fast, dtype):
    reference, ref_opt = train(make(name, "tensor"), steps=50, dtype=dtype)
    params, opt = train(make(name, fast), steps=50, dtype=dtype)
    tolerance = ULPS[dtype]
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.double(), q.double(), rtol=tolerance, atol=tolerance)
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value.double(), ref_opt.state[q][key].double(), rtol=tolerance,
                                           atol=tolerance, msg=key)


@pytest.mark.parametrize("name", [n for n in optimlab.available() if "fused" in paths(n)])
def test_changing_lr_every_step_never_recompiles(name):
    from optimlab.engine import native, paths as engine_paths

    params = make_params(torch.float32)
    opt = optimlab.create(name, params, path="fused")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    warmup = 10  # the first steps compile: one kernel per value of a per-step flag (RAdam's `rectified`)
    for step in range(warmup):
        backward(params, step)
        opt.step()
    compiled, kernels, graphs = native.compiles, len(engine_paths._kernels), len(engine_paths._graphs)
    lrs = []
    for step in range(warmup, 40):
        backward(params, step)
        opt.step()
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    counts = (native.compiles, len(engine_paths._kernels), len(engine_paths._graphs))
    assert counts == (compiled, kernels, graphs)
    assert len(set(lrs)) == len(lrs)  # the lr really changed every step
    # ...and the kernel used it: the same schedule on the per-tensor path gives the same result.
    twin = make_params(torch.float32)
    twin_opt = optimlab.create(name, twin, path="tensor")
    twin_schedule = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda step: 1 / (1 + step))
    for step in range(40):
        backward(twin, step)
        twin_opt.step()
        if step >= warmup:
            twin_schedule.step()
    for p, q in zip(params, twin):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
