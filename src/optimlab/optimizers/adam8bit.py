"""8-bit AdamW (Dettmers et al. 2022): the AdamW rule, with m and v stored by a blockwise 8-bit codec.

Nothing of Adam is written again here: the rule is `adam` (optimizers/adam.py) with decoupled decay, and
the engine keeps `exp_avg` and `exp_avg_sq` as uint8 codes plus one float32 absmax per block of 256
(engine/codec.py): signed dynamic map for m, unsigned for v. Each step decodes them, runs the rule,
and encodes them again; the fused C kernel and the Triton kernel do so in registers, block by block.

`v_without_zero=True` (off by default, as bitsandbytes) removes the zero point of v's map (Li et al. 2023,
"Memory Efficient Optimizers with 4-bit States"): a v under ~1.6·10⁻⁷ of its block's absmax is coded 0,
while m, on its own map with twice the decades of the gradient's scale, may still be coded nonzero; the
step is then m̂/ε, hundreds of times Adam's bounded step. With the option the zero code of v decodes to
10⁻⁷ of the absmax (the lower edge of the map's smallest decade) instead: the same codes and bytes.
"""

from __future__ import annotations

import functools

import numpy as np

from ..engine import codec
from ..engine.optimizer import RuleOptimizer, hyperparameters
from .adam import AdamW


def _min_size(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return None if ok else "must be a whole number of elements ≥ 0"


class UnsignedWithoutZero(codec.Blockwise8bit):
    """The unsigned dynamic map whose lowest code decodes to 10⁻⁷ instead of 0. The codes are the standard
    map's (its decision boundaries, so the encoder, C kernel included, is unchanged); only the value a code
    decodes to differs, and only for code 0."""

    FLOOR = 1e-7  # 0.1 · 10⁻⁶: where the map's smallest decade begins

    def __init__(self):
        super().__init__(signed=False)

    @property
    def name(self) -> str:
        return "unsigned dynamic map without zero"

    @functools.cached_property
    def table(self) -> np.ndarray:
        floored = codec.UNSIGNED.table.copy()
        floored[0] = np.float32(self.FLOOR)
        return floored

    @functools.cached_property
    def midpoints(self) -> np.ndarray:
        return codec.UNSIGNED.midpoints


WITHOUT_ZERO = UnsignedWithoutZero()


class AdamW8bit(AdamW):
    """AdamW with 8-bit blockwise-quantised m and v: about 2 bytes of state per parameter instead of 8.

    Parameters with fewer than `min_8bit_size` elements (bitsandbytes' default, 4096: biases, norms)
    keep full-precision state; quantising them would save little and cost precision where it is cheap.
    `v_without_zero=True` stores v on a map without zero (see the module's docstring).
    """

    codecs = {"m": codec.SIGNED, "v": codec.UNSIGNED}
    complex_as_real = False  # the codec stores real states; bitsandbytes refuses complex parameters too
    checks = {**AdamW.checks, "min_8bit_size": _min_size}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, bias_correction=True, min_8bit_size=4096, v_without_zero=False, path="auto"):
        RuleOptimizer.__init__(self, params, path, **hyperparameters(locals()))

    @classmethod
    def _codec_chosen(cls, sym, h):
        if sym == "v" and getattr(h, "v_without_zero", False):
            return WITHOUT_ZERO
        return super()._codec_chosen(sym, h)
