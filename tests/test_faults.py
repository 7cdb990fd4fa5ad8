"""Fault injection: each input that once crashed the interpreter or corrupted parameters, and what it does
now.

Whatever could kill the interpreter if the engine regressed (out-of-bounds reads in the C kernel, a
damaged library mapped into the process) runs in a subprocess, so a regression fails one test instead of
the whole suite.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import optimlab
from cases import backward, make_params, train
from optimlab.engine import boundary, native, paths
from optimlab.engine.boundary import ParameterMismatch
from optimlab.engine.graph import trace
from optimlab.engine.rule import rule

SRC = str(Path(__file__).resolve().parents[1] / "src")


def isolated(code: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with optimlab importable; a crash shows as a signal exit code."""
    environ = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=timeout)


def assert_clean(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    for text in expected:
        assert text in done.stdout, done.stdout + done.stderr[-2000:]


# --- state that does not fit its parameter -------------------------------------------------------


@pytest.mark.parametrize("saved_shape,why", [((3,), "smaller"), ((4, 4), "larger"), ((2, 6), "reshaped"),
                                             ((4, 3), "transposed")])
def test_a_checkpoint_of_another_shape_is_refused_naming_the_parameter(saved_shape, why):
    done = isolated(f"""
        import torch, optimlab
        from optimlab.engine.boundary import ParameterMismatch
        small = torch.nn.Linear(1, {saved_shape[0]} if {len(saved_shape)} == 1 else 1)
        w = torch.zeros({saved_shape}, requires_grad=True)
        opt = optimlab.AdamW([w]); w.grad = torch.ones_like(w); opt.step()
        saved = opt.state_dict()
        big = torch.nn.Parameter(torch.zeros(3, 4) if {len(saved_shape)} == 2 else torch.zeros(5_000_000))
        opt2 = optimlab.AdamW([big]); opt2.load_state_dict(saved)
        big.grad = torch.ones_like(big)
        before = big.detach().clone()
        try:
            opt2.step()
        except ParameterMismatch as err:
            print("refused:", err)
        print("unchanged", torch.equal(before, big.detach()))
    """)
    assert_clean(done, "refused: parameter 0 of group 0: state 'exp_avg' has shape", "unchanged True")


def test_named_parameters_are_named_in_the_error():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = optimlab.AdamW(model.named_parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    opt.state[model[0].bias]["exp_avg"] = torch.zeros(5)
    match = r"parameter 1 of group 0 \(0.bias\): state 'exp_avg' has shape"
    with pytest.raises(ParameterMismatch, match=match):
        opt.step()


def test_a_number_where_a_state_tensor_belongs_is_refused_naming_it():
    """A hand-edited checkpoint: a float for a state tensor, for an elementwise and a declared state."""
    for opt_class, key in [(optimlab.AdamW, "exp_avg"), (optimlab.Adafactor, "row_var")]:
        p = torch.nn.Parameter(torch.ones(3, 4))
        opt = opt_class([p])
        p.grad = torch.ones_like(p)
        opt.step()
        opt.state[p][key] = 0.5
        with pytest.raises(ParameterMismatch, match=f"state '{key}' is a float, not a tensor"):
            opt.step()


# --- gradients that do not fit ---------------------------------------------------------------------


def test_a_gradient_of_another_size_or_dtype_is_refused_not_read_out_of_bounds():
    done = isolated("""
        import torch, optimlab
        from optimlab.engine.boundary import ParameterMismatch
        for make in [lambda p: torch.ones(3), lambda p: torch.ones(p.shape, dtype=torch.float64)]:
            p = torch.nn.Parameter(torch.zeros(5_000_000))
            opt = optimlab.AdamW([p])
            p.grad = torch.zeros_like(p)
            p.grad.data = make(p)  # .data bypasses autograd's own check
            try:
                opt.step()
            except ParameterMismatch as err:
                print("refused:", err)
            print("finite", bool(torch.isfinite(p).all()), "untouched", bool((p == 0).all()))
    """)
    assert_clean(done, "the gradient is (3,) float32 on cpu but the parameter is (5000000,) float32",
                 "the gradient is (5000000,) float64 on cpu but the parameter is (5000000,) float32")
    assert done.stdout.count("finite True untouched True") == 2


# --- the parameter's dtype changes after the state exists --------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("path", ["tensor", "foreach", "fused"])
def test_state_follows_its_parameter_after_model_to_dtype(dtype, path, monkeypatch):
    """As torch's load_state_dict casts state to the parameter's dtype: no NaN, no heap corruption."""
    monkeypatch.setattr(boundary, "_warned", set())  # warned once per process: make this test's visible
    def run(convert_state_first: bool):
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 32)
        opt = optimlab.AdamW(model.parameters(), lr=1e-2, path=path)
        x = torch.randn(16, 64)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        if convert_state_first:  # the reference: a checkpoint cast as torch's load_state_dict casts it
            saved = copy.deepcopy(opt.state_dict())
            model.to(dtype)
            opt = optimlab.AdamW(model.parameters(), lr=1e-2, path=path)
            opt.load_state_dict(saved)
        else:
            model.to(dtype)
        for _ in range(3):
            opt.zero_grad()
            model(x.to(dtype)).float().square().mean().backward()
            opt.step()
        return model, opt

    with pytest.warns(RuntimeWarning, match="state follows its parameter"):
        model, opt = run(convert_state_first=False)
    reference, _ = run(convert_state_first=True)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.dtype == dtype and torch.isfinite(p).all()
        assert torch.equal(p, q)
        assert all(v.dtype == dtype for k, v in opt.state[p].items() if isinstance(v, torch.Tensor))


def test_model_to_float64_after_state_does_not_corrupt_the_heap():
    done = isolated("""
        import warnings, torch, optimlab
        warnings.simplefilter("ignore")
        model = torch.nn.Linear(512, 512)
        opt = optimlab.AdamW(model.parameters())
        for dtype in [torch.float32, torch.float64, torch.float64]:
            model.to(dtype)
            opt.zero_grad()
            model(torch.randn(8, 512, dtype=dtype)).sum().backward()
            opt.step()
        print("finite", all(bool(torch.isfinite(p).all()) for p in model.parameters()))
    """)
    assert_clean(done, "finite True")


# --- tensor subclasses ---------------------------------------------------------------------------------


class Tagged(torch.Tensor):
    """A tensor subclass of the kind users write (logging, tagging): never a raw pointer for it."""


def test_a_tensor_subclass_parameter_takes_the_rule_as_written():
    plain = make_params(torch.float32)
    tagged = [torch.nn.Parameter(p.detach().clone().as_subclass(Tagged)) for p in plain]
    reference = optimlab.AdamW(plain)
    opt = optimlab.AdamW(tagged)
    for step in range(5):
        backward(plain, step)
        for p, q in zip(tagged, plain):
            p.grad = q.grad.clone().as_subclass(Tagged)
        reference.step()
        opt.step()
    for p, q in zip(tagged, plain):
        torch.testing.assert_close(p.detach().as_subclass(torch.Tensor), q.detach(), rtol=1e-5, atol=1e-6)


FSDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist, optimlab
from torch.distributed.fsdp import fully_shard
rank, world = int(sys.argv[1]), 2
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=world)
torch.manual_seed(0)
layers = [torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)]  # 5 and 3 rows: shards of unequal size
model = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])
for name in ["adamw", "lion", "sgd", "lamb"]:
    twin = torch.nn.Sequential(*[torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)])
    sharded = torch.nn.Sequential(*[torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)])
    sharded.load_state_dict(model.state_dict()); twin.load_state_dict(model.state_dict())
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer)
    fully_shard(sharded)
    ref = optimlab.create(name, twin.parameters(), lr=0.05)
    opt = optimlab.create(name, sharded.parameters(), lr=0.05)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        for m, o, batch in [(twin, ref, x), (sharded, opt, x[rank * 4:(rank + 1) * 4])]:
            o.zero_grad()
            m(batch).square().mean().backward()
            o.step()
    full = {k: v.full_tensor() for k, v in sharded.state_dict().items()}
    err = max((full[k] - v).abs().max().item() for k, v in twin.state_dict().items())
    if rank == 0:
        print(name, "max difference", f"{err:.2e}", flush=True)
dist.destroy_process_group()
"""


def test_fsdp2_parameters_never_reach_the_c_kernel_and_match_unsharded_training(tmp_path):
    """DTensors report data_ptr() == 0: elementwise rules run on the local shards; LAMB's norms on the
    whole tensor (DTensor ops), so a sharded run equals the unsharded one on the same global batch."""
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    port = str(29600 + os.getpid() % 300)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[1][-3000:] for o in outs)
    lines = dict(line.split(" max difference ") for line in outs[0][0].strip().splitlines())
    assert sorted(lines) == ["adamw", "lamb", "lion", "sgd"]
    for name, err in lines.items():
        assert float(err) < 1e-5, (name, err)


# --- the kernel cache and the compiler ---------------------------------------------------------------

STEP_ONCE = """
    import torch, optimlab
    p = torch.nn.Parameter(torch.arange(6.0))
    opt = optimlab.AdamW([p], lr=0.1, path="{path}")
    p.grad = torch.ones(6)
    opt.step()
    print("result", [round(v, 4) for v in p.tolist()])
"""
EXPECTED = "result [-0.1, 0.899, 1.898, 2.897, 3.896, 4.895]"


def test_a_truncated_kernel_in_the_cache_is_rebuilt_not_mapped(tmp_path):
    env = {"OPTIMLAB_CACHE_DIR": str(tmp_path)}
    assert_clean(isolated(STEP_ONCE.format(path="fused"), env), EXPECTED)
    libraries = list(tmp_path.glob("kernel-*.so"))
    assert libraries
    for library in libraries:
        library.write_bytes(library.read_bytes()[:3000])  # a crash mid-write, a full disk
    for _ in range(2):  # and it stays healthy afterwards
        assert_clean(isolated(STEP_ONCE.format(path="fused"), env), EXPECTED)
    assert all(native._verified(lib, lib.with_suffix(".sha256")) for lib in libraries)


def test_a_compiler_that_makes_nothing_does_not_poison_the_cache(tmp_path):
    env = {"OPTIMLAB_CACHE_DIR": str(tmp_path), "OPTIMLAB_CC": "/bin/true"}
    done = isolated(STEP_ONCE.format(path="fused"), env)
    assert_clean(done, EXPECTED)
    assert "OPTIMLAB_CC='/bin/true' is not usable (/bin/true: made no shared library); using" in done.stderr
    assert_clean(isolated(STEP_ONCE.format(path="fused"), {"OPTIMLAB_CACHE_DIR": str(tmp_path)}), EXPECTED)


def test_a_configured_compiler_that_does_not_exist_is_named_in_a_warning(tmp_path):
    done = isolated(STEP_ONCE.format(path="auto"), {"OPTIMLAB_CACHE_DIR": str(tmp_path),
                                                    "OPTIMLAB_CC": "/nonexistent/cc"})
    assert_clean(done, EXPECTED)
    assert "OPTIMLAB_CC='/nonexistent/cc' is not an executable compiler" in done.stderr


def test_a_hanging_compiler_times_out_and_auto_falls_back_to_foreach(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ["cc", "gcc", "clang", "hang"]:
        script = bin_dir / name
        script.write_text("#!/bin/sh\nexec /bin/sleep 600\n")
        script.chmod(0o755)
    env = {"OPTIMLAB_CACHE_DIR": str(tmp_path / "cache"), "OPTIMLAB_CC": "hang", "CC": "",
           "PATH": str(bin_dir), "OPTIMLAB_CC_TIMEOUT": "1"}
    done = isolated(STEP_ONCE.format(path="auto"), env, timeout=120)
    assert_clean(done, EXPECTED)
    assert "fused path unavailable, using foreach" in done.stderr and "no answer in 1 s" in done.stderr
    fused = isolated(STEP_ONCE.format(path="fused"), env, timeout=120)
    assert fused.returncode == 1 and "CompilerUnavailable: no usable C compiler" in fused.stderr


@pytest.mark.parametrize("kind", ["a file", "unwritable"])
def test_an_unusable_cache_directory_falls_back_to_a_private_one(tmp_path, kind):
    if kind == "a file":
        where = tmp_path / "not-a-folder"
        where.write_text("")
    else:
        where = Path("/proc/optimlab-cache")  # not creatable, even by root
    done = isolated(STEP_ONCE.format(path="fused"), {"OPTIMLAB_CACHE_DIR": str(where)})
    assert_clean(done, EXPECTED)
    assert done.stderr.count(f"kernel cache {where} is unusable") == 1


def test_generated_code_that_does_not_compile_is_our_bug_and_raises(monkeypatch):
    """Not a silent fall back to foreach: a working compiler rejecting our C is a bug the tests must see."""
    monkeypatch.setattr(paths, "_kernels", type(paths._kernels)(8))
    monkeypatch.setattr(paths.cgen, "generate", lambda *a, **k: "this is not C;")
    with pytest.raises(native.KernelBuildError, match="rejected a generated kernel"):
        train(lambda ps: optimlab.AdamW(ps, path="auto"), steps=1, dtype=torch.float32)


# --- caches keyed by what the rule is ------------------------------------------------------------------


def make_rule(scale: float):
    @rule()
    def shrink(h, θ, g):  # the same name each time, as when a notebook cell is edited and re-run
        return (θ - scale * h.lr * g,)

    return shrink


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_a_rule_redefined_under_the_same_name_runs_its_new_math(path):
    class Shrink(optimlab.SGD):
        pass

    results = []
    for scale in (1.0, 3.0):
        Shrink.rule = make_rule(scale)
        p = torch.nn.Parameter(torch.ones(4))
        opt = Shrink([p], lr=0.1, path=path)
        p.grad = torch.ones(4)
        opt.step()
        results.append(p.detach()[0].item())
    assert results == pytest.approx([0.9, 0.7])


def test_a_numpy_number_is_a_dynamic_scalar_not_a_new_kernel():
    import numpy as np

    from optimlab.engine.graph import static_key

    spec = optimlab.spec("adamw")
    h1, h2 = spec.hyper(lr=np.float64(0.1)), spec.hyper(lr=np.float32(0.2))
    assert static_key(h1) == static_key(h2) == static_key(spec.hyper(lr=0.3))
    params = make_params(torch.float32)
    opt = optimlab.AdamW(params, lr=np.float64(1e-3), path="fused")
    backward(params, 0)
    opt.step()
    compiled, kernels = native.compiles, len(paths._kernels)
    for step in range(1, 60):
        opt.param_groups[0]["lr"] = np.float64(1e-3) * np.cos(step / 100)
        backward(params, step)
        opt.step()
    assert (native.compiles, len(paths._kernels)) == (compiled, kernels)


def test_tracing_from_many_threads_gives_the_graph_of_one():
    spec = optimlab.spec("lamb")
    h = spec.hyper()
    h = type(h)(**vars(h), bc1=0.5, bc2=0.25)
    serial = trace(spec.rule, h, ["m", "v"])
    shapes = []

    def work():
        for _ in range(20):
            graph = trace(spec.rule, h, ["m", "v"])
            shapes.append([(n.op, n.kind, n.name) for n in graph.nodes])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(shapes) == 80
    assert all(s == [(n.op, n.kind, n.name) for n in serial.nodes] for s in shapes)


def test_caches_are_bounded():
    assert paths._graphs.size and paths._kernels.size
    cache = type(paths._graphs)(3)
    for i in range(10):
        cache.get(i, lambda: i)
    assert len(cache) == 3 and 9 in cache and 0 not in cache
