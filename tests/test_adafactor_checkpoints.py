"""Adafactor checkpoints cross between optimlab and torch.optim.Adafactor in both directions, ≥ 3-D
parameters included: a checkpoint records its factoring (`matrix_view` in its param groups), and one
made by torch loads with torch's factoring (the last two dimensions)."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import backward, make_params, train

import optimlab

SHAPES = [(4, 3), (2, 3, 2, 2), (7,), (3, 1, 5)]  # a matrix, conv-like 4-D and 3-D tensors, a vector


def continue_both(params, opt, other_params, other, steps=range(10, 20)):
    for step in steps:
        backward(params, step)
        opt.step()
        backward(other_params, step)
        other.step()
    for p, q in zip(params, other_params):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_a_torch_checkpoint_loads_with_torchs_factoring_and_continues_as_torch(float64_default, path):
    params, torch_opt = train(lambda ps: torch.optim.Adafactor(ps), steps=10, shapes=SHAPES)
    mine = [p.detach().clone().requires_grad_() for p in params]
    opt = optimlab.Adafactor(mine, path=path)  # the default factoring, "flatten", differs for ≥ 3-D
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    assert opt.param_groups[0]["matrix_view"] == "last_two"
    continue_both(mine, opt, params, torch_opt)


@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_an_optimlab_checkpoint_loads_into_torch_where_the_factoring_agrees(float64_default, path):
    params, opt = train(lambda ps: optimlab.Adafactor(ps, matrix_view="last_two", path=path), steps=10,
                        shapes=SHAPES)
    theirs = [p.detach().clone().requires_grad_() for p in params]
    torch_opt = torch.optim.Adafactor(theirs)
    torch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    continue_both(params, opt, theirs, torch_opt)


def test_a_checkpoint_keeps_the_factoring_it_was_made_with(float64_default):
    params, opt = train(lambda ps: optimlab.Adafactor(ps), steps=10, shapes=SHAPES)  # "flatten"
    resumed = [p.detach().clone().requires_grad_() for p in params]
    other = optimlab.Adafactor(resumed, matrix_view="last_two")
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.param_groups[0]["matrix_view"] == "flatten"
    continue_both(params, opt, resumed, other)


def test_statistics_that_do_not_fit_the_factoring_are_a_clear_error():
    params, opt = train(lambda ps: optimlab.Adafactor(ps), steps=3, shapes=SHAPES)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["matrix_view"]  # as if written by a tool that keeps torch's keys only: read as torch's
    fresh = optimlab.Adafactor([p.detach().clone().requires_grad_() for p in params])
    with pytest.raises(ValueError, match=r"parameter 1 .*row_var.*matrix_view='flatten'"):
        fresh.load_state_dict(saved)
    assert not fresh.state  # nothing half-loaded


def test_a_checkpoint_for_parameters_of_another_shape_is_a_clear_error():
    _, opt = train(lambda ps: optimlab.Adafactor(ps), steps=3, shapes=SHAPES)
    other = make_params(shapes=[(4, 3), (2, 5, 3), (7,), (3, 1, 5)])
    with pytest.raises(ValueError, match="another shape"):
        optimlab.Adafactor(other).load_state_dict(copy.deepcopy(opt.state_dict()))
