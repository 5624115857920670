"""Sparse-query attention (SQDK) on the GPU: the routed queries attend to every admissible key.

`golden_model.routing` is the specification. The router's top-k (`route`) is one Triton kernel, one
program a row, with no sort and no host synchronisation. The attention kernel (one program per block of routed queries and query head,
in the manner of Triton's fused-attention tutorial: online softmax in exp2, fp32 accumulators) reads
its queries straight from their positions in q and writes its outputs straight to the same
positions in the output: the gather and the scatter are fused, there are no routed copies of q or
of the output. Key/value head h // (Hq / Hkv) serves query head h (grouped-query attention, any
ratio). A causal block reads keys only up to its last query's position. fp16 and bf16, head_dim 64
and 128.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from golden_model.routing import capacity, check_heads
from hpu.errors import InputError

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in ((128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 4, 3),
                               (64, 128, 4, 3))]


@triton.jit
def _keys(acc, l_i, m_i, q, pos, K, V, kv_base, stride_ks, qk_scale, start, end, S, T,
          MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over the key blocks from `start` to `end`; MASKED: some keys are past the end
    or past a row's causal limit, so each is checked."""
    dims = tl.arange(0, HEAD_DIM)
    for first in range(start, end, BLOCK_N):
        keys = first + tl.arange(0, BLOCK_N)
        kv = kv_base + keys.to(tl.int64)[:, None] * stride_ks + dims[None, :]
        if MASKED:
            in_range = keys < S
            k = tl.load(K + kv, mask=in_range[:, None], other=0.0)
        else:
            k = tl.load(K + kv)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MASKED:
            visible = in_range[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= pos[:, None] + S - T)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if MASKED:
            v = tl.load(V + kv, mask=in_range[:, None], other=0.0)
        else:
            v = tl.load(V + kv)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_configs(), key=["T", "S", "HEAD_DIM", "CAUSAL", "GROUP"])
@triton.jit
def _sqdk_kernel(Q, K, V, O, positions, counts, qk_scale, max_routed,
                 stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks, stride_ob, stride_oh, stride_ot,
                 H, T, S, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    count = tl.load(counts + b)
    blocks = tl.cdiv(count, BLOCK_M)
    if tl.program_id(0) >= blocks:
        return
    # The last blocks hold the latest positions, which see the most keys when causal: they go first.
    block = blocks - 1 - tl.program_id(0)
    slots = block * BLOCK_M + tl.arange(0, BLOCK_M)
    live = slots < count
    pos = tl.load(positions + b.to(tl.int64) * max_routed + slots, mask=live, other=0)
    dims = tl.arange(0, HEAD_DIM)
    q_base = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    kv_base = b.to(tl.int64) * stride_kb + (h // GROUP).to(tl.int64) * stride_kh
    rows = q_base + pos.to(tl.int64)[:, None] * stride_qt + dims[None, :]
    q = tl.load(Q + rows, mask=live[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        # Query position p sees keys up to p + S - T; positions ascend within a block, so its first
        # live one bounds the keys every row sees, its last the keys any row sees.
        seen_by_all = tl.min(tl.where(live, pos, T), axis=0) + S - T + 1
        end = tl.max(tl.where(live, pos, 0), axis=0) + S - T + 1
    else:
        seen_by_all = S
        end = S
    full = seen_by_all // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _keys(acc, l_i, m_i, q, pos, K, V, kv_base, stride_ks, qk_scale, 0, full, S, T,
                          False, CAUSAL, HEAD_DIM, BLOCK_N)
    acc, l_i, m_i = _keys(acc, l_i, m_i, q, pos, K, V, kv_base, stride_ks, qk_scale, full, end, S, T,
                          True, CAUSAL, HEAD_DIM, BLOCK_N)
    out = acc / l_i[:, None]
    # The output's own strides: q may be a view (a slice of a fused qkv projection) that out is not.
    o_rows = (b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + pos.to(tl.int64)[:, None] * stride_ot
              + dims[None, :])
    tl.store(O + o_rows, out.to(O.dtype.element_ty), mask=live[:, None])


def sqdk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, causal: bool,
         counts: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Attention of the routed rows of q (B, Hq, T, D) over k, v (B, Hkv, S, D); zeros elsewhere.

    positions: (B, R) routed positions, ascending per sequence; counts: (B,) how many of each row
    are real (default: all R)."""
    group = check_heads(q, k, v)
    b, h, t, d = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise InputError(f"q, k, v are {q.dtype}, {k.dtype}, {v.dtype}: the kernel takes fp16 or bf16, all alike")
    if d not in (64, 128):
        raise InputError(f"head_dim {d}: the kernel takes 64 or 128")
    if positions.dim() != 2 or positions.shape[0] != b:
        raise InputError(f"positions {tuple(positions.shape)}: must be (B, R) with B = {b}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if k.stride() != v.stride():
        v = v.contiguous()
        k = k.contiguous()
    positions = positions.to(device=q.device, dtype=torch.int32).contiguous()
    routed = positions.shape[1]
    counts = (torch.full((b,), routed, dtype=torch.int32, device=q.device) if counts is None
              else counts.to(device=q.device, dtype=torch.int32).contiguous())
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    if routed == 0:
        return out
    qk_scale = (1 / math.sqrt(d) if scale is None else scale) * 1.4426950408889634   # exp2
    grid = lambda meta: (triton.cdiv(routed, meta["BLOCK_M"]), b * h)   # noqa: E731 (blocks of the longest row)
    _sqdk_kernel[grid](q, k, v, out, positions, counts, qk_scale, routed,
                       q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                       out.stride(0), out.stride(1), out.stride(2), h, t, k.shape[2], GROUP=group, HEAD_DIM=d, CAUSAL=causal)
    return out


MAX_ROUTE_TOKENS = 1 << 20


def _route_configs():
    # One row a program, held in registers: more warps for longer rows keep the registers a thread
    # holds (and spills) down. Chosen per row length on the GPU.
    if _INTERPRET:
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (4, 8, 16, 32)]


@triton.autotune(configs=_route_configs(), key=["BLOCK"])
@triton.jit
def _route_kernel(L, P, nans, T, k, BLOCK: tl.constexpr):
    """`golden_model.routing.route_topk` of one row of logits, in one program: the k-th largest logit
    found by a bisection on order-preserving int32 bit patterns (-0.0 taken as +0.0), the logits above
    it routed and, of those equal to it, the first by position; the routed positions written in
    ascending order, and the row's NaNs counted into `nans`."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    inside = i < T
    x = tl.load(L + b * T + i, mask=inside, other=0.0).to(tl.float32)
    tl.store(nans + b, tl.sum(((x != x) & inside).to(tl.int32), 0))
    raw = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    # Positions past the row sit below every threshold tried (all >= -2**31).
    bits = tl.where(inside, tl.where(raw >= 0, raw, raw ^ 0x7FFFFFFF).to(tl.int64), -(1 << 31) - 1)
    # Invariant: at least k logits lie at or above lo (at_lo of them), fewer than k at or above hi.
    lo = (k * 0).to(tl.int64) - (1 << 31)
    hi = lo + (1 << 32)
    at_lo = T + k * 0
    at_hi = k * 0
    while (at_lo - at_hi > 1) & (hi - lo > 1):
        mid = lo + (hi - lo) // 2
        count = tl.sum((bits >= mid).to(tl.int32), 0)
        enough = count >= k
        lo = tl.where(enough, mid, lo)
        at_lo = tl.where(enough, count, at_lo)
        hi = tl.where(enough, hi, mid)
        at_hi = tl.where(enough, at_hi, count)
    # One distinct value lies in [lo, hi): the k-th largest.
    v = tl.min(tl.where(bits >= lo, bits, 1 << 32), 0)
    above = bits > v
    tie = bits == v
    routed = above | (tie & (tl.cumsum(tie.to(tl.int32), 0) <= k - tl.sum(above.to(tl.int32), 0)))
    slot = tl.cumsum(routed.to(tl.int32), 0) - 1
    tl.store(P + b * k + slot, i.to(tl.int64), mask=routed)


def route(logits: torch.Tensor, route_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`route_topk` on the logits' device in one kernel, without waiting for it: (B, k) routed
    positions, and each row's count of NaN logits (B,), to check once the work is queued (a NaN has
    no place in the order)."""
    if logits.dim() != 2:
        raise InputError(f"router logits {tuple(logits.shape)}: must be (B, T)")
    b, t = logits.shape
    if t > MAX_ROUTE_TOKENS:
        raise InputError(f"router logits of {t} tokens: one program routes a row of at most {MAX_ROUTE_TOKENS} "
                         "(Triton's largest block); route blocks of the sequence")
    k = capacity(t, route_fraction)
    positions = torch.empty(b, k, dtype=torch.int64, device=logits.device)
    nans = torch.empty(b, dtype=torch.int32, device=logits.device)
    _route_kernel[(b,)](logits.contiguous(), positions, nans, t, k, BLOCK=triton.next_power_of_2(t))
    return positions, nans


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
                     route_fraction: float, causal: bool, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Route (top-k of the (B, T) logits, on their device) and attend: (output, routed positions).
    With `check`, waits for the work and refuses NaN logits; without, the caller owns that."""
    positions, nans = route(logits, route_fraction)
    out = sqdk(q, k, v, positions, causal)
    if check and int(nans.sum()):
        raise InputError("router logits hold NaN: a NaN has no place in the order")
    return out, positions
