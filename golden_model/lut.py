"""EXP_LUT: the one table of exponentials shared by the golden model, the RTL and the kernels."""

from __future__ import annotations

import math
from functools import lru_cache

from hpu.config import HPUConfig


@lru_cache(maxsize=None)
def _exp_lut(prob_bits: int, exp_shift: int, score_frac: int, lut_size: int) -> tuple[int, ...]:
    top = (1 << prob_bits) - 1
    step = 2.0 ** (exp_shift - score_frac)
    # floor(x + 0.5) rather than round(): Python's round() is round-half-even, and
    # every consumer (RTL ROM, Triton, torch) must read the very same integers.
    return tuple(math.floor(top * math.exp(-i * step) + 0.5) for i in range(lut_size))


def exp_lut(cfg: HPUConfig) -> tuple[int, ...]:
    """EXP_LUT[i] = round((2**prob_bits - 1) * exp(-i * 2**exp_shift / 2**score_frac)).

    Index i is ``min((m - s_j) >> exp_shift, lut_size - 1)``: the distance of a
    score below the row maximum, in steps of 2**exp_shift score LSBs.
    """
    return _exp_lut(cfg.prob_bits, cfg.exp_shift, cfg.score_frac, cfg.lut_size)
