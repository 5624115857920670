"""Quantizers between float attention tensors and the HPU's integer inputs and outputs."""

from __future__ import annotations

import math

import torch

from golden_model.contract import signed_range
from hpu.config import HPUConfig
from hpu.errors import InputError


def quantize_scores(scores: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """Float scores (q.k already scaled by 1/sqrt(d)) -> signed score_bits integers, saturating."""
    low, high = signed_range(cfg.score_bits)
    return torch.clamp(torch.round(scores.double() * (1 << cfg.score_frac)), low, high).to(torch.int64)


def row_tops(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(..., Q): each row's largest admissible score (`valid`), the score the format must hold."""
    return scores.double().masked_fill(~valid, float("-inf")).amax(-1)


def clipped_rows(tops: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """(..., Q) bool: the rows whose largest admissible score (`row_tops`) falls outside what
    score_bits with score_frac fractional bits holds. Such a row saturates where it
    matters: its top keys meet at the end code and lose their order. (Softmax ignores a shift, but the
    HPU takes scores as they stream in, before any row maximum is known: the range must hold them.)
    A key below the bottom code under a top that fits loses nothing: it lies past the EXP_LUT's reach."""
    low, high = signed_range(cfg.score_bits)
    top = torch.round(tops * (1 << cfg.score_frac))
    return (top > high) | (top < low)


def holding(cfg: HPUConfig, peak: float) -> HPUConfig:
    """`cfg` with as few fractional score bits dropped as make row tops up to |peak| fit score_bits
    (rounded as `quantize_scores` rounds), and exp_shift lowered by as many where it can (down to 0),
    so that the EXP_LUT keeps its step in nats. Refused (InputError) where no score_frac holds |peak|."""
    _, high = signed_range(cfg.score_bits)
    for frac in range(cfg.score_frac, -1, -1):
        if round(abs(peak) * 2 ** frac) <= high:
            return cfg.replace(score_frac=frac, exp_shift=max(0, cfg.exp_shift - (cfg.score_frac - frac)))
    raise InputError(f"scores up to {peak:g} do not fit score_bits = {cfg.score_bits} (+-{high:g} at "
                     f"score_frac 0): widen score_bits")


def lut_step(cfg: HPUConfig) -> float:
    """The EXP_LUT's step in nats: one entry per 2**exp_shift score LSBs of 2**-score_frac."""
    return 2.0 ** (cfg.exp_shift - cfg.score_frac)


def clipping_note(what: str, share: float, peak: float, cfg: HPUConfig) -> str:
    """One line for the user: how many rows of `what` the score format clips, and the format that holds them."""
    try:
        wider = holding(cfg, peak)
        remedy = f"at the same width --set score_frac={wider.score_frac} --set exp_shift={wider.exp_shift} holds them"
        if lut_step(wider) != lut_step(cfg):
            width = (round(abs(peak) * 2 ** cfg.score_frac)).bit_length() + 1
            remedy += (f", though the EXP_LUT's step grows from {lut_step(cfg):g} to {lut_step(wider):g} nats "
                       f"(--set score_bits={width} keeps both)")
    except InputError as exc:
        remedy = str(exc)
    return (f"{what}: {share:.1%} of the attention rows have a largest score outside the score format (row "
            f"tops reach {peak:.0f}) and clip; {remedy}")


def symmetric_scale(x: torch.Tensor, bits: int, dim, what: str = "values") -> torch.Tensor:
    """One scale per slice of `x` over `dim` (kept): the largest |x| maps to the top code of `bits`."""
    top = (1 << (bits - 1)) - 1
    peak = x.detach().abs().amax(dim=dim, keepdim=True).double()
    # Below float64's smallest normal number a scale loses its precision, and underflows to 0 (x / 0
    # would then make NaN codes): such tiny slices are refused, not quantized wrong.
    tiny = (peak > 0) & (peak < top * torch.finfo(torch.float64).tiny)
    if tiny.any():
        raise InputError(f"{what} too small to quantize: a set's largest magnitude is {float(peak[tiny].max()):.3g}, "
                         f"below the {top * torch.finfo(torch.float64).tiny:.3g} its scale needs ({top} x float64's "
                         f"smallest normal number); multiply the {what} by a power of two (e.g. 2**600) first")
    return torch.where(peak > 0, peak / top, torch.ones_like(peak))


def value_scale(values: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """One scale per value set (..., N, D) -> (...): the largest |v| maps to the top code."""
    return symmetric_scale(values, cfg.value_bits, (-2, -1))[..., 0, 0]


def quantize_values(values: torch.Tensor, cfg: HPUConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Float values (..., N, D) -> (signed value_bits integers, scale (...)), symmetric per set."""
    scale = value_scale(values, cfg)
    low, high = signed_range(cfg.value_bits)
    q = torch.clamp(torch.round(values.double() / scale[..., None, None]), low, high).to(torch.int64)
    return q, scale


def dequantize_out(out: torch.Tensor, scale: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """HPU outputs (..., Q, D) with out_frac fractional bits -> floats in the values' units."""
    return out.double() * (scale[..., None, None] / (1 << cfg.out_frac))


def quantize_logits(logits: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """Float router logits (..., T) -> signed route_bits integers, symmetric per sequence: the largest
    |logit| maps to the top code (the order, all the router needs, survives up to rounding ties)."""
    low, high = signed_range(cfg.route_bits)
    scaled = torch.round(logits.double() / symmetric_scale(logits, cfg.route_bits, -1, "router logits"))
    return torch.clamp(scaled, low, high).to(torch.int64)


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q.k / sqrt(d): the scores the host hands the HPU (before quantization)."""
    return torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
