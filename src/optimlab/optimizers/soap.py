"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024).

Follows the authors' reference implementation (nikhilvyas/SOAP, soap.py) step for step: the first
call only gathers statistics; the basis starts from `eigh` and is refreshed every
`precondition_frequency` updates by one power-iteration step and a QR decomposition; the second
moment is re-ordered with the basis and the first moment, kept in the basis, is re-projected when it
changes; weight decay is applied after the update. As the reference, a tensor keeps one factor per
dimension (a matrix: L = GGᵀ and R = GᵀG), or with `merge_dims` per run of consecutive dimensions
merged while their product stays ≤ `max_precond_dim` (a conv weight (64, 32, 3, 3) → (64, 288)).
A parameter's factors (the reference's list `GG`) and their eigenbases (`Q`) are each kept as one flat
tensor, the factors one after the other.

The rule is batched (engine/matrix.py): θ, g and the states are stacks of same-shape parameters.
"""

from __future__ import annotations


import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def merged_shape(shape, h) -> tuple[int, ...]:
    """The shape the factors see: θ's own, or with `merge_dims` consecutive dims merged while their
    product is ≤ max_precond_dim (the reference's merge_dims; a vector is never merged)."""
    if not h.merge_dims or len(shape) <= 1:
        return tuple(shape)
    merged, run = [], 1
    for d in shape:
        if run * d <= h.max_precond_dim:
            run *= d
        elif run > 1:  # the run is full: close it, d starts the next one
            merged.append(run)
            run = d
        else:  # d alone is over the limit: it stays a dimension (without a factor)
            merged.append(d)
    if run > 1 or not merged:
        merged.append(run)
    return tuple(merged)


def factor_sizes(shape, h) -> tuple[int, ...]:
    """Per dimension of the merged shape: the side of its factor, or 0 where it keeps none (longer than
    max_precond_dim, or a vector without `precondition_1d`)."""
    if len(shape) == 1 and not h.precondition_1d:
        return (0,)
    return tuple(d if d <= h.max_precond_dim else 0 for d in merged_shape(shape, h))


def has_factors(θ, h) -> bool:
    return any(factor_sizes(θ.shape, h))


def flat_factors(θ, h):
    """Zeros for all of a parameter's factors, one after the other: Σ dᵢ² numbers."""
    return θ.new_zeros(sum(d * d for d in factor_sizes(θ.shape, h)))


def unpack(F, sizes):
    """A stack of flat factors (k, Σ dᵢ²) as one (k, dᵢ, dᵢ) view per dimension (None: no factor)."""
    views, at = [], 0
    for d in sizes:
        views.append(None if d == 0 else F[:, at:at + d * d].view(len(F), d, d))
        at += d * d
    return views


def along(X, axis: int, A):
    """Contract dimension `axis` of the stack X with the first index of A: X ×_axis Aᵀ, batched."""
    if X.dim() == 2:  # a stack of vectors: each a row times its A
        return (X.unsqueeze(1) @ A).squeeze(1)
    if axis == 1 and X.dim() == 3:  # the left side of a matrix: AᵀX
        return A.mT @ X
    A = A.view(len(A), *[1] * (X.dim() - 3), *A.shape[-2:])  # one A per entry of the stack
    if axis == X.dim() - 1:
        return X @ A
    return (X.movedim(axis, -1) @ A).movedim(-1, axis)


def project(X, Q):
    """Into the eigenbasis: Qᵢᵀ applied along each dimension i with a factor (a matrix: Q_Lᵀ X Q_R)."""
    for i, Q_i in enumerate(Q):
        X = X if Q_i is None else along(X, i + 1, Q_i)
    return X


def project_back(X, Q):
    """Out of the eigenbasis: Qᵢ along each dimension (a matrix: Q_L X Q_Rᵀ)."""
    for i, Q_i in enumerate(Q):
        X = X if Q_i is None else along(X, i + 1, Q_i.mT)
    return X


def unfolded(G, i: int):
    """The stack G with dimension i as rows and every other dimension as columns (a matrix: G, then Gᵀ)."""
    return G.movedim(i + 1, 1).reshape(len(G), G.shape[i + 1], -1)


def eigenbasis(GG):
    """Eigenvectors of each symmetric GG, by decreasing eigenvalue (the reference flips eigh's order)."""
    return torch.linalg.eigh(GG).eigenvectors.flip(-1)


def refresh(GG, Q, V, dim: int):
    """One power-iteration step from the old basis, then QR (the reference's get_orthogonal_matrix_QR).

    The columns of Q are first sorted by their estimated eigenvalues qᵀ·GG·q, and V (the second moment
    in the basis) is re-ordered the same way along `dim`, so each entry stays with its direction.
    """
    GGQ = GG @ Q
    estimated = (Q * GGQ).sum(-2)  # diag(Qᵀ GG Q)
    order = estimated.argsort(dim=-1, descending=True)
    index = order.view(len(V), *[1] * (dim - 1), -1, *[1] * (V.dim() - dim - 1))
    V = V.gather(dim, index.expand_as(V))
    return orthonormal_factor(GGQ.gather(-1, order.unsqueeze(-2).expand_as(GGQ))), V


def orthonormal_factor(A):
    """Q of A = QR, as torch.linalg.qr(A).Q (the same Householder reflections, geqrf then orgqr) without
    forming R, which SOAP never reads."""
    return torch.linalg.householder_product(*torch.geqrf(A))


def soap_scalars(h, t, carried):
    """The first call gathers statistics only (the reference never projects with a basis made from the
    same gradient), so update number s = t − 1 drives the bias corrections and the refresh schedule."""
    s = t - 1
    bc1, bc2 = (1 - h.beta1**s, 1 - h.beta2**s) if h.correct_bias and s > 0 else (1.0, 1.0)
    return {"first": s == 0, "refresh": s > 0 and s % h.precondition_frequency == 0,
            "step_size": h.lr * bc2**0.5 / bc1,
            "shampoo_beta_t": h.shampoo_beta if h.shampoo_beta >= 0 else h.beta2}


@rule(state={"M": "exp_avg", "V": "exp_avg_sq",
             "GG": State("GG", when=has_factors, init=flat_factors),
             "Q": State("Q", when=has_factors, init=flat_factors)},
      scalars=soap_scalars, traceable=False, batched=True)
def soap(h, θ, g, M, V, GG, Q):
    """SOAP (Vyas et al. 2024, Algorithm 3, as the reference code) on a stack of same-shape tensors.

    θ and the states are updated in place (engine/matrix.py writes back what is not their own memory);
    GG_i and Q_i are views of the flat GG and Q, one per dimension with a factor."""
    sizes = () if GG is None else factor_sizes(θ.shape[1:], h)  # no factor: Adam (projections: identity)
    GG_i, Q_i = unpack(GG, sizes), unpack(Q, sizes)
    shape = (len(θ), *merged_shape(θ.shape[1:], h))
    G = g.reshape(shape)
    if h.first:  # statistics and the first basis only: θ does not move
        update_factors(h, G, GG_i)
        for F, Q_f in zip(GG_i, Q_i):
            if F is not None:
                Q_f.copy_(eigenbasis(F))
        return θ, M, V, GG, Q
    M_, V_ = M.view(shape), V.view(shape)
    G̃ = project(G, Q_i)  # the gradient in Shampoo's eigenbasis
    M_.mul_(h.beta1).add_(G̃, alpha=1 - h.beta1)  # Adam's moments, in that basis: M ← β₁M + (1 − β₁)G̃
    V_.mul_(h.beta2).addcmul_(G̃, G̃, value=1 - h.beta2)  # V ← β₂V + (1 − β₂)G̃²
    denominator = V_.sqrt().add_(h.eps)
    N = project_back(torch.div(M_, denominator, out=denominator), Q_i)  # Adam's step, rotated back
    if h.normalize_grads:
        N = N / (1e-30 + N.square().flatten(1).mean(1).sqrt().view(-1, *[1] * (N.dim() - 1)))
    θ.sub_(N.reshape(θ.shape), alpha=h.step_size)
    θ.mul_(1 - h.lr * h.weight_decay)  # decoupled decay, after the step (as the reference)
    update_factors(h, G, GG_i)
    if h.refresh and Q_i:  # a new basis: re-order V with it and carry M across
        M_back = project_back(M_, Q_i)
        for i, (F, Q_f) in enumerate(zip(GG_i, Q_i)):
            if F is not None:
                Q_new, V_new = refresh(F, Q_f, V_, dim=i + 1)
                Q_f.copy_(Q_new)
                V_.copy_(V_new)
        M_.copy_(project(M_back, Q_i))
    return θ, M, V, GG, Q


def update_factors(h, G, GG):
    """Shampoo's statistics, an EMA with β = shampoo_beta, in place: GGᵢ ← βGGᵢ + (1 − β)GᵢGᵢᵀ with Gᵢ
    the gradient unfolded along dimension i (a matrix: L ← βL + (1 − β)GGᵀ, R ← βR + (1 − β)GᵀG)."""
    for i, F in enumerate(GG):
        if F is not None:
            G_i = unfolded(G, i)
            F.baddbmm_(G_i, G_i.mT, beta=h.shampoo_beta_t, alpha=1 - h.shampoo_beta_t)


def _positive_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "must be an integer ≥ 1"


def _shampoo_beta(v):
    return None if _checks._real(v) and v < 1 else "must be a number < 1 (negative: use betas[1])"


class SOAP(RuleOptimizer):
    """SOAP with the reference implementation's hyperparameters and defaults."""

    rule = soap
    checks = {**_checks.COMMON, "betas": _checks.betas, "shampoo_beta": _shampoo_beta,
              "precondition_frequency": _positive_int, "max_precond_dim": _positive_int,
              "merge_dims": _checks.one_of(False, True)}

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1.0, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False,
                 normalize_grads=False, correct_bias=True, *, maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))

    def load_state_dict(self, state_dict: dict) -> None:
        """Also loads checkpoints from before the factors were kept flat (L, R, Q_L, Q_R): for a vector or
        a matrix, GG is L then R and Q is Q_L then Q_R. A larger tensor was then one matrix (d₀, d₁⋯dₙ),
        which has no per-dimension equivalent: refused, never resumed with empty factors."""
        state = {i: _flat_from_sides(i, s) for i, s in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})


def _flat_from_sides(i, s: dict) -> dict:
    if not any(key in s for key in ("L", "R", "Q_L", "Q_R")) or "GG" in s:
        return s
    if torch.is_tensor(s.get("exp_avg")) and s["exp_avg"].dim() > 2:
        raise ValueError(f"SOAP checkpoint: parameter {i} ({tuple(s['exp_avg'].shape)}) was stepped as one "
                         "matrix by an older optimlab; SOAP now keeps a factor per dimension, so its factors "
                         f"cannot be carried over: start its state afresh (drop state entry {i})")
    s = dict(s)
    sides = [s.pop(key) for key in ("L", "R") if key in s]
    bases = [s.pop(key) for key in ("Q_L", "Q_R") if key in s]
    s["GG"], s["Q"] = (torch.cat([t.flatten() for t in ts]) for ts in (sides, bases))
    return s
