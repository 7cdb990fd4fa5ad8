"""Adafactor, as torch.optim.Adafactor (with conv weights factored as matrices by default)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from ..engine.graph import machine_epsilon
from ..engine.optimizer import RuleOptimizer, hyperparameters
from ..engine.rule import State, rule
from . import _checks


def relative_step(h, t, carried):
    """β̂₂ₜ = 1 − t^c and ρ_t = min(lr, 1/√t) (Shazeer & Stern 2018, Alg. 4; torch's naming), and 1/ε₁,
    the largest 1/√V̂ once V̂ is clamped at ε₁² (None: ε₁ is the machine epsilon of the type)."""
    inv_eps1 = None if h.eps1 is None else math.inf if h.eps1 == 0 else 1 / h.eps1
    return {"beta2_t": 1 - t**h.beta2_decay, "rho": min(h.lr, 1 / t**0.5), "inv_eps1": inv_eps1}


def factored(θ) -> bool:
    return θ.dim() >= 2


def as_matrix(x, h):
    """The matrix Adafactor factors: (d₀, d₁⋯dₙ) by default, so a conv weight is treated like the
    same weight flattened; `matrix_view="last_two"` factors each trailing 2-D slice, as torch does."""
    return x.flatten(1) if h.matrix_view == "flatten" else x


def row_zeros(θ, h):
    return torch.zeros_like(as_matrix(θ, h)[..., :1])


def col_zeros(θ, h):
    return torch.zeros_like(as_matrix(θ, h)[..., :1, :])


def rms(x):
    return torch.linalg.vector_norm(x) / x.numel() ** 0.5


@rule(state={"R": State("row_var", when=factored, init=row_zeros, per="row"),
             "C": State("col_var", when=factored, init=col_zeros, per="col"),
             "V": State("variance", when=lambda θ: not factored(θ))},
      scalars=relative_step, matrix=as_matrix)
def adafactor(h, θ, g, R, C, V):
    """Adafactor (Shazeer & Stern 2018, Alg. 4–5 without momentum), as torch.optim.Adafactor."""
    eps1 = machine_epsilon(θ) if h.eps1 is None else h.eps1
    α = torch.clamp(rms(θ), min=h.eps2) * h.rho  # relative step: ρₜ scaled by max(ε₂, RMS(θ))
    if V is None:  # a matrix: keep row and column means of g², O(n + m) instead of O(nm)
        G2 = as_matrix(g * g, h)
        R = h.beta2_t * R + (1 - h.beta2_t) * G2.mean(dim=-1, keepdim=True)  # Rₜ: mean of each row
        C = h.beta2_t * C + (1 - h.beta2_t) * G2.mean(dim=-2, keepdim=True)  # Cₜ: mean of each column
        # V̂ = RC / 1ᵀR has rank one, and so has 1/√V̂ = (1/√(R / 1ᵀR)) (1/√C): a root per row and per
        # column, not per element. V̂ ≥ ε₁² (as torch clamps it) is 1/√V̂ ≤ 1/ε₁.
        R_hat = R / torch.clamp(R.mean(dim=-2, keepdim=True), min=eps1)
        inv_sqrt_v = (torch.rsqrt(R_hat) @ torch.rsqrt(C)).view_as(g)
        U = g * torch.clamp(inv_sqrt_v, max=1 / eps1 if h.inv_eps1 is None else h.inv_eps1)  # U = g/√V̂
    else:
        V = h.beta2_t * V + (1 - h.beta2_t) * g * g
        U = g * torch.rsqrt(torch.clamp(V, min=eps1 * eps1))  # U = g/√V̂
    U = U * (α / torch.clamp(rms(U) / h.d, min=1.0))  # clip the update's RMS at d, take the relative step
    θ = θ * (1 - h.lr * h.weight_decay) - U
    return θ, R, C, V


class Adafactor(RuleOptimizer):
    """torch.optim.Adafactor's rule and hyperparameters, plus `matrix_view` (see `as_matrix`)."""

    rule = adafactor
    unpack = {"eps": ("eps1", "eps2")}
    checks = {"lr": _checks.nonnegative, "weight_decay": _checks.nonnegative,
              "d": lambda v: None if isinstance(v, (int, float)) and v >= 1 else "must be ≥ 1 (as torch)",
              "beta2_decay": lambda v: None if isinstance(v, (int, float)) and v <= 0 else "must be ≤ 0",
              "matrix_view": _checks.one_of("flatten", "last_two"),
              "eps": lambda v: None if isinstance(v, tuple) and len(v) == 2 and (v[0] is None or v[0] >= 0)
              and v[1] >= 0 else "must be a pair (eps1 ≥ 0 or None, eps2 ≥ 0)"}

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 maximize=False, matrix_view="flatten", path="auto"):
        super().__init__(params, path, **hyperparameters(locals()))

    def load_state_dict(self, state_dict: dict) -> None:
        """A checkpoint's factoring is the `matrix_view` of its param groups; one without it was made by
        torch.optim.Adafactor, which factors the last two dimensions: it loads as `matrix_view="last_two"`.
        Row and column statistics that do not fit the factoring raise a ValueError saying so."""
        groups = [g if "matrix_view" in g else {**g, "matrix_view": "last_two"}
                  for g in state_dict["param_groups"]]
        state_dict = {**state_dict, "param_groups": groups}
        for saved, group in zip(groups, self.param_groups):
            view = SimpleNamespace(matrix_view=saved["matrix_view"])
            for index, p in zip(saved["params"], group["params"]):
                _check_factoring(state_dict["state"].get(index, {}), p, view, index)
        super().load_state_dict(state_dict)


def _check_factoring(state: dict, p: torch.Tensor, view: SimpleNamespace, index) -> None:
    for key, expected in (("row_var", row_zeros), ("col_var", col_zeros)):
        if key not in state:
            continue
        shape, want = tuple(state[key].shape), tuple(expected(p.detach(), view).shape)
        if shape != want:
            other = "last_two" if view.matrix_view == "flatten" else "flatten"
            fits = tuple(expected(p.detach(), SimpleNamespace(matrix_view=other)).shape) == shape
            hint = (f"it was made with matrix_view={other!r}: record that in the checkpoint's param_groups "
                    "(torch.optim.Adafactor factors the last two dimensions, optimlab's 'last_two')" if fits
                    else "it was made for a parameter of another shape")
            raise ValueError(
                f"Adafactor.load_state_dict: parameter {index} of shape {tuple(p.shape)} has {key} of shape "
                f"{shape}, but matrix_view={view.matrix_view!r} factors it with {key} of shape {want}; "
                f"{hint}")
