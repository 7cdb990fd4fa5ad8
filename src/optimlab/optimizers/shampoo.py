"""Shampoo: a Kronecker-factored full-matrix preconditioner, in the practical form of Anil et al.

Gupta, Koren & Singer (2018), "Shampoo: Preconditioned Stochastic Tensor Optimization", Algorithm 1
(statistics L = Σ GGᵀ, R = Σ GᵀG; step L^{-1/4} G R^{-1/4}), with the practice of Anil et al. (2020),
"Scalable Second Order Optimization for Deep Learning": EMA statistics (β₂ < 1; β₂ = 1 is Gupta's
sum), inverse roots recomputed every `precondition_frequency` steps from `start_preconditioning_step`
on (an eigendecomposition in `root_dtype`, ε added to the eigenvalues), large dimensions split into
blocks with their own factors, the step size grafted from Adam or AdaGrad (each block's step has the
norm of the grafted optimizer's step), and momentum on the grafted step.

A tensor of ≥ 2 dims is preconditioned as the matrix (d₀, d₁⋯dₙ); a vector takes the grafted
optimizer's diagonal step (a diagonal Shampoo is AdaGrad), or one factor with `precondition_1d`.
The rule is batched (engine/matrix.py): θ, g and the states are stacks of same-shape parameters.
"""

from __future__ import annotations

import torch

from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks

ROOT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def block_size(d: int, limit: int) -> int:
    """The largest size ≤ limit that splits d into equal blocks (a prime d > limit gives 1: diagonal)."""
    return next(d // n for n in range(1, d + 1) if d % n == 0 and d // n <= limit)


def as_matrix(x):
    """A stack of parameters as a stack of matrices: (d₀, d₁⋯dₙ); a vector is a column (d, 1)."""
    if x.dim() >= 3:
        return x.reshape(len(x), x.shape[1], -1)
    return x.reshape(len(x), -1, 1)


def matrix_shape(θ) -> tuple[int, int]:
    return (θ.shape[0], θ[0].numel()) if θ.dim() >= 2 else (θ.numel(), 1)


def factored(θ, h) -> bool:
    """Kronecker factors for matrices, and for vectors when `precondition_1d`."""
    return θ.dim() >= 2 or (θ.dim() == 1 and h.precondition_1d)


def right_factored(θ, h) -> bool:
    return θ.dim() >= 2


def grafted(θ, h) -> bool:
    return h.grafting != "none"


def factor_zeros(side: int):
    """Zeros for one factor per block: (number of blocks, b, b) with b the block size of that side."""
    def zeros(θ, h):
        sizes = [block_size(d, h.max_precond_dim) for d in matrix_shape(θ)]
        blocks = matrix_shape(θ)[0] // sizes[0] * (matrix_shape(θ)[1] // sizes[1])
        return θ.new_zeros(blocks, sizes[side], sizes[side])
    return zeros


def to_blocks(X, h):
    """A stack of matrices (k, d₀, d₁) as a stack of their blocks (k, n₀n₁, b₀, b₁)."""
    k, d0, d1 = X.shape
    b0, b1 = block_size(d0, h.max_precond_dim), block_size(d1, h.max_precond_dim)
    X = X.reshape(k, d0 // b0, b0, d1 // b1, b1).transpose(2, 3)
    return X.reshape(k, -1, b0, b1)


def from_blocks(X, shape):
    k, d0, d1 = shape
    b0, b1 = X.shape[-2:]
    return X.reshape(k, d0 // b0, d1 // b1, b0, b1).transpose(2, 3).reshape(shape)


def inverse_root(F, p: int, h, out):
    """out ← (F + εI)^{-1/p} by an eigendecomposition in root_dtype (negative round-off eigenvalues → 0)."""
    λ, Q = torch.linalg.eigh(F.to(ROOT_DTYPES.get(h.root_dtype, h.root_dtype)))
    scaled = Q * λ.clamp_(min=0).add_(h.eps).pow_(-1 / p).unsqueeze(-2)
    if scaled.dtype == out.dtype:
        torch.matmul(scaled, Q.mT, out=out)  # straight into the state
    else:
        out.copy_(scaled @ Q.mT)


def shampoo_scalars(h, t, carried):
    started = t >= h.start_preconditioning_step
    return {"preconditioned": started,
            "refresh": started and (t - h.start_preconditioning_step) % h.precondition_frequency == 0,
            "bc2": 1 - h.beta2**t if h.grafting == "adam" else 1.0,
            "w2": 1.0 if h.beta2 == 1 else 1 - h.beta2}  # β₂ = 1: sums, as Gupta et al.


@rule(state={"L": State("L", when=factored, init=factor_zeros(0)),
             "R": State("R", when=right_factored, init=factor_zeros(1)),
             "P_L": State("L_inv_root", when=factored, init=factor_zeros(0)),
             "P_R": State("R_inv_root", when=right_factored, init=factor_zeros(1)),
             "v": State("graft_exp_avg_sq", when=grafted), "m": "exp_avg"},
      scalars=shampoo_scalars, traceable=False, batched=True)
def shampoo(h, θ, g, L, R, P_L, P_R, v, m):
    """Shampoo (Gupta et al. 2018, Alg. 1) with Anil et al. (2020)'s grafting, blocking and schedule.
    θ and the states are updated in place (engine/matrix.py writes back what is not their own memory)."""
    D = g  # the grafted optimizer's step: its norm sets Shampoo's
    if h.grafting != "none":
        if h.grafting == "adagrad":
            v.addcmul_(g, g)  # v ← v + g²
            denominator = v.sqrt().add_(h.graft_eps)
        else:  # adam
            v.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)  # v ← β₂v + (1 − β₂)g²
            denominator = torch.div(v, h.bc2).sqrt_().add_(h.graft_eps)
        D = torch.div(g, denominator, out=denominator)  # g / (√v̂ + ε), in the denominator's memory
    U = D
    if L is not None:
        G = to_blocks(as_matrix(g), h)
        b0, b1 = G.shape[-2:]
        G_ = G.reshape(-1, b0, b1)  # every block of every matrix, one batch
        # statistics per block: L ← β₂L + (1 − β₂)GGᵀ, R ← β₂R + (1 − β₂)GᵀG
        L.view(-1, b0, b0).baddbmm_(G_, G_.mT, beta=h.beta2, alpha=h.w2)
        if R is not None:
            R.view(-1, b1, b1).baddbmm_(G_.mT, G_, beta=h.beta2, alpha=h.w2)
        if h.refresh:  # the expensive part, every k steps: L^{-1/4}, R^{-1/4} (L^{-1/2} for a vector)
            p = 4 if R is not None else 2
            inverse_root(L, p, h, out=P_L)
            if R is not None:
                inverse_root(R, p, h, out=P_R)
        if h.preconditioned:
            S = P_L @ G if R is None else P_L @ G @ P_R  # Shampoo's direction
            if h.grafting != "none":  # with the grafted step's norm, block by block
                D_norm = torch.linalg.vector_norm(to_blocks(as_matrix(D), h), dim=(-2, -1), keepdim=True)
                S_norm = torch.linalg.vector_norm(S, dim=(-2, -1), keepdim=True)
                S = S.mul_(torch.where(S_norm > 0, D_norm / S_norm, 0.0))  # S is a fresh product
            U = from_blocks(S, as_matrix(g).shape).reshape(θ.shape)
    m.mul_(h.beta1).add_(U, alpha=1 - h.beta1)  # momentum on the final step
    θ.mul_(1 - h.lr * h.weight_decay).sub_(m, alpha=h.lr)  # decoupled weight decay
    return θ, L, R, P_L, P_R, v, m


def _positive_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "must be an integer ≥ 1"


def _betas(v):
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and _checks.fraction(v[0]) is None \
        and _checks._real(v[1]) and 0 <= v[1] <= 1
    return None if ok else "must be a pair: β₁ in [0, 1) and β₂ in [0, 1] (1: sums, as Gupta et al.)"


class Shampoo(RuleOptimizer):
    """Shampoo with grafting (Anil et al. 2020). `eps` regularises the factors' roots (ε in (L + εI)^{-1/4});
    `graft_eps` is the grafted optimizer's ε; `max_precond_dim` is the block size."""

    rule = shampoo
    checks = {**_checks.COMMON, "betas": _betas, "graft_eps": _checks.nonnegative,
              "precondition_frequency": _positive_int, "start_preconditioning_step": _positive_int,
              "max_precond_dim": _positive_int, "grafting": _checks.one_of("adam", "adagrad", "none"),
              "root_dtype": lambda v: None if v in ROOT_DTYPES or v in ROOT_DTYPES.values()
              else "must be torch.float32 or torch.float64"}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0, *,
                 precondition_frequency=10, start_preconditioning_step=10, max_precond_dim=1024,
                 grafting="adam", graft_eps=1e-8, precondition_1d=False, root_dtype=torch.float64,
                 maximize=False, path="auto"):
        if grafting == "adam" and isinstance(betas, (tuple, list)) and len(betas) == 2 and betas[1] == 1:
            raise ValueError("Shampoo: grafting='adam' needs betas[1] < 1 (an EMA); use grafting='adagrad' "
                             "for sums")
        super().__init__(params, path, **hyperparameters(locals()))
