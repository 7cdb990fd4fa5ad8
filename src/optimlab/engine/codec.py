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

import numpy as np
import torch

# Elements per block. The paper's experiments use 2048; bitsandbytes' 8-bit optimizers use 256. 256 is
# 8x finer (an outlier spoils 255 neighbours, not 2047) for 4/256 = 0.016 bytes of absmax per element
# (state: 2.03 bytes per parameter for Adam's two moments instead of 2.004), and divides the fused
# kernel's chunk of 4096 elements (and the Triton kernels' of 1024), so a block never straddles two threads.
BLOCK = 256
BITS = 8


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

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.table, device=device), torch.as_tensor(self.midpoints, device=device))

    @staticmethod
    def blocks(numel: int) -> int:
        return -(-numel // BLOCK)

    # --- in torch ops: the tensor and foreach paths ---------------------------------------------------

    def encode(self, x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor) -> None:
        """Quantise x into `codes` (x's shape, uint8) and `absmax` (one float32 per block), in place."""
        flat = x.detach().reshape(-1).to(torch.float32)
        n = flat.numel()
        padded = torch.nn.functional.pad(flat, (0, self.blocks(n) * BLOCK - n)).view(-1, BLOCK)
        peak = padded.abs().amax(dim=1)  # N_b (NaN propagates: a NaN state stays NaN, as it would in fp32)
        inverse = torch.where(peak > 0, peak.reciprocal(), torch.zeros_like(peak))  # 0 for an all-zero block
        scaled = padded * inverse[:, None]  # in [-1, 1]
        codes.view(-1).copy_(self.nearest_codes(scaled.reshape(-1)[:n]))
        absmax.copy_(peak)

    def nearest_codes(self, q: torch.Tensor) -> torch.Tensor:
        """The code of the map's value nearest to each q in [-1, 1] (float32), without a search.

        Which decade of the map |q| falls in is where it lies among the seven midpoints between decades
        (and the ones next to 0 and 1); within decade d the codes are the midpoints of equal buckets, so
        the nearest is the bucket |q| falls in: ⌊(|q|·10^(6−d) − 0.1) · n_d / 0.9⌋. Exact but for values
        within float32 rounding of a boundary inside a decade (a tie, either code is as near). The fused
        kernel does the same float32 operations in the same order (cgen.py), so both give the same codes."""
        c = self.decades
        a = q.abs()
        d = torch.full(a.shape, -1, dtype=torch.int64, device=q.device)
        for bound in c.bounds.tolist():
            d += a > bound  # -1: the zero code; 0 … 6: a decade; 7: the code of 1
        inside = d.clamp(0, 6)
        scale, slope, first, last = (torch.as_tensor(t, device=q.device)[inside]
                                     for t in (c.scale, c.slope, np.array(c.first[:7]), np.array(c.last)))
        j = ((a * scale - torch.tensor(0.1, dtype=torch.float32)) * slope).to(torch.int32)
        rank = first + torch.minimum(j.clamp_min(0), last)
        rank = torch.where(d == 7, 255, rank)
        if self.signed:  # the negative codes mirror the positive ones below zero (1 has no mirror)
            rank = torch.where(q < 0, (254 - rank).clamp_min(0), rank)
        return torch.where(d < 0, c.zero, rank)

    def decode(self, codes: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """map[code] · N_b, in float32 (then `dtype`), with the codes' shape."""
        table, _ = self.tensors(codes.device)
        n = codes.numel()
        values = table[codes.reshape(-1).long()]
        per_element = absmax.repeat_interleave(BLOCK)[:n]
        return (values * per_element).view(codes.shape).to(dtype)

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
    fused and triton paths where their kernels cannot read codes) step a coded state."""
    compute = torch.float32 if params[0].dtype in (torch.bfloat16, torch.float16) else params[0].dtype
    plain = {sym: [x.codec.decode(x.codes, x.absmax, compute) if isinstance(x, Coded) else x for x in xs]
             for sym, xs in states.items()}
    run(rule, h, params, grads, plain)
    for sym, xs in states.items():
        for x, value in zip(xs, plain[sym]):
            if isinstance(x, Coded):
                x.codec.encode(value, x.codes, x.absmax)
