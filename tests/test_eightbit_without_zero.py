"""8-bit AdamW's `v_without_zero` option (Li et al. 2023: the zero point of the second moment's map): the
step it prevents, against fp32 AdamW; a float64 transcription with v's lowest code decoding to 10⁻⁷; every
path alike; the default unchanged; checkpoints and the bytes."""

from __future__ import annotations

import copy

import pytest
import torch
from eightbit_references import adamw8bit_step, dynamic_map_from_bits

import optimlab
from optimlab.engine import codec
from optimlab.optimizers.adam8bit import WITHOUT_ZERO

try:
    import triton  # noqa: F401  (the test extra installs it; its interpreter runs the kernels on CPU tensors)
except ImportError:
    PATHS = ["tensor", "foreach", "fused"]
else:
    PATHS = ["tensor", "foreach", "fused", "triton"]
LR = 1e-3


def _gradient_that_stops(n=256) -> list[torch.Tensor]:
    """One large element and many 10⁵ times smaller, three steps; then the small ones' gradient is 0 (a
    unit that stopped firing): v of the small ones is under 10⁻⁷ of the block's absmax, m is not."""
    g = torch.full((n,), 1e-5)
    g[0] = 1.0
    stopped = g.clone()
    stopped[1:] = 0.0
    return [g, g, g, stopped]


def _last_step(name: str, **options) -> torch.Tensor:
    p = torch.zeros(256, requires_grad=True)
    opt = optimlab.create(name, [p], lr=LR, weight_decay=0.0, **options)
    for grad in _gradient_that_stops():
        before = p.detach().clone()
        p.grad = grad.clone()
        opt.step()
    return (p.detach() - before)[1:].abs().max() / LR


@pytest.mark.parametrize("path", PATHS)
def test_the_zero_point_step_is_hundreds_of_adams_and_the_option_bounds_it(path):
    adam = _last_step("adamw")
    assert 0.3 < adam < 1.5  # Adam's step: m̂/√v̂ of order one
    assert _last_step("adamw8bit", min_8bit_size=0, path=path) > 100 * adam  # v coded 0: m̂/ε
    assert _last_step("adamw8bit", min_8bit_size=0, path=path, v_without_zero=True) <= adam


def test_the_map_without_zero_differs_only_in_the_value_of_code_zero():
    assert WITHOUT_ZERO.table[0] == pytest.approx(1e-7)
    assert (WITHOUT_ZERO.table[1:] == codec.UNSIGNED.table[1:]).all()
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) ** 8  # several round to code 0
    ours, theirs = WITHOUT_ZERO.empty(x), codec.UNSIGNED.empty(x)
    WITHOUT_ZERO.encode(x, *ours)
    codec.UNSIGNED.encode(x, *theirs)
    assert torch.equal(ours[0], theirs[0]) and (ours[0] == 0).any()


@pytest.mark.parametrize("path", PATHS)
def test_matches_a_float64_transcription_with_v_floored(path):
    """Five steps, the last with a quarter of the gradients zero, against the float64 step whose v codes
    decode through the floored values (chosen on the standard map)."""
    n = 600
    g = torch.Generator().manual_seed(5)
    θ0 = torch.randn(n, generator=g, dtype=torch.float64)
    scales = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 3)  # gradients over decades
    grads = [torch.randn(n, generator=g, dtype=torch.float64) * scales for _ in range(5)]
    grads[-1][::4] = 0.0
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    p = θ0.clone().requires_grad_()
    opt = optimlab.create("adamw8bit", [p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                          weight_decay=hp["weight_decay"], min_8bit_size=0, v_without_zero=True, path=path)
    signed, unsigned = dynamic_map_from_bits(True), dynamic_map_from_bits(False)
    floored = [1e-7, *unsigned[1:]]
    θ, mc, ma, vc, va = θ0.tolist(), [127] * n, [0.0] * 3, [0] * n, [0.0] * 3
    for t, grad in enumerate(grads, start=1):
        p.grad = grad.clone()
        opt.step()
        θ, mc, ma, vc, va = adamw8bit_step(θ, grad.tolist(), mc, ma, vc, va, signed, unsigned, t=t,
                                           v_decoded_by=floored, **hp)
    assert (torch.tensor(vc) == 0).sum() > 10  # the floor was read
    torch.testing.assert_close(p.detach(), torch.tensor(θ, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert (opt.state[p]["exp_avg_sq_codes"].int() - torch.tensor(vc)).abs().max() <= 1


def test_off_by_default_and_the_same_bytes():
    p = torch.zeros(8192, requires_grad=True)
    assert optimlab.create("adamw8bit", [p]).param_groups[0]["v_without_zero"] is False
    spec = optimlab.spec("adamw8bit")
    assert spec.state_bytes((4096, 4096), v_without_zero=True) == spec.state_bytes((4096, 4096))
    with pytest.raises(ValueError, match="v_without_zero must be True or False"):
        optimlab.create("adamw8bit", [p], v_without_zero="yes")


def test_a_checkpoint_keeps_the_option_and_the_same_steps():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4096, generator=g).requires_grad_()
    opt = optimlab.create("adamw8bit", [p], lr=1e-2, v_without_zero=True)
    grads = [torch.randn(4096, generator=g) * torch.exp(torch.randn(4096, generator=g) * 3) for _ in range(4)]
    for grad in grads[:2]:
        p.grad = grad.clone()
        opt.step()
    q = p.detach().clone().requires_grad_()
    other = optimlab.create("adamw8bit", [q], lr=1e-2)  # the option comes from the checkpoint
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.param_groups[0]["v_without_zero"] is True
    for grad in grads[2:]:
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        other.step()
    assert torch.equal(p, q)


def test_the_rule_source_names_the_map():
    from optimlab.source import diff

    shown = diff("adamw8bit", "adamw8bit:v_without_zero=True")
    assert "+#     unsigned dynamic map without zero" in shown and "-#     unsigned dynamic map;" in shown


@pytest.mark.skipif("triton" not in PATHS, reason="the test extra installs triton")
def test_capturable_steps_keep_the_option():
    """capturable=True (step counts on the device, the Triton path) decodes v through the same map."""
    options = dict(min_8bit_size=0, path="triton", v_without_zero=True, capturable=True)
    assert _last_step("adamw8bit", **options) <= _last_step("adamw")
