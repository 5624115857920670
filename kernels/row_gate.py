"""The mass gate's per-row selection on the GPU: `golden_model.gate.select` without a sort.

The rule keeps a prefix of each row's order (probability descending, index ascending): the keys above
one threshold value plus the first few keys *at* it, by index. So instead of sorting, one Triton
program holds a few whole rows in registers (rows and warps a program tuned per row length) and
finds the threshold by one bisection on the bit patterns of the probabilities (non-negative float32
order like their int32 patterns, so every comparison is exact):

- the threshold ``v`` is the largest value whose keys at or above it either hold the target mass or
  number at least ``cap``; the larger of the mass rule's and the cap's thresholds is the shorter
  prefix, which is the rule's ``min(L_mass, cap)``;
- the keys above ``v`` are kept, and of the keys equal to ``v`` the first ``need`` by index, where
  ``need`` is the fewest that reach the target mass, but at most ``cap`` minus the keys above.

`select_causal_qk` does the same for causal rows straight from q and k: one tl.dot per 16 or 32 rows gives
the scores (float32 sums of exact half-precision products), and the rule ranks exp(s - max), the
softmax before its denominator, so neither scores nor probabilities are written to memory.

30 passes over registers (probabilities are at most 1.0, below 2**30 as bits): O(30 N) per row
against the sort's O(N log N) memory passes. Ties, k_min, the cap and invalid keys follow the rule
exactly. The one difference from the reference is float rounding: the reference sums the prefix in
sorted order, this kernel sums by a tree, so a row whose prefix mass lies within float32 rounding
(about n * 6e-8 of the row's mass) of the target may end one key apart.
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


def _row_configs():
    # Rows a program x warps: fewer elements a thread keeps the row in registers (no spills), more
    # warps a row make its reductions cross warps. Chosen per row length on the GPU.
    if _INTERPRET:
        return [triton.Config({"BLOCK_R": 4}, num_warps=4)]
    return [triton.Config({"BLOCK_R": r}, num_warps=w) for r in (1, 2, 4, 8) for w in (4, 8, 16)]


def _qk_configs():
    # tl.dot takes at least 16 rows; 16 or 32 rows of up to 2048 scores spread over 8 to 32 warps.
    if _INTERPRET:
        return [triton.Config({"BLOCK_R": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_R": r}, num_warps=w, num_stages=1) for r in (16, 32) for w in (8, 16, 32)]


@triton.jit
def _threshold_keep(p, valid, rho_q, tau, k_min, MASS: tl.constexpr, BLOCK_R: tl.constexpr, SPAN: tl.constexpr,
                    SCALE: tl.constexpr):
    """The kept keys of BLOCK_R rows of non-negative weights `p` (0 where invalid), as int1."""
    # Invalid keys get bits -1, below every threshold tried (all >= 0).
    bits = tl.where(valid, p.to(tl.int32, bitcast=True), -1)
    n = tl.sum(valid.to(tl.int32), 1)
    cap = tl.minimum(tl.maximum((n * rho_q + SCALE - 1) // SCALE, k_min), n)
    if MASS:
        target = tl.sum(p, 1) * tau
    else:
        target = tl.full([BLOCK_R], float("inf"), tl.float32)
    lo = tl.zeros([BLOCK_R], tl.int32)
    hi = tl.full([BLOCK_R], 1 << SPAN, tl.int32)
    for _ in tl.static_range(SPAN):
        mid = lo + (hi - lo) // 2
        at_or_above = bits >= mid[:, None]
        enough = tl.sum(at_or_above.to(tl.int32), 1) >= cap
        if MASS:
            enough = enough | (tl.sum(tl.where(at_or_above, p, 0.0), 1) >= target)
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    above = bits > lo[:, None]
    tie = bits == lo[:, None]
    rank = tl.cumsum(tie.to(tl.int32), 1)
    need = cap - tl.sum(above.to(tl.int32), 1)
    if MASS:
        # Tied keys have one value v: the prefix through the r-th of them holds mass_above + r * v.
        mass_above = tl.sum(tl.where(above, p, 0.0), 1)
        v = tl.max(tl.where(tie, p, 0.0), 1)
        short = tie & ((mass_above[:, None] + rank.to(tl.float32) * v[:, None]) < target[:, None])
        need = tl.minimum(need, tl.sum(short.to(tl.int32), 1) + 1)
    return above | (tie & (rank <= need[:, None]))


@triton.autotune(configs=_row_configs(), key=["n_keys", "MASS", "CAUSAL"])
@triton.jit
def _row_gate(P, VALID, KEEP, rows, n_q, n_keys, stride_p, stride_v, stride_k, rho_q, tau, k_min,
              MASS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
              SPAN: tl.constexpr, SCALE: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_N)
    live = (r[:, None] < rows) & (c[None, :] < n_keys)
    if CAUSAL:
        # Query i of the last n_q positions sees keys 0 .. i + n_keys - n_q.
        valid = live & (c[None, :] <= (r % n_q)[:, None] + (n_keys - n_q))
    else:
        valid = live & (tl.load(VALID + r[:, None] * stride_v + c[None, :], mask=live, other=0) != 0)
    p = tl.load(P + r[:, None] * stride_p + c[None, :], mask=valid, other=0.0)
    keep = _threshold_keep(p, valid, rho_q, tau, k_min, MASS, BLOCK_R, SPAN, SCALE)
    tl.store(KEEP + r[:, None] * stride_k + c[None, :], keep.to(tl.int8), mask=live)


@triton.autotune(configs=_qk_configs(), key=["n_keys", "HEAD_DIM", "MASS"])
@triton.jit
def _qk_row_gate(Q, K, KEEP, n_q, n_keys, heads, kv_groups, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
                 stride_kn, qk_scale, rho_q, tau, k_min, MASS: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SPAN: tl.constexpr, SCALE: tl.constexpr):
    """Causal rows straight from q and k: scores by one tl.dot, exp(s - max) as the weights (the
    softmax's denominator cancels in the rule), then the same threshold as `_row_gate`."""
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + i[:, None] * stride_qn + d[None, :], mask=i[:, None] < n_q,
                other=0.0)
    k = tl.load(K + b * stride_kb + (h // kv_groups) * stride_kh + c[None, :] * stride_kn + d[:, None],
                mask=c[None, :] < n_keys, other=0.0)
    valid = (i[:, None] < n_q) & (c[None, :] < n_keys) & (c[None, :] <= i[:, None] + (n_keys - n_q))
    s = tl.where(valid, tl.dot(q, k) * qk_scale, float("-inf"))
    m = tl.max(s, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    p = tl.where(valid, tl.math.exp2(s - m[:, None]), 0.0)
    keep = _threshold_keep(p, valid, rho_q, tau, k_min, MASS, BLOCK_R, SPAN, SCALE)
    rows = bh * n_q + i
    tl.store(KEEP + rows[:, None] * n_keys + c[None, :], keep.to(tl.int8),
             mask=(i[:, None] < n_q) & (c[None, :] < n_keys))


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
    _row_gate[lambda meta: (triton.cdiv(rows, meta["BLOCK_R"]),)](
        p, v, keep, rows, n_q, n_keys, p.stride(0), v.stride(0), keep.stride(0), cfg.rho_q,
        cfg.tau_q / GATE_SCALE, cfg.k_min, MASS=cfg.mode == "mass", CAUSAL=causal,
        BLOCK_N=triton.next_power_of_2(n_keys), SPAN=_BITS_SPAN, SCALE=GATE_SCALE)
    keep = keep.view(torch.bool).reshape(probs.shape)
    return keep, keep.sum(-1)


def select_causal_qk(q: torch.Tensor, k: torch.Tensor, cfg: HPUConfig, scale: float) -> torch.Tensor:
    """The causal keep mask (B, H, Q, N) straight from q (B, H, Q, D) and k (B, Hkv, N, D), fp16 or bf16.

    The scores are q.k * scale with float32 accumulation of exact half-precision products, and the
    rule ranks exp(s - max) (the softmax before its denominator, which the rule's comparisons do not
    need): the same rule as `select` on the softmax probabilities up to float rounding, without
    writing scores or probabilities to memory.
    """
    b, heads, n_q, dim = q.shape
    n_keys = k.shape[2]
    if cfg.mode == "dense":
        return torch.ones(n_q, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - n_q).expand(b, heads, n_q, n_keys)
    q, k = q.contiguous(), k.contiguous()
    keep = torch.empty((b, heads, n_q, n_keys), dtype=torch.int8, device=q.device)
    _qk_row_gate[lambda meta: (triton.cdiv(n_q, meta["BLOCK_R"]), b * heads)](
        q, k, keep, n_q, n_keys, heads, heads // k.shape[1], q.stride(0), q.stride(1), q.stride(2), k.stride(0),
        k.stride(1), k.stride(2), scale * 1.4426950408889634, cfg.rho_q, cfg.tau_q / GATE_SCALE, cfg.k_min,
        MASS=cfg.mode == "mass", BLOCK_N=max(16, triton.next_power_of_2(n_keys)), HEAD_DIM=dim,
        SPAN=_BITS_SPAN, SCALE=GATE_SCALE)
    return keep.view(torch.bool)
