"""bf16 parameters without an fp32 master copy: stochastic rounding and Kahan compensation.

Every path computes a bf16 (or fp16) parameter's update in float32 and rounds once when storing. Round
to nearest loses any update below half a unit in the last place of θ (2⁻⁹ relative for bf16): late in
training most of them. Two options, for every rule (docs/lowprecision.md):

* `stochastic_rounding=True`: store θ (and every per-element state kept in bf16 or fp16) rounded up
  with probability equal to its fractional position between the two neighbouring values, so the
  stored value is unbiased: E[θ′] = the float32 result. The random bits are a counter-based hash of
  (seed, step, stream, element index), computed the same way in torch integer ops (tensor and foreach
  paths) and in the generated C (fused path): the paths round alike bit for bit, and a resumed run
  draws the same bits as the uninterrupted one (each parameter's seed is in its state).
* `kahan_summation=True`: a buffer c in the parameter's dtype keeps what rounding θ lost; the rule
  sees θ + c and the new c is the float32 result minus the stored θ. c is at most half an ulp of θ, so
  its own 8 bits carry θ's precision to about 16 bits, at 2 bytes a parameter (an fp32 buffer would
  cost as much as the master copy it replaces). A bf16 c is itself stored with stochastic rounding
  (its own stream): rounded to nearest, a steady small update loses the same fraction of itself in c
  every step, and the sum drifts (measured: 1 000 steps of 1e-4 on 1.0 ended 2.8% of the sum off).

On float32 and float64 parameters both are no-ops (their update is computed and stored in their own
dtype: nothing is rounded to a coarser storage), so that a model that keeps its norms in float32 beside
bf16 matrices takes one setting for all.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import zlib

import torch

LOW = (torch.bfloat16, torch.float16)
OPTIONS = {"stochastic_rounding": False, "kahan_summation": False, "rounding_seed": None}
KAHAN_KEY = "kahan_compensation"  # per-parameter buffer in optimizer.state[p]
SEED_KEY = "rounding_seed"  # per-parameter seed (a Python int) in optimizer.state[p]

M32 = 0xFFFFFFFF
# A murmur3-style 32-bit finaliser (a bijection). The multipliers are odd and below 2³¹, so that a
# 32-bit value times one fits in int64: torch has no unsigned 32-bit multiply, C has (mod 2³²).
MUL1, MUL2 = 0x7FEB352D, 0x2C1B3C6D


def mix32(x: int) -> int:
    """The finaliser on a Python int (per-tensor keys, computed once per step on the host)."""
    x &= M32
    x ^= x >> 16
    x = (x * MUL1) & M32
    x ^= x >> 15
    x = (x * MUL2) & M32
    return x ^ (x >> 16)


def parameter_seed(group_seed: int, position: int) -> int:
    """Parameter `position` (in the optimizer's order) gets its own stream from the group's seed."""
    return mix32(group_seed ^ mix32(position + 0x9E3779B9))


def stream_of(name: str) -> int:
    """θ draws stream 0; each state its own (a stable hash of its state key, not Python's salted one)."""
    return 0 if name == "θ" else zlib.crc32(name.encode())


def stream_key(seed: int, step: int, stream: int) -> int:
    """The key of one tensor's bits at one step: fresh bits every step, every stream."""
    return mix32(mix32(seed ^ stream) + step)


def _mix_tensor(x: torch.Tensor) -> torch.Tensor:
    """mix32 on an int64 tensor of 32-bit values, in place."""
    x ^= x >> 16
    x.mul_(MUL1).bitwise_and_(M32)
    x ^= x >> 15
    x.mul_(MUL2).bitwise_and_(M32)
    x ^= x >> 16
    return x


def element_bits(key: int, numel: int, device) -> torch.Tensor:
    """32 random bits per element (int64 values in [0, 2³²)): mix(mix(key + i mod 2³²) ^ (i >> 32))."""
    i = torch.arange(numel, dtype=torch.int64, device=device)
    x = _mix_tensor((i & M32).add_(key).bitwise_and_(M32))
    return _mix_tensor(x ^ (i >> 32))


def round_stochastic(x: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 x to bf16 (or fp16), up with probability (x − lower neighbour) / (upper − lower): add
    random bits below the target's last bit and truncate. NaN stays NaN; ±inf stays; the largest
    floats may round to inf."""
    if dtype == torch.float16:
        return _round_stochastic_fp16(x.contiguous(), bits.view(x.shape))
    u = x.contiguous().view(torch.int32).to(torch.int64).bitwise_and_(M32)
    u = (u + (bits.view(x.shape) >> 16)) >> 16 & 0xFFFF
    u = torch.where(u >= 0x8000, u - 0x10000, u).to(torch.int16).view(torch.bfloat16)
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), u)


def _round_stochastic_fp16(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """fp16 keeps 11 significant bits down to 2⁻¹⁴ and a fixed step of 2⁻²⁴ below: the bits dropped from
    x's 24 grow by one per binade there. Below 2⁻²⁴ the neighbours are 0 and 2⁻²⁴: up with chance
    |x|·2²⁴, compared exactly as 24 random bits < |x|·2⁴⁸."""
    u = x.view(torch.int32).to(torch.int64).bitwise_and_(M32)
    sign, mag = u & 0x80000000, u & 0x7FFFFFFF
    e = (mag >> 23) - 127
    drop = (13 + (-14 - e).clamp(min=0)).clamp(max=23)
    mask = (torch.ones_like(drop) << drop) - 1
    kept = (mag + (bits >> (32 - drop))) & ~mask
    tiny = torch.where((bits >> 8).float() < x.abs() * 2.0**48, 0x33800000, 0)  # 2⁻²⁴ or 0
    out = sign | torch.where(e <= -25, tiny, kept)
    out = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32).view(torch.float32).to(torch.float16)
    return torch.where(torch.isnan(x), x.to(torch.float16), out)


def store(target: torch.Tensor, value: torch.Tensor, key: int | None, comp: torch.Tensor | None = None,
          comp_key: int | None = None) -> None:
    """Write float32 `value` into low-precision `target`: rounded stochastically with `key`'s bits (or to
    nearest if None); `comp` (Kahan) gets what the rounding lost, where that is finite (a bf16 one
    rounded stochastically with `comp_key`'s bits)."""
    value = value.reshape(target.shape)
    if key is None:
        target.copy_(value)
    else:
        target.copy_(round_stochastic(value, element_bits(key, value.numel(), value.device), target.dtype))
    if comp is not None:
        lost = value - target.to(value.dtype)
        store(comp, torch.where(torch.isfinite(lost), lost, 0.0), comp_key)


@dataclasses.dataclass(frozen=True)
class Rounding:
    """What a step needs to store low-precision parameters: the options, the step, per-parameter seeds
    and Kahan buffers (None where a parameter has none)."""

    stochastic: bool
    kahan: bool
    step: int
    seeds: tuple
    comps: tuple

    def pick(self, idx) -> Rounding:
        return dataclasses.replace(self, seeds=tuple(self.seeds[i] for i in idx),
                                   comps=tuple(self.comps[i] for i in idx))

    def key(self, i: int, name: str) -> int | None:
        return stream_key(self.seeds[i], self.step, stream_of(name)) if self.stochastic else None

    def comp_key(self, i: int) -> int | None:
        return stream_key(self.seeds[i], self.step, stream_of(KAHAN_KEY)) if self.kahan else None

    @property
    def flags(self) -> tuple[bool, bool]:
        return self.stochastic, self.kahan


def via_float32(run, rule, h, params, grads, states: dict[str, list], rounding: Rounding) -> None:
    """The tensor and foreach paths: run on float32 copies (θ + c with Kahan), then store each with its
    rounding. Per-element states are rounded as θ is; row and column statistics to nearest, as the fused
    kernel stores them."""
    def up(x):
        return None if x is None else x.float()

    θ = [p.float() + c.float() if rounding.kahan else p.float() for p, c in zip(params, rounding.comps)]
    kept = {sym: [up(x) for x in xs] for sym, xs in states.items()}
    run(rule, h, θ, [g.float() for g in grads], kept)
    for i, p in enumerate(params):
        store(p, θ[i], rounding.key(i, "θ"), rounding.comps[i], rounding.comp_key(i))
        for sym, xs in states.items():
            s = rule.state[sym]
            if xs[i] is None:
                continue
            element = s.per == "element" and xs[i].dtype in LOW
            store(xs[i], kept[sym][i], rounding.key(i, s.key) if element else None)


# --- the options, as keywords of every optimizer ---------------------------------------------------


def check_options(name: str, stochastic_rounding, kahan_summation, rounding_seed) -> dict:
    """The three keywords, checked; a seed drawn from torch's generator if none is given (so that
    torch.manual_seed makes a run reproducible)."""
    from .interop import as_flag, plain_number

    out = {}
    for key, value in (("stochastic_rounding", stochastic_rounding), ("kahan_summation", kahan_summation)):
        flag = as_flag(value)
        if flag is None:
            raise ValueError(f"{name}: {key} must be True or False, got {value!r}")
        out[key] = flag
    seed = plain_number(rounding_seed)
    if seed is None:
        seed = int(torch.randint(0, 2**31, ()).item()) if out["stochastic_rounding"] else None
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= M32:
        raise ValueError(f"{name}: rounding_seed must be an integer in [0, 2**32) or None, "
                         f"got {rounding_seed!r}")
    out["rounding_seed"] = seed
    return out


def accepting_options(init):
    """Wrap an optimizer's __init__ so that it takes the three keywords (keyword-only, after its own)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, params, *args, stochastic_rounding=False, kahan_summation=False, rounding_seed=None,
                 **kwargs):
        if "_rounding_options" not in vars(self):  # the outermost __init__ has them (subclasses call bases)
            self._rounding_options = check_options(type(self).__name__, stochastic_rounding, kahan_summation,
                                                   rounding_seed)
        init(self, params, *args, **kwargs)

    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d) for k, d in OPTIONS.items()
             if k not in signature.parameters]
    params = list(signature.parameters.values())
    rest = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    __init__.__signature__ = signature.replace(parameters=[p for p in params if p not in rest] + extra + rest)
    return __init__


def prepare(state: dict, p: torch.Tensor, group: dict, position) -> None:
    """A low-precision parameter's seed and Kahan buffer, created where its group asks for them;
    `position()`: p's place in the optimizer's order."""
    if p.dtype not in LOW:
        return
    if (group.get("stochastic_rounding") or group.get("kahan_summation")) and SEED_KEY not in state:
        if group.get("rounding_seed") is None:  # a group added without one, or an old checkpoint's
            group["rounding_seed"] = int(torch.randint(0, 2**31, ()).item())
        state[SEED_KEY] = parameter_seed(group["rounding_seed"], position())
    if group.get("kahan_summation") and KAHAN_KEY not in state:
        state[KAHAN_KEY] = torch.zeros_like(p, memory_format=torch.contiguous_format)


def rounding_for(group: dict, step: int, params: list, states: list[dict]) -> Rounding | None:
    """The step's Rounding for these parameters, or None where the group asks for neither option."""
    stochastic, kahan = bool(group.get("stochastic_rounding")), bool(group.get("kahan_summation"))
    if not (stochastic or kahan):
        return None
    return Rounding(stochastic, kahan, step, tuple(s.get(SEED_KEY, 0) for s in states),
                    tuple(s.get(KAHAN_KEY) if kahan else None for s in states))


def checked_seed(value, where: str) -> int:
    """A per-parameter seed from a checkpoint as a Python int in [0, 2³²); else a ValueError naming it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= M32:
        raise ValueError(f"{where}: state {SEED_KEY!r} must be an integer in [0, 2**32), got {value!r}")
    return value


# --- the same in C, for the fused kernel (engine/cgen.py) ------------------------------------------

C_PRELUDE = rf"""
static inline uint32_t mix32(uint32_t x) {{
    x ^= x >> 16; x *= {MUL1:#x}u; x ^= x >> 15; x *= {MUL2:#x}u; return x ^ (x >> 16);
}}
static inline uint32_t element_bits(uint32_t key, int64_t i) {{  /* as lowprec.element_bits */
    return mix32(mix32(key + (uint32_t)i) ^ (uint32_t)((uint64_t)i >> 32));
}}
static inline uint16_t bf16_store_stochastic(float f, uint32_t r) {{  /* as lowprec.round_stochastic */
    union {{ uint32_t u; float f; }} v; v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((v.u + (r >> 16)) >> 16);
}}
static inline _Float16 f16_store_stochastic(float f, uint32_t r) {{  /* as lowprec._round_stochastic_fp16 */
    union {{ uint32_t u; float f; }} v; v.f = f;
    const uint32_t mag = v.u & 0x7fffffffu, sign = v.u & 0x80000000u;
    if (mag > 0x7f800000u) return (_Float16)f;
    const int e = (int)(mag >> 23) - 127;
    uint32_t out;
    if (e <= -25) {{
        out = (float)(r >> 8) < fabsf(f) * 0x1p48f ? 0x33800000u : 0u;
    }} else {{
        const int drop = e >= -14 ? 13 : 13 + (-14 - e);
        out = (mag + (r >> (32 - drop))) & ~((1u << drop) - 1u);
    }}
    v.u = sign | out; return (_Float16)v.f;
}}
static inline float kahan_lost(float v, float stored) {{  /* finite or nothing, as lowprec.store */
    const float d = v - stored; return d - d == 0 ? d : 0.0f;
}}
"""
