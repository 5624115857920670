"""Attention restricted to a keep mask, forward and backward in Triton, visiting only the tiles that keep a key.

``kept_attention(q, k, v, keep, scale)`` is softmax(q.k * scale) @ v over each row's kept keys: the
mass gate's renormalized attention. It is scaled-dot-product attention under a boolean mask, which
SDPA also computes, but SDPA must visit every tile of the mask; here a 64 x 64 tile of (queries, keys)
that keeps no key is skipped in the forward pass and in both backward passes. A trained gate keeps
about 1% of a row's keys, mostly near the diagonal and at a few distant positions, so most tiles
below the diagonal hold none; the tiles above a causal diagonal never do.

The forward pass is flash attention (Dao et al.): per tile of 64 queries an online softmax over the
kept key tiles, in the log2 domain, keeping each row's log-sum-exp. The backward pass recomputes the
probabilities from it: one kernel per key tile accumulates dK and dV over the query tiles, another per
query tile accumulates dQ. A row that keeps no key (a padded query) outputs zero and passes no
gradient. q, k and v are fp16 or bf16 (B, H, N, D) with the key-value heads already repeated per query
head; the keep mask is (B, H, Q, N) bool.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TILE = 64
_LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if _INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3)]


@triton.jit
def _tile(X, bh, rows, n, HEAD_DIM: tl.constexpr):
    """Rows `rows` of head `bh` of a contiguous (B*H, n, HEAD_DIM) tensor, zeros past n."""
    d = tl.arange(0, HEAD_DIM)
    return tl.load(X + (bh * n + rows[:, None]) * HEAD_DIM + d[None, :], mask=rows[:, None] < n, other=0.0)


@triton.jit
def _store_tile(X, value, bh, rows, n, HEAD_DIM: tl.constexpr):
    d = tl.arange(0, HEAD_DIM)
    tl.store(X + (bh * n + rows[:, None]) * HEAD_DIM + d[None, :], value.to(X.dtype.element_ty), mask=rows[:, None] < n)


@triton.jit
def _keep(KEEP, bh, i, j, n_q, n_k):
    """The keep mask's tile of queries i and keys j, False outside it."""
    inside = (i[:, None] < n_q) & (j[None, :] < n_k)
    return tl.load(KEEP + (bh * n_q + i[:, None]) * n_k + j[None, :], mask=inside, other=0) != 0


@triton.autotune(configs=_configs(), key=["n_q", "n_k", "HEAD_DIM"])
@triton.jit
def _forward(Q, K, V, KEEP, TILES, O, LSE, n_q, n_k, tiles_q, tiles_k, qk_scale,
             TILE: tl.constexpr, HEAD_DIM: tl.constexpr):
    tq, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i = tq * TILE + tl.arange(0, TILE)
    q = _tile(Q, bh, i, n_q, HEAD_DIM)
    m = tl.full([TILE], float("-inf"), tl.float32)
    total = tl.zeros([TILE], tl.float32)
    acc = tl.zeros([TILE, HEAD_DIM], tl.float32)
    for tk in range(0, tiles_k):
        if tl.load(TILES + (bh * tiles_q + tq) * tiles_k + tk) != 0:
            j = tk * TILE + tl.arange(0, TILE)
            k, v = _tile(K, bh, j, n_k, HEAD_DIM), _tile(V, bh, j, n_k, HEAD_DIM)
            s = tl.where(_keep(KEEP, bh, i, j, n_q, n_k), tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            # A row with nothing kept so far has max -inf: shift by 0 so exp2 gives 0, not NaN.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - shift[:, None])
            scale_old = tl.math.exp2(m - shift)
            total = total * scale_old + tl.sum(p, 1)
            acc = acc * scale_old[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
    kept = total > 0
    _store_tile(O, acc / tl.where(kept, total, 1.0)[:, None], bh, i, n_q, HEAD_DIM)
    # +inf for a row that keeps nothing: its recomputed probabilities are all 0 in the backward pass.
    tl.store(LSE + bh * n_q + i, tl.where(kept, m + tl.math.log2(tl.where(kept, total, 1.0)), float("inf")),
             mask=i < n_q)


@triton.jit
def _row_statistics(LSE, DELTA, bh, i, n_q):
    """Rows i's log-sum-exp (+inf past n_q, so their probabilities are 0) and delta = rowsum(dO * O)."""
    return (tl.load(LSE + bh * n_q + i, mask=i < n_q, other=float("inf")),
            tl.load(DELTA + bh * n_q + i, mask=i < n_q, other=0.0))


@triton.jit
def _gradient_tile(q, k, v, do, lse, delta, KEEP, bh, i, j, n_q, n_k, qk_scale):
    """The tile's kept probabilities, recomputed from the forward pass's log-sum-exp, and
    dS = P * (dO.v - delta), the gradient at the scores."""
    p = tl.where(_keep(KEEP, bh, i, j, n_q, n_k), tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]), 0.0)
    return p, p * (tl.dot(do, tl.trans(v)) - delta[:, None])


# Each backward program loads its own tile once (k and v per key tile; q, dO and the row statistics
# per query tile) and the other side's tiles on every step of its loop.
@triton.autotune(configs=_configs(), key=["n_q", "n_k", "HEAD_DIM"])
@triton.jit
def _backward_kv(Q, K, V, KEEP, TILES, LSE, DO, DELTA, DK, DV, n_q, n_k, tiles_q, tiles_k, qk_scale, scale,
                 TILE: tl.constexpr, HEAD_DIM: tl.constexpr):
    tk, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    j = tk * TILE + tl.arange(0, TILE)
    k, v = _tile(K, bh, j, n_k, HEAD_DIM), _tile(V, bh, j, n_k, HEAD_DIM)
    dk = tl.zeros([TILE, HEAD_DIM], tl.float32)
    dv = tl.zeros([TILE, HEAD_DIM], tl.float32)
    for tq in range(0, tiles_q):
        if tl.load(TILES + (bh * tiles_q + tq) * tiles_k + tk) != 0:
            i = tq * TILE + tl.arange(0, TILE)
            q, do = _tile(Q, bh, i, n_q, HEAD_DIM), _tile(DO, bh, i, n_q, HEAD_DIM)
            lse, delta = _row_statistics(LSE, DELTA, bh, i, n_q)
            p, ds = _gradient_tile(q, k, v, do, lse, delta, KEEP, bh, i, j, n_q, n_k, qk_scale)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    _store_tile(DK, dk * scale, bh, j, n_k, HEAD_DIM)
    _store_tile(DV, dv, bh, j, n_k, HEAD_DIM)


@triton.autotune(configs=_configs(), key=["n_q", "n_k", "HEAD_DIM"])
@triton.jit
def _backward_q(Q, K, V, KEEP, TILES, LSE, DO, DELTA, DQ, n_q, n_k, tiles_q, tiles_k, qk_scale, scale,
                TILE: tl.constexpr, HEAD_DIM: tl.constexpr):
    tq, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i = tq * TILE + tl.arange(0, TILE)
    q, do = _tile(Q, bh, i, n_q, HEAD_DIM), _tile(DO, bh, i, n_q, HEAD_DIM)
    lse, delta = _row_statistics(LSE, DELTA, bh, i, n_q)
    dq = tl.zeros([TILE, HEAD_DIM], tl.float32)
    for tk in range(0, tiles_k):
        if tl.load(TILES + (bh * tiles_q + tq) * tiles_k + tk) != 0:
            j = tk * TILE + tl.arange(0, TILE)
            k, v = _tile(K, bh, j, n_k, HEAD_DIM), _tile(V, bh, j, n_k, HEAD_DIM)
            p, ds = _gradient_tile(q, k, v, do, lse, delta, KEEP, bh, i, j, n_q, n_k, qk_scale)
            dq += tl.dot(ds.to(k.dtype), k)
    _store_tile(DQ, dq * scale, bh, i, n_q, HEAD_DIM)


@triton.jit
def _occupancy(KEEP, TILES, n_q, n_k, tiles_q, tiles_k, TILE: tl.constexpr):
    tk, tq, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i, j = tq * TILE + tl.arange(0, TILE), tk * TILE + tl.arange(0, TILE)
    kept = _keep(KEEP, bh, i, j, n_q, n_k).to(tl.int8)
    tl.store(TILES + (bh * tiles_q + tq) * tiles_k + tk, tl.max(tl.max(kept, 1), 0))


def keep_tiles(keep: torch.Tensor) -> torch.Tensor:
    """(B*H, tiles_q, tiles_k) int8: 1 where a TILE x TILE tile of the (B, H, Q, N) keep mask
    keeps at least one key. One program a tile: torch's two `any` reductions over the mask's five-axis
    view cost more than the attention itself (1.3 ms a layer at 32 x 8 x 1024 x 1024 on an H200)."""
    b, h, n_q, n_k = keep.shape
    tiles_q, tiles_k = triton.cdiv(n_q, TILE), triton.cdiv(n_k, TILE)
    tiles = torch.empty((b * h, tiles_q, tiles_k), dtype=torch.int8, device=keep.device)
    _occupancy[(tiles_k, tiles_q, b * h)](keep.contiguous(), tiles, n_q, n_k, tiles_q, tiles_k, TILE=TILE)
    return tiles


class _KeptAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keep, scale):
        b, h, n_q, dim = q.shape
        n_k = k.shape[2]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        keep = keep.expand(b, h, n_q, n_k).contiguous()
        tiles = keep_tiles(keep)
        out = torch.empty_like(q)
        lse = torch.empty((b, h, n_q), dtype=torch.float32, device=q.device)
        grid = (tiles.shape[1], b * h)
        _forward[grid](q, k, v, keep, tiles, out, lse, n_q, n_k, tiles.shape[1], tiles.shape[2], scale * _LOG2E,
                       TILE=TILE, HEAD_DIM=dim)
        ctx.save_for_backward(q, k, v, keep, tiles, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, keep, tiles, out, lse = ctx.saved_tensors
        b, h, n_q, dim = q.shape
        n_k = k.shape[2]
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        args = (n_q, n_k, tiles.shape[1], tiles.shape[2], ctx.scale * _LOG2E, ctx.scale)
        _backward_kv[(tiles.shape[2], b * h)](q, k, v, keep, tiles, lse, grad_out, delta, dk, dv, *args,
                                              TILE=TILE, HEAD_DIM=dim)
        _backward_q[(tiles.shape[1], b * h)](q, k, v, keep, tiles, lse, grad_out, delta, dq, *args,
                                             TILE=TILE, HEAD_DIM=dim)
        return dq, dk, dv, None, None


def kept_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """softmax(q.k * scale) @ v over each row's kept keys: q (B, H, Q, D), k and v (B, H, N, D) in fp16 or
    bf16 (key-value heads repeated), keep (B, H, Q, N) bool (broadcastable); returns (B, H, Q, D).
    Differentiable in q, k and v; a row that keeps nothing gives zeros."""
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"kept_attention takes fp16 or bf16 q, k and v of one dtype, not {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.shape[-1] not in (16, 32, 64, 128):
        raise ValueError(f"kept_attention takes head dimensions 16, 32, 64 or 128, not {q.shape[-1]}")
    return _KeptAttention.apply(q, k, v, keep, scale)
