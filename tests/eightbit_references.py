"""Plain float64 transcriptions for the 8-bit optimizer tests: the dynamic quantisation map read off its
bit layout, nearest-code quantisation by brute force, and one blockwise 8-bit AdamW step as in
Dettmers et al. 2022 (Alg. 1 with the block-wise quantisation of §2.1). Loops and lists, no torch."""

from __future__ import annotations

import math


def dynamic_map_from_bits(signed: bool) -> list[float]:
    """Decode each of the 256 bit patterns: [sign] · E zero bits · indicator 1 · fraction bits.

    The magnitude is 10^-E times the midpoint of fraction bucket f of 2^F equal buckets of [0.1, 1].
    Unsigned codes use the sign bit as one more fraction bit. Of the patterns without an indicator bit
    (no fraction), one is 0 and the other is 1.0 (the code of a block's absmax): for the signed map,
    +0 and −0; for the unsigned one, the all-zero pattern and the one with the indicator last.
    Returned sorted ascending: a code is the index of its value in this list."""
    values = []
    for code in range(256):
        if signed:
            sign, rest, width = (-1.0 if code & 0x80 else 1.0), code & 0x7F, 7
        else:
            sign, rest, width = 1.0, code, 8
        if rest == 0:
            values.append(1.0 if signed and sign < 0 else 0.0)
            continue
        zeros = width - rest.bit_length()  # E: zero bits before the indicator
        fraction_bits = width - zeros - 1
        if not signed and fraction_bits == 0:
            values.append(1.0)  # 00000001: the unsigned map's 1.0
            continue
        f = rest & ((1 << fraction_bits) - 1)
        midpoint = 0.1 + 0.9 * (f + 0.5) / 2**fraction_bits
        values.append(sign * 10.0 ** (-zeros) * midpoint)
    return sorted(values)


def nearest_code(x: float, table: list[float]) -> set[int]:
    """Every code at the least distance from x (two at an exact tie)."""
    distances = [abs(x - q) for q in table]
    least = min(distances)
    return {i for i, d in enumerate(distances) if d == least}


def quantise_block(xs: list[float], table: list[float]) -> tuple[list[int], float]:
    """One block: its absmax N and, per element, the (lowest) code nearest to x / N."""
    absmax = max(abs(x) for x in xs)
    scale = 1.0 / absmax if absmax > 0 else 0.0
    return [min(nearest_code(x * scale, table)) for x in xs], absmax


def adamw8bit_step(θ, g, m_codes, m_absmax, v_codes, v_absmax, signed, unsigned, *, t, lr, beta1, beta2,
                   eps, weight_decay, block=256, v_decoded_by=None):
    """One step of 8-bit AdamW on flat lists, in float64: dequantise, AdamW (Loshchilov & Hutter, Alg. 2),
    quantise each block with its new absmax. Returns the new (θ, m codes, m absmax, v codes, v absmax).
    `v_decoded_by`: the values v's codes decode to, where they differ from the map they are chosen on."""
    n = len(θ)
    v_values = unsigned if v_decoded_by is None else v_decoded_by
    m = [signed[m_codes[i]] * m_absmax[i // block] for i in range(n)]
    v = [v_values[v_codes[i]] * v_absmax[i // block] for i in range(n)]
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    new_θ = []
    for i in range(n):
        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        decayed = θ[i] * (1 - lr * weight_decay)
        new_θ.append(decayed - lr * (m[i] / bc1) / (math.sqrt(v[i] / bc2) + eps))
    out_m, out_v, out_ma, out_va = [], [], [], []
    for lo in range(0, n, block):
        codes, absmax = quantise_block(m[lo:lo + block], signed)
        out_m += codes
        out_ma.append(absmax)
        codes, absmax = quantise_block(v[lo:lo + block], unsigned)
        out_v += codes
        out_va.append(absmax)
    return new_θ, out_m, out_ma, out_v, out_va
