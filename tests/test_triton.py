"""The Triton backend, run through Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, conftest.py).

The kernels are the ones a GPU runs, generated from the same traced graph as the C kernel; the
interpreter executes them with numpy, so CI checks every traceable optimizer without a GPU. Shapes are
small and odd (1 element, a partial last chunk, several chunks) so the masks and the chunk table are
exercised.

CUDA mode: with TRITON_INTERPRET=0 (benchmarks/gpu_check.sh) the same tests compile the kernels and run
them on CUDA tensors, against the rule as written on the same CUDA tensors; they are skipped only where
there is no CUDA device. Gradients are computed on the CPU (the shared test loss is a CPU function) and
copied to the GPU; Sophia's curvature refresh, a CPU closure, is left out there on both sides.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cases
import optimlab
from cases import TEST_VALUES, backward, make_params
from optimlab.engine import cgen, graph, paths, tritongen
from optimlab.engine.rule import rule

pytest.importorskip("triton", reason="the test extra installs triton")  # a core install has no triton

DEVICE = torch.device("cpu" if tritongen.interpreted() else "cuda")
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="TRITON_INTERPRET=0 compiles the kernels for a CUDA device: none here")


def train(make, steps: int, dtype: torch.dtype, shapes: list):
    """cases.train, on DEVICE."""
    if DEVICE.type == "cpu":
        return cases.train(make, steps=steps, dtype=dtype, shapes=shapes)
    params = [p.detach().to(DEVICE).requires_grad_() for p in make_params(dtype, 0, shapes)]
    opt = make(params)
    for step in range(steps):
        host = [p.detach().cpu().requires_grad_() for p in params]
        backward(host, step)
        for p, h in zip(params, host):
            p.grad = h.grad.to(DEVICE)
        opt.step()
    return params, opt

SHAPES = [(1,), (3, 5), (2 * tritongen.BLOCK + 7,), (2, 3, 2, 2)]
TRACEABLE = [n for n in optimlab.available() if optimlab.spec(n).rule.traceable]
# Adafactor's matrix views: one element, a single row or column, several tiles each way with partial
# ones (tritongen.BR × BC tiles), more rows and more columns than one loop of the between-pass kernels
# takes (tritongen.LB), a conv weight (factored flattened), and vectors (its unfactored V).
MATRICES = [(1, 1), (1, 7), (9, 1), (2 * tritongen.BR + 1, tritongen.BC + 6), (tritongen.LB + 3, 2),
            (3, tritongen.LB + 9), (2, 3, 2, 2), (5,), (1,)]


def run(name: str, path: str, dtype=torch.float32, steps: int = 6, **hyper):
    make = lambda ps: optimlab.create(name, ps, path=path, **hyper)  # noqa: E731
    return train(make, steps=steps, dtype=dtype, shapes=SHAPES)


ULPS = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2**-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", TRACEABLE)
def test_triton_kernels_equal_the_rule_as_written(name, dtype):
    reference, ref_opt = run(name, "tensor", dtype)
    params, opt = run(name, "triton", dtype)
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.double(), q.double(), rtol=ULPS[dtype], atol=ULPS[dtype])
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value.double(), ref_opt.state[q][key].double(), rtol=ULPS[dtype],
                                           atol=ULPS[dtype], msg=key)


@pytest.mark.parametrize("name", TRACEABLE)
def test_every_flag_reaches_the_triton_kernel(name):
    """Each boolean hyperparameter set to its test value gives the rule-as-written's answer on triton too."""
    spec = optimlab.spec(name)
    flags = {k: TEST_VALUES[k] for k, v in spec.defaults.items()
             if isinstance(v, bool) and k not in spec.preset}
    if flags.get("nesterov"):
        flags["momentum"] = 0.9
    reference, _ = run(name, "tensor", weight_decay=0.1, **flags) if "weight_decay" in spec.defaults else \
        run(name, "tensor", **flags)
    params, _ = run(name, "triton", weight_decay=0.1, **flags) if "weight_decay" in spec.defaults else \
        run(name, "triton", **flags)
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_reductions_are_deterministic_and_a_changing_lr_builds_nothing():
    first, _ = run("lamb", "triton", weight_decay=0.1)
    again, _ = run("lamb", "triton", weight_decay=0.1)
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    params = [torch.randn(s, device=DEVICE).requires_grad_() for s in SHAPES]
    opt = optimlab.LAMB(params, path="triton")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    built = len(paths._kernels)
    for _ in range(5):
        opt.step()
        schedule.step()
    assert len(paths._kernels) == built


def test_every_op_of_the_graph_has_an_entry_in_every_backend():
    ops = graph.UNARY | graph.BINARY | {"where"}
    assert ops <= set(tritongen.OPS), ops - set(tritongen.OPS)
    assert ops <= set(graph.NUMPY_OPS), ops - set(graph.NUMPY_OPS)
    for op in ops:  # the C emitter knows each op (it raises on an unknown one)
        cgen._expr(op, ["a", "b", "c"], "float")


def test_the_triton_path_says_where_it_runs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="the triton path runs on CUDA tensors"):
        cases.train(lambda ps: optimlab.AdamW(ps, path="triton"), steps=1, dtype=torch.float32)

    @rule(traceable=False)
    def by_row(h, θ, g):  # not elementwise: each row moves by its mean gradient
        return (θ - h.lr * g.mean(dim=-1, keepdim=True),)

    class ByRow(optimlab.SGD):
        rule = by_row

    with pytest.raises(ValueError, match="not elementwise"):
        ByRow([torch.zeros(2, requires_grad=True)], path="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("view", ["flatten", "last_two"])
def test_row_and_column_statistics_equal_the_rule_as_written(dtype, view):
    """Adafactor's row and column means, their reductions and the rank-one 1/√V̂ on tiles of the matrix
    view; with `last_two` a 4-D weight is a batch of matrices, which runs the rule as written."""
    def run_adafactor(path):
        make = lambda ps: optimlab.Adafactor(ps, path=path, matrix_view=view, weight_decay=0.1)  # noqa: E731
        return train(make, steps=5, dtype=dtype, shapes=MATRICES)

    (reference, ref_opt), (params, opt) = run_adafactor("tensor"), run_adafactor("triton")
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.double(), q.double(), rtol=ULPS[dtype], atol=ULPS[dtype])
        assert opt.state[p].keys() == ref_opt.state[q].keys()
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value.double(), ref_opt.state[q][key].double(), rtol=ULPS[dtype],
                                           atol=ULPS[dtype], msg=key)


# --- capturable=True: step counts on the device, GradScaler read by the kernels ----------------------

# Rules whose per-step scalars branch on the step count (a `min`, an `if t == 1`) or carry scalar state
# from step to step: capturable=True refuses them with a clear error (they step on the host's count).
HOST_COUNTED = {"adafactor", "adopt", "nadam", "radam", "schedulefree_adamw", "schedulefree_sgd", "sgd"}


@pytest.mark.parametrize("name", TRACEABLE)
def test_capturable_counts_on_the_device_and_equals_the_host_count(name):
    if name in HOST_COUNTED:
        with pytest.raises(ValueError, match=f"capturable=True: the per-step scalars of {name} cannot be "
                                             "computed on the device"):
            run(name, "triton", capturable=True)
        return
    decay = {"weight_decay": 0.1} if "weight_decay" in optimlab.spec(name).defaults else {}
    reference, _ = run(name, "tensor", **decay)
    params, opt = run(name, "triton", capturable=True, **decay)
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        step = opt.state[p]["step"]
        assert isinstance(step, torch.Tensor) and step.device == p.device and float(step) == 6


def scaled_steps(make, steps=5, inf_at=2):
    """A GradScaler run on DEVICE, overflowing at step `inf_at`: params, grads, optimizer, scaler."""
    params = [torch.randn(s, generator=torch.Generator().manual_seed(i)).to(DEVICE).requires_grad_()
              for i, s in enumerate(SHAPES)]
    opt = make(params)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**12)
    for i in range(steps):
        loss = sum(((p - 1) ** 2 * (1 + k)).sum() for k, p in enumerate(params))
        opt.zero_grad()
        scaler.scale(loss * (float("inf") if i == inf_at else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
    return params, [p.grad.clone() for p in params], opt, scaler


def test_grad_scaler_scale_and_found_inf_are_read_by_the_kernel():
    """GradScaler hands a capturable optimizer its scale and found_inf (as to torch's fused ones) instead of
    unscaling on the host: the kernels divide by the scale and skip the overflowing step, whose count is
    taken back on the device; the result is the host-counted tensor path's under the same scaler."""
    reference, ref_grads, ref_opt, ref_scaler = scaled_steps(lambda ps: optimlab.AdamW(ps, path="tensor"))
    params, grads, opt, scaler = scaled_steps(lambda ps: optimlab.AdamW(ps, capturable=True))
    assert opt._step_supports_amp_scaling and not ref_opt._step_supports_amp_scaling
    for p, q, g, h in zip(params, reference, grads, ref_grads):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        # never unscaled on the host: g is the reference's unscaled gradient times the scale (up to what θ's
        # last-ulp differences on a GPU make of a gradient 2(1 + k)(θ − 1): 1e-5 before scaling)
        torch.testing.assert_close(g, h * scaler.get_scale(), rtol=1e-6, atol=1e-5 * scaler.get_scale())
        assert float(opt.state[p]["step"]) == ref_opt.state[q]["step"] == 4  # the overflow is not counted
    assert scaler.get_scale() == ref_scaler.get_scale()


def assert_a_found_inf_changes_nothing(params, opt) -> None:
    """A step whose GradScaler found an inf (NaN gradients, found_inf set) leaves θ and the state as
    they were, bit for bit."""
    before = [p.detach().clone() for p in params], [{k: v.clone() for k, v in opt.state[p].items()}
                                                    for p in params]
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.grad_scale, opt.found_inf = torch.tensor(8.0, device=DEVICE), torch.tensor(1.0, device=DEVICE)
    opt.step()
    for p, old, state in zip(params, *before):
        assert torch.equal(p, old)
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_a_found_inf_changes_nothing(name):
    params = [torch.randn(s, device=DEVICE).requires_grad_() for s in SHAPES]
    opt = optimlab.create(name, params, capturable=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert_a_found_inf_changes_nothing(params, opt)


def test_a_capturable_checkpoint_resumes_identically():
    params, opt = run("adamw", "triton", steps=3, capturable=True)
    saved = copy.deepcopy(opt.state_dict())
    again = [p.detach().clone().requires_grad_() for p in params]
    resumed = optimlab.AdamW(again, capturable=True)
    resumed.load_state_dict(saved)
    for p, q in zip(params, again):
        p.grad = q.grad = torch.randn_like(p)
    opt.step()
    resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(params, again))
    assert all(isinstance(resumed.state[q]["step"], torch.Tensor) and float(resumed.state[q]["step"]) == 4
               for q in again)


# --- mixed dtypes: bf16/fp16 parameters with fp32 state, fp32 math -----------------------------------


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["adamw", "lamb", "lion", "adafactor"])
def test_low_precision_parameters_with_fp32_state(name, low):
    """What torch's fused kernels take: bf16/fp16 θ and g, fp32 state; math in fp32, θ rounded once. The
    engine is called directly (the optimizers make state in the parameter's dtype): the kernels against the
    rule as written with the same dtypes, beside a group whose state is in the parameter's own dtype."""
    spec = optimlab.spec(name)
    opt = spec.cls([torch.zeros(2, requires_grad=True)], **({"weight_decay": 0.1} if name != "lion" else {}))
    h = opt.hyper(opt.param_groups[0])
    kept = opt.rule.kept(h)
    shapes = MATRICES if name == "adafactor" else SHAPES

    def make(seed):
        g = torch.Generator().manual_seed(seed)
        params = [torch.randn(s, generator=g).to(DEVICE, low) for s in shapes]
        states = {sym: [s.create(p.float(), h) if opt.rule.keeps(s, p, h) else None for p in params]
                  for sym, s in kept.items()}
        states = {sym: [x if x is None or i % 3 else x.to(low) for i, x in enumerate(xs)]  # some in low
                  for sym, xs in states.items()}
        return params, states

    (ref, ref_states), (params, states) = make(0), make(0)
    for step in range(1, 5):
        hs = SimpleNamespace(**vars(h), **opt.rule.step_scalars(h, step, {}))
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(step)).to(DEVICE, low)
                 for p in params]
        live = {sym: xs for sym, xs in states.items() if any(x is not None for x in xs)}
        paths.run("tensor", opt.rule, hs, ref, grads, {k: ref_states[k] for k in live})
        paths.run("triton", opt.rule, hs, params, grads, live)
    assert any(x.dtype == torch.float32 for xs in states.values() for x in xs if x is not None)
    for p, q in zip(params, ref):
        assert p.dtype == low
        torch.testing.assert_close(p.float(), q.float(), rtol=2**-7, atol=2**-7)
    for sym, xs in states.items():
        for x, y in zip(xs, ref_states[sym]):
            if x is not None:
                assert x.dtype == y.dtype
                torch.testing.assert_close(x.float(), y.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a CUDA device (TRITON_INTERPRET=0)")
@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_capturable_steps_replay_under_a_cuda_graph(name):
    """capturable=True, captured once in a CUDA graph and replayed, steps as eager steps do, bit for bit
    (8-bit AdamW: its codes and block scales too)."""
    params = [torch.randn(s, device=DEVICE).requires_grad_() for s in SHAPES]
    twins = [p.detach().clone().requires_grad_() for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    extra = {"min_8bit_size": 0} if name == "adamw8bit" else {}
    captured, eager = (optimlab.create(name, ps, capturable=True, **extra) for ps in (params, twins))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (state, kernels, device tables) off the default stream
        for _ in range(3):
            captured.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    for _ in range(3):
        eager.step()
    for _ in range(5):
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        assert all(torch.equal(v, eager.state[q][k]) for k, v in captured.state[p].items())
        assert float(captured.state[p]["step"]) == 8


def test_every_kernel_compiles_for_a_gpu_without_one(tmp_path):
    """The interpreter runs a kernel's Python; a GPU needs it compiled. tests/triton_compile.py compiles
    every traceable rule's kernels for an H100 (through PTX to a cubin by triton's own ptxas), in a process
    without the interpreter: what only a GPU compiler refuses fails here, with no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "triton_compile.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    traceable = sum(optimlab.spec(n).rule.traceable for n in optimlab.available())
    assert int(done.stdout.split()[-1]) >= 2 * traceable  # at least a pass and a combine (or lines) each


# --- 8-bit states: codes and block scales read and written by the kernel (engine/codec.py) ---------------

# One element, a block less one, one block, a block and one (a short last block), several blocks in a
# partial chunk, a matrix of whole chunks and a short tail: all in one launch.
CODED_SHAPES = [(1,), (255,), (256,), (257,), (1000,), (3, 700), (2 * tritongen.BLOCK + 7,)]


def train_8bit(path: str, dtype=torch.float32, steps: int = 6, grads=None):
    """adamw8bit with every tensor coded, on the shared loss (or on `grads(step)`, per tensor): the fused
    C kernel on the CPU, the rest on DEVICE."""
    device = torch.device("cpu") if path == "fused" else DEVICE
    params = [p.detach().to(device).requires_grad_() for p in make_params(dtype, 0, CODED_SHAPES)]
    opt = optimlab.create("adamw8bit", params, path=path, lr=1e-2, weight_decay=0.1, min_8bit_size=0)
    for step in range(steps):
        host = [p.detach().cpu().requires_grad_() for p in params]
        backward(host, step)
        given = grads(step) if grads is not None else [h.grad for h in host]
        for p, g in zip(params, given):
            p.grad = g.to(device, dtype)
        opt.step()
    return params, opt


def assert_same_8bit_state(params, opt, ref_params, ref_opt, ulps: float):
    """Codes bit for bit, block scales bit for bit (NaN where NaN), parameters to a few ulps."""
    for p, q in zip(params, ref_params):
        assert {k for k in opt.state[p]} == {k for k in ref_opt.state[q]}
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor) and key != "step":
                other = ref_opt.state[q][key]
                assert value.dtype == other.dtype, key
                torch.testing.assert_close(value.cpu(), other.cpu(), rtol=0, atol=0, equal_nan=True, msg=key)
        torch.testing.assert_close(p.detach().cpu().double(), q.detach().cpu().double(), rtol=ulps, atol=ulps,
                                   equal_nan=True)


def forbid_decoding_around(monkeypatch):
    """From here on the Triton kernel must read the codes itself: decoding states around a kernel
    (codec.decoded, as the tensor path and the reference runs do) fails the test."""
    def refuse(run, rule, *args):
        raise AssertionError(f"{rule.name}: states decoded around the kernel")

    monkeypatch.setattr(paths.codec, "decoded", refuse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_eight_bit_codes_equal_the_c_kernels_and_the_rule_as_written(dtype, monkeypatch):
    """After several steps the kernel's codes and block scales equal, bit for bit, those of the fused C
    kernel and of the tensor path (decode, the rule as written, codec.encode in torch ops): the same
    float32 operations in the same order, FMA contraction off on every path."""
    fused, fused_opt = train_8bit("fused", dtype)
    tensor, tensor_opt = train_8bit("tensor", dtype)
    forbid_decoding_around(monkeypatch)
    params, opt = train_8bit("triton", dtype)
    assert all(opt.state[p]["exp_avg_codes"].dtype == torch.uint8 for p in params)
    ulps = ULPS[dtype] / 10 if dtype != torch.bfloat16 else ULPS[dtype]
    assert_same_8bit_state(params, opt, fused, fused_opt, ulps)
    assert_same_8bit_state(params, opt, tensor, tensor_opt, ulps)


def test_eight_bit_nan_and_inf_gradients_do_what_the_other_paths_do(monkeypatch):
    """A NaN gradient makes its block's absmax NaN (and the block's codes the zero code), an inf one an
    inf absmax, as codec.encode and the C kernel do; the rest of the tensor steps normally."""
    def grads(step):
        g = [torch.randn(s, generator=torch.Generator().manual_seed(step)) for s in CODED_SHAPES]
        if step == 2:
            g[4][300] = float("nan")  # block 1 of 1000 elements
            g[5][2, 10] = float("inf")  # block 5 of the matrix
            g[6][-1] = float("-inf")  # the short last block
        return g

    runs = {path: train_8bit(path, grads=grads, steps=3) for path in ("fused", "tensor")}
    forbid_decoding_around(monkeypatch)
    params, opt = train_8bit("triton", grads=grads, steps=3)
    absmax = opt.state[params[4]]["exp_avg_absmax"].cpu()
    assert absmax[1].isnan() and absmax[[0, 2, 3]].isfinite().all()
    assert opt.state[params[5]]["exp_avg_sq_absmax"].cpu().isinf().tolist() == [i == 5 for i in range(9)]
    assert opt.state[params[6]]["exp_avg_absmax"].cpu()[-1].isinf()
    for ref, ref_opt in runs.values():
        assert_same_8bit_state(params, opt, ref, ref_opt, 1e-6)


def test_an_eight_bit_checkpoint_resumes_identically_on_the_triton_path():
    params, opt = train_8bit("triton", steps=3)
    saved = copy.deepcopy(opt.state_dict())
    twins = [p.detach().clone().requires_grad_() for p in params]
    resumed = optimlab.create("adamw8bit", twins, path="triton", lr=1e-2, weight_decay=0.1, min_8bit_size=0)
    resumed.load_state_dict(saved)
    for step in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step)).to(DEVICE)
            q.grad = p.grad.clone()
        opt.step()
        resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    for p, q in zip(params, twins):
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, resumed.state[q][key]), key


def test_eight_bit_lamb_is_decoded_around_its_kernels_and_refuses_capturable():
    """A rule of several passes (LAMB's norms) cannot read codes in its kernels: its states are decoded
    around them, and still equal the rule as written's; capturable=True then refuses them clearly."""
    codecs = {"m": paths.codec.SIGNED, "v": paths.codec.UNSIGNED}
    cls = type("lamb_8bit", (optimlab.LAMB,), {"codecs": codecs})

    def run_lamb(path, **flags):
        return train(lambda ps: cls(ps, path=path, weight_decay=0.1, **flags), steps=4, dtype=torch.float32,
                     shapes=CODED_SHAPES)

    (ref, _), (params, opt) = run_lamb("tensor"), run_lamb("triton")
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        assert opt.state[p]["exp_avg_codes"].dtype == torch.uint8
    with pytest.raises(ValueError, match="capturable=True: the 8-bit states of lamb are decoded around"):
        run_lamb("triton", capturable=True)


def test_eight_bit_capturable_counts_on_the_device_and_skips_a_found_inf(monkeypatch):
    """capturable=True: the coded kernel with the per-step scalars computed on the device from each step
    count; its codes equal the host-counted kernel's (the scalars agree to float64 rounding: a value at a
    decision boundary could take the neighbouring code, none does here). A GradScaler overflow stores
    nothing: codes, scales and parameters stay as they were."""
    host, host_opt = train_8bit("triton")
    forbid_decoding_around(monkeypatch)
    params = [p.detach().to(DEVICE).requires_grad_() for p in make_params(torch.float32, 0, CODED_SHAPES)]
    opt = optimlab.create("adamw8bit", params, lr=1e-2, weight_decay=0.1, min_8bit_size=0, capturable=True)
    for step in range(6):
        copies = [p.detach().cpu().requires_grad_() for p in params]
        backward(copies, step)
        for p, c in zip(params, copies):
            p.grad = c.grad.to(DEVICE)
        opt.step()
    assert_same_8bit_state(params, opt, host, host_opt, 1e-6)
    assert all(float(opt.state[p]["step"]) == 6 for p in params)
    assert_a_found_inf_changes_nothing(params, opt)
