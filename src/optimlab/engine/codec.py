"""State storage codecs: a rule's state kept in fewer bits than its parameter, decoded only to compute.

Blockwise dynamic quantisation (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"):
a state tensor is cut into blocks of BLOCK consecutive elements; each block keeps its largest magnitude
N_b (the absmax, float32) and one uint8 code per element, the index of the value of the *dynamic map*
nearest to x / N_b. Decoding is `map[code] · N_b`. An outlier then spoils the precision of its own block
only, and the map spends its codes where optimizer states live: over seven decades of magnitude.

The dynamic map (§2 of the paper, after Dettmers 2016): a code is a sign bit, then a run of E zero bits
(the magnitude is 10⁻ᴱ), an indicator bit 1, and the remaining bits a linear fraction in [0.1, 1]:
each value is the midpoint of its fraction bucket. The second moment is never negative, so its map is
unsigned: the sign bit joins the fraction (twice the resolution). Both maps also hold 0 and 1 (1 is the
code of each block's absmax itself).

The codec is not part of any rule: `RuleOptimizer.codecs` (or `State(codec=...)`) names which states it
stores, and the engine decodes them for the tensor and foreach paths; the fused C kernel and the Triton
kernels read and write the codes directly (engine/cgen.py, engine/tritongen.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict

import numpy as np
import torch

# Elements per block. The paper's experiments use 2048; bitsandbytes' 8-bit optimizers use 256. 256 is
# 8x finer (an outlier spoils 255 neighbours, not 2047) for 4/256 = 0.016 bytes of absmax per element
# (state: 2.03 bytes per parameter for Adam's two moments instead of 2.004), and divides the fused
# kernel's chunk of 4096 elements (and the Triton kernels' of 1024), so a block never straddles two threads.
BLOCK = 256
BITS = 8
BINADES = 256  # biased float32 exponents: the torch encoder's tables have one row per binade of |q|


def dynamic_map(signed: bool, exponent_bits: int = BITS - 1) -> np.ndarray:
    """The 256 values of the dynamic quantisation map, sorted ascending (float32).

    Exponent E = 0 … exponent_bits − 1 zero bits after the sign leave `exponent_bits − 1 − E` fraction bits
    (one more when unsigned: the sign bit is a fraction bit); the values are the midpoints of that many
    equal buckets of [0.1, 1], scaled by 10^−(exponent_bits − 1 − i) for i = exponent_bits − 1 − E."""
    values = [0.0, 1.0]
    for i in range(exponent_bits):  # i = exponent_bits - 1 - E: the largest magnitudes have the most bits
        buckets = 2 ** (i + (0 if signed else 1))
        edges = np.linspace(0.1, 1.0, buckets + 1)
        midpoints = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - (exponent_bits - 1))
        values += list(midpoints) + (list(-midpoints) if signed else [])
    if len(values) != 2**BITS:
        raise AssertionError(f"the dynamic map has {len(values)} values, not {2 ** BITS}")
    return np.sort(np.array(values, dtype=np.float64)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Blockwise8bit:
    """One codec: the signed map (first moments) or the unsigned one (second moments), BLOCK per absmax."""

    signed: bool

    @property
    def name(self) -> str:
        return f"{'signed' if self.signed else 'unsigned'} dynamic map"

    @functools.cached_property
    def table(self) -> np.ndarray:
        return dynamic_map(self.signed)

    @functools.cached_property
    def midpoints(self) -> np.ndarray:
        """Decision boundaries between neighbouring codes, in float32 (as the kernel computes them)."""
        q = self.table
        return ((q[:-1] + q[1:]) / np.float32(2)).astype(np.float32)

    @functools.cached_property
    def decades(self) -> Decades:
        """The constants of `nearest_codes`, from the map itself."""
        n = [2 ** (d + (0 if self.signed else 1)) for d in range(8)]  # codes per decade; 7: the code of 1.0
        offset = 128 if self.signed else 0  # rank of the first positive code, less one for the zero code
        first = [offset + n[d] - 1 for d in range(8)]  # rank of each decade's smallest code
        mids = self.midpoints
        bounds = [mids[first[0] - 1]] + [mids[first[d] - 1] for d in range(1, 8)]
        return Decades(bounds=np.array(bounds, dtype=np.float32),
                       scale=np.array([10.0 ** (6 - d) for d in range(7)], dtype=np.float32),
                       slope=np.array([n[d] / 0.9 for d in range(7)], dtype=np.float32),
                       first=first, last=[n[d] - 1 for d in range(7)],
                       zero=offset - (1 if self.signed else 0))

    @functools.cached_property
    def keyed(self) -> Keyed:
        """`nearest_codes`' decades by key (see there), made from `decades`: per binade the decade bound
        inside it; per key the decade's scale and slope, and the code of each of its buckets."""
        c = self.decades
        bits = c.bounds.view(np.int32)
        binade = (bits >> 23).tolist()
        if len(set(binade)) != len(binade):
            raise AssertionError("two decade bounds share a binade: one comparison cannot tell them apart")
        # No bound inside a binade: its start (one decade either side). The last binade's start is ∞:
        # above it lie only NaNs, which take the zero code.
        inside = np.arange(BINADES, dtype=np.int32) << 23
        inside[binade] = bits
        signs, buckets = (2 if self.signed else 1), max(c.last) + 1
        scale, slope = np.zeros((2, 2 * BINADES * signs), np.float32)
        codes = np.zeros((2 * BINADES * signs, buckets), np.uint8)
        for key in range(2 * BINADES * signs):
            negative, e, above = key // (2 * BINADES), key // 2 % BINADES, key % 2
            d = sum(b < e for b in binade) + (above and e in binade) - 1  # the bounds below |q|, less one
            if e == BINADES - 1 and above:  # NaN: the zero code (every comparison with a bound is false)
                d = -1
            if 0 <= d < 7:  # outside the decades scale = slope = 0: j = 0, and their one code for any j
                scale[key], slope[key] = c.scale[d], c.slope[d]
            for j in range(buckets):
                rank = c.zero if d < 0 else 255 if d == 7 else c.first[d] + min(j, c.last[d])
                # the negative codes mirror the positive ones below zero (1 has no mirror)
                codes[key, j] = max(254 - rank, 0) if negative and d >= 0 else rank
        return Keyed(inside=np.tile(inside, signs), scale=scale, slope=slope, codes=codes.reshape(-1),
                     buckets=buckets)

    @functools.cached_property
    def _on_device(self) -> dict:
        return {}

    def _tensors_on(self, device, what: str, make):
        """`make()`'s tensors on `device`, made once per device (the tables are constant)."""
        key = (what, torch.device(device))
        found = self._on_device.get(key)
        if found is None:
            found = self._on_device[key] = tuple(torch.as_tensor(t, device=device) for t in make())
        return found

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensors_on(device, "map", lambda: (self.table, self.midpoints))

    @staticmethod
    def blocks(numel: int) -> int:
        return -(-numel // BLOCK)

    # --- in torch ops: the tensor and foreach paths ---------------------------------------------------

    def encode(self, x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> None:
        """Quantise x into `codes` (x's shape, uint8) and `absmax` (one float32 per block), in place."""
        _, peak = self.encoded(x.detach().reshape(-1).to(torch.float32).contiguous(), out=codes.view(-1))
        absmax.copy_(peak)

    def encoded(self, flat: torch.Tensor, out=None, scratch=False) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes (uint8, flat's length; into `out` if given) and the absmax per block of contiguous
        float32 values, which may be overwritten if `scratch`."""
        n = flat.numel()
        if n % BLOCK:  # the last block padded with zeros, which leave its absmax as it is
            flat, scratch = torch.nn.functional.pad(flat, (0, self.blocks(n) * BLOCK - n)), True
        rows = flat.view(-1, BLOCK)
        magnitude = rows.abs()
        peak = magnitude.amax(dim=1)  # N_b (NaN propagates: a NaN state stays NaN, as it would in fp32)
        inverse = torch.where(peak > 0, peak.reciprocal(), torch.zeros_like(peak))  # 0 for an all-zero block
        scaled = rows.mul_(inverse[:, None]) if scratch else rows * inverse[:, None]  # in [-1, 1]
        q = scaled.view(-1)[:n]
        return self._codes(torch.abs(q, out=magnitude.view(-1)[:n]), q, out), peak

    def nearest_codes(self, q: torch.Tensor) -> torch.Tensor:
        """The code (uint8) of the map's value nearest to each q in [-1, 1] (float32), without a search.

        Which decade of the map |q| falls in is where it lies among the seven midpoints between decades
        (and the ones next to 0 and 1); within decade d the codes are the midpoints of equal buckets, so
        the nearest is the bucket |q| falls in: ⌊(|q|·10^(6−d) − 0.1) · n_d / 0.9⌋. Exact but for values
        within float32 rounding of a boundary inside a decade (a tie, either code is as near). The fused
        kernel does the same float32 operations in the same order (cgen.py), so both give the same codes.

        In few torch ops (each costs a pass over the tensor): every bound lies in a binade of its own, so
        the float exponent of |q| and one comparison, with the bound inside its binade, tell the decade
        (as the AVX-512 encoder does, ccodec.py). A key of q's sign, |q|'s binade and that comparison
        picks the decade's scale and slope from small tables, and the code of its bucket j from another
        (first + min(j, last), mirrored for q < 0; the zero code below the decades, 1 above): `keyed`."""
        flat = q.detach().reshape(-1).to(torch.float32, copy=True)  # (_codes overwrites it)
        return self._codes(flat.abs(), flat).view(q.shape)

    def _codes(self, a: torch.Tensor, q: torch.Tensor, out=None) -> torch.Tensor:
        """nearest_codes of the flat float32 q, given a = |q| (into `out` if given). a and q are
        overwritten: their storage is the working buffers, since a new tensor of their size costs about
        as much as an operation (its pages are touched for the first time)."""
        k = self.keyed
        inside, scale, slope, codes, tenth = self._tensors_on(a.device, "keyed", lambda: (
            k.inside, k.scale, k.slope, k.codes, np.float32(0.1)))
        bits = a.view(torch.int32)  # ordered as the floats: a ≥ 0, and a NaN's sign bit is clear
        binade = q.view(torch.int32)  # q is read once, for its sign bit
        if self.signed:  # q's sign bit (the mirrored half; ±0 and NaN take the zero code either way), binade
            binade.bitwise_right_shift_(23).bitwise_and_(2 * BINADES - 1)
        else:
            torch.bitwise_right_shift(bits, 23, out=binade)  # |q|'s binade: its biased exponent
        above = inside.index_select(0, binade)
        torch.sub(bits, above, out=above).clamp_(0, 1)  # 1 where a lies above the bound inside its binade
        key = above.add_(binade, alpha=2)
        scaled = torch.index_select(scale, 0, key, out=q)  # (|q|·scale − 0.1)·slope, as written above
        torch.mul(a, scaled, out=scaled)
        scaled -= tenth
        scaled *= torch.index_select(slope, 0, key, out=a)  # (a is read for the last time above)
        j = bits.copy_(scaled)  # truncated toward 0, as .to(torch.int32) does
        j.clamp_(0, k.buckets - 1)  # (a below its decade's first bucket: 0)
        return torch.index_select(codes, 0, j.add_(key, alpha=k.buckets), out=out)

    def decode(self, codes: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """map[code] · N_b, in float32 (then `dtype`), with the codes' shape."""
        table, _ = self.tensors(codes.device)
        values = table.index_select(0, codes.reshape(-1).int())  # (index_select takes int32 indices)
        whole = values.numel() // BLOCK * BLOCK
        values[:whole].view(-1, BLOCK).mul_(absmax[:whole // BLOCK, None])
        if whole < values.numel():  # a ragged last block
            values[whole:].mul_(absmax[-1])
        return values.view(codes.shape).to(dtype)

    def empty(self, θ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and absmax of an all-zero state for θ."""
        zero = int(np.searchsorted(self.midpoints, 0.0))  # the code of 0
        codes = torch.full(θ.shape, zero, dtype=torch.uint8, device=θ.device)
        return codes, torch.zeros(self.blocks(θ.numel()), dtype=torch.float32, device=θ.device)


@dataclasses.dataclass(frozen=True)
class Decades:
    """A map's decades, for the encoder: the midpoints at their edges (and next to 0 and 1), 10^(6−d),
    n_d / 0.9, the rank of each decade's first code and the last bucket of each decade."""

    bounds: np.ndarray
    scale: np.ndarray
    slope: np.ndarray
    first: list
    last: list
    zero: int


@dataclasses.dataclass(frozen=True)
class Keyed:
    """A map's decades by key, for the torch encoder: key = 2·(|q|'s binade, plus BINADES if q's sign bit
    is set) + (1 if |q| lies above the decade bound inside its binade). `inside` (int32, per binade and
    sign): the bits of that bound; `scale` and `slope` (float32, per key): the decade's 10^(6−d) and
    n_d / 0.9 (0 outside the decades); `codes` (uint8, per key and bucket j < buckets): first_d +
    min(j, last_d), mirrored for q < 0, or the zero code or the code of 1 outside the decades."""

    inside: np.ndarray
    scale: np.ndarray
    slope: np.ndarray
    codes: np.ndarray
    buckets: int


SIGNED = Blockwise8bit(signed=True)
UNSIGNED = Blockwise8bit(signed=False)


def keys(key: str) -> tuple[str, str]:
    """The state keys of a coded state: `exp_avg` -> (`exp_avg_codes`, `exp_avg_absmax`)."""
    return f"{key}_codes", f"{key}_absmax"


@dataclasses.dataclass
class Coded:
    """A state stored by a codec: what a path receives in place of the state tensor."""

    codec: Blockwise8bit
    codes: torch.Tensor
    absmax: torch.Tensor

    @property
    def shape(self):
        return self.codes.shape


def decoded(run, rule, h, params, grads, states: dict[str, list]) -> None:
    """Run a path on decoded states, then encode them again: how the tensor and foreach paths (and the
    fused and triton paths where their kernels cannot read codes) step a coded state.

    A state's tensors coded alike (one codec, one device) are decoded together into one buffer, each
    tensor's values starting at a block boundary, so the codec's torch ops run once per state rather
    than once per tensor (`Batch`); the path steps views of that buffer."""
    compute = torch.float32 if params[0].dtype in (torch.bfloat16, torch.float16) else params[0].dtype
    plain = {sym: list(xs) for sym, xs in states.items()}
    batches = []
    for sym, xs in states.items():
        alike = defaultdict(list)
        for i, x in enumerate(xs):
            if isinstance(x, Coded):
                alike[(x.codec, x.codes.device)].append(i)
        for (coder, _), picked in alike.items():
            batch = Batch(coder, [xs[i] for i in picked], compute)
            for i, view in zip(picked, batch.views):
                plain[sym][i] = view
            batches.append((batch, sym, picked))
    run(rule, h, params, grads, plain)
    for batch, sym, picked in batches:
        batch.encode([plain[sym][i] for i in picked])


class Batch:
    """Coded tensors decoded into one flat buffer: each tensor's values, then zeros up to the end of its
    last block, so the buffer's blocks are the tensors' blocks and it encodes as they would one by one."""

    def __init__(self, coder: Blockwise8bit, coded: list[Coded], dtype: torch.dtype):
        self.coder, self.coded = coder, coded
        sizes = [x.codes.numel() for x in coded]
        self.blocks = [coder.blocks(n) for n in sizes]
        self.lengths = [m for n, b in zip(sizes, self.blocks) for m in (n, b * BLOCK - n)]  # values, padding
        filler = torch.zeros(BLOCK, dtype=torch.uint8, device=coded[0].codes.device)
        pads = {pad: filler[:pad] for pad in set(self.lengths[1::2])}
        codes = torch.cat([c for x, pad in zip(coded, self.lengths[1::2])
                           for c in (x.codes if x.codes.dim() == 1 else x.codes.reshape(-1), pads[pad])])
        self.values = coder.decode(codes, torch.cat([x.absmax for x in coded]), dtype)
        pieces = self.values.split(self.lengths)
        torch._foreach_zero_(list(pieces[1::2]))  # the padding, decoded from code 0: zeros, as encode pads
        self.views = [_shaped(piece, x.shape) for piece, x in zip(pieces[0::2], coded)]

    def encode(self, stepped: list[torch.Tensor]) -> None:
        """Encode the buffer (the views `stepped` in place, or a path's new tensors copied in) into each
        tensor's own codes and absmax, in place: the optimizer's state holds those tensors."""
        for view, value in zip(self.views, stepped):
            if value is not view:
                view.copy_(value)
        codes, absmax = self.coder.encoded(self.values.to(torch.float32), scratch=True)  # the views' last use
        own = [_shaped(c, x.shape) for c, x in zip(codes.split(self.lengths)[0::2], self.coded)]
        torch._foreach_copy_([x.codes for x in self.coded], own)
        torch._foreach_copy_([x.absmax for x in self.coded], list(absmax.split(self.blocks)))


def _shaped(x: torch.Tensor, shape) -> torch.Tensor:
    return x if x.shape == shape else x.view(shape)  # (a view per tensor costs microseconds)
