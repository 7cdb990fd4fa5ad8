"""Every optimizer on a CUDA device against the same optimizer on the CPU (needs a GPU: skipped without
one; benchmarks/gpu_check.sh runs it where a GPU is lent).

CI has no GPU: there the Triton kernels are checked by the interpreter (test_triton.py). What only a
real device shows is here: every rule and every hyperparameter variation on its CUDA path (Triton for
elementwise rules, torch ops for the matrix rules), Sophia's estimators with a CPU generator, 8-bit
states, stochastic rounding, and the sharded code under NCCL (one rank: the same collectives, on GPU
tensors).
"""

from __future__ import annotations

import socket

import pytest
import torch

import cases
import optimlab

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
CASES = [(name, label, hyper) for name in optimlab.available() for label, hyper, _ in cases.variations(name)]


def train(name: str, device: torch.device, dtype=torch.float64, steps: int = 6, **hyper):
    """cases.train on `device`: the same parameters, gradients and curvature samples as on the CPU."""
    params = [p.detach().to(device).requires_grad_() for p in cases.make_params(dtype)]
    opt = optimlab.create(name, params, **hyper)
    for step in range(steps):
        cases.refresh_curvature(opt, params, step)
        cases.backward(params, step)
        opt.step()
    return [p.detach().cpu() for p in params], opt


@pytest.mark.parametrize("name,label,hyper", CASES, ids=[f"{n}-{label}" for n, label, _ in CASES])
def test_every_optimizer_on_cuda_equals_the_cpu(name, label, hyper):
    """float64, six steps. SOAP is only required to run and keep the CPU's state shapes: the eigenbasis of
    its early, rank-deficient factors is not unique, and cuSOLVER and LAPACK may pick different ones."""
    hyper = {"ns_dtype": torch.float64, **hyper} if name == "muon" else hyper
    expected, ref_opt = train(name, torch.device("cpu"), **hyper)
    got, opt = train(name, CUDA, **hyper)
    for p, q, (cpu_p, cuda_p) in zip(got, expected, zip(ref_opt.state, opt.state)):
        assert torch.isfinite(p).all()
        shapes = {k: tuple(v.shape) for k, v in opt.state[cuda_p].items() if isinstance(v, torch.Tensor)}
        assert shapes == {k: tuple(v.shape) for k, v in ref_opt.state[cpu_p].items()
                          if isinstance(v, torch.Tensor)}
        if name != "soap":
            torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd"])
@pytest.mark.parametrize("option", ["stochastic_rounding", "kahan_summation"])
def test_bf16_rounding_options_on_cuda_equal_the_cpu(name, option):
    """The random bits are a hash of position, step and seed: the same on both devices."""
    hyper = {option: True, "lr": 1e-2} | ({"momentum": 0.9} if name == "sgd" else {})
    if option == "stochastic_rounding":
        hyper["rounding_seed"] = 7
    expected, _ = train(name, torch.device("cpu"), torch.bfloat16, **hyper)
    got, _ = train(name, CUDA, torch.bfloat16, **hyper)
    for p, q in zip(got, expected):
        torch.testing.assert_close(p.float(), q.float(), rtol=2**-7, atol=2**-7)


def test_eight_bit_states_on_cuda_equal_the_cpu():
    expected, ref_opt = train("adamw8bit", torch.device("cpu"), torch.float32, min_8bit_size=0)
    got, opt = train("adamw8bit", CUDA, torch.float32, min_8bit_size=0)
    for p, q in zip(got, expected):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for cpu_p, cuda_p in zip(ref_opt.state, opt.state):
        for key, value in ref_opt.state[cpu_p].items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:  # codes: a rare one apart
                differ = (opt.state[cuda_p][key].cpu().int() - value.int()).abs()
                assert differ.max() <= 1 and (differ > 0).float().mean() <= 0.01, key


@pytest.fixture(scope="module")
def nccl():
    """A one-rank NCCL process group: the sharded code's collectives on GPU tensors."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor", "muon", "shampoo", "soap", "lars"])
def test_fsdp2_under_nccl_equals_plain_training(nccl, name):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(CUDA)
    sharded = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(CUDA)
    sharded.load_state_dict(plain.state_dict())
    mesh = init_device_mesh("cuda", (1,))
    for layer in (sharded[0], sharded[2], sharded):
        fully_shard(layer, mesh=mesh)
    opts = [optimlab.create(name, m.parameters()) for m in (plain, sharded)]
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)).to(CUDA)
    for _ in range(4):
        for model, opt in zip((plain, sharded), opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(plain.parameters(), sharded.parameters()):
        torch.testing.assert_close(q.full_tensor(), p, rtol=1e-5, atol=1e-6)
