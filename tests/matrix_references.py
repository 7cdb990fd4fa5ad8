"""Plain float64 transcriptions of Shampoo and SOAP for one tensor: NumPy, no torch, no optimlab.

Each `*_step(θ, g, state, **hyperparameters)` takes NumPy arrays, returns the new θ and fills `state`
(a dict) on its first call. Deliberately naive: one parameter at a time, the papers' symbols, an
explicit eigendecomposition per factor. For Shampoo, tensors of more than 2 dims are the matrix
(d₀, d₁⋯dₙ) and a vector is a column, as in optimlab (see docs/matrix.md); SOAP keeps a factor per
dimension, as its authors' code.
"""

from __future__ import annotations

import numpy as np


def as_matrix(x: np.ndarray) -> np.ndarray:
    if x.ndim >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(-1, 1)


def soap_step(θ, g, state, lr, betas, shampoo_beta, eps, weight_decay, precondition_frequency,
              max_precond_dim, merge_dims, precondition_1d, normalize_grads, correct_bias):
    """SOAP: Vyas et al. (2024), Algorithm 3, in the order of the authors' soap.py: one factor per
    dimension of g (a matrix: L and R), or per run of merged dimensions with `merge_dims`."""
    β1, β2 = betas
    β_s = shampoo_beta if shampoo_beta >= 0 else β2
    shape = _merge_dims(g.shape, max_precond_dim) if merge_dims and g.ndim > 1 else g.shape
    G = g.reshape(shape)
    if "step" not in state:  # first call: statistics and the eigenbasis only
        if g.ndim == 1:
            sides = [g.shape[0] if precondition_1d and g.shape[0] <= max_precond_dim else None]
        else:
            sides = [d if d <= max_precond_dim else None for d in shape]
        state.update(step=0, M=np.zeros(shape), V=np.zeros(shape),
                     GG=[None if d is None else np.zeros((d, d)) for d in sides])
        _accumulate(state["GG"], G, β_s)
        state["Q"] = [None if F is None else np.linalg.eigh(F)[1][:, ::-1] for F in state["GG"]]
        return θ
    G̃ = _rotate(G, state["Q"], back=False)
    state["step"] += 1
    t = state["step"]
    M = state["M"] = β1 * state["M"] + (1 - β1) * G̃
    V = state["V"] = β2 * state["V"] + (1 - β2) * G̃ * G̃
    step_size = lr * np.sqrt(1 - β2**t) / (1 - β1**t) if correct_bias else lr
    N = _rotate(M / (np.sqrt(V) + eps), state["Q"], back=True)
    if normalize_grads:
        N = N / (1e-30 + np.sqrt(np.mean(N**2)))
    θ = θ - step_size * N.reshape(θ.shape)
    θ = θ - lr * weight_decay * θ
    # update_preconditioner: M back to the parameter space, new statistics, maybe a new basis, M in it
    M = _rotate(M, state["Q"], back=True)
    _accumulate(state["GG"], G, β_s)
    if t % precondition_frequency == 0:
        new = []
        for axis, (F, Q) in enumerate(zip(state["GG"], state["Q"])):
            if F is None:
                new.append(None)
                continue
            order = np.argsort(-np.diag(Q.T @ F @ Q), kind="stable")
            state["V"] = np.take(state["V"], order, axis=axis)
            new.append(np.linalg.qr(F @ Q[:, order])[0])
        state["Q"] = new
    state["M"] = _rotate(M, state["Q"], back=False)
    return θ


def _merge_dims(shape, max_precond_dim):
    """The reference's merge_dims: consecutive dimensions merged while their product is ≤ the limit."""
    out, run = [], 1
    for d in shape:
        if run * d > max_precond_dim:
            out.append(run if run > 1 else d)
            run = d if run > 1 else 1
        else:
            run = run * d
    if run > 1 or not out:
        out.append(run)
    return tuple(out)


def _accumulate(GG, G, β):
    for axis, F in enumerate(GG):
        if F is not None:
            others = [a for a in range(G.ndim) if a != axis]
            F[...] = β * F + (1 - β) * np.tensordot(G, G, axes=(others, others))


def _rotate(X, Q, back):
    """As the reference's project (back: project_back): contract dimension 0 with Q (its rows, or its
    columns going back) and move the result to the end, once per dimension."""
    for Q_i in Q:
        X = np.moveaxis(X, 0, -1) if Q_i is None else np.tensordot(X, Q_i, axes=([0], [1 if back else 0]))
    return X


def shampoo_step(θ, g, state, lr, betas, eps, weight_decay, precondition_frequency,
                 start_preconditioning_step, max_precond_dim, grafting, graft_eps, precondition_1d):
    """Shampoo: Gupta et al. (2018), Algorithm 1, with Anil et al. (2020)'s EMA statistics, blocks, start
    step, preconditioner refresh every k steps and per-block norm grafting (Adam or AdaGrad)."""
    β1, β2 = betas
    t = state["t"] = state.get("t", 0) + 1
    G = as_matrix(g)
    factored = g.ndim >= 2 or (g.ndim == 1 and precondition_1d)
    two_sided = g.ndim >= 2
    b0, b1 = _block(G.shape[0], max_precond_dim), _block(G.shape[1], max_precond_dim)
    blocks = [(i, j) for i in range(0, G.shape[0], b0) for j in range(0, G.shape[1], b1)]
    if "m" not in state:
        state.update(m=np.zeros_like(g), v=np.zeros_like(g), L={}, R={}, P_L={}, P_R={})
        for ij in blocks:
            state["L"][ij], state["P_L"][ij] = np.zeros((b0, b0)), np.zeros((b0, b0))
            state["R"][ij], state["P_R"][ij] = np.zeros((b1, b1)), np.zeros((b1, b1))
    # the grafted optimizer's step
    if grafting == "adagrad":
        state["v"] = state["v"] + g * g
        D = g / (np.sqrt(state["v"]) + graft_eps)
    elif grafting == "adam":
        state["v"] = β2 * state["v"] + (1 - β2) * g * g
        D = g / (np.sqrt(state["v"] / (1 - β2**t)) + graft_eps)
    else:
        D = g
    U = D
    if factored:
        w = 1.0 if β2 == 1 else 1 - β2
        preconditioned = t >= start_preconditioning_step
        refresh = preconditioned and (t - start_preconditioning_step) % precondition_frequency == 0
        S = np.zeros_like(G)
        Dm = as_matrix(D)
        p = 4 if two_sided else 2
        for i, j in blocks:
            Gb = G[i:i + b0, j:j + b1]
            state["L"][i, j] = β2 * state["L"][i, j] + w * Gb @ Gb.T
            state["R"][i, j] = β2 * state["R"][i, j] + w * Gb.T @ Gb
            if refresh:
                state["P_L"][i, j] = _inverse_root(state["L"][i, j], p, eps)
                state["P_R"][i, j] = _inverse_root(state["R"][i, j], p, eps)
            Sb = state["P_L"][i, j] @ Gb
            if two_sided:
                Sb = Sb @ state["P_R"][i, j]
            if grafting != "none":
                norm = np.linalg.norm(Sb)
                Sb = Sb * (np.linalg.norm(Dm[i:i + b0, j:j + b1]) / norm if norm > 0 else 0.0)
            S[i:i + b0, j:j + b1] = Sb
        if preconditioned:
            U = S.reshape(g.shape)
    state["m"] = β1 * state["m"] + (1 - β1) * U
    return θ * (1 - lr * weight_decay) - lr * state["m"]


def _block(d: int, limit: int) -> int:
    return max(b for b in range(1, min(d, limit) + 1) if d % b == 0)


def _inverse_root(F, p, eps):
    λ, Q = np.linalg.eigh(F)
    return Q @ np.diag((np.maximum(λ, 0) + eps) ** (-1 / p)) @ Q.T
