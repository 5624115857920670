"""The normalizer's arithmetic: division by z_kept as one reciprocal per row and one multiply per element.

The contract (golden_model/contract.py) defines out = trunc(acc * 2**out_frac / z_kept), saturated to
out_bits. Dividing every element costs a long division each; z_kept is the same for the whole row,
so the HPU computes one reciprocal per row and multiplies (division by an invariant integer,
Granlund and Montgomery, PLDI 1994, theorem 4.2):

    l = ceil(log2 z)                       (0 for z = 1)
    m = ceil(2**(Q + l) / z)               (Q = quotient_bits; m < 2**(Q + 1))
    floor(n / z) = (n * m) >> (Q + l)      for every 0 <= n < 2**Q,

because 2**(Q+l) <= m*z <= 2**(Q+l) + 2**l. A magnitude n = |acc| * 2**out_frac of 2**Q or more
saturates whatever z is (Q >= z_bits + out_bits - 1), so only its top bits are looked at. These
functions are the bit-level model of hpu/normalizer.py; tests/test_reciprocal.py proves them equal
to the contract's division exhaustively on small configurations and on the boundaries of the
shipped ones.
"""

from __future__ import annotations

from hpu.config import HPUConfig


def shift_of(z: int) -> int:
    """l = ceil(log2 z): the reciprocal's extra fractional bits."""
    return (z - 1).bit_length()


def reciprocal(z: int, cfg: HPUConfig) -> int:
    """m = ceil(2**(quotient_bits + l) / z), for 1 <= z < 2**z_bits."""
    if not 1 <= z < 1 << cfg.z_bits:
        raise ValueError(f"z_kept = {z} outside 1..{(1 << cfg.z_bits) - 1}")
    return -(-(1 << (cfg.quotient_bits + shift_of(z))) // z)


def normalize(acc: int, z: int, m: int, cfg: HPUConfig) -> int:
    """out for one element from the row's reciprocal m: the magnitude's quotient, signed and saturated."""
    high = (1 << (cfg.out_bits - 1)) - 1
    n = abs(acc) << cfg.out_frac
    if n >> cfg.quotient_bits:
        quotient = high + 1
    else:
        quotient = (n * m) >> (cfg.quotient_bits + shift_of(z))
    return -min(quotient, high + 1) if acc < 0 else min(quotient, high)
