"""The test harness shared by the generic tests: tensors, a loss, and the hyperparameter variations.

Every generic test iterates `optimlab.available()`, so a newly registered optimizer is tested by all
of them. What the tests need to know beyond its spec lives here, in one table.
"""

from __future__ import annotations

import copy

import torch

import optimlab

# A matrix, a 1-element tensor, a 4-D (conv-like) tensor and a vector.
SHAPES = [(4, 3), (1,), (2, 3, 2, 2), (7,)]

# A non-default value for each hyperparameter, to show it reaches the math and changes the result.
TEST_VALUES = {
    "weight_decay": 0.1, "momentum": 0.9, "dampening": 0.3, "nesterov": True, "amsgrad": True,
    "maximize": True,
    "centered": True, "alpha": 0.9, "lr_decay": 0.05, "initial_accumulator_value": 0.3, "eps": 1e-3,
    "betas": (0.8, 0.95), "momentum_decay": 0.01, "decoupled_weight_decay": True, "bias_correction": False,
    "beta2_decay": -0.5, "d": 2.0, "matrix_view": "last_two",
}
# Sophia, schedule-free, ADOPT and LARS
TEST_VALUES.update({"gamma": 0.5, "update_period": 3, "estimator": "hutchinson", "warmup_steps": 5, "r": 1.0,
                    "weight_lr_power": 0.5, "clip_exponent": 0.1, "trust_coefficient": 0.02,
                    "layer_adaptation": False})
# 8-bit AdamW: 0 codes the state of every tensor, however small (the default keeps < 4096 elements fp32)
TEST_VALUES["min_8bit_size"] = 0
TEST_VALUES["v_without_zero"] = True  # shown acting by its own test: see ACTS_ELSEWHERE below
# Where one value is not enough: each element of Adafactor's (ε₁, ε₂) must be shown to act.
PER_OPTIMIZER = {("adafactor", "eps"): [(3.0, 1e-3), (None, 2.0)]}
PER_OPTIMIZER.update({("adopt", "clip_exponent"): [0.1, None], ("lars", "momentum"): [0.5],
                      ("schedulefree_sgd", "momentum"): [0.5], ("sophia", "weight_decay"): [0.3],
                      ("adopt", "eps"): [1.0]})
# Flags that only act together with another.
NEEDS = {"nesterov": {"momentum": 0.9}, "dampening": {"momentum": 0.9},
         "decoupled_weight_decay": {"weight_decay": 0.1}}
NEEDS.update({"weight_lr_power": {"warmup_steps": 5}})  # the weights differ only while the lr warms up
# Hyperparameters the generic loss cannot show acting, each with the test that does: 8-bit AdamW's
# v_without_zero reads only a v coded 0 (under ~1.6e-7 of its block's largest), which gradients all of
# one scale never make.
ACTS_ELSEWHERE = {("adamw8bit", "v_without_zero"): "tests/test_eightbit_without_zero.py"}
# Hyperparameters torch.optim does not have (their references are elsewhere).
OPTIMLAB_ONLY = {"bias_correction", "matrix_view", "path"}

# Muon, Shampoo and SOAP (their defaults are the references': Muon's weight decay 0.1 and Nesterov on;
# Muon's ε only clamps ‖G‖ from below; Shampoo's roots in float32 move θ by ~1e-9 at the default lr).
TEST_VALUES.update({
    "ns_coefficients": (1.5, -0.5, 0.0), "ns_steps": 2, "adjust_lr_fn": "match_rms_adamw",
    "ns_dtype": torch.float64,
    "adamw_betas": (0.8, 0.9), "adamw_eps": 1e-3, "matrix": False, "precondition_frequency": 3,
    "start_preconditioning_step": 2, "max_precond_dim": 2, "grafting": "adagrad", "graft_eps": 1e-2,
    "root_dtype": torch.float32, "precondition_1d": True, "shampoo_beta": 0.5, "normalize_grads": True,
    "correct_bias": False, "merge_dims": True,
})
PER_OPTIMIZER.update({("muon", "weight_decay"): [0.0], ("muon", "nesterov"): [False],
                      ("muon", "eps"): [100.0]})
NEEDS["root_dtype"] = {"lr": 0.1}
OPTIMLAB_ONLY |= {"ns_dtype", "adamw_betas", "adamw_eps", "matrix"}


def variations(name: str) -> list[tuple[str, dict, dict]]:
    """(label, hyperparameters, baseline they are compared with) for every hyperparameter of `name`."""
    spec = optimlab.spec(name)
    out = [("defaults", {}, {})]
    for key, default in spec.defaults.items():
        if key in spec.preset or (name, key) in ACTS_ELSEWHERE:
            continue
        values = [3 * default] if key == "lr" else PER_OPTIMIZER.get((name, key), [TEST_VALUES.get(key)])
        if values == [None]:
            raise KeyError(f"tests/cases.py has no test value for {name}'s hyperparameter {key!r}")
        base = dict(NEEDS.get(key, {}))
        out += [(f"{key}={value}", {**base, key: value}, base) for value in values]
    return out


def make_params(dtype=torch.float64, seed=0, shapes=SHAPES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def loss_fn(params, step: int) -> torch.Tensor:
    """A bowl, a ripple and a seeded linear term that changes every step: gradients change sign and scale."""
    g = torch.Generator().manual_seed(1000 + step)
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    for j, p in enumerate(params):
        x = p.double()
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device)  # the CPU's numbers
        total = total + 0.5 * (j + 1) * (x * x).sum() + torch.sin(3 * x).sum() + (noise * x).sum()
    return total


def backward(params, step: int) -> float:
    for p in params:
        p.grad = None
    loss = loss_fn(params, step)
    loss.backward()
    return loss.item()


def logits_fn(params, step: int) -> torch.Tensor:
    """Each parameter element read as one sample's logits over three classes: a softmax model for Sophia-G."""
    return torch.cat([torch.stack([x, -x, torch.sin(3 * x) + step % 3], -1).reshape(-1, 3)
                      for x in (p.double() for p in params)])


def refresh_curvature(opt, params, step: int) -> None:
    """Sophia's Hessian-diagonal estimate, every k steps as it decides (other optimizers have none).
    A seeded generator per step, so that every run sees the same sampled labels or probe vectors."""
    if hasattr(opt, "update_hessian"):
        closure = loss_fn if opt.param_groups[0]["estimator"] == "hutchinson" else logits_fn
        opt.update_hessian(lambda: closure(params, step), generator=torch.Generator().manual_seed(step))


def train(make, steps=100, dtype=torch.float64, seed=0, shapes=SHAPES):
    """Run `make(params)` for `steps` updates on the shared loss; returns (params, optimizer)."""
    params = make_params(dtype, seed, shapes)
    opt = make(params)
    for step in range(steps):
        refresh_curvature(opt, params, step)
        backward(params, step)
        opt.step()
    return params, opt


def snapshot(params, opt) -> tuple[list, dict]:
    """Copies of the parameters and of every tensor in the optimizer state, for exact comparisons."""
    state = {i: {k: copy.deepcopy(v) for k, v in opt.state[p].items()}
             for i, p in enumerate(params) if p in opt.state}
    return [p.detach().clone() for p in params], state


def torch_reference(name: str):
    """The torch.optim class a spec names as its reference, or None."""
    ref = optimlab.spec(name).reference
    return getattr(torch.optim, ref.split(".")[-1]) if ref.startswith("torch.optim.") else None


def paths(name: str) -> list[str]:
    return ["tensor", "foreach", "fused"] if optimlab.spec(name).rule.traceable else ["tensor"]
