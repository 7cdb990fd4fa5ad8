"""The 8-bit state codec (engine/codec.py) in C, for the fused CPU kernel (engine/cgen.py).

Per map (X = S signed, U unsigned), two functions the kernel calls once per block of codec.BLOCK elements:

* `decode_X(codes, absmax, out, n)`: out[i] = map[codes[i]] · absmax, in float32;
* `encode_X(values, inverse, codes, n)`: codes[i] = the code of values[i] · inverse, as
  `Blockwise8bit.nearest_codes` computes it (the same float32 operations in the same order).

Each has a portable loop and, where the compiler targets AVX-512 (F, BW, VL, DQ and VBMI), a version in
intrinsics that gives the same bits about four times faster (the portable loops become gathers and
chains of compares and blends). Defining OPTIMLAB_PORTABLE_CODEC selects the portable loops; the tests
compare both with the torch encoder and the map's table, and with each other inside the kernel.

How the intrinsics encode without seven comparisons: each midpoint between two decades of the map lies
in its own binary exponent range (binade), so the float exponent of |q| says how many of them lie below
|q| but one, which one comparison settles. That gives k, log2 of the decade's number of codes. The slope
n / 0.9 is float(1/0.9) · 2^k and scaling by 2^k commutes with rounding, so the decade's scale and its
0.1 are tabled times 2^k and multiplied by the one constant float(1/0.9): four 16-entry tables by k
(scale, tenth, last bucket, first rank), one permute each, give the torch encoder's bits (all 2³² float32
inputs compared with the shift-based encoder before it). They decode by looking up each byte of
map[code] in a 256-byte table (two 128-byte VBMI permutes and a blend per byte, 64 codes at a time),
then interleaving the four bytes back into floats.
"""

from __future__ import annotations

from string import Template

import numpy as np

from .codec import Blockwise8bit

GUARD = ("defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) "
         "&& defined(__AVX512VBMI__) && !defined(OPTIMLAB_PORTABLE_CODEC)")
BINADES = 32  # exponent ranges the encoder tells apart: one two-register permute


def letter(codec: Blockwise8bit) -> str:
    return "S" if codec.signed else "U"


def functions(codecs: set) -> list[str]:
    """C source of decode_X and encode_X for each codec in `codecs`."""
    ordered = sorted(codecs, key=lambda c: c.signed)
    if not ordered:
        return []
    lines = []
    for codec in ordered:
        lines += _map_table(codec) + _scalar_encoder(codec)
    lines += [f"#if {GUARD}", "#include <immintrin.h>", AVX512_COMMON.substitute(ORDER=_ints(DECODE_ORDER))]
    for codec in ordered:
        lines += _avx512(codec)
    lines.append("#else  /* portable loops: the compiler vectorises them as it can */")
    lines += [PORTABLE.substitute(X=letter(codec)) for codec in ordered]
    return lines + ["#endif"]


def _hexf(values) -> str:
    return ", ".join("INFINITY" if np.isinf(v) else f"{float(v).hex()}f" for v in values)


def _ints(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def _map_table(codec: Blockwise8bit) -> list[str]:
    return [f"static const float QMAP_{letter(codec)}[256] __attribute__((aligned(64))) = "
            f"{{{_hexf(codec.table)}}};"]


def _scalar_encoder(codec: Blockwise8bit) -> list[str]:
    """codec.nearest_codes for one value, as comparisons and selects (the portable encoder)."""
    x, c = letter(codec), codec.decades
    lines = [f"static inline int encode1_{x}(float q) {{",
             "  const float a = fabsf(q);",
             "  const int d = " + " + ".join(f"(a > {b})" for b in _hexf(c.bounds).split(", ")) + " - 1;",
             f"  float scale = {float(c.scale[0]).hex()}f, slope = {float(c.slope[0]).hex()}f;",
             f"  int first = {c.first[0]}, last = {c.last[0]};"]
    for d in range(1, 7):
        lines.append(f"  if (d >= {d}) {{ scale = {float(c.scale[d]).hex()}f; "
                     f"slope = {float(c.slope[d]).hex()}f; first = {c.first[d]}; last = {c.last[d]}; }}")
    lines += ["  int j = (int)((a * scale - 0.1f) * slope);",
              "  j = j < 0 ? 0 : (j > last ? last : j);",
              "  int rank = d == 7 ? 255 : first + j;"]
    if codec.signed:
        lines.append("  if (q < 0) rank = 254 - rank < 0 ? 0 : 254 - rank;")
    return lines + [f"  return d < 0 ? {c.zero} : rank;", "}"]


PORTABLE = Template("""\
static inline void decode_$X(const uint8_t *restrict c, float m, float *restrict out, int64_t n) {
  #pragma omp simd
  for (int64_t i = 0; i < n; i++) out[i] = QMAP_$X[c[i]] * m;
}
static inline void encode_$X(const float *restrict w, float v, uint8_t *restrict c, int64_t n) {
  #pragma omp simd
  for (int64_t i = 0; i < n; i++) c[i] = (uint8_t)encode1_$X(w[i] * v);
}""")


def binades(codec: Blockwise8bit) -> tuple[int, np.ndarray, np.ndarray]:
    """The encoder's exponent tables: the biased float32 exponent of its first binade, then per binade
    (first + k, k < BINADES) how many decade bounds lie below it and the bound inside it (+inf where
    none). Magnitudes below the first binade or above the last are clamped into them, so no bound may
    lie in either."""
    bounds = codec.decades.bounds.astype(np.float32)
    exponents = (bounds.view(np.uint32) >> 23).astype(int)
    if len(set(exponents)) != len(exponents):
        raise AssertionError("two decade bounds share a binade: one comparison cannot tell them apart")
    first = int(exponents.min()) - 1
    if exponents.max() >= first + BINADES - 1:
        raise AssertionError("the decade bounds do not fit in the encoder's binades")
    below = np.array([int((exponents < first + k).sum()) for k in range(BINADES)], dtype=np.int32)
    inside = np.full(BINADES, np.inf, dtype=np.float32)
    for e, b in zip(exponents, bounds):
        inside[e - first] = b
    return first, below, inside


def _avx512(codec: Blockwise8bit) -> list[str]:
    x, c = letter(codec), codec.decades
    shift = 0 if codec.signed else 1  # decade d has 2^(d + shift) codes
    first_binade, below, inside = binades(codec)
    # the permute reads an exponent's low five bits: table entry e % 32 is binade e (no subtraction)
    rotate = [(k - first_binade) % BINADES for k in range(BINADES)]
    # The encoder works with k = d + shift, log2 of the decade's codes (d = -1: the zero code, 7: 1), and
    # tables by k % 16. The slope n_d / 0.9 is float(1/0.9) · 2^k, and scaling by 2^k commutes with float
    # rounding, so (a·10^(6-d) − 0.1)·slope = (a·S_k − C_k)·float(1/0.9) with S_k = 10^(6-d)·2^k and
    # C_k = 0.1·2^k, bit for bit. Outside the decades S = C = 0 gives j = 0, and the rank is BASE_k:
    # OFFSET − 1 (the zero code) below them, 255 (the code of 1) above.
    offset = OFFSET[codec.signed]
    scaled_scale, scaled_tenth, last, base = [0.0] * 16, [0.0] * 16, [0] * 16, [0] * 16
    for d in range(-1, 8):
        k = d + shift
        base[k % 16] = offset - 1 if d < 0 else 255 if d == 7 else offset + 2 ** k - 1
        if 0 <= d < 7:
            scaled_scale[k % 16] = float(np.float32(c.scale[d]) * np.float32(2.0 ** k))
            scaled_tenth[k % 16] = float(np.float32(0.1) * np.float32(2.0 ** k))
            last[k % 16] = 2 ** k - 1
    for d in range(7):
        if np.float32(c.slope[d]) != np.float32(1 / 0.9) * np.float32(2.0 ** (d + shift)):
            raise AssertionError("a slope is not a power of two times float(1/0.9)")
    if c.first[:7] != [offset + 2 ** (d + shift) - 1 for d in range(7)]:
        raise AssertionError("a decade's first code is not OFFSET + n_d - 1")
    byte_planes = [(codec.table.view(np.uint32) >> (8 * k)) & 0xFF for k in range(4)]
    aligned = "__attribute__((aligned(64)))"
    tables = [
        f"#define LOWEST_{x} {float(2.0 ** (first_binade - 127)).hex()}f  /* the first binade */",
        f"#define HIGHEST_{x} {float(2.0 ** (first_binade + BINADES - 1 - 127)).hex()}f  /* the last */",
        f"static const float BOUND_{x}[32] {aligned} = {{{_hexf(inside[rotate])}}};",
        f"static const int32_t BELOW_{x}[32] {aligned} = {{{_ints(below[rotate] + shift - 1)}}};",
        f"static const float SCALE_{x}[16] {aligned} = {{{_hexf(scaled_scale)}}};  /* S_k */",
        f"static const float TENTH_{x}[16] {aligned} = {{{_hexf(scaled_tenth)}}};  /* C_k */",
        f"static const int32_t LAST_{x}[16] {aligned} = {{{_ints(last)}}};  /* the decade's last bucket */",
        f"static const int32_t BASE_{x}[16] {aligned} = {{{_ints(base)}}};  /* the rank of bucket 0 */",
        f"static const uint8_t BYTES_{x}[4][256] {aligned} = {{"
        + ", ".join("{" + _ints(t) + "}" for t in byte_planes) + "};"]
    # signed: the negative codes mirror the positive ones, 254 - rank, saturating (1 has no mirror)
    sign = ("      negative |= (__mmask64)_mm512_cmp_ps_mask(q, _mm512_setzero_ps(), _CMP_LT_OQ) << (16 * k);"
            if codec.signed else "")
    mirror = ("    bytes = _mm512_mask_subs_epu8(bytes, negative, _mm512_set1_epi8((char)254), bytes);"
              if codec.signed else "")
    return tables + [AVX512.substitute(X=x, SIGN=sign, MIRROR=mirror)]


# A decade's first code is OFFSET + n - 1, n = 2^k its codes (signed: 127 negative codes and the zero code
# lie below OFFSET). Outside the decades the same sum gives the right code: for d = -1 the zero code (k = -1
# shifts 1 out: n = 0), for d = 7 the code of 1, 255.
OFFSET = {True: 128, False: 0}

# The unpacks of decode_X interleave bytes within 128-bit lanes: byte p of the codes ends up in float
# 16g + 4L + i (L = p / 16, g = p / 4 % 4, i = p % 4), so it is fed that code and floats come out in order.
DECODE_ORDER = [16 * (p // 4 % 4) + 4 * (p // 16) + p % 4 for p in range(64)]


AVX512_COMMON = Template("""\
#define ALWAYS_INLINE static inline __attribute__((always_inline))  /* the tables stay in registers */
/* masks of the first n lanes (none for n <= 0, all from 16 or 64 on) */
ALWAYS_INLINE __mmask16 lanes16(int64_t n) {
  return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}
ALWAYS_INLINE __mmask64 lanes64(int64_t n) { return n >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1; }
static const uint8_t DECODE_ORDER[64] __attribute__((aligned(64))) = {$ORDER};""")

AVX512 = Template("""\
ALWAYS_INLINE __m512i encode16_$X(__m512 q) {  /* the ranks of 16 values, as int32 */
  /* |q| clamped to the binades of the tables (a NaN becomes LOWEST: the zero code, as in encode1_$X);
     the clamp changes no code: no bound lies in the first or last binade */
  const __m512 a = _mm512_min_ps(_mm512_range_ps(q, _mm512_set1_ps(LOWEST_$X), 0xB),
                                 _mm512_set1_ps(HIGHEST_$X));
  const __m512i e = _mm512_srli_epi32(_mm512_castps_si512(a), 23);
  /* k = d + shift: the bounds below a's binade, then the one inside it */
  __m512i k = _mm512_permutex2var_epi32(_mm512_load_si512(BELOW_$X), e, _mm512_load_si512(BELOW_$X + 16));
  const __m512 bound = _mm512_permutex2var_ps(_mm512_load_ps(BOUND_$X), e, _mm512_load_ps(BOUND_$X + 16));
  k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(a, bound, _CMP_GT_OQ), k, _mm512_set1_epi32(1));
  /* j = ⌊(a·S_k − C_k)·float(1/0.9)⌋, never below 0 (a lies above the decade's lower bound), at most
     the decade's last bucket; the rank counts from the decade's first code */
  const __m512 scaled = _mm512_mul_ps(a, _mm512_permutexvar_ps(k, _mm512_load_ps(SCALE_$X)));
  const __m512 t = _mm512_mul_ps(_mm512_sub_ps(scaled, _mm512_permutexvar_ps(k, _mm512_load_ps(TENTH_$X))),
                                 _mm512_set1_ps(1 / 0.9f));
  const __m512i last = _mm512_permutexvar_epi32(k, _mm512_load_si512(LAST_$X));
  const __m512i j = _mm512_min_epi32(_mm512_cvttps_epi32(t), last);
  return _mm512_add_epi32(j, _mm512_permutexvar_epi32(k, _mm512_load_si512(BASE_$X)));
}
/* 64 values from w on (the first `left` of them, where fewer are left), as 64 codes */
ALWAYS_INLINE __m512i encode64_$X(const float *restrict w, __m512 inverse, int64_t left) {
  __m512i r[4];
  __mmask64 negative = 0;  /* signed: the lanes of negative q */
  for (int k = 0; k < 4; k++) {
    const __m512 q = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes16(left - 16 * k), w + 16 * k), inverse);
    r[k] = encode16_$X(q);
$SIGN
  }
  /* ranks are 0-255, so packing with saturation is exact; the packs work per 128-bit lane, the permute
     puts the lanes back in order */
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(_mm512_packus_epi32(r[0], r[1]),
                                                                      _mm512_packus_epi32(r[2], r[3])));
$MIRROR
  return bytes;
}
static inline void encode_$X(const float *restrict w, float v, uint8_t *restrict c, int64_t n) {
  const __m512 inverse = _mm512_set1_ps(v);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)  /* whole vectors: the masks fold away */
    _mm512_storeu_si512(c + i, encode64_$X(w + i, inverse, 64));
  if (i < n)
    _mm512_mask_storeu_epi8(c + i, lanes64(n - i), encode64_$X(w + i, inverse, n - i));
}
/* 64 codes from c on (the first `left` of them) as floats, stored from out on */
ALWAYS_INLINE void decode64_$X(const uint8_t *restrict c, __m512 scale, float *restrict out, int64_t left) {
  const __m512i codes = _mm512_permutexvar_epi8(_mm512_load_si512(DECODE_ORDER),
                                                _mm512_maskz_loadu_epi8(lanes64(left), c));
  const __mmask64 upper = _mm512_movepi8_mask(codes);  /* codes 128-255 */
  __m512i b[4];
  for (int k = 0; k < 4; k++) {  /* byte k of each value: a 256-byte lookup */
    const uint8_t *table = BYTES_$X[k];
    b[k] = _mm512_mask_blend_epi8(
        upper, _mm512_permutex2var_epi8(_mm512_load_si512(table), codes, _mm512_load_si512(table + 64)),
        _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), codes, _mm512_load_si512(table + 192)));
  }
  const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]), hi01 = _mm512_unpackhi_epi8(b[0], b[1]);
  const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]), hi23 = _mm512_unpackhi_epi8(b[2], b[3]);
  const __m512i f[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                        _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
  for (int k = 0; k < 4; k++)
    _mm512_mask_storeu_ps(out + 16 * k, lanes16(left - 16 * k),
                          _mm512_mul_ps(_mm512_castsi512_ps(f[k]), scale));
}
static inline void decode_$X(const uint8_t *restrict c, float m, float *restrict out, int64_t n) {
  const __m512 scale = _mm512_set1_ps(m);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    decode64_$X(c + i, scale, out + i, 64);
  if (i < n)
    decode64_$X(c + i, scale, out + i, n - i);
}""")
