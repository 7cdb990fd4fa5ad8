"""A group's remembered step (engine/plan.py): the same bits as the long way, and the long way again
whenever something the plan depends on changed between steps.

Each test runs two optimizers on equal parameters: one as a user has it (steps after the first take the
plan where it applies), one whose plans are dropped before every step (every step the long way, with
every check made afresh). Whatever is done to one between steps is done to the other; their parameters
and states must stay bit-identical, or both must raise the same error.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optimlab
from optimlab.engine.boundary import ParameterMismatch

SHAPES = [(5, 3), (7,), (2, 3, 4), (1,)]
STEPS = 12


def make(name: str, dtype=torch.float32, path="fused", **hp):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    return params, optimlab.create(name, params, path=path, **hp)


def backward(params, t: int):
    for j, p in enumerate(params):
        p.grad = torch.sin(3 * p.detach() + t) + 0.01 * (j + 1)


def long_way(opt):
    """Drop the optimizer's plans, so its next step takes the long way."""
    opt.__dict__["_plans"] = {}


def taken(opt) -> int:
    return sum(plan.taken for plan in opt.__dict__.get("_plans", {}).values() if plan is not None)


def assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for p, q in zip(pa, pb):
        assert torch.equal(p.detach(), q.detach())
        sa, sb = oa.state[p], ob.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            x, y = sa[key], sb[key]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key


def run_twins(name: str, perturb=None, at: int = 5, steps: int = STEPS, path="fused", **hp):
    """Both optimizers `steps` steps, `perturb(params, opt)` applied to each before step `at`."""
    twins = [make(name, path=path, **hp), make(name, path=path, **hp)]
    for t in range(steps):
        for k, (params, opt) in enumerate(twins):
            if perturb is not None and t == at:
                perturb(params, opt)
            if k == 1:
                long_way(opt)
            for group in opt.param_groups:
                group["lr"] = 1e-2 / (1 + t)  # a schedule: numbers change, the plan stays
            backward(params, t)
            opt.step()
    assert_same(*twins)
    return twins


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "nadam", "radam", "adopt", "lion", "rmsprop",
                                  "adagrad", "sophia", "schedulefree_adamw", "lars", "lamb"])
def test_plan_gives_the_long_ways_bits(name):
    """Per-step static scalars (ADOPT's first step, RAdam's rectification turning on at t = 6) and carried
    scalars (NAdam's μ product) included: the plan is for one step count, and one that turns a branch
    steps the long way and leaves a new plan."""
    hp = {"momentum": 0.9} if name == "sgd" else {}
    (_, planned), _ = run_twins(name, **hp)
    if name in ("lars", "lamb"):  # per-tensor norms: the fused kernel takes two passes (see plan.py)
        return
    assert taken(planned) >= STEPS // 2  # the plan ran (its count restarts where a branch turned)


@pytest.mark.parametrize("path", ["foreach", "triton"])
@pytest.mark.parametrize("name", ["adamw", "nadam", "radam", "adopt", "lamb"])
def test_plan_gives_the_long_ways_bits_on_the_other_paths(name, path):
    """Triton's kernels run in its interpreter here (TRITON_INTERPRET=1, CPU tensors)."""
    (_, planned), _ = run_twins(name, path=path)
    assert taken(planned) >= STEPS // 2


def test_lars_and_lamb_take_the_plan_too():
    for name in ("lars", "lamb"):
        params, opt = make(name)
        for t in range(4):
            backward(params, t)
            opt.step()
        assert taken(opt) == 3


def replace_state(shape):
    def perturb(params, opt):
        opt.state[params[0]]["exp_avg"] = torch.zeros(shape)
    return perturb


def test_a_replaced_state_is_checked_again():
    run_twins("adamw", replace_state((5, 3)))  # the right shape: taken as the new state
    kept_alive = []

    def replace_keeping_the_old(params, opt):
        state = opt.state[params[0]]
        kept_alive.append(state["exp_avg"])  # alive and unchanged in memory: only its identity tells
        state["exp_avg"] = state["exp_avg"].clone()

    run_twins("adamw", replace_keeping_the_old)
    with pytest.raises(ParameterMismatch, match="state 'exp_avg' has shape"):
        run_twins("adamw", replace_state((4,)))


def test_a_state_swapped_under_the_same_object_is_checked_again():
    """`.data = …` keeps the object and moves its memory: the kernel must never write through the old
    pointer, nor past the end of a smaller tensor."""
    def same_size(params, opt):
        v = opt.state[params[2]]["exp_avg_sq"]
        v.data = v.data.clone()

    def smaller(params, opt):
        v = opt.state[params[2]]["exp_avg_sq"]
        v.data = torch.zeros(3)

    run_twins("adamw", same_size)
    with pytest.raises(ParameterMismatch, match="state 'exp_avg_sq' has shape"):
        run_twins("adamw", smaller)


def test_a_parameter_moved_in_place_is_stepped_where_it_now_is():
    def clone(params, opt):
        params[1].data = params[1].data.clone()

    run_twins("adamw", clone)


def test_model_to_float64_moves_the_state_along():
    def to64(params, opt):
        for p in params:
            p.data = p.data.double()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "optimizer state follows its parameter": expected
        (params, opt), _ = run_twins("adamw", to64)
    assert all(opt.state[p]["exp_avg"].dtype == torch.float64 for p in params)


def _float64_gradient(params, opt):
    params[0].grad.data = params[0].grad.double()  # .data bypasses autograd's own check


def _short_gradient(params, opt):
    params[0].grad.data = torch.zeros(4)


def _state_viewed_smaller(params, opt):
    v = opt.state[params[0]]["exp_avg_sq"]
    v.data = v.data.view(-1)[:3]  # the same memory: only the shape tells


def _nan_block_scales(params, opt):
    state = opt.state[params[0]]
    state["exp_avg_absmax"] = torch.full_like(state["exp_avg_absmax"], float("nan"))


def _codes_viewed_smaller(params, opt):
    codes = opt.state[params[0]]["exp_avg_codes"]
    codes.data = codes.data.view(-1)[:3]


def _parameter_viewed_as_half(params, opt):
    params[0].data = params[0].data.view(torch.float16)  # the same memory, another dtype and shape


FAULTS = {_float64_gradient: "parameter 0 .*the gradient is",
          _short_gradient: "parameter 0 .*the gradient is",
          _state_viewed_smaller: "state 'exp_avg_sq' has shape",
          _parameter_viewed_as_half: "the gradient is",
          _nan_block_scales: "'exp_avg_absmax' holds NaN",
          _codes_viewed_smaller: "'exp_avg_codes' is \\(3,\\)"}


@pytest.mark.parametrize("planned", [True, False])
@pytest.mark.parametrize("fault", list(FAULTS), ids=lambda f: f.__name__.strip("_"))
def test_what_does_not_fit_is_refused_after_planned_steps(fault, planned):
    coded = fault in (_nan_block_scales, _codes_viewed_smaller)
    params, opt = make("adamw8bit", min_8bit_size=0) if coded else make("adamw")
    for t in range(3):
        backward(params, t)
        opt.step()
    assert taken(opt) == 2
    before = [p.detach().clone() for p in params[1:]]
    backward(params, 3)
    fault(params, opt)
    if not planned:
        long_way(opt)
    with pytest.raises(ParameterMismatch, match=FAULTS[fault]):
        opt.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(params[1:], before))  # nothing moved


def test_strided_and_missing_gradients():
    twins = [make("adamw"), make("adamw")]
    for t in range(8):
        for k, (params, opt) in enumerate(twins):
            if k == 1:
                long_way(opt)
            backward(params, t)
            if t >= 3:  # a transposed gradient: the same shape, not contiguous
                params[0].grad = params[0].grad.t().contiguous().t()
            if t == 4:
                params[3].grad = None  # no gradient: this parameter does not move, nor count a step
            opt.step()
    assert_same(*twins)


def test_deleted_state_edited_step_counts_and_loaded_checkpoints():
    def delete(params, opt):
        del opt.state[params[1]]

    def edit_step(params, opt):
        opt.state[params[2]]["step"] = 2.0

    run_twins("adamw", delete)
    run_twins("adamw", edit_step)

    def load(params, opt):
        fresh_params, fresh = make("adamw")
        fresh.load_state_dict(opt.state_dict())
        opt.load_state_dict(fresh.state_dict())

    run_twins("adamw", load)


def test_hyperparameters_that_change_the_kernel_and_a_new_path():
    def decay(params, opt):
        opt.param_groups[0]["weight_decay"] = 0.0  # the flag that skips 0·θ turns off

    def amsgrad(params, opt):
        opt.param_groups[0]["amsgrad"] = True  # a new state, max_exp_avg_sq

    def foreach(params, opt):
        opt.path = "foreach"

    run_twins("adamw", decay)
    (params, opt), _ = run_twins("adamw", amsgrad)
    assert "max_exp_avg_sq" in opt.state[params[0]]
    (params, opt), _ = run_twins("adamw", foreach)
    assert [call.path for call in opt.__dict__["_plans"][id(opt.param_groups[0])].calls] == ["foreach"]


@pytest.mark.parametrize("path", ["fused", "triton"])
@pytest.mark.parametrize("min_8bit_size", [0, 12])
def test_8bit_states_are_planned_too(path, min_8bit_size):
    """Coded states read and written by the kernel itself; with min_8bit_size=12 the two larger tensors
    are coded and the two smaller keep fp32 state: two calls, one plan."""
    (params, planned), _ = run_twins("adamw8bit", path=path, min_8bit_size=min_8bit_size)
    assert taken(planned) >= STEPS // 2
    coded = ["exp_avg_codes" in planned.state[p] for p in params]
    assert coded == [p.numel() >= min_8bit_size for p in params]


def test_8bit_coding_changed_between_steps():
    def code_all(params, opt):
        opt.param_groups[0]["min_8bit_size"] = 0  # the small tensors' states are coded at the next step

    (params, opt), _ = run_twins("adamw8bit", code_all, min_8bit_size=12)
    assert all("exp_avg_codes" in opt.state[p] for p in params)


@pytest.mark.parametrize("path", ["fused", "foreach", "triton"])
def test_matrix_rules_and_mixed_dtypes_are_planned(path):
    """Adafactor keeps row and column statistics for matrices and a full v for vectors: one call each."""
    (_, planned), _ = run_twins("adafactor", path=path)
    assert taken(planned) >= STEPS // 2
    twins = []
    for _ in range(2):
        g = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)),
                  torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))]
        twins.append((params, optimlab.create("adamw", params, path=path)))
    for t in range(6):
        for k, (params, opt) in enumerate(twins):
            if k == 1:
                long_way(opt)
            backward(params, t)
            opt.step()
    assert_same(*twins)
    assert taken(twins[0][1]) == 5


def test_a_state_a_parameter_did_not_keep_is_seen():
    """A full `variance` added by hand to a matrix's Adafactor state (which keeps row and column ones):
    the long way takes it as the state is now, and so must the planned optimizer."""
    def add_variance(params, opt):
        opt.state[params[0]]["variance"] = torch.ones(params[0].shape)

    run_twins("adafactor", add_variance)


def test_no_plan_with_rounding_options():
    for hp in ({"stochastic_rounding": True}, {"kahan_summation": True}):
        params, opt = make("adamw", **hp)
        for t in range(3):
            backward(params, t)
            opt.step()
        assert taken(opt) == 0, hp


def test_pickled_and_copied_optimizers_leave_their_plans_behind():
    import copy
    import pickle

    params, opt = make("adamw")
    for t in range(3):
        backward(params, t)
        opt.step()
    assert taken(opt) == 2
    clone = copy.deepcopy(opt)
    assert not clone.__dict__.get("_plans")
    pickle.dumps(opt.state_dict())


# --- random sequences of steps and changes, each done to both optimizers -----------------------------

def _replace_state(params, opt, j):
    d = opt.state.get(params[j])
    if d and "exp_avg" in d:
        d["exp_avg"] = d["exp_avg"].clone()


def _swap_state_memory(params, opt, j):
    d = opt.state.get(params[j])
    if d and "exp_avg_sq" in d:
        d["exp_avg_sq"].data = d["exp_avg_sq"].data.clone()


def _move_parameter(params, opt, j):
    params[j].data = params[j].data.clone()


def _delete_state(params, opt, j):
    opt.state.pop(params[j], None)


def _reload(params, opt, j):
    opt.load_state_dict(opt.state_dict())


def _toggle_decay(params, opt, j):
    group = opt.param_groups[0]
    group["weight_decay"] = 0.0 if group["weight_decay"] else 0.05


def _toggle_path(params, opt, j):
    opt.path = "foreach" if opt.path == "fused" else "fused"


CHANGES = [_replace_state, _swap_state_memory, _move_parameter, _delete_state, _reload, _toggle_decay,
           _toggle_path]


RANDOM = {"adamw": {}, "nadam": {}, "radam": {}, "adopt": {}, "adamw8bit": {"min_8bit_size": 12},
          "adafactor": {}}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(RANDOM)),
       st.lists(st.tuples(st.sampled_from([None, *range(len(CHANGES))]), st.integers(0, len(SHAPES) - 1),
                          st.sampled_from(["grad", "no grad", "strided grad"])), min_size=2, max_size=10))
def test_random_sequences_of_changes_between_steps(name, actions):
    """Each action: maybe a change, then a step (a parameter without a gradient, or with a strided one)."""
    twins = [make(name, weight_decay=0.05, **RANDOM[name]), make(name, weight_decay=0.05, **RANDOM[name])]
    for t, (change, j, grad) in enumerate(actions):
        for k, (params, opt) in enumerate(twins):
            if change is not None:
                CHANGES[change](params, opt, j)
            backward(params, t)
            if grad == "no grad":
                params[j].grad = None
            elif grad == "strided grad" and params[j].dim() == 2:
                params[j].grad = params[j].grad.t().contiguous().t()
            if k == 1:
                long_way(opt)
            opt.step()
        assert_same(*twins)


def test_a_plan_keeps_no_state_alive():
    """`optimizer.state.clear()` frees the state even though the group has a plan; the next step makes
    new state the long way, as a fresh optimizer would."""
    import gc
    import weakref

    params, opt = make("adamw")
    for t in range(3):
        backward(params, t)
        opt.step()
    assert taken(opt) == 2
    refs = [weakref.ref(v) for d in opt.state.values() for v in d.values() if isinstance(v, torch.Tensor)]
    opt.state.clear()
    gc.collect()
    assert refs and all(r() is None for r in refs)
    backward(params, 3)
    opt.step()
    assert all(opt.state[p]["step"] == 1.0 for p in params)


def test_a_removed_group_takes_its_plan_along():
    params, opt = make("adamw")
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))]})
    extra = opt.param_groups[1]["params"]
    for t in range(3):
        backward(params + extra, t)
        opt.step()
    assert len(opt.__dict__["_plans"]) == 2
    del opt.param_groups[1]
    backward(params, 3)
    opt.step()
    assert list(opt.__dict__["_plans"]) == [id(opt.param_groups[0])]


def test_a_plan_that_cannot_be_made_is_a_warning_after_the_step(monkeypatch):
    """The step has happened: raising then would invite the caller to take it twice."""
    from optimlab.engine import plan

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    params, opt = make("adamw")
    monkeypatch.setattr(plan.Plan, "make", broken)
    before = [p.detach().clone() for p in params]
    backward(params, 0)
    with pytest.warns(plan.PlanWarning, match="could not plan its next step .*boom"):
        opt.step()
    assert all(not torch.equal(p.detach(), q) for p, q in zip(params, before))  # the step was taken


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "adafactor", "lion", "sgd"])
def test_a_training_loop_with_a_scheduler_and_clipping(name):
    """A model, autograd's gradients (new tensors each step), torch's LR scheduler and gradient clipping:
    the planned optimizer and one that takes the long way every step end bit-identical."""
    runs = []
    for long in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64), torch.nn.GELU(),
                                    torch.nn.Linear(64, 4))
        hp = {"min_8bit_size": 256} if name == "adamw8bit" else {"momentum": 0.9} if name == "sgd" else {}
        opt = optimlab.create(name, model.parameters(), lr=1e-2, **hp)
        schedule = torch.optim.lr_scheduler.OneCycleLR(  # and β₁ or momentum, where the rule has one
            opt, max_lr=1e-2, total_steps=40, cycle_momentum=name != "adafactor")
        x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
        for _ in range(40):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if long:
                long_way(opt)
            opt.step()
            schedule.step()
        runs.append((list(model.parameters()), opt))
    assert_same(*runs)
    assert taken(runs[0][1]) >= 30
