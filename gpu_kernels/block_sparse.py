"""Fast mass-gated attention: the block gate on the GPU, then a block-sparse flash-attention forward.

Selection is `golden_model.block_gate.block_mask` (pooling, block softmax, mass/permeability
rule) as two Triton kernels in float32: one pools q and k per block; one, per 16 query blocks of a
head, scores them against every key block (one tl.dot), takes the softmax, orders the blocks by one
distinct integer key (mass bits, index counted down) and keeps the prefix, writing the kept lists. The
kept lists equal the reference's bit for bit on the tests' inputs, ties by index included. The
attention kernel (one program per query block and head, in the manner of Triton's fused-attention
tutorial: online softmax in exp2, fp32 accumulators) walks only its list, so skipped key blocks are
never loaded; under a causal mask only the diagonal block is masked, and the latest query blocks,
which see the most, run first. Dense mode walks every visible block without a list. fp16 and bf16,
head_dim 64 and 128, causal or not.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from golden_model.block_gate import block_cap, check_gate, check_shapes
from hpu.errors import InputError

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=1)]
    # Key tiles of 64 or 128 tokens, 4 or 8 warps, 2 to 4 pipeline stages: the space searched per
    # (N, head_dim, causal, gate block, dense) on the GPU.
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
            for n in (128, 64) for w in (8, 4) for s in (2, 3, 4)]


def _fits_the_gate(configs, named_args, **kwargs):
    gate = named_args.get("GATE", kwargs.get("GATE"))
    return [c for c in configs if c.kwargs["BLOCK_N"] <= gate]


@triton.jit
def _key_block(acc, l_i, m_i, q, rows, key_block, K, V, base, stride_n, qk_scale,
               MASKED: tl.constexpr, GATE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over one gate block of keys; MASKED: the diagonal block of a causal mask."""
    dims = tl.arange(0, HEAD_DIM)
    for part in tl.static_range(GATE // BLOCK_N):
        cols = key_block * GATE + part * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(K + base + cols[None, :] * stride_n + dims[:, None])
        qk = tl.dot(q, k)
        if MASKED:
            qk = tl.where(rows[:, None] >= cols[None, :], qk, float("-inf"))
        # The scale is applied inside the exponent (one fused multiply-add per score).
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + base + cols[:, None] * stride_n + dims[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_configs(), key=["N", "HEAD_DIM", "CAUSAL", "GATE", "DENSE"],
                 prune_configs_by={"early_config_prune": _fits_the_gate})
@triton.jit
def _block_attention_kernel(Q, K, V, O, kv_index, kv_count, qk_scale,
                            stride_b, stride_h, stride_n, H, N,
                            GATE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                            CAUSAL: tl.constexpr, DENSE: tl.constexpr, LIST: tl.constexpr):
    blocks = N // GATE
    # Causal: later query blocks see more key blocks, so they are scheduled first.
    query_block = blocks - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    base = (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    rows = query_block * GATE + tl.arange(0, GATE)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + rows[:, None] * stride_n + dims[None, :])
    m_i = tl.full([GATE], float("-inf"), tl.float32)
    l_i = tl.zeros([GATE], tl.float32)
    acc = tl.zeros([GATE, HEAD_DIM], tl.float32)
    list_at = (bh * blocks + query_block).to(tl.int64)
    if DENSE:
        count = query_block + 1 if CAUSAL else blocks
    else:
        count = tl.load(kv_count + list_at)
        # The whole list in registers: a key block's address then depends on no load inside the loop,
        # so the loop's loads pipeline as in dense mode.
        slots = tl.arange(0, LIST)
        kept = tl.load(kv_index + list_at * blocks + slots, mask=slots < count, other=0)
    # A causal list ends with the diagonal block (kept always, the highest visible): only it is masked.
    unmasked = count - 1 if CAUSAL else count
    for j in range(unmasked):
        key_block = j if DENSE else tl.sum(tl.where(slots == j, kept, 0), 0)
        acc, l_i, m_i = _key_block(acc, l_i, m_i, q, rows, key_block, K, V, base, stride_n, qk_scale,
                                   False, GATE, HEAD_DIM, BLOCK_N)
    if CAUSAL:
        acc, l_i, m_i = _key_block(acc, l_i, m_i, q, rows, query_block, K, V, base, stride_n, qk_scale,
                                   True, GATE, HEAD_DIM, BLOCK_N)
    acc = acc / l_i[:, None]
    tl.store(O + base + rows[:, None] * stride_n + dims[None, :], acc.to(O.dtype.element_ty))


@dataclass
class Selection:
    kv_index: torch.Tensor  # int32 (batch * heads * query blocks, key blocks): kept blocks first, ascending
    kv_count: torch.Tensor  # int32 (batch * heads * query blocks,)
    heads: tuple[int, int]  # (batch, heads)

    @property
    def keep(self) -> torch.Tensor:
        """The kept blocks as a mask, bool (batch, heads, query blocks, key blocks), built on demand from
        the lists: the kernels write only the lists, which are all the attention reads."""
        rows, blocks = self.kv_index.shape
        listed = torch.arange(blocks, device=self.kv_index.device) < self.kv_count[:, None]
        mask = torch.zeros(rows, blocks, dtype=torch.bool, device=listed.device)
        return mask.scatter_(1, self.kv_index.long(), listed).view(*self.heads, blocks, blocks)

    @property
    def density(self) -> float:
        return float(self.kv_count.sum()) / self.kv_index.numel()


@triton.jit
def _pool_kernel(Q, K, POOLED, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, ROW_STEP: tl.constexpr):
    """Mean of each block of BLOCK tokens of contiguous q and k, in float32, into POOLED (2, batch x
    heads, blocks, head_dim): q's means, then k's. The block is summed ROW_STEP tokens at a time, so
    that a whole tile never sits in registers."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    blocks = tl.num_programs(0)
    # The head's offset in int64, the token's within the head in int32: fewer 64-bit operations per element.
    head = bh * blocks * BLOCK * HEAD_DIM
    dims = tl.arange(0, HEAD_DIM)
    q_sum = tl.zeros([ROW_STEP, HEAD_DIM], tl.float32)
    k_sum = tl.zeros([ROW_STEP, HEAD_DIM], tl.float32)
    for first in tl.static_range(0, BLOCK, ROW_STEP):
        rows = block * BLOCK + first + tl.arange(0, ROW_STEP)
        at = rows[:, None] * HEAD_DIM + dims[None, :]
        q_sum += tl.load(Q + head + at).to(tl.float32)
        k_sum += tl.load(K + head + at).to(tl.float32)
    out = (bh * blocks + block) * HEAD_DIM + dims
    tl.store(POOLED + out, tl.sum(q_sum, 0) / BLOCK)
    tl.store(POOLED + tl.num_programs(1) * blocks * HEAD_DIM + out, tl.sum(k_sum, 0) / BLOCK)


@triton.jit
def _select_kernel(POOLED, LIMIT, KV_INDEX, KV_COUNT, mass_target, scale, blocks,
                   ROWS: tl.constexpr, BLOCKS: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_STEP: tl.constexpr,
                   CAUSAL: tl.constexpr):
    """ROWS query blocks of one head (sharing the pooled keys' loads): block scores, softmax over the
    visible key blocks, the mass / permeability prefix of (mass desc, index asc), the diagonal when
    causal; writes each kept list (kept blocks ascending, then the rest ascending) and its count."""
    bh = tl.program_id(1).to(tl.int64)
    QP = POOLED + bh * blocks * HEAD_DIM
    KP = QP + tl.num_programs(1) * blocks * HEAD_DIM
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < blocks
    cols = tl.arange(0, BLOCKS)
    in_row = cols[None, :] < blocks
    scores = tl.zeros([ROWS, BLOCKS], tl.float32)
    for start in tl.static_range(0, HEAD_DIM, DIM_STEP):
        dims = start + tl.arange(0, DIM_STEP)
        qp = tl.load(QP + rows[:, None] * HEAD_DIM + dims[None, :], mask=live[:, None], other=0.0)
        kp = tl.load(KP + cols[None, :] * HEAD_DIM + dims[:, None], mask=in_row, other=0.0)
        # Float32 products and sums ("ieee": no TF32 rounding of the inputs), as the reference's matmul.
        scores += tl.dot(qp, kp, input_precision="ieee")
    scores = scores / scale
    # Rows past the last query block (masked out when stored) see every block, so nothing divides by 0.
    visible = in_row & (cols[None, :] <= rows[:, None]) if CAUSAL else in_row & (rows[:, None] >= 0)
    scores = tl.where(visible, scores, float("-inf"))
    weights = tl.exp(scores - tl.max(scores, 1)[:, None])
    mass = weights / tl.sum(weights, 1)[:, None]
    # One distinct integer per block orders by (mass desc, index asc): a non-negative float's bits
    # order as the float does, and the index counted down breaks ties. Invisible blocks sort last.
    order_key = tl.where(visible, (mass.to(tl.int32, bitcast=True).to(tl.int64) << 32) + (BLOCKS - 1 - cols[None, :]), -1)
    ranked = tl.sort(order_key, 1, descending=True)
    ranked_mass = tl.where(ranked >= 0, (ranked >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    before = tl.cumsum(ranked_mass, 1) - ranked_mass
    count = tl.sum(visible.to(tl.int32), 1)
    limit = tl.load(LIMIT + count, mask=live, other=1)
    rank = cols[None, :]
    kept = tl.sum(((before < mass_target) & (rank < limit[:, None]) & (rank < count[:, None])).to(tl.int32), 1)
    threshold = tl.sum(tl.where(rank == kept[:, None] - 1, ranked, 0), 1)
    keep = visible & (order_key >= threshold[:, None])
    if CAUSAL:
        keep = keep | (cols[None, :] == rows[:, None])
    keep_count = tl.sum(keep.to(tl.int32), 1)
    skip = in_row & ~keep
    position = tl.where(keep, tl.cumsum(keep.to(tl.int32), 1) - 1,
                        keep_count[:, None] + tl.cumsum(skip.to(tl.int32), 1) - 1)
    row_at = bh * blocks + rows
    tl.store(KV_INDEX + row_at[:, None] * blocks + position, cols[None, :] + tl.zeros([ROWS, BLOCKS], tl.int32),
             mask=live[:, None] & in_row)
    tl.store(KV_COUNT + row_at, keep_count, mask=live)


# Warps per program of the pooling and selection kernels, tokens the pooling adds per step and query
# blocks per selection program, as sweeps on the H200 chose them (benchmarks/select_tuning.py;
# results/select_tuning.json). The selection's scores are one tl.dot per DIM_STEP dimensions, whose
# operands need at least 16 rows, columns and dimensions.
POOL_WARPS = 1
POOL_ROWS = 16
SELECT_WARPS = 8
SELECT_ROWS = 16
DIM_STEP = 32


@functools.lru_cache(maxsize=64)
def _limits(permeability: float, blocks: int, device: torch.device) -> torch.Tensor:
    """The reference's cap for every count of visible blocks, 0..blocks, for the selection kernel to look up."""
    return block_cap(permeability, torch.arange(blocks + 1)).to(torch.int32).to(device)


def pool(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """The selection's first kernel: float32 means of every block of q and of k, (2, batch x heads,
    blocks, head_dim)."""
    b, h, n, d = q.shape
    pooled = torch.empty(2, b * h, n // block, d, dtype=torch.float32, device=q.device)
    _pool_kernel[(n // block, b * h)](q.contiguous(), k.contiguous(), pooled, BLOCK=block, HEAD_DIM=d,
                                      ROW_STEP=POOL_ROWS, num_warps=POOL_WARPS)
    return pooled


def select(q: torch.Tensor, k: torch.Tensor, block: int, mass_target: float, permeability: float,
           causal: bool) -> Selection:
    """The block gate's selection (golden_model.block_gate.block_mask), as two Triton kernels: pooling,
    then scores, softmax and the mass/permeability prefix per query block, writing the kept lists.
    Three allocations and two launches, with few arguments: at 4K tokens the host's work per call
    outlasts the GPU's."""
    check_shapes(q, k, k, block)
    check_gate(mass_target, permeability)
    b, h, n, d = q.shape
    blocks = n // block
    pooled = pool(q, k, block)
    kv_index = torch.empty(b * h * blocks, blocks, dtype=torch.int32, device=q.device)
    kv_count = torch.empty(b * h * blocks, dtype=torch.int32, device=q.device)
    _select_kernel[(triton.cdiv(blocks, SELECT_ROWS), b * h)](
        pooled, _limits(permeability, blocks, q.device), kv_index, kv_count, mass_target, math.sqrt(d), blocks,
        ROWS=SELECT_ROWS, BLOCKS=max(16, triton.next_power_of_2(blocks)), HEAD_DIM=d, DIM_STEP=min(d, DIM_STEP),
        CAUSAL=causal, num_warps=SELECT_WARPS)
    return Selection(kv_index, kv_count, (b, h))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: Selection | None, block: int,
           causal: bool) -> torch.Tensor:
    """Attention over the selection's kept key blocks; ``selection=None`` is dense mode: every visible
    key block, walked without a list."""
    check_shapes(q, k, v, block)
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise InputError(f"the block-sparse kernel takes fp16 or bf16, got {q.dtype}")
    if q.shape[-1] not in (64, 128):
        raise InputError(f"head_dim must be 64 or 128, got {q.shape[-1]}")
    if block not in (64, 128):
        raise InputError(f"block must be 64 or 128 tokens, got {block}")
    q, k, v = (t.contiguous() for t in (q, k, v))
    b, h, n, d = q.shape
    blocks = n // block
    out = torch.empty_like(q)
    dense = selection is None
    kv_index, kv_count = (out, out) if dense else (selection.kv_index, selection.kv_count)
    _block_attention_kernel[(blocks, b * h)](q, k, v, out, kv_index, kv_count, 1.0 / math.sqrt(d) * 1.4426950408889634,
                                             q.stride(0), q.stride(1), q.stride(2), h, n,
                                             GATE=block, HEAD_DIM=d, CAUSAL=causal, DENSE=dense,
                                             LIST=triton.next_power_of_2(blocks))
    return out


def mass_gated_attention(q, k, v, block: int = 128, mass_target: float = 0.9, permeability: float = 0.5,
                         causal: bool = False) -> tuple[torch.Tensor, Selection]:
    """Block gate and block-sparse attention; returns the output and the selection it used."""
    check_shapes(q, k, v, block)
    selection = select(q, k, block, mass_target, permeability, causal)
    return attend(q, k, v, selection, block, causal), selection
