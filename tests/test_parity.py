"""Fidelity: every optimizer, every hyperparameter, every execution path, against an independent reference.

* torch.optim where torch has the optimizer: parameters and state agree to float64 round-off after
  100 updates.
* the papers' pseudo-code (tests/references.py) for Lion, LAMB and Adam without bias correction.
* and each hyperparameter is shown to change the result, on every path, so none is silently ignored.
"""

from __future__ import annotations

import pytest
import torch

import optimlab
from cases import OPTIMLAB_ONLY, backward, make_params, paths, torch_reference, train, variations
import references

STEPS = 100


@pytest.fixture(autouse=True)
def _float64(float64_default):
    """Every parity test runs with float64 as the default dtype (see conftest.py)."""


def torch_cases():
    for name in optimlab.available():
        if torch_reference(name) is None:
            continue
        for label, hp, _ in variations(name):
            if OPTIMLAB_ONLY & set(hp):
                continue  # no torch counterpart: see test_matches_paper
            for path in paths(name):
                yield pytest.param(name, hp, path, id=f"{name}-{label}-{path}")


@pytest.mark.parametrize("name,hp,path", list(torch_cases()))
def test_matches_torch(name, hp, path):
    ours = dict(hp)
    if name == "adafactor":
        ours["matrix_view"] = "last_two"  # torch factors the last two dimensions of a 4-D tensor
    params, opt = train(lambda ps: optimlab.create(name, ps, path=path, **ours), STEPS)
    ref_params, ref_opt = train(lambda ps: torch_reference(name)(ps, **hp), STEPS)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        for key, theirs in ref_opt.state[q].items():
            # optimlab keeps scalar state as a Python float
            mine = torch.as_tensor(opt.state[p][key], dtype=theirs.dtype)
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12, msg=key)


PAPER = {
    "lion": (references.lion_step, {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}),
    "lamb": (references.lamb_step, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0}),
}


def paper_cases():
    for name, (step, defaults) in PAPER.items():
        for label, hp, _ in variations(name):
            if "maximize" in hp:
                continue  # not in the papers; covered by test_maximize_is_descent_on_negated_loss
            for path in paths(name):
                yield pytest.param(name, step, {**defaults, **hp}, hp, path, id=f"{name}-{label}-{path}")
    for path in paths("adam"):
        yield pytest.param("adam", references.adam_without_bias_correction_step,
                           {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1},
                           {"bias_correction": False, "weight_decay": 0.1}, path,
                           id=f"adam-no-bias-correction-{path}")


@pytest.mark.parametrize("name,reference,ref_hp,hp,path", list(paper_cases()))
def test_matches_paper(name, reference, ref_hp, hp, path):
    params, _ = train(lambda ps: optimlab.create(name, ps, path=path, **hp), STEPS)
    # The reference follows its own trajectory, with gradients of the same loss at its own points.
    ref = [p.detach() for p in make_params()]
    states = [{} for _ in ref]
    for step in range(STEPS):
        leaves = [p.clone().requires_grad_() for p in ref]
        backward(leaves, step)
        for i, p in enumerate(leaves):
            θ, g = p.detach().flatten().tolist(), p.grad.flatten().tolist()
            known = reference.__code__.co_varnames
            reference(θ, g, states[i], **{k: v for k, v in ref_hp.items() if k in known})
            ref[i] = torch.tensor(θ, dtype=torch.float64).reshape(p.shape)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-11)


def flag_cases():
    for name in optimlab.available():
        for label, hp, base in variations(name)[1:]:
            for path in paths(name):
                yield pytest.param(name, hp, base, path, id=f"{name}-{label}-{path}")


@pytest.mark.parametrize("name,hp,base,path", list(flag_cases()))
def test_every_hyperparameter_changes_the_result(name, hp, base, path):
    changed, _ = train(lambda ps: optimlab.create(name, ps, path=path, **hp), 30)
    baseline, _ = train(lambda ps: optimlab.create(name, ps, path=path, **base), 30)
    difference = max((p - q).abs().max().item() for p, q in zip(changed, baseline))
    assert difference > 1e-8, f"{name}: {hp} left the result unchanged on the {path} path"


@pytest.mark.parametrize("name", optimlab.available())
def test_maximize_is_descent_on_negated_loss(name):
    """maximize=True on -loss must equal plain descent on loss, for every optimizer (not only torch's)."""
    params = make_params()
    mirror = make_params()
    opt = optimlab.create(name, params)
    opt_max = optimlab.create(name, mirror, maximize=True)
    for step in range(20):
        backward(params, step)
        for p, q in zip(params, mirror):
            q.grad = -p.grad.clone()  # the gradient of −loss at the same point
        opt.step()
        opt_max.step()
    for p, q in zip(params, mirror):
        assert torch.equal(p, q)
