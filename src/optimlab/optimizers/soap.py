"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024).

Follows the authors' reference implementation (nikhilvyas/SOAP, soap.py) step for step: the first
call only gathers statistics; the basis starts from `eigh` and is refreshed every
`precondition_frequency` updates by one power-iteration step and a QR decomposition; the second
moment is re-ordered with the basis and the first moment, kept in the basis, is re-projected when it
changes; weight decay is applied after the update. Departures: tensors of more than 2 dims are
treated as the matrix (d₀, d₁⋯dₙ), as Muon and optimlab's Adafactor do (the reference keeps one
factor per dimension, or merges small dimensions with `merge_dims`, which optimlab does not offer).

The rule is batched (engine/matrix.py): θ, g and the states are stacks of same-shape parameters.
"""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def has_left(θ, h) -> bool:
    """A left factor L (d₀ × d₀): matrices, and vectors when `precondition_1d`, up to max_precond_dim."""
    if θ.dim() == 1 and not h.precondition_1d:
        return False
    return θ.dim() >= 1 and θ.shape[0] <= h.max_precond_dim


def has_right(θ, h) -> bool:
    """A right factor R (d₁⋯dₙ × d₁⋯dₙ): matrices, up to max_precond_dim."""
    return θ.dim() >= 2 and θ[0].numel() <= h.max_precond_dim


def left_zeros(θ, h):
    return θ.new_zeros(θ.shape[0], θ.shape[0])


def right_zeros(θ, h):
    return θ.new_zeros(θ[0].numel(), θ[0].numel())


def as_matrix(x):
    """A stack of parameters as a stack of matrices: (d₀, d₁⋯dₙ); a vector is a column (d, 1)."""
    if x.dim() >= 3:
        return x.reshape(len(x), x.shape[1], -1)
    return x.reshape(len(x), -1, 1)


def project(X, Q_L, Q_R):
    """Into the eigenbasis: Q_Lᵀ X Q_R (a side without a factor stays as it is)."""
    X = X if Q_L is None else Q_L.mT @ X
    return X if Q_R is None else X @ Q_R


def project_back(X, Q_L, Q_R):
    """Out of the eigenbasis: Q_L X Q_Rᵀ."""
    X = X if Q_L is None else Q_L @ X
    return X if Q_R is None else X @ Q_R.mT


def eigenbasis(GG):
    """Eigenvectors of each symmetric GG, by decreasing eigenvalue (the reference flips eigh's order)."""
    return torch.linalg.eigh(GG).eigenvectors.flip(-1)


def refresh(GG, Q, V, dim: int):
    """One power-iteration step from the old basis, then QR (the reference's get_orthogonal_matrix_QR).

    The columns of Q are first sorted by their estimated eigenvalues qᵀ·GG·q, and V (the second moment
    in the basis) is re-ordered the same way along `dim`, so each entry stays with its direction.
    """
    estimated = (Q * (GG @ Q)).sum(-2)  # diag(Qᵀ GG Q)
    order = estimated.argsort(dim=-1, descending=True)
    V = V.gather(dim, order.unsqueeze(-1 if dim == -2 else -2).expand_as(V))
    Q = Q.gather(-1, order.unsqueeze(-2).expand_as(Q))
    return torch.linalg.qr(GG @ Q).Q, V


def soap_scalars(h, t, carried):
    """The first call gathers statistics only (the reference never projects with a basis made from the
    same gradient), so update number s = t − 1 drives the bias corrections and the refresh schedule."""
    s = t - 1
    bc1, bc2 = (1 - h.beta1**s, 1 - h.beta2**s) if h.correct_bias and s > 0 else (1.0, 1.0)
    return {"first": s == 0, "refresh": s > 0 and s % h.precondition_frequency == 0,
            "step_size": h.lr * bc2**0.5 / bc1,
            "shampoo_beta_t": h.shampoo_beta if h.shampoo_beta >= 0 else h.beta2}


@rule(state={"M": "exp_avg", "V": "exp_avg_sq",
             "L": State("L", when=has_left, init=left_zeros),
             "R": State("R", when=has_right, init=right_zeros),
             "Q_L": State("Q_L", when=has_left, init=left_zeros),
             "Q_R": State("Q_R", when=has_right, init=right_zeros)},
      scalars=soap_scalars, traceable=False, batched=True)
def soap(h, θ, g, M, V, L, R, Q_L, Q_R):
    """SOAP (Vyas et al. 2024, Algorithm 3, as the reference code) on a stack of same-shape tensors."""
    G = as_matrix(g)
    if h.first:  # statistics and the first basis only: θ does not move
        L, R = update_factors(h, G, L, R)
        Q_L, Q_R = (None if F is None else eigenbasis(F) for F in (L, R))
        return θ, M, V, L, R, Q_L, Q_R
    M, V = as_matrix(M), as_matrix(V)
    G̃ = project(G, Q_L, Q_R)  # the gradient in Shampoo's eigenbasis
    M = h.beta1 * M + (1 - h.beta1) * G̃  # Adam's moments, in that basis
    V = h.beta2 * V + (1 - h.beta2) * G̃ * G̃
    N = project_back(M / (torch.sqrt(V) + h.eps), Q_L, Q_R)  # Adam's step, rotated back
    if h.normalize_grads:
        N = N / (1e-30 + N.square().mean(dim=(-2, -1), keepdim=True).sqrt())
    θ = θ - h.step_size * N.reshape(θ.shape)
    θ = θ - h.lr * h.weight_decay * θ  # decoupled decay, after the step (as the reference)
    L, R = update_factors(h, G, L, R)
    Q_L_new, Q_R_new = Q_L, Q_R
    if h.refresh:  # a new basis: re-order V with it and carry M across
        M = project_back(M, Q_L, Q_R)
        if L is not None:
            Q_L_new, V = refresh(L, Q_L, V, dim=-2)
        if R is not None:
            Q_R_new, V = refresh(R, Q_R, V, dim=-1)
        M = project(M, Q_L_new, Q_R_new)
    return θ, M.reshape(θ.shape), V.reshape(θ.shape), L, R, Q_L_new, Q_R_new


def update_factors(h, G, L, R):
    """Shampoo's statistics, an EMA with β = shampoo_beta: L ← βL + (1 − β)GGᵀ, R ← βR + (1 − β)GᵀG."""
    if L is not None:
        L = L.lerp(G @ G.mT, 1 - h.shampoo_beta_t)
    if R is not None:
        R = R.lerp(G.mT @ G, 1 - h.shampoo_beta_t)
    return L, R


def _positive_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "must be an integer ≥ 1"


def _shampoo_beta(v):
    return None if _checks._real(v) and v < 1 else "must be a number < 1 (negative: use betas[1])"


class SOAP(RuleOptimizer):
    """SOAP with the reference implementation's hyperparameters and defaults (but `merge_dims`)."""

    rule = soap
    checks = {**_checks.COMMON, "betas": _checks.betas, "shampoo_beta": _shampoo_beta,
              "precondition_frequency": _positive_int, "max_precond_dim": _positive_int}

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1.0, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, precondition_1d=False,
                 normalize_grads=False, correct_bias=True, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
