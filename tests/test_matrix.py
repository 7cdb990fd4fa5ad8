"""Muon, Shampoo and SOAP against independent references.

* Muon: torch.optim.Muon on matrices, every hyperparameter varied, in float64 (Newton–Schulz in
  float64 on both sides) to 1e-10 over 20 steps, and close with the default bf16 iteration; the
  AdamW part equal to optimlab's AdamW.
* Shampoo and SOAP: the float64 NumPy transcriptions in tests/matrix_references.py over 30 steps
  (several refreshes), on matrices, a vector and a 4-D tensor.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch import nn

import optimlab
from cases import backward, make_params
import matrix_references as references
from optimlab import param_groups
from optimlab.lab.claim_checks import claims
from optimlab.optimizers import soap as soap_module

MATRICES = [(6, 4), (4, 6), (5, 5), (6, 4)]  # tall, wide, square, and two of one shape (one batch)


def run_pair(ours, theirs, shapes, steps, dtype=torch.float64):
    a, b = make_params(dtype, shapes=shapes), make_params(dtype, shapes=shapes)
    opt_a, opt_b = ours(a), theirs(b)
    for step in range(steps):
        backward(a, step)
        backward(b, step)
        opt_a.step()
        opt_b.step()
    return a, b, opt_a, opt_b


MUON_VARIATIONS = [{}, {"lr": 0.05}, {"weight_decay": 0.0}, {"momentum": 0.5}, {"nesterov": False},
                   {"ns_coefficients": (1.5, -0.5, 0.0)}, {"eps": 100.0}, {"ns_steps": 3},
                   {"adjust_lr_fn": "original"}, {"adjust_lr_fn": "match_rms_adamw"}]


@pytest.mark.parametrize("hp", MUON_VARIATIONS, ids=str)
def test_muon_matches_torch_in_float64(hp):
    hp = {"lr": 0.02, **hp}
    # torch's Newton–Schulz casts to bf16 with .bfloat16(); here that cast keeps float64 instead
    with mock.patch.object(torch.Tensor, "bfloat16", lambda self, *args, **kwargs: self.clone()):
        a, b, opt_a, opt_b = run_pair(lambda ps: optimlab.create("muon", ps, ns_dtype=torch.float64, **hp),
                                      lambda ps: torch.optim.Muon(ps, **hp), MATRICES, steps=20)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(opt_a.state[p]["momentum_buffer"], opt_b.state[q]["momentum_buffer"],
                                   rtol=1e-10, atol=1e-10)


def test_muon_with_bf16_newton_schulz_stays_close_to_torch():
    a, b, _, _ = run_pair(lambda ps: optimlab.create("muon", ps, lr=0.02),
                          lambda ps: torch.optim.Muon(ps, lr=0.02),
                          MATRICES, steps=20, dtype=torch.float32)
    worst = max((p - q).abs().max().item() for p, q in zip(a, b))
    assert worst < 2e-4  # 20 steps of 0.02 × O(1) updates, each with bf16 round-off (~4e-3 relative)


def test_muon_adamw_part_equals_optimlab_adamw():
    shapes = [(7,), (1,), (3,)]
    hp = {"lr": 3e-3, "weight_decay": 0.05}
    ours = {"adamw_betas": (0.8, 0.9), "adamw_eps": 1e-6, **hp}
    adamw = {"betas": (0.8, 0.9), "eps": 1e-6, "path": "tensor", **hp}
    a, b, _, _ = run_pair(lambda ps: optimlab.create("muon", ps, **ours),
                          lambda ps: optimlab.create("adamw", ps, **adamw),
                          shapes, steps=20)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.blocks = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
        self.head = nn.Linear(6, 10)


def test_muon_takes_the_parameter_group_policy(capsys):
    model = Tiny()
    groups = param_groups.build(model, lr=0.02, split_matrices=True)
    assert "head kept out of the matrix groups" in capsys.readouterr().out
    opt = optimlab.create("muon", groups)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    muon_part = {n for n, p in model.named_parameters() if "momentum_buffer" in opt.state[p]}
    assert muon_part == {"blocks.0.weight", "blocks.1.weight"}  # embedding, head and biases: AdamW
    assert all("exp_avg" in opt.state[p] for n, p in model.named_parameters() if n not in muon_part)


def test_muon_flattens_conv_weights_like_their_matrix():
    conv, flat = make_params(shapes=[(3, 2, 2, 2)]), make_params(shapes=[(3, 2, 2, 2)])
    opt_conv = optimlab.create("muon", conv, ns_dtype=torch.float64)
    matrix = [flat[0].detach().reshape(3, 8).clone().requires_grad_()]
    opt_flat = optimlab.create("muon", matrix, ns_dtype=torch.float64)
    for step in range(5):
        backward(conv, step)
        matrix[0].grad = conv[0].grad.reshape(3, 8).clone()
        opt_conv.step()
        opt_flat.step()
    torch.testing.assert_close(conv[0].detach().reshape(3, 8), matrix[0].detach(), rtol=0, atol=1e-14)


# Rank-deficient factors have no unique eigenbasis (any basis of the null space is one), so SOAP's
# trajectory there depends on the LAPACK call; the transcription is compared where factors are full
# rank: max_precond_dim=4 keeps only the ≤ 4-sided factors of these shapes, and the 1-D case is (1,).
SOAP_SHAPES = [(4, 4), (6, 4), (4, 6), (2, 3, 2, 2), (3,), (4, 4)]
SOAP_DEFAULTS = dict(lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1.0, eps=1e-8, weight_decay=0.01,
                     precondition_frequency=10, max_precond_dim=4, merge_dims=False, precondition_1d=False,
                     normalize_grads=False, correct_bias=True)
# 4-D tensors whose factors are full rank from the first gradient both ways: a factor per dimension, and
# merged under max_precond_dim=4 into (2, 3, 4), (4, 3, 2), (5, 4) and (2, 3, 2, 5) (5 > 4: no factor there)
SOAP_4D = [(2, 3, 2, 2), (4, 4), (2, 2, 3, 2), (5, 2, 2, 1), (2, 3, 2, 2), (3,), (2, 3, 2, 5)]
SOAP_VARIATIONS = [{}, {"precondition_frequency": 3}, {"betas": (0.9, 0.99), "shampoo_beta": 0.5},
                   {"normalize_grads": True}, {"correct_bias": False, "weight_decay": 0.0}, {"eps": 1e-3},
                   {"precondition_1d": True, "precondition_frequency": 4,
                    "shapes": [(4, 4), (1,), (2, 1, 2, 1)]},
                   {"precondition_frequency": 3, "shapes": SOAP_4D},
                   {"merge_dims": True, "precondition_frequency": 3, "shapes": SOAP_4D},
                   {"merge_dims": True, "precondition_frequency": 4, "betas": (0.9, 0.99), "shapes": SOAP_4D}]

SHAMPOO_SHAPES = [(4, 6), (6, 4), (5,), (2, 3, 2, 2), (4, 6), (1,)]
SHAMPOO_DEFAULTS = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0, precondition_frequency=10,
                        start_preconditioning_step=10, max_precond_dim=1024, grafting="adam", graft_eps=1e-8,
                        precondition_1d=False)
SHAMPOO_VARIATIONS = [{}, {"precondition_frequency": 3, "start_preconditioning_step": 2, "eps": 1e-6},
                      {"precondition_1d": True, "max_precond_dim": 3, "start_preconditioning_step": 3},
                      {"grafting": "adagrad", "betas": (0.5, 1.0), "eps": 1e-3, "graft_eps": 1e-3},
                      {"grafting": "none", "weight_decay": 0.1},
                      {"max_precond_dim": 2, "start_preconditioning_step": 4}]


def against_transcription(name, step, defaults, hp, steps=30):
    hp = dict(hp)
    shapes = hp.pop("shapes", SOAP_SHAPES if name == "soap" else SHAMPOO_SHAPES)
    ours = {**defaults, **hp}
    params = make_params(shapes=shapes)
    opt = optimlab.create(name, params, **ours)
    ref = [p.detach().numpy().copy() for p in make_params(shapes=shapes)]
    states = [{} for _ in ref]
    for t in range(steps):
        backward(params, t)
        opt.step()
        leaves = [torch.tensor(x).requires_grad_() for x in ref]  # the reference's own trajectory
        backward(leaves, t)
        ref = [step(x, leaf.grad.numpy(), states[i], **ours) for i, (x, leaf) in enumerate(zip(ref, leaves))]
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), torch.from_numpy(q), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hp", SOAP_VARIATIONS, ids=str)
def test_soap_matches_transcription(hp):
    against_transcription("soap", references.soap_step, SOAP_DEFAULTS, hp)


@pytest.mark.parametrize("hp", SHAMPOO_VARIATIONS, ids=str)
def test_shampoo_matches_transcription(hp):
    against_transcription("shampoo", references.shampoo_step, SHAMPOO_DEFAULTS, hp)


def test_soap_first_step_only_gathers_statistics():
    params = make_params(shapes=[(4, 3)])
    before = params[0].detach().clone()
    opt = optimlab.create("soap", params)
    backward(params, 0)
    opt.step()
    assert torch.equal(params[0], before)
    Q = opt.state[params[0]]["Q"]  # Q_L (4 × 4) and Q_R (3 × 3), one after the other
    for Q_i in (Q[:16].view(4, 4), Q[16:].view(3, 3)):
        torch.testing.assert_close(Q_i.mT @ Q_i, torch.eye(len(Q_i), dtype=Q.dtype))


def test_soap_loads_checkpoints_with_separate_factors():
    """Checkpoints from before GG and Q (L, R, Q_L, Q_R per matrix) resume exactly; a 4-D one is refused."""
    import copy

    params = make_params(shapes=[(4, 3), (3,), (2, 3, 2, 2)])
    opt = optimlab.create("soap", params[:2], precondition_frequency=2, precondition_1d=True)
    for step in range(5):
        backward(params, step)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for s, (rows, cols) in zip(saved["state"].values(), [(4, 3), (3, 0)]):  # the old layout
        for key, side, at in (("GG", "L", 0), ("GG", "R", rows * rows),
                              ("Q", "Q_L", 0), ("Q", "Q_R", rows * rows)):
            n = rows if side in ("L", "Q_L") else cols
            if n:
                s[side] = s[key][at:at + n * n].view(n, n).clone()
        del s["GG"], s["Q"]
    resumed = [p.detach().clone().requires_grad_() for p in params[:2]]
    fresh = optimlab.create("soap", resumed, precondition_frequency=2, precondition_1d=True)
    fresh.load_state_dict(saved)
    for step in range(5, 9):
        for ps, o in ((params[:2], opt), (resumed, fresh)):
            backward(ps, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(params[:2], resumed))
    cube = optimlab.create("soap", [params[2]])
    backward(params, 0)
    cube.step()
    old = copy.deepcopy(cube.state_dict())
    old["state"][0]["L"] = old["state"][0].pop("GG")
    with pytest.raises(ValueError, match="factor per dimension"):
        optimlab.create("soap", [params[2]]).load_state_dict(old)


# (64, 32, 3, 3) under the default limit merges fan-out into fan-in, as the reference does
@pytest.mark.parametrize("shape,limit,merged", [((64, 32, 3, 3), 10000, (6144, 3)),
                                                ((64, 32, 3, 3), 512, (64, 288)),
                                                ((2, 3, 2, 2), 4, (2, 3, 4)), ((5, 2, 2, 1), 4, (5, 4)),
                                                ((20, 3), 4, (20, 3)),
                                                ((4, 5, 6), 5, (4, 5, 6)), ((4, 5, 6), 30, (20, 6))])
def test_soap_merge_dims_follows_the_reference(shape, limit, merged):
    h = SimpleNamespace(merge_dims=True, max_precond_dim=limit)
    assert soap_module.merged_shape(shape, h) == merged
    assert references._merge_dims(shape, limit) == merged
    sizes = optimlab.spec("soap").state_tensors(shape, max_precond_dim=limit, merge_dims=True)["GG"][0]
    assert sizes == (sum(d * d for d in merged if d <= limit),)


def test_shampoo_blocks_split_large_dimensions_into_equal_blocks():
    spec = optimlab.spec("shampoo")
    assert spec.state_tensors((1000, 300), max_precond_dim=256)["L"] == ((4 * 2, 250, 250), torch.float32)
    assert spec.state_tensors((1000, 300), max_precond_dim=256)["R"] == ((4 * 2, 150, 150), torch.float32)
    assert "R" not in spec.state_tensors((300,))  # a vector: the grafted diagonal step


@pytest.mark.parametrize("name,bad", [("muon", {"ns_dtype": torch.float16}), ("muon", {"ns_steps": -1}),
                                      ("muon", {"adjust_lr_fn": "rms"}), ("shampoo", {"grafting": "sgd"}),
                                      ("shampoo", {"betas": (0.9, 1.0)}), ("shampoo", {"max_precond_dim": 0}),
                                      ("soap", {"precondition_frequency": 0}),
                                      ("soap", {"shampoo_beta": 1.0})])
def test_bad_hyperparameters_are_named(name, bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key.split("_")[0]):
        optimlab.create(name, make_params(), **bad)


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_same_shape_matrices_are_stepped_as_one_batch(name):
    """A stack of same-shape matrices gives each the result it gets alone (the batching is exact).
    Square matrices: SOAP's first eigenbasis of a rank-deficient factor is not unique (see above)."""
    together = make_params(shapes=[(4, 4)] * 3)
    alone = [make_params(shapes=[(4, 4)] * 3) for _ in range(3)]
    opts = [optimlab.create(name, together)] + [optimlab.create(name, [alone[i][i]]) for i in range(3)]
    for step in range(12):
        for params, opt in zip([together, *alone], opts):
            backward(params, step)
            opt.step()
    for i in range(3):
        torch.testing.assert_close(together[i], alone[i][i], rtol=1e-12, atol=1e-12)


def test_full_matrix_shampoo_turns_with_the_canyon_and_adam_does_not():
    result = claims(["shampoo-captures-correlations"], quick=True)[0]
    n = result.numbers
    assert result.verdict == "confirmed", result.measured
    # rotation-equivariant, up to round-off that L^{-1/2} amplifies while L is rank 1 (ε = 1e-12)
    assert n["shampoo_rotated_canyon"] == pytest.approx(n["shampoo_canyon"], rel=1e-6)
    assert n["adam_rotated_canyon"] > 100 * n["adam_canyon"]


def test_shampoo_root_refresh_costs_more_than_a_plain_step():
    n = claims(["shampoo-expensive-roots"], quick=True)[0].numbers
    assert n["shampoo_refresh"] > n["shampoo_plain"] > n["adamw"]


def test_break_it_full_matrix_ablation_on_the_rotated_canyon():
    from optimlab.lab.ablations import breakit

    result = breakit(["full-matrix"], quick=True)[0]
    assert result.verdict == "confirmed", result.summary
    assert result.details["diagonal_turned"] > 10 * result.details["full_turned"]


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_states_kept_as_one_buffer_resume_bit_identically(name):
    """Same-shape states move into one buffer (views in optimizer.state); checkpoints still round-trip."""
    import copy

    shapes = [(4, 4)] * 3 + [(5,)]
    params = make_params(shapes=shapes)
    opt = optimlab.create(name, params)
    for step in range(10):
        backward(params, step)
        opt.step()
    key = {"muon": "momentum_buffer", "shampoo": "L", "soap": "exp_avg"}[name]
    storages = {opt.state[p][key].untyped_storage().data_ptr() for p in params[:3]}
    assert len(storages) == 1  # one buffer for the three matrices
    saved, resumed = copy.deepcopy(opt.state_dict()), [p.detach().clone().requires_grad_() for p in params]
    fresh = optimlab.create(name, resumed)
    fresh.load_state_dict(saved)
    for step in range(10, 20):
        for ps, o in ((params, opt), (resumed, fresh)):
            backward(ps, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))
    for p, q in zip(params, resumed):
        for k, v in opt.state[p].items():
            other = fresh.state[q][k]
            assert torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other


@pytest.mark.parametrize("name", ["muon", "shampoo", "soap"])
def test_stacked_results_do_not_depend_on_parameter_order(name):
    shapes = [(4, 4), (3, 5), (4, 4), (3, 5), (4, 4)]
    forward, backward_order = make_params(shapes=shapes), make_params(shapes=shapes)
    opts = [optimlab.create(name, forward), optimlab.create(name, list(reversed(backward_order)))]
    for step in range(15):
        for ps, o in zip((forward, backward_order), opts):
            backward(ps, step)
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(forward, backward_order))


def test_muon_adamw_part_of_same_shape_vectors_equals_optimlab_adamw():
    """Same-shape vectors form one group, whose θ reaches the AdamW part as a stack (matrix.stacked)."""
    shapes = [(7,), (7,), (3,), (7,)]
    hp = {"lr": 3e-3, "weight_decay": 0.05}
    a, b, _, _ = run_pair(lambda ps: optimlab.create("muon", ps, adamw_betas=(0.8, 0.9), **hp),
                          lambda ps: optimlab.create("adamw", ps, betas=(0.8, 0.9), path="tensor", **hp),
                          shapes, steps=10)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_a_group_steps_its_parameters_in_place_and_refuses_mismatched_stacks():
    """θ of a group of several parameters is the parameters themselves (no stack, no write-back): the
    optimizer's update lands in their own memory, and arithmetic with a stack of another shape is refused."""
    from optimlab.engine.matrix import Parameters

    params = make_params(shapes=[(4, 4)] * 3)
    before = [p.detach().clone() for p in params]
    opt = optimlab.create("muon", params)
    with mock.patch("optimlab.engine.matrix.unstack", side_effect=AssertionError("written back")):
        for step in range(2):
            backward(params, step)
            opt.step()
    assert not any(torch.equal(p, q) for p, q in zip(params, before))
    θ = Parameters([p.detach() for p in params])
    assert θ.shape == (3, 4, 4) and len(θ) == 3 and θ.dim() == 3
    with pytest.raises(TypeError, match="same shape"):
        θ.sub_(torch.zeros(3, 4, 5))
