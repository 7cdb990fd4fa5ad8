"""Property-based tests (hypothesis): for every registered optimizer and every fast path, random shapes
(0-sized dimensions, single elements, scalars) and random valid hyperparameters drawn from the optimizer's
own signature give the same result as the per-tensor path, within a few ulps.

Bounded: a few examples per optimizer and path, no deadline (the first example of a flag combination
compiles a kernel).
"""

from __future__ import annotations

import pytest
import torch
from cases import NEEDS, paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optimlab

# Valid values per hyperparameter name: a new optimizer's new hyperparameter must be added here.
NUMBER = {"lr": (1e-4, 0.3), "weight_decay": (0.0, 0.2), "momentum": (0.0, 0.95), "dampening": (0.0, 0.9),
          "alpha": (0.5, 0.999), "lr_decay": (0.0, 0.1), "initial_accumulator_value": (0.0, 1.0),
          "momentum_decay": (0.0, 0.01), "beta2_decay": (-1.0, -0.5), "d": (1.0, 3.0),
          "trust_coefficient": (1e-4, 0.1), "r": (0.0, 2.0), "weight_lr_power": (0.0, 3.0),
          "gamma": (0.01, 1.0)}
BETA = st.floats(0.0, 0.999)
SPECIAL = {
    "betas": st.tuples(BETA, BETA),
    "eps": st.sampled_from([1e-10, 1e-8, 1e-6, 1e-3]),
    "matrix_view": st.sampled_from(["flatten", "last_two"]),
    ("adafactor", "eps"): st.tuples(st.none() | st.sampled_from([1e-30, 1e-3]), st.sampled_from([1e-3, 0.1])),
    ("schedulefree_adamw", "betas"): st.tuples(st.floats(0.05, 0.999), BETA),  # x = (y - (1-β₁)z)/β₁
    ("schedulefree_sgd", "momentum"): st.floats(0.05, 0.95),
    "clip_exponent": st.none() | st.floats(0.1, 0.5),
    "warmup_steps": st.integers(0, 3),
    "update_period": st.integers(1, 3),
    "estimator": st.just("hutchinson"),  # GNB needs logits from the model: test_sophia.py covers it
    "min_8bit_size": st.sampled_from([0, 4096]),  # 0: every state 8-bit (the paths agree to an ulp here)
}
# A few ulps of each dtype after the steps (see test_contracts.py for why not bit for bit).
ULPS = {torch.float32: 1e-5, torch.float64: 1e-12}
STEPS = 4


def hyperparameter(name: str, key: str, default):
    if (name, key) in SPECIAL:
        return SPECIAL[name, key]
    if key in SPECIAL:
        return SPECIAL[key]
    if isinstance(default, bool):
        return st.booleans()
    low, high = NUMBER[key]  # KeyError: add the new hyperparameter's valid range above
    return st.floats(low, high)


@st.composite
def hyperparameters(draw, name: str) -> dict:
    hp = {key: draw(hyperparameter(name, key, default))
          for key, default in optimlab.spec(name).defaults.items()}
    if hp.get("nesterov"):
        hp.update(NEEDS["nesterov"], dampening=0.0)  # torch's rule: Nesterov needs momentum and no dampening
    return hp


SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)  # () is a scalar parameter


def fast_cases():
    for name in optimlab.available():
        for path in paths(name):
            if path != "tensor":
                yield pytest.param(name, path, id=f"{name}-{path}")


def run(name, path, hp, shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
             for _ in range(STEPS)]
    opt = optimlab.create(name, params, path=path, **hp)
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("name,path", list(fast_cases()))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_fast_paths_agree_with_the_tensor_path(name, path, data):
    hp = data.draw(hyperparameters(name), label="hyperparameters")
    shapes = data.draw(st.lists(SHAPE, min_size=1, max_size=3), label="shapes")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    fast, fast_opt = run(name, path, hp, shapes, dtype, seed)
    reference, ref_opt = run(name, "tensor", hp, shapes, dtype, seed)
    tolerance = ULPS[dtype]
    for p, q in zip(fast, reference):
        assert p.shape == q.shape
        torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance, equal_nan=True)
        for key, value in ref_opt.state[q].items():
            mine = fast_opt.state[p][key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(mine, value, rtol=tolerance, atol=tolerance, equal_nan=True,
                                           msg=key)
            else:
                assert mine == value, key
