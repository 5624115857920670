"""The mass gate's per-row selection on the GPU: `golden_model.gate.select` without a sort.

The rule keeps a prefix of each row's order (probability descending, index ascending): the keys above
one threshold value plus the first few keys *at* it, by index. So instead of sorting, one Triton
program holds one row in registers and finds the threshold by a bisection on the bit patterns of
the weights (non-negative float32 order like their int32 patterns, so every comparison is exact):

- the threshold ``v`` is the largest value whose keys at or above it either hold the target mass or
  number at least ``cap``; the larger of the mass rule's and the cap's thresholds is the shorter
  prefix, which is the rule's ``min(L_mass, cap)``;
- the bisection stops as soon as at most one key lies between its bounds (that key is ``v``), so a
  row of n distinct weights takes about log2(n) + a few passes, not the 30 its bit span allows;
- the keys above ``v`` are kept, and of the keys equal to ``v`` the first ``need`` by index, where
  ``need`` is the fewest that reach the target mass, but at most ``cap`` minus the keys above.

`select_causal_qk` does the same for causal rows straight from q and k: one tiled kernel writes the
float32 scores of the blocks on and below the diagonal (tl.dot: float32 sums of exact half-precision
products), and the rule ranks exp(s - max), the softmax before its denominator. Rows are launched
in groups by their length, each group with the shortest power-of-two row that holds its visible
keys, so the masked half of a causal matrix costs no passes.

Ties, k_min, the cap and invalid keys follow the rule exactly. The one difference from the
reference is float rounding: the reference sums the prefix in sorted order, this kernel by a tree,
so a row whose prefix mass lies within float32 rounding (about n * 6e-8 of the row's mass) of the
target may end one key apart.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from golden_model.gate import select as reference_select
from hpu.config import GATE_SCALE, HPUConfig

# Probabilities lie in [0, 1]; 1.0 is 0x3F800000 < 2**30 as int32 bits.
_BITS_SPAN = 30
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The causal scores' tile: 64 x 64 keeps the tensor cores busy and the diagonal's waste small.
_TILE = 64


def _row_configs():
    # One row a program; warps a row trade registers a thread (no spills on long rows) against
    # reductions that cross warps. Chosen per row length on the GPU.
    if _INTERPRET:
        return [triton.Config({}, num_warps=1)]
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)]


@triton.jit
def _threshold_keep(p, valid, rho_q, tau, k_min, MASS: tl.constexpr, SPAN: tl.constexpr, SCALE: tl.constexpr):
    """The kept keys of one row of non-negative weights `p` (0 where invalid), as int1."""
    # Invalid keys get bits -1, below every threshold tried (all >= 0).
    bits = tl.where(valid, p.to(tl.int32, bitcast=True), -1)
    n = tl.sum(valid.to(tl.int32), 0)
    cap = tl.minimum(tl.maximum((n * rho_q + SCALE - 1) // SCALE, k_min), n)  # HPUConfig.gate_cap
    if MASS:
        target = tl.sum(p, 0) * tau
    else:
        target = float("inf")
    # Invariant: the keys at or above lo are enough, those at or above hi are not; at_lo and at_hi
    # count them. Every valid key is >= 0, so lo = 0 starts enough.
    lo = n * 0
    hi = lo + (1 << SPAN)
    at_lo = n
    at_hi = n * 0
    while (at_lo - at_hi > 1) & (hi - lo > 1):
        mid = lo + (hi - lo) // 2
        at_or_above = bits >= mid
        count = tl.sum(at_or_above.to(tl.int32), 0)
        enough = count >= cap
        if MASS:
            enough = enough | (tl.sum(tl.where(at_or_above, p, 0.0), 0) >= target)
        lo = tl.where(enough, mid, lo)
        at_lo = tl.where(enough, count, at_lo)
        hi = tl.where(enough, hi, mid)
        at_hi = tl.where(enough, at_hi, count)
    # At most one distinct value lies in [lo, hi): the threshold, the largest value that is enough.
    # (None only when even the empty set is enough, a target of 0: then nothing is above lo.)
    v = tl.min(tl.where(bits >= lo, bits, 1 << SPAN), 0)
    lo = tl.where(v < (1 << SPAN), v, lo)
    above = bits > lo
    tie = bits == lo
    rank = tl.cumsum(tie.to(tl.int32), 0)
    need = cap - tl.sum(above.to(tl.int32), 0)
    if MASS:
        # Tied keys have one value w: the prefix through the r-th of them holds mass_above + r * w.
        mass_above = tl.sum(tl.where(above, p, 0.0), 0)
        w = tl.max(tl.where(tie, p, 0.0), 0)
        short = tie & ((mass_above + rank.to(tl.float32) * w) < target)
        need = tl.minimum(need, tl.sum(short.to(tl.int32), 0) + 1)
    return above | (tie & (rank <= need))


@triton.autotune(configs=_row_configs(), key=["BLOCK_N", "MASS", "CAUSAL"])
@triton.jit
def _row_gate(P, VALID, KEEP, n_q, n_keys, stride_p, stride_v, stride_k, rho_q, tau, k_min,
              MASS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, SPAN: tl.constexpr,
              SCALE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_N)
    live = c < n_keys
    if CAUSAL:
        # Query i of the last n_q positions sees keys 0 .. i + n_keys - n_q.
        valid = live & (c <= r % n_q + (n_keys - n_q))
    else:
        valid = live & (tl.load(VALID + r * stride_v + c, mask=live, other=0) != 0)
    p = tl.load(P + r * stride_p + c, mask=valid, other=0.0)
    keep = _threshold_keep(p, valid, rho_q, tau, k_min, MASS, SPAN, SCALE)
    tl.store(KEEP + r * stride_k + c, keep.to(tl.int8), mask=live)


@triton.jit
def _causal_scores(Q, K, S, n_q, n_keys, heads, kv_groups, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
                   stride_kn, qk_scale, TILE: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Scores q.k * scale * log2(e) of the tiles on and below the diagonal; those above are never read."""
    ti, tj, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offset = n_keys - n_q
    if tj * TILE > ti * TILE + TILE - 1 + offset:
        return
    # 64-bit offsets: q and k may hold more than 2**31 elements.
    b, h = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)
    i = ti * TILE + tl.arange(0, TILE)
    j = tj * TILE + tl.arange(0, TILE)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + i.to(tl.int64)[:, None] * stride_qn + d[None, :],
                mask=i[:, None] < n_q, other=0.0)
    k = tl.load(K + b * stride_kb + (h // kv_groups) * stride_kh + j.to(tl.int64)[None, :] * stride_kn + d[:, None],
                mask=j[None, :] < n_keys, other=0.0)
    s = tl.dot(q, k) * qk_scale
    rows = bh.to(tl.int64) * n_q + i
    tl.store(S + rows[:, None] * n_keys + j[None, :], s, mask=(i[:, None] < n_q) & (j[None, :] < n_keys))


@triton.autotune(configs=_row_configs(), key=["BLOCK_N", "MASS"])
@triton.jit
def _score_gate(S, KEEP, first_row, n_q, n_keys, rho_q, tau, k_min, MASS: tl.constexpr, BLOCK_N: tl.constexpr,
                SPAN: tl.constexpr, SCALE: tl.constexpr):
    """One causal row of scores (log2 domain): weights exp2(s - max), then the threshold."""
    i = first_row + tl.program_id(0)
    r = tl.program_id(1).to(tl.int64) * n_q + i
    c = tl.arange(0, BLOCK_N)
    valid = (c < n_keys) & (c <= i + (n_keys - n_q))
    s = tl.load(S + r * n_keys + c, mask=valid, other=float("-inf"))
    p = tl.where(valid, tl.math.exp2(s - tl.max(s, 0)), 0.0)
    keep = _threshold_keep(p, valid, rho_q, tau, k_min, MASS, SPAN, SCALE)
    tl.store(KEEP + r * n_keys + c, keep.to(tl.int8), mask=c < n_keys)


def select(probs: torch.Tensor, valid: torch.Tensor | None, cfg: HPUConfig,
           causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask and kept count of every row, as `golden_model.gate.select` on float probabilities.

    probs:  (..., Q, N) float32 softmax probabilities, zero where invalid, on a CUDA device (or any
            device under TRITON_INTERPRET=1).
    valid:  (..., Q, N) bool, broadcastable to probs; each row needs at least one valid key. With
            ``causal`` it is not read (None will do): query i of Q sees keys 0 .. i + N - Q.
    Returns ``(keep (..., Q, N) bool, kept (..., Q) int64)``.
    """
    n_q, n_keys = probs.shape[-2:]
    if cfg.mode == "dense":
        full = torch.ones(n_q, n_keys, dtype=torch.bool, device=probs.device)
        valid = full.tril(n_keys - n_q) if causal else valid
        return reference_select(probs, valid.expand(probs.shape), cfg)
    p = probs.reshape(-1, n_keys)
    p = p if p.stride(-1) == 1 and p.dtype == torch.float32 else p.float().contiguous()
    v = p if causal else valid.expand(probs.shape).reshape(-1, n_keys).contiguous().view(torch.int8)
    rows = p.shape[0]
    keep = torch.empty((rows, n_keys), dtype=torch.int8, device=p.device)
    _row_gate[(rows,)](p, v, keep, n_q, n_keys, p.stride(0), v.stride(0), keep.stride(0), cfg.rho_q,
                       cfg.tau_q / GATE_SCALE, cfg.k_min, MASS=cfg.mode == "mass", CAUSAL=causal,
                       BLOCK_N=triton.next_power_of_2(n_keys), SPAN=_BITS_SPAN, SCALE=GATE_SCALE)
    keep = keep.view(torch.bool).reshape(probs.shape)
    return keep, keep.sum(-1)


def row_groups(n_q: int, n_keys: int, shortest: int = 32) -> list[tuple[int, int, int]]:
    """Causal rows grouped by length: ``(first row, rows, keys a program holds)`` with the keys a
    power of two (at least `shortest`) that covers every visible key of the group's rows."""
    groups, first, width = [], 0, shortest
    while first < n_q:
        # Row i sees i + 1 + n_keys - n_q keys: rows before width - (n_keys - n_q) fit in `width`.
        end = min(n_q, width - (n_keys - n_q))
        if end > first:
            groups.append((first, end - first, width))
            first = end
        width *= 2
    return groups


def select_causal_qk(q: torch.Tensor, k: torch.Tensor, cfg: HPUConfig, scale: float) -> torch.Tensor:
    """The causal keep mask (B, H, Q, N) straight from q (B, H, Q, D) and k (B, Hkv, N, D), fp16 or bf16.

    The scores are q.k * scale with float32 accumulation of exact half-precision products, and the
    rule ranks exp(s - max) (the softmax before its denominator, which the rule's comparisons do not
    need): the same rule as `select` on the softmax probabilities up to float rounding. The scores of
    one call live in one float32 buffer of (B, H, Q, N) while it runs.
    """
    b, heads, n_q, dim = q.shape
    n_keys = k.shape[2]
    if cfg.mode == "dense":
        return torch.ones(n_q, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - n_q).expand(b, heads, n_q, n_keys)
    q, k = q.contiguous(), k.contiguous()
    scores = torch.empty((b, heads, n_q, n_keys), dtype=torch.float32, device=q.device)
    _causal_scores[(triton.cdiv(n_q, _TILE), triton.cdiv(n_keys, _TILE), b * heads)](
        q, k, scores, n_q, n_keys, heads, heads // k.shape[1], q.stride(0), q.stride(1), q.stride(2), k.stride(0),
        k.stride(1), k.stride(2), scale * 1.4426950408889634, TILE=_TILE, HEAD_DIM=dim)
    # Keys past a group's width are never visible to its rows, so they stay the zeros written here.
    keep = torch.zeros((b, heads, n_q, n_keys), dtype=torch.int8, device=q.device)
    for first, rows, width in row_groups(n_q, n_keys):
        _score_gate[(rows, b * heads)](scores, keep, first, n_q, n_keys, cfg.rho_q, cfg.tau_q / GATE_SCALE,
                                       cfg.k_min, MASS=cfg.mode == "mass", BLOCK_N=width, SPAN=_BITS_SPAN,
                                       SCALE=GATE_SCALE)
    return keep.view(torch.bool)
