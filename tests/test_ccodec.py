"""The fused kernel's codec in C (engine/ccodec.py): its AVX-512 intrinsics and its portable loops each
against the torch encoder and the map's table, and the two against each other inside the kernel."""

from __future__ import annotations

import ctypes
import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import optimlab
from optimlab.engine import ccodec, cgen, codec, native, paths

CODECS = [pytest.param(codec.SIGNED, id="signed"), pytest.param(codec.UNSIGNED, id="unsigned")]
PORTABLE = "#define OPTIMLAB_PORTABLE_CODEC 1\n"


@functools.cache
def _harness(portable: bool) -> ctypes.CDLL:
    """decode_X / encode_X exported, and which branch the compiler took, built as kernels are."""
    source = "\n".join([PORTABLE if portable else "", "#include <math.h>", "#include <stdint.h>",
                        *ccodec.functions({codec.SIGNED, codec.UNSIGNED}),
                        f"#if {ccodec.GUARD}\nint avx512(void) {{ return 1; }}\n"
                        "#else\nint avx512(void) { return 0; }\n#endif",
                        *(f"void export_{f}_{x}(const void *a, float s, void *b, int64_t n) "
                          f"{{ {f}_{x}(a, s, b, n); }}" for f in ("encode", "decode") for x in "SU")])
    cc, extra = native.compiler()
    library = Path(tempfile.mkdtemp(prefix="optimlab-ccodec-")) / "codec.so"
    subprocess.run([cc, *native.FLAGS, *extra, "-x", "c", "-", "-o", str(library)], input=source, text=True,
                   check=True)
    lib = ctypes.CDLL(str(library))
    for f in ("encode", "decode"):
        for x in "SU":
            getattr(lib, f"export_{f}_{x}").argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p,
                                                      ctypes.c_int64]
    return lib


def _builds():
    return [pytest.param(False, id="native"), pytest.param(True, id="portable")]


def _cpu_has_avx512_codec() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi"} <= set(flags)


def _awkward_values(coder, seed: int) -> np.ndarray:
    """Every map value, each midpoint and its float32 neighbours, the decade bounds and theirs, signed
    zeros, subnormals, ±1 and just above, ∞, NaN, and log-uniform magnitudes over ten decades."""
    table = coder.table
    mids = coder.midpoints
    bounds = coder.decades.bounds
    edges = np.concatenate([table, mids, bounds])
    near = np.concatenate([edges, np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2))])
    above_one = np.nextafter(np.float32(1), np.float32(2))
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.0, -1.0, above_one, np.inf, -np.inf, np.nan,
                        -np.nan], dtype=np.float32)
    rng = np.random.default_rng(seed)
    spread = (10.0 ** rng.uniform(-10, 0, 4000) * rng.choice([-1, 1], 4000)).astype(np.float32)
    return np.concatenate([near, -near, special, spread]).astype(np.float32)  # unsigned: encodes |q|


@pytest.mark.parametrize("portable", _builds())
@pytest.mark.parametrize("coder", CODECS)
def test_encoder_gives_the_torch_encoders_codes_for_every_awkward_value(coder, portable):
    lib = _harness(portable)
    values = _awkward_values(coder, seed=0)
    encode = getattr(lib, f"export_encode_{ccodec.letter(coder)}")
    for inverse in (1.0, 0.37, 2.0**-20, 0.0, float("inf")):  # the kernel's 1 / absmax, and its extremes
        out = np.zeros(values.size, dtype=np.uint8)
        for lo in range(0, values.size, 256):  # blocks as the kernel cuts them; the last one ragged
            n = min(256, values.size - lo)
            encode(values[lo:].ctypes.data, inverse, out[lo:].ctypes.data, n)
        scaled = torch.from_numpy(values) * torch.tensor(inverse, dtype=torch.float32)
        expected = coder.nearest_codes(scaled).to(torch.uint8).numpy()
        bad = np.flatnonzero(out != expected)
        assert bad.size == 0, (inverse, values[bad[:5]], out[bad[:5]], expected[bad[:5]])


@pytest.mark.parametrize("portable", _builds())
@pytest.mark.parametrize("coder", CODECS)
def test_decoder_gives_the_table_times_the_absmax_for_every_code(coder, portable):
    lib = _harness(portable)
    decode = getattr(lib, f"export_decode_{ccodec.letter(coder)}")
    codes = np.random.default_rng(1).permutation(np.tile(np.arange(256, dtype=np.uint8), 3))
    for absmax in (1.0, 3.5e-7, 1e30, 0.0, float("nan")):
        for n in (768, 256, 200, 63, 1):  # whole vectors of 64 codes and ragged ends
            out = np.full(n + 16, 7.0, dtype=np.float32)
            decode(codes.ctypes.data, absmax, out.ctypes.data, n)
            expected = coder.table[codes[:n]] * np.float32(absmax)
            np.testing.assert_array_equal(out[:n], expected)
            assert (out[n:] == 7.0).all(), "wrote past the end"


def test_the_native_build_takes_the_avx512_branch_where_the_cpu_has_it():
    if not _cpu_has_avx512_codec():
        pytest.skip("this CPU lacks AVX-512 F/BW/VL/DQ/VBMI: only the portable codec is built here")
    assert _harness(portable=False).avx512() == 1
    assert _harness(portable=True).avx512() == 0


def _train(monkeypatch, portable: bool, steps: int = 5):
    """adamw8bit on the fused path, its kernel built with the portable codec or not."""
    paths._kernels.clear()
    if portable:
        generate = cgen.generate
        monkeypatch.setattr(cgen, "generate", lambda *a, **k: PORTABLE + generate(*a, **k))
    g = torch.Generator().manual_seed(0)
    shapes = ((3000,), (64, 80), (300,), (5,))  # blocks of 256 and ragged last blocks
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    opt = optimlab.create("adamw8bit", params, path="fused", lr=1e-2, min_8bit_size=0)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 10.0 ** (step - 3)
        params[0].grad[700:760] = 0.0  # an all-zero block of gradients
        params[2].grad[270] = float("nan") if step == 3 else params[2].grad[270]  # a NaN block from then on
        opt.step()
    monkeypatch.undo()
    paths._kernels.clear()
    return params, opt


def _bits(x):
    """Floats as their bits (NaN equals NaN); anything else as it is."""
    return x.detach().view(torch.int32) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x


def test_kernel_states_are_bit_identical_with_either_codec(monkeypatch):
    params, opt = _train(monkeypatch, portable=False)
    params_p, opt_p = _train(monkeypatch, portable=True)
    assert opt.state[params[2]]["exp_avg_absmax"].isnan().any()  # the NaN block was coded
    for p, q in zip(params, params_p):
        assert torch.equal(_bits(p), _bits(q))
        assert opt.state[p].keys() == opt_p.state[q].keys()
        for key, value in opt.state[p].items():
            other = opt_p.state[q][key]
            assert torch.equal(_bits(value), _bits(other)) if torch.is_tensor(value) else value == other, key
