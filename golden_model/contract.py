"""Bit-accurate model of the HPU: the numeric contract of docs/ARCHITECTURE.md, vectorized.

This is the specification the RTL and the integer Triton kernel must match
exactly. Rows are batched: ``scores`` is (..., Q, N) and ``values`` (..., N, D),
so Q query rows share one set of value vectors (an attention head) without
copying them; the hardware's one-row-at-a-time view is Q = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden_model.gate import keep_prefix, ranking, select
from golden_model.lut import exp_lut
from hpu.config import HPUConfig
from hpu.errors import InputError


@dataclass(frozen=True)
class ContractResult:
    """Everything the HPU computes for each row (shapes for scores (..., Q, N))."""

    e: torch.Tensor        # (..., Q, N) unnormalized probabilities; 0 past the row length
    keep: torch.Tensor     # (..., Q, N) bool kept set
    kept: torch.Tensor     # (..., Q) kept count
    z: torch.Tensor        # (..., Q) sum of e over the row
    z_kept: torch.Tensor   # (..., Q) sum of e over the kept set
    acc: torch.Tensor      # (..., Q, D) sum over kept j of e_j * v_j
    out: torch.Tensor      # (..., Q, D) acc * 2**out_frac / z_kept, truncated, saturated
    lengths: torch.Tensor  # (..., Q) row lengths n


def normalize(acc: torch.Tensor, z_kept: torch.Tensor, cfg: HPUConfig) -> torch.Tensor:
    """Step 6: out = acc * 2**out_frac / z_kept, truncated toward zero, saturated to out_bits."""
    out = torch.div(acc << cfg.out_frac, z_kept, rounding_mode="trunc")
    return torch.clamp(out, *signed_range(cfg.out_bits))


def signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _check_range(name: str, tensor: torch.Tensor, bits: int, field: str):
    low, high = signed_range(bits)
    if not tensor.numel():
        return
    seen_low, seen_high = (int(x) for x in torch.aminmax(tensor))
    if seen_low < low or seen_high > high:
        raise InputError(f"{name} must fit {field} = {bits} signed bits ({low}..{high}); "
                         f"got {seen_low}..{seen_high}")


def run_contract(cfg: HPUConfig, scores: torch.Tensor, values: torch.Tensor,
                 lengths: torch.Tensor | None = None) -> ContractResult:
    """Run the integer contract on every row.

    scores:  (..., Q, N) integers in score_bits.
    values:  (..., N, D) integers in value_bits, D = cfg.head_dim.
    lengths: (..., Q) row lengths in 1..min(N, max_keys); keys at or past a
             row's length are not part of it. Defaults to N.
    """
    if scores.is_floating_point() or values.is_floating_point():
        raise TypeError("run_contract takes integer scores and values; quantize floats first "
                        "(golden_model.quantize)")
    scores = scores.to(torch.int64)
    n_keys = scores.shape[-1]
    if values.shape[-2] != n_keys or values.shape[-1] != cfg.head_dim:
        raise InputError(f"values must be (..., {n_keys}, head_dim={cfg.head_dim}); got {tuple(values.shape)}")
    if lengths is None:
        lengths = torch.full(scores.shape[:-1], n_keys, dtype=torch.int64, device=scores.device)
    lengths = lengths.to(torch.int64)
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > min(n_keys, cfg.max_keys)):
        raise InputError(f"row lengths must lie in 1..{min(n_keys, cfg.max_keys)} "
                         f"(max_keys = {cfg.max_keys}, N = {n_keys}); "
                         f"got {int(lengths.min())}..{int(lengths.max())}")
    _check_range("scores", scores, cfg.score_bits, "score_bits")
    _check_range("values", values, cfg.value_bits, "value_bits")

    index = torch.arange(n_keys, device=scores.device)
    valid = index < lengths.unsqueeze(-1)
    m = torch.where(valid, scores, torch.full_like(scores, torch.iinfo(torch.int64).min)).amax(-1, keepdim=True)
    lut = torch.tensor(exp_lut(cfg), dtype=torch.int64, device=scores.device)
    distance = torch.where(valid, m - scores, torch.zeros_like(scores))
    e = torch.where(valid, lut[torch.clamp(distance >> cfg.exp_shift, max=cfg.lut_size - 1)],
                    torch.zeros_like(scores))

    keep, kept = select(e, valid, cfg)
    e_kept = torch.where(keep, e, torch.zeros_like(e))
    # A float matmul is exact when every partial sum is an integer the float's
    # mantissa holds: |partial| < 2**(acc_bits - 1). float32 holds 24 bits, float64
    # 53 (HPUConfig refuses wider accumulators), whatever the summation order.
    exact = torch.float32 if cfg.min_acc_bits <= 25 else torch.float64
    acc = torch.matmul(e_kept.to(exact), values.to(exact)).to(torch.int64)
    z_kept = e_kept.sum(-1)
    out = normalize(acc, z_kept.unsqueeze(-1), cfg)
    return ContractResult(e=e, keep=keep, kept=kept, z=e.sum(-1), z_kept=z_kept, acc=acc, out=out,
                          lengths=lengths)


@dataclass(frozen=True)
class RouteResult:
    """The router's answer for each block (shapes for logits (..., T))."""

    routed: torch.Tensor   # (..., T) bool: token t is routed as a query
    count: torch.Tensor    # (...) routed tokens, max(1, ceil(n * route_q / 256))
    lengths: torch.Tensor  # (...) tokens n in each block

    def positions(self) -> list[list[int]]:
        """Each block's routed positions, ascending: what the HPU emits."""
        return routed_positions(self.routed)


def routed_positions(routed: torch.Tensor) -> list[list[int]]:
    """A (..., T) routed mask as each block's routed positions, ascending."""
    return [torch.nonzero(row).flatten().tolist() for row in routed.reshape(-1, routed.shape[-1]).cpu()]


def run_routing(cfg: HPUConfig, logits: torch.Tensor, lengths: torch.Tensor | None = None) -> RouteResult:
    """The routing step: per block, the first max(1, ceil(n * route_q / 256)) tokens of the order
    (r_t descending, t ascending), the rule of the gate's topk on raw signed logits.

    logits:  (..., T) integers in route_bits.
    lengths: (...) tokens per block in 1..min(T, route_block). Defaults to T.
    """
    if cfg.route_block == 0:
        raise InputError("routing needs a router: set route_block (the most tokens per block) above 0")
    if logits.is_floating_point():
        raise TypeError("run_routing takes integer router logits; quantize them to route_bits first")
    logits = logits.to(torch.int64)
    tokens = logits.shape[-1]
    if lengths is None:
        lengths = torch.full(logits.shape[:-1], tokens, dtype=torch.int64, device=logits.device)
    lengths = lengths.to(torch.int64)
    top = min(tokens, cfg.route_block)
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > top):
        raise InputError(f"block lengths must lie in 1..{top} (route_block = {cfg.route_block}, T = {tokens}); "
                         f"got {int(lengths.min())}..{int(lengths.max())}")
    _check_range("router logits", logits, cfg.route_bits, "route_bits")
    valid = torch.arange(tokens, device=logits.device) < lengths.unsqueeze(-1)
    count = cfg.route_capacity(lengths)
    routed = keep_prefix(ranking(logits, valid), count, valid)
    return RouteResult(routed=routed, count=count, lengths=lengths)
