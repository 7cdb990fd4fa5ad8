"""8-bit AdamW (Dettmers et al. 2022): the AdamW rule, with m and v stored by a blockwise 8-bit codec.

Nothing of Adam is written again here: the rule is `adam` (optimizers/adam.py) with decoupled decay, and
the engine keeps `exp_avg` and `exp_avg_sq` as uint8 codes plus one float32 absmax per block of 256
(engine/codec.py): signed dynamic map for m, unsigned for v. Each step decodes them, runs the rule,
and encodes them again; the fused C kernel and the Triton kernel do so in registers, block by block.
"""

from __future__ import annotations

from ..engine import codec
from ..engine.optimizer import RuleOptimizer, hyperparameters
from .adam import AdamW


def _min_size(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return None if ok else "must be a whole number of elements ≥ 0"


class AdamW8bit(AdamW):
    """AdamW with 8-bit blockwise-quantised m and v: about 2 bytes of state per parameter instead of 8.

    Parameters with fewer than `min_8bit_size` elements (bitsandbytes' default, 4096: biases, norms)
    keep full-precision state; quantising them would save little and cost precision where it is cheap.
    """

    codecs = {"m": codec.SIGNED, "v": codec.UNSIGNED}
    complex_as_real = False  # the codec stores real states; bitsandbytes refuses complex parameters too
    checks = {**AdamW.checks, "min_8bit_size": _min_size}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, bias_correction=True, min_8bit_size=4096, path="auto"):
        RuleOptimizer.__init__(self, params, path, **hyperparameters(locals()))
