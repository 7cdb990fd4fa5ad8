"""Fidelity of ADOPT, LARS, Sophia and schedule-free AdamW/SGD, on every path and every hyperparameter.

* ADOPT, LARS and Sophia against the float64 transcriptions in tests/frontier_references.py.
* Sophia-H end to end: on the shared loss, which is separable, the Hessian diagonal is known in closed
  form ((j + 1) − 9 sin 3θ for tensor j) and Hutchinson's u ⊙ Hu equals it exactly (u² = 1), so the
  reference gets the true ĥ, computed without autograd.
* Schedule-free against the official `schedulefree` package at random hyperparameters, in train mode
  (y, z and v) and after `eval()` (x), and after switching back.
* ADOPT against the authors' package (`torch-adopt`) at random hyperparameters, clipped and unclipped,
  with either weight decay, maximising or not.
"""

from __future__ import annotations

import math
import random
import warnings

import adopt as official_adopt
import pytest
import schedulefree
import torch

import optimlab
from cases import backward, make_params, paths, train, variations
import frontier_references as ref

STEPS = 100


@pytest.fixture(autouse=True)
def _float64(float64_default):
    """Parity runs with float64 as the default dtype (see conftest.py)."""


def run_reference(step, hp: dict, steps=STEPS, hessian=None) -> list[torch.Tensor]:
    """The reference's own trajectory, with the shared loss's gradients at its own points."""
    θs = [p.detach() for p in make_params()]
    states = [{} for _ in θs]
    args = step.__code__.co_varnames[:step.__code__.co_argcount]
    for t in range(steps):
        leaves = [p.clone().requires_grad_() for p in θs]
        backward(leaves, t)
        for j, p in enumerate(leaves):
            θ, g = p.detach().flatten().tolist(), p.grad.flatten().tolist()
            extra = {"ĥ": hessian(j, θ, t)} if hessian else {}
            step(θ, g, state=states[j], **extra, **{k: v for k, v in hp.items() if k in args})
            θs[j] = torch.tensor(θ, dtype=torch.float64).reshape(p.shape)
    return θs


PAPER = {
    "adopt": (ref.adopt_step, {"lr": 1e-3, "betas": (0.9, 0.9999), "eps": 1e-6, "weight_decay": 0.0,
                               "clip_exponent": 0.25, "decoupled_weight_decay": False}),
    "lars": (ref.lars_step, {"lr": 1.0, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 1e-3,
                             "layer_adaptation": True}),
}


def paper_cases():
    for name, (step, defaults) in PAPER.items():
        for label, hp, _ in variations(name):
            if "maximize" in hp:
                continue  # not in the papers; covered by test_maximize_is_descent_on_negated_loss
            for path in paths(name):
                yield pytest.param(name, step, {**defaults, **hp}, hp, path, id=f"{name}-{label}-{path}")


@pytest.mark.parametrize("name,step,ref_hp,hp,path", list(paper_cases()))
def test_matches_paper(name, step, ref_hp, hp, path):
    params, _ = train(lambda ps: optimlab.create(name, ps, path=path, **hp), STEPS)
    for p, q in zip(params, run_reference(step, ref_hp)):
        torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-11)


SOPHIA = {"lr": 1e-4, "betas": (0.965, 0.99), "gamma": 0.04, "eps": 1e-12, "weight_decay": 0.1,
          "update_period": 10, "estimator": "hutchinson"}


def sophia_cases():
    for label, hp, _ in variations("sophia"):
        if "maximize" in hp or "estimator" in hp:
            continue  # Hutchinson throughout; GNB is checked against B·ĝ² in test_sophia.py
        for path in paths("sophia"):
            yield pytest.param({**SOPHIA, **hp}, path, id=f"sophia-{label}-{path}")


@pytest.mark.parametrize("hp,path", list(sophia_cases()))
def test_sophia_hutchinson_matches_paper(hp, path):
    hp = {**hp, "lr": 10 * hp["lr"]}  # a larger lr, so that θ and with it the curvature moves
    params, opt = train(lambda ps: optimlab.create("sophia", ps, path=path, **hp), STEPS)

    def true_diagonal(j, θ, t):  # ∂²/∂θ² of ½(j+1)θ² + sin 3θ + noise·θ, at the refresh steps only
        return [(j + 1) - 9 * math.sin(3 * x) for x in θ] if t % hp["update_period"] == 0 else None

    for p, q in zip(params, run_reference(ref.sophia_step, hp, hessian=true_diagonal)):
        torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-11)
    assert any((opt.state[p]["hessian"] < 0).any() for p in params)  # a non-convex loss: h < 0 in places


def random_hyper(seed: int, sgd: bool) -> dict:
    rng = random.Random(seed)
    hp = {"weight_decay": rng.choice([0.0, rng.uniform(0, 0.3)]), "warmup_steps": rng.randrange(0, 40),
          "r": rng.choice([0.0, rng.uniform(0, 2)]), "weight_lr_power": rng.uniform(0, 3)}
    if sgd:
        return {**hp, "lr": rng.uniform(0.005, 0.05), "momentum": rng.uniform(0.5, 0.99)}
    return {**hp, "lr": rng.uniform(1e-3, 3e-2), "betas": (rng.uniform(0.5, 0.99), rng.uniform(0.9, 0.9999)),
            "eps": 10 ** rng.uniform(-10, -2)}


def sf_cases():
    for name in ("schedulefree_adamw", "schedulefree_sgd"):
        for seed in range(3):
            for path in paths(name):
                yield pytest.param(name, seed, path, id=f"{name}-seed{seed}-{path}")


@pytest.mark.parametrize("name,seed,path", list(sf_cases()))
def test_schedulefree_matches_official_package(name, seed, path):
    sgd = name == "schedulefree_sgd"
    hp = random_hyper(seed, sgd)
    official = schedulefree.SGDScheduleFree if sgd else schedulefree.AdamWScheduleFree
    ours = make_params()
    theirs = make_params()
    opt = optimlab.create(name, ours, path=path, **hp)
    ref_opt = official(theirs, foreach=False, **hp)
    ref_opt.train()  # the official optimizer starts in eval mode

    def run(steps, offset=0):
        for t in range(offset, offset + steps):
            backward(ours, t)
            backward(theirs, t)
            opt.step()
            ref_opt.step()

    def compare(keys):
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)
            for key in keys:
                torch.testing.assert_close(opt.state[p][key], ref_opt.state[q][key], rtol=1e-10, atol=1e-12)

    keys = ["z"] if sgd else ["z", "exp_avg_sq"]
    run(STEPS + 20)
    compare(keys)  # train mode: the parameters hold y
    opt.eval()
    ref_opt.eval()
    compare(keys)  # eval mode: x
    assert max((p - q).abs().max().item() for p, q in zip(ours, make_params())) > 1e-3  # it moved
    opt.train()
    ref_opt.train()
    run(20, offset=STEPS + 20)
    compare(keys)


def adopt_cases():
    for seed in range(4):
        for path in paths("adopt"):
            yield pytest.param(seed, path, id=f"adopt-seed{seed}-{path}")


@pytest.mark.parametrize("seed,path", list(adopt_cases()))
def test_adopt_matches_official_package(seed, path):
    """The authors' ADOPT takes the clip as a function of the step (step ** 0.25 by default, counted from
    0 at the step that only initialises v); optimlab's clip_exponent c means step ** c, None no clip."""
    rng = random.Random(seed)
    hp = {"lr": 10 ** rng.uniform(-4, -1), "betas": (rng.uniform(0.5, 0.99), rng.uniform(0.9, 0.99999)),
          "eps": 10 ** rng.uniform(-8, -3), "weight_decay": rng.choice([0.0, rng.uniform(0, 0.2)]),
          "maximize": seed % 2 == 1}
    exponent = [0.25, None, rng.uniform(0.1, 0.5), 0.25][seed]
    decoupled = seed >= 2
    ours, theirs = make_params(), make_params()
    opt = optimlab.create("adopt", ours, path=path, clip_exponent=exponent, decoupled_weight_decay=decoupled,
                          **hp)
    clip = None if exponent is None else (lambda step: step ** exponent)
    ref_opt = official_adopt.ADOPT(theirs, clip_lambda=clip, decouple=decoupled, foreach=False, **hp)
    for t in range(STEPS):
        backward(ours, t)
        backward(theirs, t)
        opt.step()
        with warnings.catch_warnings():  # the package calls torch functions torch now marks deprecated
            warnings.simplefilter("ignore")
            ref_opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], ref_opt.state[q][key], rtol=1e-10, atol=1e-12)
    assert max((p - q).abs().max().item() for p, q in zip(ours, make_params())) > 1e-4  # it moved


def test_lars_excludes_biases_and_norms_through_parameter_groups():
    from optimlab import param_groups

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    groups = param_groups.build(model, lr=0.5, weight_decay=1e-3, verbose=False,
                                no_decay_settings={"layer_adaptation": False})
    opt = optimlab.create("lars", groups)
    excluded = {id(p) for g in opt.param_groups if not g["layer_adaptation"] for p in g["params"]}
    biases_and_norms = {id(p) for n, p in model.named_parameters() if n.endswith("bias") or n[0] == "1"}
    assert excluded == biases_and_norms
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if not g["layer_adaptation"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(16, 6)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        w, g = before[n].flatten().tolist(), grads[n].flatten().tolist()
        adapted = not (n.endswith("bias") or n.startswith("1."))
        ref.lars_step(w, g, {}, lr=0.5, momentum=0.9, weight_decay=1e-3 if adapted else 0.0,
                      trust_coefficient=1e-3, layer_adaptation=adapted)
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(w), rtol=1e-9, atol=1e-11)


def test_no_decay_settings_split_the_groups_even_without_weight_decay():
    from optimlab import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    groups = param_groups.build(model, lr=0.5, verbose=False, no_decay_settings={"layer_adaptation": False})
    assert sorted((g["name"], len(g["params"]), g.get("layer_adaptation", True)) for g in groups) == [
        ("decay", 1, True), ("no_decay", 3, False)]
    assert len(param_groups.build(model, lr=0.5, verbose=False)) == 1  # unchanged without them
