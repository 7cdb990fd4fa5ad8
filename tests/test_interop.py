"""optimlab meets torch's interfaces: torch's keyword arguments, tensor and numpy hyperparameters, checkpoints
both ways with torch.optim, complex parameters, sparse gradients, torch.compile, numerics at the extremes.

The reference is always torch.optim itself, run side by side in float64.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from cases import backward, make_params, paths, train

import optimlab

# The optimizers torch.optim has too, with a configuration that keeps every state they can keep.
SHARED = {
    "sgd": [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            {"momentum": 0.9, "dampening": 0.3}],
    "adagrad": [{}, {"lr_decay": 0.05, "initial_accumulator_value": 0.3, "weight_decay": 0.1}],
    "rmsprop": [{}, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}],
    "adam": [{}, {"amsgrad": True, "weight_decay": 0.1}],
    "adamw": [{}, {"amsgrad": True}],
    "nadam": [{}, {"weight_decay": 0.1, "decoupled_weight_decay": True, "momentum_decay": 0.01}],
    "radam": [{}, {"weight_decay": 0.1, "decoupled_weight_decay": True}],
}
TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
         "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam,
         "radam": torch.optim.RAdam}
CLOSE = dict(rtol=1e-10, atol=1e-12)


def shared_cases():
    for name, configs in SHARED.items():
        for i, hp in enumerate(configs):
            for path in paths(name):
                yield pytest.param(name, hp, path, id=f"{name}-{i}-{path}")


@pytest.fixture(autouse=True)
def _float64(float64_default):
    """torch keeps its scalar state in the default dtype: float64 for parity (see conftest.py)."""


# --- torch's keyword arguments -------------------------------------------------------------------


@pytest.mark.parametrize("name", optimlab.available())
def test_torch_implementation_keywords_map_onto_path(name):
    cls = optimlab.spec(name).cls
    elementwise = cls.rule.traceable
    assert cls(make_params(), foreach=False).path == "tensor"
    assert cls(make_params(), foreach=True).path == ("foreach" if elementwise else "tensor")
    assert cls(make_params(), foreach=None, fused=None).path == "auto"
    assert cls(make_params(), capturable=False, differentiable=False).path == "auto"
    assert cls(make_params(), foreach=True, path="auto").path == ("foreach" if elementwise else "tensor")
    if elementwise:
        assert cls(make_params(), fused=True).path == "fused"
    else:
        with pytest.raises(RuntimeError, match="fused=True is not supported"):
            cls(make_params(), fused=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        cls(make_params(), foreach=True, fused=True)
    with pytest.raises(ValueError, match="differentiable=True is not supported: .*in place"):
        cls(make_params(), differentiable=True)
    if elementwise:  # step counts on the device, the per-step scalars computed by the Triton kernels
        assert cls(make_params(), capturable=True).path == "triton"
        with pytest.raises(ValueError, match="capturable=True runs on the triton path"):
            cls(make_params(), capturable=True, foreach=True)
    else:
        with pytest.raises(ValueError, match="capturable=True is not supported: .*not elementwise"):
            cls(make_params(), capturable=True)
    with pytest.raises(ValueError, match="contradicts"):
        cls(make_params(), foreach=False, path="fused")


def test_the_keywords_show_in_the_signature_but_are_not_hyperparameters():
    import inspect

    signature = inspect.signature(optimlab.AdamW)
    assert {"foreach", "fused", "capturable", "differentiable"} <= set(signature.parameters)
    assert not {"foreach", "fused", "capturable", "differentiable"} & set(optimlab.spec("adamw").defaults)


def test_torch_code_with_foreach_and_fused_runs_unchanged_and_matches_torch():
    for keywords in ({"foreach": True}, {"foreach": False}, {"fused": True}):
        mine, _ = train(lambda ps, kw=keywords: optimlab.AdamW(ps, lr=0.01, **kw), steps=20)
        theirs, _ = train(lambda ps, kw=keywords: torch.optim.AdamW(ps, lr=0.01, **kw), steps=20)
        for p, q in zip(mine, theirs):
            torch.testing.assert_close(p, q, **CLOSE)


def test_tensor_lr_and_betas_with_foreach_are_refused_as_torch_refuses_them():
    with pytest.raises(ValueError, match="lr as a Tensor"):
        optimlab.Adam(make_params(), lr=torch.tensor(0.01), foreach=True)
    with pytest.raises(ValueError, match=r"betas\[0\] as a Tensor"):
        optimlab.Adam(make_params(), betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True)
    with pytest.raises(ValueError, match="both numbers or both tensors"):
        optimlab.Adam(make_params(), betas=(0.9, torch.tensor(0.99)))


# --- tensor and numpy hyperparameters ------------------------------------------------------------


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_tensor_lr_and_betas_match_torch(path):
    hp = lambda: dict(lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.95)), weight_decay=0.1)
    mine, _ = train(lambda ps: optimlab.Adam(ps, path=path, **hp()), steps=20)
    theirs, _ = train(lambda ps: torch.optim.Adam(ps, **hp()), steps=20)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, **CLOSE)


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_numpy_hyperparameters_match_plain_floats(path):
    hp = dict(lr=np.float64(0.01), betas=(np.float32(0.75), np.float64(0.95)), eps=np.float64(1e-6),
              weight_decay=np.float64(0.1), amsgrad=np.bool_(True))
    mine, _ = train(lambda ps: optimlab.Adam(ps, path=path, **hp), steps=20)
    plain = {k: v.item() if isinstance(v, np.generic) else tuple(b.item() for b in v) for k, v in hp.items()}
    theirs, _ = train(lambda ps: optimlab.Adam(ps, path=path, **plain), steps=20)
    for p, q in zip(mine, theirs):
        assert torch.equal(p, q)


def test_every_numeric_type_becomes_a_plain_python_number_in_the_namespace():
    opt = optimlab.Adam(make_params(), lr=np.float64(0.01), betas=(np.float32(0.9), np.float64(0.99)))
    group = opt.param_groups[0]
    assert [type(getattr(opt.hyper(group), k)) for k in ("lr", "beta1", "beta2")] == [float, float, float]
    group["betas"], group["eps"] = ((torch.tensor(0.9), torch.tensor(0.99, dtype=torch.float64)),
                                    torch.tensor(1e-6))
    group["amsgrad"], group["weight_decay"] = 1, np.int64(0)
    h = opt.hyper(group)
    assert [type(getattr(h, k)) for k in ("beta1", "beta2", "eps", "weight_decay", "amsgrad")] == [
        float, float, float, int, bool]


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_booleans_given_as_one_and_zero_in_a_param_group(path):
    def run(flag):
        params = make_params()
        opt = optimlab.Adam(params[:2], path=path, weight_decay=0.1)
        opt.add_param_group({"params": params[2:], "amsgrad": flag})
        for step in range(20):
            backward(params, step)
            opt.step()
        return params

    for p, q in zip(run(1), run(True)):
        assert torch.equal(p, q)
    assert optimlab.Adam(make_params(), amsgrad=1).param_groups[0]["amsgrad"] == 1
    with pytest.raises(ValueError, match="amsgrad must be True or False"):
        optimlab.Adam(make_params(), amsgrad=2)


def test_a_numpy_lr_from_a_schedule_compiles_nothing_after_the_first_step(monkeypatch):
    """LambdaLR computing with np.cos hands the optimizer np.float64: a dynamic number, never a new kernel
    (neither generated nor compiled: the same source would be found in the disk cache)."""
    from optimlab.engine import cgen, native

    generated = []
    generate = cgen.generate
    monkeypatch.setattr(cgen, "generate", lambda *a, **k: generated.append(1) or generate(*a, **k))
    params = make_params(torch.float32)
    opt = optimlab.AdamW(params, path="fused")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: np.cos(np.pi * s / 400))
    backward(params, 0)
    opt.step()
    schedule.step()
    compiled, kernels = native.compiles, len(generated)
    for step in range(1, 200):
        backward(params, step)
        opt.step()
        schedule.step()
    assert type(opt.param_groups[0]["lr"]) is np.float64
    assert (native.compiles, len(generated)) == (compiled, kernels)


# --- checkpoints both ways with torch.optim ------------------------------------------------------


@pytest.mark.parametrize("name,hp,path", list(shared_cases()))
def test_a_torch_checkpoint_loads_into_optimlab_and_continues_as_torch(name, hp, path):
    params, torch_opt = train(lambda ps: TORCH[name](ps, **hp), steps=5)
    saved = copy.deepcopy(torch_opt.state_dict())  # as from a file: nothing shared
    mine = [p.detach().clone().requires_grad_() for p in params]
    opt = optimlab.create(name, mine, path=path, **hp)
    opt.load_state_dict(saved)
    for step in range(5, 15):
        backward(params, step)
        torch_opt.step()
        backward(mine, step)
        opt.step()
    for p, q in zip(mine, params):
        torch.testing.assert_close(p, q, **CLOSE)
        for key, theirs in torch_opt.state[q].items():
            torch.testing.assert_close(torch.as_tensor(opt.state[p][key], dtype=theirs.dtype), theirs,
                                       **CLOSE)


@pytest.mark.parametrize("name,hp,path", list(shared_cases()))
def test_an_optimlab_checkpoint_loads_into_torch_and_continues_as_optimlab(name, hp, path):
    params, opt = train(lambda ps: optimlab.create(name, ps, path=path, **hp), steps=5)
    saved = copy.deepcopy(opt.state_dict())
    theirs = [p.detach().clone().requires_grad_() for p in params]
    torch_opt = TORCH[name](theirs, **hp)
    torch_opt.load_state_dict(saved)
    for step in range(5, 15):
        backward(params, step)
        opt.step()
        backward(theirs, step)
        torch_opt.step()
    for p, q in zip(params, theirs):
        torch.testing.assert_close(q, p, **CLOSE)
    for state in saved["state"].values():  # as torch keeps it; optimlab's own stays Python floats
        assert isinstance(state["step"], torch.Tensor) and state["step"].dim() == 0
    assert all(type(s["step"]) is float for s in opt.state.values())


def test_a_torch_nadam_checkpoint_with_a_tensor_mu_product_continues():
    params, torch_opt = train(lambda ps: torch.optim.NAdam(ps), steps=5)
    assert isinstance(torch_opt.state[params[0]]["mu_product"], torch.Tensor)
    mine = [p.detach().clone().requires_grad_() for p in params]
    opt = optimlab.NAdam(mine, path="fused")
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    assert type(opt.state[mine[0]]["mu_product"]) is float
    for step in range(5, 15):
        backward(params, step)
        torch_opt.step()
        backward(mine, step)
        opt.step()
    for p, q in zip(mine, params):
        torch.testing.assert_close(p, q, **CLOSE)


# --- complex parameters --------------------------------------------------------------------------


def complex_train(make, steps=30, dtype=torch.complex128):
    """Complex parameters and gradients that depend on them (a complex quadratic plus seeded noise)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in [(4, 3), (1,), (5,)]]
    opt = make(params)
    for step in range(steps):
        noise = torch.Generator().manual_seed(100 + step)
        for j, p in enumerate(params):
            p.grad = (j + 1) * p.detach() + torch.randn(p.shape, generator=noise, dtype=dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("name,hp,path", list(shared_cases()))
def test_complex_parameters_match_torch(name, hp, path):
    mine, opt = complex_train(lambda ps: optimlab.create(name, ps, path=path, **hp))
    theirs, torch_opt = complex_train(lambda ps: TORCH[name](ps, **hp))
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, **CLOSE)
        for key, value in torch_opt.state[q].items():
            if value.is_complex():  # state is complex as torch keeps it, so checkpoints stay interchangeable
                torch.testing.assert_close(opt.state[p][key], value, **CLOSE)


@pytest.mark.parametrize("name", [n for n in optimlab.available() if n not in SHARED])
def test_complex_parameters_are_refused_where_torch_has_no_rule_for_them(name):
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = optimlab.create(name, [p])
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        opt.step()


# --- sparse gradients ----------------------------------------------------------------------------


def sparse_train(make, steps=15):
    """An embedding table whose gradient touches a few rows per step, some twice (duplicate indices)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(10, 3, generator=g).requires_grad_()
    opt = make([table])
    for step in range(steps):
        rows = torch.randint(0, 10, (4,), generator=g)
        values = torch.randn(4, 3, generator=g)
        table.grad = torch.sparse_coo_tensor(rows[None], values, (10, 3))
        opt.step()
    return table, opt


SPARSE = [("sgd", {}), ("sgd", {"momentum": 0.9, "nesterov": True}),
          ("sgd", {"momentum": 0.9, "dampening": 0.3}),
          ("sgd", {"maximize": True, "momentum": 0.5}), ("adagrad", {}),
          ("adagrad", {"lr_decay": 0.05, "initial_accumulator_value": 0.3, "maximize": True}),
          ("adagrad", {"eps": 0.0, "lr": 0.5})]


@pytest.mark.parametrize("path", ["auto", "tensor"])
@pytest.mark.parametrize("name,hp", SPARSE)
def test_sparse_gradients_match_torch(name, hp, path):
    mine, opt = sparse_train(lambda ps: optimlab.create(name, ps, path=path, **hp))
    theirs, torch_opt = sparse_train(lambda ps: TORCH[name](ps, **hp))
    torch.testing.assert_close(mine, theirs, **CLOSE)
    for key, value in torch_opt.state[theirs].items():
        torch.testing.assert_close(torch.as_tensor(opt.state[mine][key]).double(), value.to_dense().double(),
                                   **CLOSE)


def test_sparse_adagrad_touches_only_the_rows_in_the_gradient():
    table = torch.randn(6, 2, requires_grad=True)
    before = table.detach().clone()
    opt = optimlab.Adagrad([table], eps=0.0)  # a dense step would compute 0/0 = NaN on untouched rows
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.ones(3, 2), (6, 2))
    opt.step()
    untouched = [0, 2, 3, 5]
    assert torch.equal(table[untouched], before[untouched])
    assert torch.equal(opt.state[table]["sum"][untouched], torch.zeros(4, 2))
    assert not torch.equal(table[[1, 4]], before[[1, 4]]) and table.isfinite().all()


def test_sparse_gradients_are_refused_clearly_elsewhere():
    def step(opt, table):
        table.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (3, 2))
        opt.step()

    table = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        step(optimlab.Adam([table]), table)
    with pytest.raises(RuntimeError, match="weight_decay is not compatible with sparse gradients"):
        step(optimlab.Adagrad([table], weight_decay=0.1), table)
    with pytest.raises(RuntimeError, match="per-tensor path"):
        step(optimlab.SGD([table], path="fused"), table)
    opt = optimlab.SGD([table])
    table.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (3, 2))
    table.grad.data = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 5), (3, 5))  # torch lets it
    with pytest.raises(RuntimeError, match=r"sparse gradient is \(3, 5\)"):
        opt.step()
    assert torch.equal(table, torch.zeros(3, 2))


# --- torch.compile -------------------------------------------------------------------------------


def test_compiled_model_with_an_eager_step_matches_the_eager_model():
    """The documented pattern: torch.compile the model, step the optimizer eagerly."""
    def run(compile_model):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        forward = torch.compile(model, backend="aot_eager") if compile_model else model
        opt = optimlab.AdamW(model.parameters(), lr=0.01)
        x = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for _ in range(10):
            opt.zero_grad()
            forward(x).pow(2).mean().backward()
            opt.step()
        return list(model.parameters())

    for p, q in zip(run(True), run(False)):
        torch.testing.assert_close(p, q, **CLOSE)


def test_a_compiled_step_runs_outside_dynamo_and_never_recompiles():
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    params = make_params()
    opt = optimlab.AdamW(params, lr=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    compiled = CompileCounter()
    step = torch.compile(opt.step, backend=compiled)
    frames = []
    for s in range(8):
        backward(params, s)
        step()
        schedule.step()
        frames.append(counters["frames"]["total"])
    assert frames[1:] == [frames[0]] * 7  # every lr was new; no frame was compiled again
    assert compiled.frame_count == 0  # the step itself is never traced: it runs eagerly
    twin, _ = train(lambda ps: optimlab.AdamW(ps, lr=0.01), steps=0)
    twin_opt = optimlab.AdamW(twin, lr=0.01)
    twin_schedule = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda s: 1 / (1 + s))
    for s in range(8):
        backward(twin, s)
        twin_opt.step()
        twin_schedule.step()
    for p, q in zip(params, twin):
        assert torch.equal(p, q)
    torch._dynamo.reset()


# --- numerics at the extremes --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_centered_rmsprop_with_a_huge_gradient_stays_finite_as_torch(path):
    def run(cls, **kw):
        p = torch.ones(5, requires_grad=True)
        opt = cls([p], centered=True, **kw)
        for scale in (1e30, 1.0, 1e30):
            p.grad = torch.full((5,), scale)
            opt.step()
        return p.detach()

    mine, theirs = run(optimlab.RMSprop, path=path), run(torch.optim.RMSprop)
    assert theirs.isfinite().all()
    torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("name,hp,path", list(shared_cases()))
def test_an_inf_parameter_without_weight_decay_stays_inf_as_torch(name, hp, path):
    hp = {k: v for k, v in hp.items() if k != "weight_decay"}

    def run(make):
        p = torch.tensor([math.inf, -math.inf, 1.0, 0.5], requires_grad=True)
        opt = make([p])
        for _ in range(3):
            p.grad = torch.tensor([0.5, -0.25, 1.0, 0.0])
            opt.step()
        return p.detach()

    mine = run(lambda ps: optimlab.create(name, ps, path=path, weight_decay=0.0, **hp))
    theirs = run(lambda ps: TORCH[name](ps, weight_decay=0.0, **hp))
    assert theirs[:2].isinf().all()
    torch.testing.assert_close(mine, theirs, **CLOSE)


def test_optimlab_diff_shows_guarded_weight_decay_as_written():
    """A zero weight decay is a different kernel, not a different rule: the diff shows the rule as written."""
    from optimlab.source import describe, diff

    assert diff("adam", "adam:weight_decay=0.1") == ""
    _, lines = describe("sgd")  # weight_decay=0 by default: its line is still shown, and the guard is not
    assert any(line.strip().startswith("g = g + h.weight_decay * θ") for line in lines)
    assert not any("h.decays" in line for line in lines)
