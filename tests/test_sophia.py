"""Sophia's Hessian-diagonal estimators and its update_hessian API.

The estimators are checked against what they estimate, computed without optimlab: Hutchinson's
u ⊙ Hu against the known diagonal of a dense quadratic (and shown not to be g²), Gauss–Newton–Bartlett
against B·ĝ⊙ĝ with ĝ the analytic gradient of a softmax model's cross-entropy on the sampled labels.
"""

from __future__ import annotations

import math

import pytest
import torch

import optimlab
from optimlab.optimizers.sophia import hutchinson


@pytest.fixture(autouse=True)
def _float64(float64_default):
    """float64 throughout (see conftest.py)."""


def dense_quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g)
    H = A @ A.T + n * torch.eye(n)  # symmetric positive definite, far from diagonal
    b = torch.randn(n, generator=g)
    return H, b, lambda θ: 0.5 * θ @ H @ θ + b @ θ


def test_hutchinson_converges_to_the_true_hessian_diagonal_and_is_not_g_squared():
    H, b, f = dense_quadratic()
    θ = torch.randn(6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    gen = torch.Generator().manual_seed(2)
    samples = torch.stack([hutchinson(f(θ), [θ], gen)[0] for _ in range(4000)])
    σ = ((H * H).sum(1) - H.diag() ** 2).sqrt()  # the estimate's standard deviation, coordinate by coordinate
    for n in (40, 4000):
        error = (samples[:n].mean(0) - H.diag()).abs()
        assert (error < 4 * σ / math.sqrt(n)).all(), (n, error, σ)  # unbiased: the error shrinks as 1/√n
    assert (samples[:4000].mean(0) - H.diag()).abs().max() < 0.1 * H.diag().min()
    # Through the optimizer: lr = 0 keeps θ fixed; the EMA of 1000 refreshes sits on diag(H).
    opt = optimlab.Sophia([θ], lr=0.0, estimator="hutchinson", update_period=1, betas=(0.9, 0.99))
    for step in range(1000):
        opt.update_hessian(lambda: f(θ), generator=gen)
        θ.grad = torch.autograd.grad(f(θ), θ)[0]
        opt.step()
    h = opt.state[θ]["hessian"]
    assert ((h - H.diag()).abs() < 5 * σ * math.sqrt(0.01 / 1.99) + 1e-3).all(), (h, H.diag())
    g2 = (H @ θ.detach() + b) ** 2  # what some libraries use instead: the squared gradient
    assert (h - g2).abs().max() > 0.5 * H.diag().max()


def test_hutchinson_on_a_diagonal_hessian_is_exact():
    d = torch.tensor([3.0, -2.0, 0.5])
    θ = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    opt = optimlab.Sophia([θ], estimator="hutchinson", betas=(0.9, 0.8))
    opt.update_hessian(lambda: 0.5 * (d * θ * θ).sum() + θ.sum())
    torch.testing.assert_close(opt.state[θ]["hessian"], 0.2 * d)  # (1 − β₂) ĥ, ĥ = diag(H) exactly


def softmax_model(B=64, d=5, C=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, d, generator=gen)
    W = torch.randn(d, C, generator=gen).requires_grad_()
    b = torch.randn(C, generator=gen).requires_grad_()
    return X, W, b


def test_gauss_newton_bartlett_is_B_times_g_hat_squared_for_sampled_labels():
    X, W, b = softmax_model()
    B = X.shape[0]
    opt = optimlab.Sophia([W, b], estimator="gnb", betas=(0.9, 0.95))
    opt.update_hessian(lambda: X @ W + b, generator=torch.Generator().manual_seed(7))
    # The labels Sophia draws: torch.multinomial over softmax(logits) in float64, with the same generator.
    P = torch.softmax((X @ W + b).detach(), dim=-1)
    ŷ = torch.multinomial(P, 1, generator=torch.Generator().manual_seed(7)).squeeze(-1)
    Y = torch.nn.functional.one_hot(ŷ, 4).double()
    ĝ_W = X.T @ (P - Y) / B  # the analytic gradient of the mean cross-entropy of a linear softmax model
    ĝ_b = (P - Y).mean(0)
    torch.testing.assert_close(opt.state[W]["hessian"], 0.05 * B * ĝ_W**2, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(opt.state[b]["hessian"], 0.05 * B * ĝ_b**2, rtol=1e-10, atol=1e-14)


def test_gauss_newton_bartlett_samples_labels_from_the_model():
    """E[e_ŷ] = softmax(logits) for ŷ drawn from the model, so ĝ_b = mean(P − e_ŷ) vanishes as 1/√B."""
    X, W, b = softmax_model(B=20000)
    opt = optimlab.Sophia([W, b], estimator="gnb", betas=(0.9, 0.0))  # β₂ = 0: h = ĥ = B·ĝ²
    opt.update_hessian(lambda: X @ W + b, generator=torch.Generator().manual_seed(0))
    ĝ_b = (opt.state[b]["hessian"] / 20000).sqrt()
    assert (ĝ_b < 5 * 0.5 / math.sqrt(20000)).all(), ĝ_b


def test_update_hessian_runs_every_k_steps_and_only_then_calls_the_closure():
    θ = torch.tensor([1.0, -1.0], requires_grad=True)
    opt = optimlab.Sophia([θ], estimator="hutchinson", update_period=10)
    calls = []

    def closure():
        calls.append(len(calls))
        return (θ**4).sum()

    returned = []
    for _ in range(25):
        returned.append(opt.update_hessian(closure))
        θ.grad = torch.ones(2)
        opt.step()
    assert len(calls) == 3  # t = 1, 11, 21: the paper's t ≡ 1 (mod k)
    assert [i for i, r in enumerate(returned) if r is not None] == [0, 10, 20]


def test_the_update_is_clipped_to_lr_per_coordinate():
    θ = torch.randn(50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    opt = optimlab.Sophia([θ], lr=0.1, weight_decay=0.0, estimator="hutchinson", update_period=1)
    scale = torch.logspace(-6, 2, 50)
    for step in range(20):
        opt.update_hessian(lambda: (scale * θ**2).sum(), generator=torch.Generator().manual_seed(step))
        before = θ.detach().clone()
        θ.grad = torch.randn(50, generator=torch.Generator().manual_seed(100 + step)) * 10
        opt.step()
        assert ((θ - before).abs() <= 0.1 + 1e-15).all()
    assert ((θ - before).abs() < 0.099).any() and ((θ - before).abs() > 0.0999).any()  # both regimes occur


def test_gnb_closure_must_return_logits_and_hutchinson_a_loss():
    θ = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="logits"):
        optimlab.Sophia([θ]).update_hessian(lambda: (θ**2).sum())
    with pytest.raises(ValueError, match="the loss"):
        optimlab.Sophia([θ], estimator="hutchinson").update_hessian(lambda: θ.reshape(1, 3) * 2)


@pytest.mark.parametrize("bad", [{"update_period": 0}, {"update_period": 2.5}, {"estimator": "g2"},
                                 {"gamma": 0.0}, {"betas": (0.9, 1.0)}])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        optimlab.Sophia([torch.ones(2, requires_grad=True)], **bad)


def test_training_loop_of_the_docs_learns_digits():
    """The loop docs/frontier.md shows, on scikit-learn's digits: Sophia-G lowers the loss."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64) / 16
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)).double()
    opt = optimlab.Sophia(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(150):
        batch = torch.randint(0, len(x), (128,))
        opt.update_hessian(lambda: model(x[batch]))  # every k-th call: logits -> sampled labels -> B·ĝ²
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = loss.item() if first is None else first
    final = torch.nn.functional.cross_entropy(model(x), y).item()
    assert final < 0.5 * first, (first, final)


def test_hutchinson_on_a_model_without_double_backward_says_what_to_do():
    """torch 2.13's CPU flash attention has no double backward: the error names GNB as the way out."""
    W = torch.randn(8, 8, dtype=torch.float32, requires_grad=True)
    x = torch.randn(2, 2, 5, 8, dtype=torch.float32)
    opt = optimlab.Sophia([W], estimator="hutchinson")

    def loss():
        q = x @ W
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).square().sum()

    with pytest.raises(RuntimeError, match="estimator='gnb'"):
        opt.update_hessian(loss)


def test_process_group_is_refused_without_torch_distributed_and_kept_out_of_checkpoints():
    θ = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="process_group was given but torch.distributed is not initialised"):
        optimlab.Sophia([θ], process_group=object())
    opt = optimlab.create("sophia", [θ], process_group=None)  # a setting of the object, not of its groups
    assert "process_group" not in opt.param_groups[0]
    assert "process_group" not in opt.state_dict()["param_groups"][0]


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_a_process_group_of_one_rank_estimates_as_one_process(estimator):
    """The combining code (one all-reduce per device and dtype, a parameter the loss does not reach kept
    untouched) on a gloo group of one: the Hessians made without a group. Two ranks: test_distributed.py."""
    import torch.distributed as dist

    def run(group):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        unused = torch.nn.Parameter(torch.ones(2))
        opt = optimlab.Sophia([*model.parameters(), unused], estimator=estimator, process_group=group)
        x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])
        closure = (lambda: model(x)) if estimator == "gnb" else (lambda: torch.nn.functional.cross_entropy(
            model(x), y))
        opt.update_hessian(closure, generator=torch.Generator().manual_seed(2))
        assert "hessian" not in opt.state[unused]
        return [opt.state[p]["hessian"] for p in model.parameters()]

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        combined = run(dist.group.WORLD)
    finally:
        dist.destroy_process_group()
    for ours, alone in zip(combined, run(None)):
        torch.testing.assert_close(ours, alone, rtol=1e-14, atol=0)
