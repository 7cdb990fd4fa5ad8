"""8-bit AdamW and the blockwise state codec: the map, the quantisation bound, the paths, checkpoints,
the boundary, the memory it saves, and bitsandbytes' AdamW8bit as the reference."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from eightbit_references import adamw8bit_step, dynamic_map_from_bits, nearest_code

import optimlab
from optimlab.engine import codec
from optimlab.engine.boundary import ParameterMismatch
from optimlab.optimizers.adam8bit import WITHOUT_ZERO

CODECS = [pytest.param(codec.SIGNED, id="signed"), pytest.param(codec.UNSIGNED, id="unsigned")]
PATHS = ["tensor", "foreach", "fused"]


def test_block_size_is_bitsandbytes_and_divides_the_kernel_chunk():
    from optimlab.engine import cgen

    assert codec.BLOCK == 256 and cgen.CHUNK % codec.BLOCK == 0


# --- the map ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coder", CODECS)
def test_dynamic_map_matches_its_bit_layout_transcribed_in_float64(coder):
    reference = np.array(dynamic_map_from_bits(coder.signed))
    assert coder.table.dtype == np.float32 and len(coder.table) == 256
    np.testing.assert_allclose(coder.table.astype(np.float64), reference, rtol=2**-24, atol=0)
    assert np.all(np.diff(coder.table) > 0)  # sorted and distinct: a code is a rank


def test_signed_map_spans_seven_decades_and_unsigned_has_twice_the_resolution():
    s, u = codec.SIGNED.table, codec.UNSIGNED.table
    assert s.min() < -0.99 and s.max() == 1.0 and (s == 0).sum() == 1
    assert u.min() == 0.0 and u.max() == 1.0
    assert np.isclose(s[s > 0].min(), 0.55e-6) and np.isclose(u[u > 0].min(), 0.325e-6)
    top_s, top_u = s[(s >= 0.1) & (s < 1)], u[(u >= 0.1) & (u < 1)]
    assert len(top_s) == 64 and len(top_u) == 128  # the sign bit is a fraction bit for v


# --- quantisation: nearest code, bounded error ---------------------------------------------------------


def _awkward(n=4096, seed=0) -> torch.Tensor:
    """Mixed scales, heavy tails, zeros, tiny values and a block of all zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 4)
    x[::7] = 0.0
    x[100:110] = 1e-30
    x[256:512] = 0.0
    x[600] = -x[512:768].abs().max() * 3  # a negative absmax: the signed map's −1 has no exact code
    return x


@pytest.mark.parametrize("coder", CODECS)
def test_round_trip_error_is_within_half_the_largest_gap_times_the_block_absmax(coder):
    x = _awkward()
    if not coder.signed:
        x = x.abs()
    codes, absmax = coder.empty(x)
    coder.encode(x, codes, absmax)
    back = coder.decode(codes, absmax, torch.float64)
    table = coder.table.astype(np.float64)
    # the largest distance from a value in [-1, 1] (or [0, 1]) to its nearest code: half the largest gap,
    # or the distance from −1 to the lowest code (the signed map has 1.0 but no −1.0)
    worst = max(np.diff(table).max() / 2, 1 + table[0] if coder.signed else 0.0)
    per_block = absmax.double().repeat_interleave(codec.BLOCK)[:x.numel()]
    error = (back - x.double()).abs()
    bound = (worst + 2**-22) * per_block + 1e-45  # float32 rounding of x / N and of map[code] · N: ulps of N
    assert (error <= bound).all(), float((error / bound).max())
    assert torch.equal(back[256:512], torch.zeros(256, dtype=torch.float64))  # a zero block stays zero


@pytest.mark.parametrize("coder", CODECS)
def test_each_code_is_the_nearest_value_of_the_map(coder):
    x = _awkward(1024, seed=1)
    if not coder.signed:
        x = x.abs()
    codes, absmax = coder.empty(x)
    coder.encode(x, codes, absmax)
    table = [float(v) for v in coder.table]
    for i in range(0, x.numel(), 3):
        n = float(absmax[i // codec.BLOCK])
        scaled = float(np.float32(x[i]) * np.float32(1 / n if n > 0 else 0.0))
        best = nearest_code(scaled, table)
        if int(codes[i]) not in best:  # only a float32 rounding tie may pick the neighbour
            excess = abs(scaled - table[int(codes[i])]) - abs(scaled - table[min(best)])
            assert excess <= 2**-23, (i, scaled, int(codes[i]), best)


@pytest.mark.parametrize("coder", CODECS)
def test_fused_kernel_encodes_as_torch_encodes_even_at_midpoints(coder):
    """β₁ = β₂ = 0: m = g and v = g², so the kernel's codes (its 16-bit table and one comparison) must be
    the torch encoder's (searchsorted) for every value, midpoints between codes and subnormals included."""
    table = torch.tensor(coder.table)
    mids = (table[:-1] + table[1:]) / 2
    g = torch.cat([mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0)),
                   table, torch.tensor([1e-40, -1e-40, 0.0, -0.0, 1.0])])
    g = torch.nn.functional.pad(g, (0, 4 * codec.BLOCK - g.numel()))
    g[::codec.BLOCK] = 1.0  # every block's absmax is 1: the scaled values are the values
    p = torch.zeros_like(g, requires_grad=True)
    opt = optimlab.create("adamw8bit", [p], betas=(0.0, 0.0), lr=0.0, weight_decay=0.0, min_8bit_size=0,
                          path="fused")
    p.grad = g if coder.signed else g.abs().sqrt()
    opt.step()
    key = "exp_avg" if coder.signed else "exp_avg_sq"
    values = g if coder.signed else g.abs().sqrt() ** 2
    codes, absmax = coder.empty(values)
    coder.encode(values, codes, absmax)
    assert torch.equal(opt.state[p][key + "_codes"], codes)
    assert torch.equal(opt.state[p][key + "_absmax"], absmax)


# --- the torch encoder against its first transcription ------------------------------------------------


def _per_decade_codes(coder, q: np.ndarray) -> np.ndarray:
    """nearest_codes as it was first written, in numpy float32: the decade by comparing |q| with each
    bound (a NaN with none: the zero code), then in each decade in turn the bucket
    ⌊(|q|·10^(6−d) − 0.1)·n_d / 0.9⌋ clamped to the decade, then the negative codes mirrored below zero."""
    c = coder.decades
    q = q.astype(np.float32)
    a = np.abs(q)
    d = np.full(a.shape, -1)
    for bound in c.bounds:
        d += a > bound
    codes = np.where(d < 0, c.zero, 255)  # below the decades the zero code, above them the code of 1
    for k in range(7):
        inside = d == k
        j = ((a[inside] * c.scale[k] - np.float32(0.1)) * c.slope[k]).astype(np.int32)
        codes[inside] = c.first[k] + np.minimum(np.maximum(j, 0), c.last[k])
    if coder.signed:
        negative = (q < 0) & (d >= 0)
        codes[negative] = np.maximum(254 - codes[negative], 0)
    return codes.astype(np.uint8)


def _float32_edges(coder, seed: int) -> np.ndarray:
    """The values where a code changes and three float32 steps either side of each: every decade bound,
    every bucket edge inside each decade (where (|q|·scale − 0.1)·slope is a whole number), the map's
    values and midpoints; then ±0, subnormals, ±1, the largest float, ±∞, NaNs of either sign, random
    magnitudes over fifteen decades and random bit patterns; both signs of everything."""
    c = coder.decades
    edges = [c.bounds, coder.table, coder.midpoints]
    for k in range(7):
        m = np.arange(c.last[k] + 2, dtype=np.float64)
        edges.append(((m / np.float64(c.slope[k]) + 0.1) / np.float64(c.scale[k])).astype(np.float32))
    around = [np.concatenate(edges).astype(np.float32)]
    up = down = around[0]
    for _ in range(3):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        around += [up, down]
    big = np.finfo(np.float32).max
    special = np.array([0.0, 1e-45, 2e-45, 1e-40, 1.1754942e-38, 1.1754944e-38, 1.0, big, np.inf, np.nan],
                       dtype=np.float32)
    rng = np.random.default_rng(seed)
    spread = (10.0 ** rng.uniform(-13, 2, 20000)).astype(np.float32)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([*around, special, spread, bits])
    return np.concatenate([values, -values])


@pytest.mark.parametrize("coder", CODECS)
def test_nearest_codes_are_the_per_decade_formulas_bit_for_bit(coder):
    """The encoder finds the decade from |q|'s binade and indexes tables by it; its codes must be those
    of the formulas decade by decade (the C and Triton kernels reproduce them), for every awkward float."""
    q = _float32_edges(coder, seed=0)
    codes = coder.nearest_codes(torch.from_numpy(q))
    np.testing.assert_array_equal(codes.numpy(), _per_decade_codes(coder, q))


@pytest.mark.parametrize("coder", CODECS)
def test_encode_is_the_per_decade_formulas_of_the_scaled_blocks(coder):
    """encode's codes and absmax against the formulas applied to x / absmax block by block (in float32:
    x · (1 / absmax), 0 for a zero or NaN block), for whole and ragged lengths, the values above
    scaled small (many subnormal) and large (∞ blocks)."""
    x = _float32_edges(coder, seed=1)
    np.random.default_rng(2).shuffle(x)
    for scale in (1.0, 1e-30, 1e30):
        for n in (x.size // codec.BLOCK * codec.BLOCK, x.size - 77, 1):
            with np.errstate(invalid="ignore", over="ignore"):  # signalling NaNs, and 1e30 · large
                values = (x[:n] * np.float32(scale)).astype(np.float32)
            codes, absmax = coder.empty(torch.from_numpy(values))
            coder.encode(torch.from_numpy(values), codes, absmax)
            padded = np.zeros(coder.blocks(n) * codec.BLOCK, dtype=np.float32)
            padded[:n] = values
            peak = np.abs(padded).reshape(-1, codec.BLOCK).max(axis=1)  # NaN propagates
            with np.errstate(divide="ignore", over="ignore"):  # 1 / a subnormal peak: ∞
                inverse = np.where(peak > 0, np.float32(1) / peak, np.float32(0)).astype(np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                scaled = (padded.reshape(-1, codec.BLOCK) * inverse[:, None]).reshape(-1)[:n]
            nan = np.isnan(peak)  # (numpy keeps a NaN's payload, torch's max gives the default NaN)
            assert (absmax.isnan().numpy() == nan).all()
            np.testing.assert_array_equal(absmax.numpy()[~nan].view(np.int32), peak[~nan].view(np.int32))
            np.testing.assert_array_equal(codes.numpy(), _per_decade_codes(coder, scaled))


# --- the optimizer ------------------------------------------------------------------------------------


def _train(path, steps=30, dtype=torch.float32, shapes=((3000,), (64, 80), (5,)), min_8bit_size=0, **hp):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    opt = optimlab.create("adamw8bit", params, path=path, lr=1e-2, min_8bit_size=min_8bit_size, **hp)
    for step in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + step % 5)).to(dtype)
        opt.step()
    return params, opt


def test_state_is_codes_and_block_scales_with_clear_names():
    (big, matrix, small), opt = _train("fused", steps=1, min_8bit_size=4096)
    assert set(opt.state[big]) == {"step", "exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes",
                                   "exp_avg_sq_absmax"} or big.numel() < 4096
    assert opt.state[matrix]["exp_avg_codes"].dtype == torch.uint8
    assert opt.state[matrix]["exp_avg_codes"].shape == matrix.shape
    assert opt.state[matrix]["exp_avg_absmax"].shape == (20,)  # 5120 / 256
    assert opt.state[matrix]["exp_avg_absmax"].dtype == torch.float32
    assert set(opt.state[small]) == {"step", "exp_avg", "exp_avg_sq"}  # < min_8bit_size: full precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("fast", ["foreach", "fused"])
def test_paths_agree_codes_within_one_step(fast, dtype):
    """The fused kernel performs the tensor path's operations in the same order, so its codes and scales
    agree bit for bit here (measured); foreach reassociates scalar factors, so a value an ulp from a
    midpoint may take the neighbouring code: allowed, one step at most, on a few elements."""
    ref, ref_opt = _train("tensor", dtype=dtype)
    got, opt = _train(fast, dtype=dtype)
    for p, q in zip(got, ref):
        for key, value in ref_opt.state[q].items():
            if key.endswith("_codes"):
                step = (opt.state[p][key].int() - value.int()).abs()
                assert step.max() <= 1 and step.float().mean() < 1e-3, key
                if fast == "fused":
                    assert torch.equal(opt.state[p][key], value), key
            elif isinstance(value, torch.Tensor):
                torch.testing.assert_close(opt.state[p][key].double(), value.double(), rtol=1e-5, atol=1e-7)
        tolerance = {torch.float32: 1e-5, torch.float64: 1e-7, torch.bfloat16: 2**-6}[dtype]
        torch.testing.assert_close(p.double(), q.double(), rtol=tolerance, atol=tolerance)


def test_matches_a_float64_transcription_of_the_paper():
    """One block-wise 8-bit AdamW step after another, in float64 with the same maps, for 5 steps: the
    per-element results differ only by float32 rounding (of the decoded states and the encoded ratio)."""
    n = 700
    g = torch.Generator().manual_seed(3)
    θ0 = torch.randn(n, generator=g, dtype=torch.float64)
    grads = [torch.randn(n, generator=g, dtype=torch.float64) * 0.1 for _ in range(5)]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    p = θ0.clone().requires_grad_()
    opt = optimlab.create("adamw8bit", [p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                          weight_decay=hp["weight_decay"], min_8bit_size=0, path="tensor")
    signed, unsigned = dynamic_map_from_bits(True), dynamic_map_from_bits(False)
    θ, mc, ma, vc, va = θ0.tolist(), [127] * n, [0.0] * 3, [0] * n, [0.0] * 3
    for t, grad in enumerate(grads, start=1):
        p.grad = grad.clone()
        opt.step()
        θ, mc, ma, vc, va = adamw8bit_step(θ, grad.tolist(), mc, ma, vc, va, signed, unsigned, t=t, **hp)
    s = opt.state[p]
    torch.testing.assert_close(p.detach(), torch.tensor(θ, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s["exp_avg_absmax"].double(), torch.tensor(ma, dtype=torch.float64), rtol=1e-6,
                               atol=0)
    assert (s["exp_avg_codes"].int() - torch.tensor(mc)).abs().max() <= 1
    assert (s["exp_avg_sq_codes"].int() - torch.tensor(vc)).abs().max() <= 1
    assert (s["exp_avg_codes"].int() != torch.tensor(mc)).float().mean() < 0.01


def _step_in_place(rule, h, params, grads, states):
    """A path's update of a coded state m, written into the tensors it was given (as the paths do)."""
    for g, m in zip(grads, states["m"]):
        m.mul_(0.9).add_(g, alpha=0.1)


def _step_into_new_tensors(rule, h, params, grads, states):
    states["m"][:] = [m * 0.9 + g * 0.1 for g, m in zip(grads, states["m"])]


@pytest.mark.parametrize("step", [_step_in_place, _step_into_new_tensors])
@pytest.mark.parametrize("coder", [*CODECS, pytest.param(WITHOUT_ZERO, id="without-zero")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_decoded_steps_a_groups_states_together_as_one_by_one(dtype, coder, step):
    """codec.decoded decodes all of a state's tensors into one buffer, block-aligned, and encodes it
    whole: the codes and scales must be those of decoding, stepping and encoding each tensor alone, for
    sizes that are not a multiple of the block, an empty tensor, a NaN block and an infinite one, and a
    map whose zero code decodes to nonzero (the padding must still count as zeros)."""
    g = torch.Generator().manual_seed(7)
    shapes = [(3000,), (64, 80), (0,), (1,), (255,), (256,), (257,), (5, 7, 9), (700,)]
    values = [torch.randn(s, generator=g) * 10.0 ** torch.randint(-9, 3, s, generator=g) for s in shapes]
    values[1][3, 7], values[8][600] = float("nan"), float("inf")
    params = [torch.zeros(s, dtype=dtype) for s in shapes]
    grads = [(torch.randn(s, generator=g) * 1e-3).to(dtype) for s in shapes]

    def coded():
        out = []
        for v in values:
            codes, absmax = coder.empty(v)
            coder.encode(v if coder.signed else v.abs(), codes, absmax)
            out.append(codec.Coded(coder, codes, absmax))
        return out

    together, alone = coded(), coded()
    states = {"m": list(together)}
    codec.decoded(step, None, None, params, grads, states)
    assert all(x is y for x, y in zip(states["m"], together))  # the holders the optimizer passed
    compute = torch.float32 if dtype == torch.bfloat16 else dtype
    for x, θ, grad in zip(alone, params, grads):  # one tensor at a time, as the first transcription did
        plain = {"m": [coder.decode(x.codes, x.absmax, compute)]}
        step(None, None, [θ], [grad], plain)
        coder.encode(plain["m"][0], x.codes, x.absmax)
    for x, y in zip(together, alone):
        assert torch.equal(x.codes, y.codes)
        assert torch.equal(x.absmax.view(torch.int32), y.absmax.view(torch.int32))
    assert together[1].absmax.isnan().any() and not together[0].absmax.isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["foreach", "tensor"])
def test_a_group_steps_its_coded_states_as_each_tensor_alone(path, dtype):
    """AdamW8bit on several tensors at once (their states decoded and encoded together) against one
    optimizer per tensor: the same parameters, codes and scales, bit for bit."""
    shapes = ((3000,), (64, 80), (256,), (1,), (700,), (5, 7, 9), (0,))
    g = torch.Generator().manual_seed(4)
    start = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [[(torch.randn(s, generator=g) * 10.0 ** (t % 4 - 3)).to(dtype) for s in shapes]
             for t in range(5)]
    grads[3][0][300] = float("nan")  # a NaN block from then on
    hp = dict(lr=1e-2, min_8bit_size=0, path=path, v_without_zero=True)
    together = [x.clone().requires_grad_() for x in start]
    alone = [x.clone().requires_grad_() for x in start]
    opt = optimlab.create("adamw8bit", together, **hp)
    opts = [optimlab.create("adamw8bit", [p], **hp) for p in alone]
    for step in grads:
        for p, q, grad in zip(together, alone, step):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        for o in opts:
            o.step()
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
    for p, q, o in zip(together, alone, opts):
        assert torch.equal(p.detach().view(bits[dtype]), q.detach().view(bits[dtype]))
        for key, value in o.state[q].items():
            mine = opt.state[p][key]
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                mine, value = mine.view(torch.int32), value.view(torch.int32)
            assert torch.equal(mine, value) if isinstance(value, torch.Tensor) else mine == value, key
    assert opt.state[together[0]]["exp_avg_absmax"].isnan().any()


def test_min_8bit_size_changes_which_tensors_are_coded():
    for size, coded in ((0, True), (5121, False)):
        (_, matrix, _), opt = _train("fused", steps=2, min_8bit_size=size)
        assert ("exp_avg_codes" in opt.state[matrix]) is coded
    with pytest.raises(ValueError, match="min_8bit_size"):
        optimlab.create("adamw8bit", [torch.zeros(3, requires_grad=True)], min_8bit_size=-1)


# --- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_checkpoint_round_trips_bit_identically_through_torch_save(path, dtype):
    params, opt = _train(path, steps=5, dtype=dtype)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    twin = [p.detach().clone().requires_grad_() for p in params]
    fresh = optimlab.create("adamw8bit", twin, path=path, lr=1e-2, min_8bit_size=0)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    for p, q in zip(params, twin):
        for key, value in opt.state[p].items():
            other = fresh.state[q][key]
            if isinstance(value, torch.Tensor):  # uint8 codes stay uint8, float32 scales stay float32
                assert other.dtype == value.dtype and torch.equal(other, value), key
            else:
                assert other == value, key
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        for p, q in zip(params, twin):
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
            q.grad = p.grad.clone()
        opt.step()
        fresh.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


def test_an_adamw_checkpoint_loads_into_adamw8bit_and_not_the_reverse():
    params = [torch.randn(5000, requires_grad=True)]
    adamw = optimlab.create("adamw", params)
    params[0].grad = torch.randn(5000)
    adamw.step()
    eight = optimlab.create("adamw8bit", params)
    eight.load_state_dict(adamw.state_dict())
    eight.step()  # the fp32 moments are encoded on the way in
    state = eight.state[params[0]]
    assert "exp_avg" not in state and state["exp_avg_codes"].dtype == torch.uint8
    back = optimlab.create("adamw", params)
    back.load_state_dict(eight.state_dict())
    with pytest.raises(ValueError, match="stored 8-bit"):
        back.step()


# --- the boundary ---------------------------------------------------------------------------------------


def _corrupt(key, make):
    params, opt = _train("fused", steps=2)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][1][key] = make(saved["state"][1][key])
    fresh = optimlab.create("adamw8bit", params, lr=1e-2, min_8bit_size=0)
    return fresh, saved


@pytest.mark.parametrize("key,make,message", [
    ("exp_avg_codes", lambda t: t.float(), "exp_avg_codes.*uint8"),
    ("exp_avg_codes", lambda t: t.reshape(-1)[:100], "exp_avg_codes.*shape|needs \\(64, 80\\)"),
    ("exp_avg_sq_absmax", lambda t: t[:-1], "exp_avg_sq_absmax.*\\(20,\\)"),
    ("exp_avg_sq_absmax", lambda t: t.double(), "exp_avg_sq_absmax.*float32"),
    ("exp_avg_absmax", lambda t: torch.where(torch.arange(t.numel()) == 3, float("nan"), t), "NaN"),
    ("exp_avg_absmax", lambda t: -t - 1, "negative"),
])
def test_corrupt_coded_state_is_refused_with_a_clear_error(key, make, message):
    fresh, saved = _corrupt(key, make)
    with pytest.raises(ParameterMismatch, match=message):
        fresh.load_state_dict(saved)


def test_a_coded_state_replaced_in_place_is_checked_at_the_next_step():
    params, opt = _train("fused", steps=2)
    opt.state[params[1]]["exp_avg_codes"] = torch.zeros(params[1].shape, dtype=torch.int64)
    params[1].grad = torch.ones_like(params[1])
    with pytest.raises(ParameterMismatch, match="parameter 1 of group 0.*exp_avg_codes"):
        opt.step()


# --- memory ---------------------------------------------------------------------------------------------


def _gpt_like(width=256, layers=2, vocab=512):
    blocks = [torch.nn.TransformerEncoderLayer(width, 4, 4 * width, batch_first=True) for _ in range(layers)]
    return torch.nn.Sequential(torch.nn.Embedding(vocab, width), *blocks, torch.nn.Linear(width, vocab))


def test_measured_state_is_at_most_2_1_bytes_per_parameter():
    model = _gpt_like()
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt = optimlab.create("adamw8bit", params)
    opt.step()
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    numel = sum(p.numel() for p in params)
    small = sum(p.numel() for p in params if p.numel() < 4096)
    assert state / numel <= 2.1, (state / numel, small / numel)
    from optimlab import memory

    assert memory.plan(model, "adamw8bit").optimizer_state == state  # the planner counts the same bytes
    assert optimlab.spec("adamw8bit").state_bytes((4096, 4096)) / 4096**2 == 2 + 8 / 256


# --- bitsandbytes' AdamW8bit as the reference ------------------------------------------------------------


def test_matches_bitsandbytes_adamw8bit_step_by_step():
    """bitsandbytes (a test-only dependency) steps CPU tensors with its own update. From the same codes,
    scales and parameters (copied into it before each step) and with the same map (its float32 build of
    the same definition differs by an ulp on some values), both take the same step; they re-encode the
    same codes but for a few elements a step apart (its CPU encoder is not exactly nearest-value, and
    for values below ~1e-3 of the block absmax it may be several codes away: measured, see docs)."""
    bnb = pytest.importorskip("bitsandbytes")
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5000, generator=g).requires_grad_()  # 19.5 blocks: a partial last block
    q = torch.nn.Parameter(p.detach().clone())
    hp = dict(lr=3e-3, betas=(0.9, 0.995), eps=1e-8, weight_decay=0.05)
    opt = optimlab.create("adamw8bit", [p], **hp)
    ref = bnb.optim.AdamW8bit([q], **hp)
    ref.name2qmap = {"dynamic": torch.tensor(codec.SIGNED.table),
                     "udynamic": torch.tensor(codec.UNSIGNED.table)}
    pairs = (("exp_avg", "1", codec.SIGNED), ("exp_avg_sq", "2", codec.UNSIGNED))
    differing = []
    for t in range(30):
        p.grad = torch.randn(p.shape, generator=g) * 0.1 * (1 + t % 3)
        q.grad = p.grad.clone()
        if t:
            for ours, theirs, _ in pairs:
                ref.state[q]["state" + theirs].copy_(opt.state[p][ours + "_codes"])
                ref.state[q]["absmax" + theirs].copy_(opt.state[p][ours + "_absmax"])
            q.data.copy_(p.data)
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-6)
        for ours, theirs, coder in pairs:
            mine, other = opt.state[p][ours + "_codes"], ref.state[q]["state" + theirs]
            torch.testing.assert_close(opt.state[p][ours + "_absmax"], ref.state[q]["absmax" + theirs],
                                       rtol=1e-6, atol=0)
            large = torch.tensor(coder.table)[mine.long()].abs() > 1e-3
            step = (mine.int() - other.int()).abs()
            assert step[large].max() <= 1, (t, ours)
            differing.append(float((step > 0).float().mean()))
    assert max(differing) < 0.05 and np.mean(differing) < 0.005


# --- the codec on other rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("base,codecs", [("lion", {"m": codec.SIGNED}),
                                         ("lamb", {"m": codec.SIGNED, "v": codec.UNSIGNED})])
def test_any_rule_can_store_its_state_with_the_codec(base, codecs):
    """Lion (one pass: the kernel reads the codes) and LAMB (two passes: states decoded around the kernel)
    with coded states, declared by a subclass: every path steps them, and they agree."""
    cls = type(f"{base}_8bit", (optimlab.spec(base).cls,), {"codecs": codecs})
    results = {}
    for path in PATHS:
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).requires_grad_() for s in ((64, 80), (300,))]
        opt = cls(params, lr=1e-3, path=path)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results[path] = (params, opt)
    ref_params, ref_opt = results["tensor"]
    key = optimlab.spec(base).rule.state["m"].key
    assert ref_opt.state[ref_params[0]][key + "_codes"].dtype == torch.uint8
    for path in ("foreach", "fused"):
        params, opt = results[path]
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
            step = (opt.state[p][key + "_codes"].int() - ref_opt.state[q][key + "_codes"].int()).abs()
            assert step.max() <= 1
