"""Muon: momentum orthogonalised by a Newton–Schulz iteration, with AdamW for what is not a matrix.

Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks"; Liu et al. (2025),
"Muon is Scalable for LLM Training" (the "match_rms_adamw" lr). torch.optim.Muon's names, defaults and
arithmetic; unlike torch's, one optimizer trains a whole model: embeddings, the output head and
tensors of fewer than 2 dims are stepped by optimlab's own Adam rule (as AdamW) inside it.

The rule is batched (engine/matrix.py): θ, g and the states are stacks of same-shape parameters.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from ..engine.matrix import stacked
from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks
from .adam import adam

NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def orthogonalised(θ, h) -> bool:
    """Muon's part: tensors of ≥ 2 dims (conv weights as (out, in·kh·kw) matrices), unless their group
    is marked `matrix=False` (param_groups.build(..., split_matrices=True) marks embeddings and head)."""
    return θ.dim() >= 2 and h.matrix is not False


def adamw_part(θ, h) -> bool:
    return not orthogonalised(θ, h)


def adamw_bias_corrections(h, t, carried):
    """The AdamW part's 1 − βᵗ (the Muon part has none)."""
    return {"bc1": 1 - h.adamw_beta1**t, "bc2": 1 - h.adamw_beta2**t}


def adamw_view(h) -> SimpleNamespace:
    """The hyperparameters optimlab's Adam rule sees for the AdamW part: the group's lr and decay."""
    return adam.with_flags(dict(lr=h.lr, weight_decay=h.weight_decay, beta1=h.adamw_beta1,
                                beta2=h.adamw_beta2, eps=h.adamw_eps, amsgrad=False,
                                decoupled_weight_decay=True, bc1=h.bc1, bc2=h.bc2))  # and Adam's own flags


def newton_schulz(G, h):
    """Orthogonalise each matrix of the stack G: X ← aX + (bA + cA²)X with A = XXᵀ, `ns_steps` times.

    Starting from X = G/‖G‖_F (every singular value ≤ 1), the quintic pushes each singular value
    towards 1 (to about U(0.7, 1.2) with the default coefficients) and keeps the singular vectors:
    X ≈ UVᵀ for G = USVᵀ. A tall X iterates as X ← aX + X(bA + cA²) with A = XᵀX, the same step
    transposed (A is symmetric): the Gram matrix is always the smaller one, and nothing is transposed.
    """
    a, b, c = h.ns_coefficients
    X = G.to(NS_DTYPES.get(h.ns_dtype, h.ns_dtype), copy=True)  # a fresh tensor, updated in place
    X.div_(torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp_(min=h.eps))
    tall = X.size(-2) > X.size(-1)
    side = X.size(-1) if tall else X.size(-2)
    A, B = X.new_empty(len(X), side, side), X.new_empty(len(X), side, side)  # reused every iteration
    Y = torch.empty_like(X)
    for _ in range(h.ns_steps):
        torch.bmm(X.mT, X, out=A) if tall else torch.bmm(X, X.mT, out=A)  # A = XᵀX (tall) or XXᵀ
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=B)  # bA + cA²
        torch.baddbmm(X, X, B, beta=a, out=Y) if tall else torch.baddbmm(X, B, X, beta=a, out=Y)  # aX + BX
        X, Y = Y, X
    return X


def adjusted_lr(h, rows: int, cols: int) -> float:
    """The lr scaled so that updates of every shape have a comparable size (as torch.optim.Muon)."""
    if h.adjust_lr_fn == "match_rms_adamw":
        return h.lr * 0.2 * math.sqrt(max(rows, cols))  # Liu et al.: the RMS of an AdamW update
    return h.lr * math.sqrt(max(1, rows / cols))  # Jordan et al.


@rule(state={"B": State("momentum_buffer", when=orthogonalised),
             "m": State("exp_avg", when=adamw_part), "v": State("exp_avg_sq", when=adamw_part)},
      scalars=adamw_bias_corrections, traceable=False, batched=True)
def muon(h, θ, g, B, m, v):
    """Muon (Jordan et al. 2024) on a stack of matrices; AdamW on a stack of anything else."""
    if B is None:  # not Muon's: AdamW, by optimlab's one Adam rule
        θ, m, v, _ = adam.update(adamw_view(h), stacked(θ), g, m, v, None)
        return θ, B, m, v
    B = B.lerp_(g, 1 - h.momentum)  # momentum: B ← μB + (1 − μ)g (in place: see engine/matrix.py)
    U = g.lerp(B, h.momentum) if h.nesterov else B  # Nesterov: g + μ(B − g)
    rows, cols = θ.shape[1], math.prod(θ.shape[2:])
    O = newton_schulz(U.reshape(len(U), rows, cols), h).reshape(θ.shape)  # O ≈ UVᵀ, in ns_dtype
    θ = θ.mul_(1 - h.lr * h.weight_decay)  # decoupled decay, with the unadjusted lr (as torch)
    θ = θ.sub_(O, alpha=adjusted_lr(h, rows, cols))  # θ − η'O
    return θ, B, m, v


def _ns_dtype(v):
    return None if v in NS_DTYPES or v in NS_DTYPES.values() else "must be torch.bfloat16, float32 or float64"


def _coefficients(v):
    ok = isinstance(v, (tuple, list)) and len(v) == 3 and all(_checks._real(x) for x in v)
    return None if ok else "must be three numbers (a, b, c)"


def _ns_steps(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 100
    return None if ok else "must be an integer in [0, 100)"


class Muon(RuleOptimizer):
    """torch.optim.Muon's hyperparameters and defaults, plus `ns_dtype` (the Newton–Schulz precision,
    bf16 as the references) and the AdamW part's `adamw_betas`, `adamw_eps` (its lr and weight decay
    are the group's). `matrix` (set per group by param_groups.build) sends a group's matrices to AdamW
    when False; by default every tensor of ≥ 2 dims is Muon's, as in torch (which takes only those).
    """

    rule = muon
    unpack = {"adamw_betas": ("adamw_beta1", "adamw_beta2")}
    checks = {**_checks.COMMON, "momentum": _checks.fraction, "adamw_betas": _checks.betas,
              "adamw_eps": _checks.nonnegative, "ns_dtype": _ns_dtype, "ns_coefficients": _coefficients,
              "ns_steps": _ns_steps, "adjust_lr_fn": _checks.one_of(None, "original", "match_rms_adamw"),
              "matrix": _checks.one_of(None, True, False)}

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 ns_dtype=torch.bfloat16, adamw_betas=(0.9, 0.95), adamw_eps=1e-8, matrix=None,
                 maximize=False, path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))
