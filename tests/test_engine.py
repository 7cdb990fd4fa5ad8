"""The engine's own promises: tracing, the fused plan, fallbacks, per-parameter steps, determinism."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import optimlab
from cases import backward, make_params, train
from optimlab.engine import cgen, native, paths
from optimlab.engine.caches import BoundedCache
from optimlab.engine.graph import TraceError, trace
from optimlab.engine.rule import rule


def test_a_rule_branching_on_a_dynamic_value_is_refused_with_advice():
    @rule(state={"m": "m"})
    def bad(h, θ, g, m):
        if h.lr:  # a float: dynamic, so the traced kernel could not branch on it
            θ = θ - g
        return θ, m

    with pytest.raises(TraceError, match="cannot branch on the dynamic value 'lr'.*flag"):
        trace(bad, SimpleNamespace(lr=0.1), ["m"])


def test_an_unsupported_torch_function_is_refused():
    @rule()
    def bad(h, θ, g):
        return (θ - torch.exp(g),)

    with pytest.raises(TraceError, match="torch.exp is not supported"):
        trace(bad, SimpleNamespace(), [])


def test_equal_subexpressions_are_computed_once():
    @rule()
    def twice(h, θ, g):
        return (θ - (g * h.lr) - (g * h.lr),)

    graph = trace(twice, SimpleNamespace(lr=0.1), [])
    assert sum(n.op == "mul" for n in graph.nodes) == 1


def test_lamb_takes_two_passes_and_reloads_the_moments_it_wrote():
    spec = optimlab.spec("lamb")
    h = SimpleNamespace(**vars(spec.hyper()), bc1=0.1, bc2=0.001)
    graph = paths.graph_of(spec.rule, h)
    plan = cgen.plan(graph)
    assert plan.passes == 2
    assert plan.write_pass == {"m": 0, "v": 0, "θ": 1}  # 24 + 16 bytes per parameter, not 28 + 28
    second_pass_nodes, loads = cgen._pass_nodes(graph, plan.stage, plan.write_pass, 1)
    assert sorted(loads.values()) == ["m", "v", "θ"]  # m and v are read back, g is not needed again


def test_adam_is_one_pass_over_memory():
    spec = optimlab.spec("adamw")
    h = SimpleNamespace(**vars(spec.hyper()), bc1=0.1, bc2=0.001)
    plan = cgen.plan(paths.graph_of(spec.rule, h))
    assert plan.passes == 1 and plan.write_pass == {"θ": 0, "m": 0, "v": 0}


def test_without_a_compiler_auto_falls_back_to_foreach_and_fused_says_why(monkeypatch):
    def missing():
        raise native.CompilerUnavailable("no C compiler found (set OPTIMLAB_CC)")

    monkeypatch.setattr(native, "compiler", missing)
    monkeypatch.setattr(native, "_machine_key", missing)
    monkeypatch.setattr(paths, "_kernels", BoundedCache(8))
    paths._warned.clear()
    with pytest.warns(RuntimeWarning, match="fused path unavailable, using foreach"):
        params, _ = train(lambda ps: optimlab.AdamW(ps), steps=5)
    reference, _ = train(lambda ps: optimlab.AdamW(ps, path="foreach"), steps=5)
    assert all(torch.equal(p, q) for p, q in zip(params, reference))
    with pytest.raises(native.CompilerUnavailable, match="OPTIMLAB_CC"):
        train(lambda ps: optimlab.AdamW(ps, path="fused"), steps=1)


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_parameters_with_different_step_counts_match_torch(path, float64_default):
    """A parameter that skips updates keeps its own step count (and bias correction), as in torch."""
    def run(make):
        params = make_params()
        opt = make(params)
        for step in range(30):
            backward(params, step)
            if step % 3:
                params[1].grad = None  # this one is updated every third step only
            opt.step()
        return params, opt

    mine, opt = run(lambda ps: optimlab.NAdam(ps, path=path))
    theirs, ref = run(lambda ps: torch.optim.NAdam(ps))
    assert opt.state[mine[1]]["step"] == 10 and opt.state[mine[0]]["step"] == 30
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_strided_parameter_takes_the_plain_path_and_matches_torch(float64_default):
    def run(make):
        weight = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)).t().requires_grad_()  # a view
        opt = make([weight])
        for step in range(20):
            weight.grad = None
            (weight.sin() * torch.arange(20.0).reshape(4, 5)).sum().backward()
            opt.step()
        return weight

    assert not run(lambda ps: torch.optim.Adam(ps)).is_contiguous()
    torch.testing.assert_close(run(lambda ps: optimlab.Adam(ps)), run(lambda ps: torch.optim.Adam(ps)),
                               rtol=1e-10, atol=1e-12)


def test_fused_reductions_do_not_depend_on_the_thread_count():
    big = [(700, 300), (50_000,), (3,)]  # above the size at which the kernel goes parallel

    def run(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return train(lambda ps: optimlab.LAMB(ps, path="fused", weight_decay=0.1), steps=5,
                         dtype=torch.float32, shapes=big)[0]
        finally:
            torch.set_num_threads(previous)

    assert all(torch.equal(p, q) for p, q in zip(run(1), run(2)))


def test_param_groups_with_different_flags_get_their_own_kernels(float64_default):
    def run(make):
        params = make_params()
        opt = make([{"params": params[:2], "amsgrad": True, "weight_decay": 0.1}, {"params": params[2:]}])
        for step in range(40):
            backward(params, step)
            opt.step()
        return params

    mine = run(lambda groups: optimlab.Adam(groups, path="fused"))
    theirs = run(lambda groups: torch.optim.Adam(groups))
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_tensor_lr_and_a_param_group_added_mid_run(float64_default):
    def run(make):
        params = make_params()
        opt = make(params[:2])
        for step in range(20):
            backward(params, step)
            if step == 10:
                opt.add_param_group({"params": params[2:], "lr": 0.01})
            opt.step()
        return params

    mine = run(lambda ps: optimlab.AdamW(ps, lr=torch.tensor(0.02)))
    theirs = run(lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(0.02)))
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_adafactor_treats_a_conv_weight_like_the_same_weight_flattened():
    """A bug shipped elsewhere (docs/fidelity.md): a 4-D weight must get the update of the same weights
    as a (out, in·kh·kw) matrix."""
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 3, 3, 3, generator=g).requires_grad_()
    flat = conv.detach().reshape(8, 27).clone().requires_grad_()
    grads = [torch.randn(8, 3, 3, 3, generator=g) for _ in range(10)]

    def run(param, **hp):
        opt = optimlab.Adafactor([param], lr=0.05, **hp)
        for grad in grads:
            param.grad = grad.reshape(param.shape).clone()
            opt.step()
        return param.detach().reshape(8, 27)

    assert torch.equal(run(conv), run(flat))
    assert not torch.allclose(run(conv.detach().clone().requires_grad_(), matrix_view="last_two"), run(flat))


def test_optimizers_pickle_and_keep_their_path():
    import pickle

    opt = optimlab.Lion(make_params(), path="foreach")
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.path == "foreach" and clone.param_groups[0]["betas"] == (0.9, 0.99)


def test_a_torch_checkpoint_with_tensor_steps_loads_and_continues_as_torch(float64_default):
    """torch keeps state["step"] as a tensor; optimlab reads it with float(), so torch's state_dict loads."""
    params, torch_opt = train(lambda ps: torch.optim.AdamW(ps, weight_decay=0.1), steps=10)
    mine = [p.detach().clone().requires_grad_() for p in params]
    opt = optimlab.AdamW(mine, weight_decay=0.1)
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # as from a file: nothing shared with torch's
    for step in range(10, 20):
        backward(params, step)
        torch_opt.step()
        backward(mine, step)
        opt.step()
    for p, q in zip(mine, params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert opt.state[mine[0]]["step"] == 20.0
