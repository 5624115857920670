"""Fast mass-gated attention: the block gate on the GPU, then a block-sparse flash-attention forward.

Selection is `golden_model.block_gate.block_mask` (pooling, block softmax, mass/permeability
rule), run with torch on the tensors' device, turned into per-query-block lists of kept key blocks.
The attention kernel (one program per query block and head, in the manner of Triton's fused-
attention tutorial: online softmax in exp2, fp32 accumulators) walks only its list, so skipped
key blocks are never loaded. fp16 and bf16, head_dim 64 and 128, causal or not.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from golden_model.block_gate import block_mask_unchecked, check_gate, check_shapes
from hpu.errors import InputError

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=1)]
    # The configurations that won on an H100 at 16K tokens, head_dim 128, bf16 (a sweep of tile
    # 32/64/128 x 4/8 warps x 1-4 stages: these four within 5% of the best, the rest up to 2x slower);
    # fewer candidates also keep the autotuner's choice stable.
    return [triton.Config({"BLOCK_N": n}, num_warps=8, num_stages=s) for n in (128, 64) for s in (3, 2)]


def _fits_the_gate(configs, named_args, **kwargs):
    gate = named_args.get("GATE", kwargs.get("GATE"))
    return [c for c in configs if c.kwargs["BLOCK_N"] <= gate]


@triton.autotune(configs=_configs(), key=["N", "HEAD_DIM", "CAUSAL", "GATE"],
                 prune_configs_by={"early_config_prune": _fits_the_gate})
@triton.jit
def _block_attention_kernel(Q, K, V, O, kv_index, kv_count, qk_scale,
                            stride_b, stride_h, stride_n, H, N, max_blocks,
                            GATE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                            CAUSAL: tl.constexpr):
    query_block = tl.program_id(0)
    bh = tl.program_id(1)
    base = (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h
    rows = query_block * GATE + tl.arange(0, GATE)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + rows[:, None] * stride_n + dims[None, :])
    m_i = tl.full([GATE], float("-inf"), tl.float32)
    l_i = tl.zeros([GATE], tl.float32)
    acc = tl.zeros([GATE, HEAD_DIM], tl.float32)
    list_at = (bh * (N // GATE) + query_block).to(tl.int64)
    count = tl.load(kv_count + list_at)
    for j in range(count):
        key_block = tl.load(kv_index + list_at * max_blocks + j)
        for part in tl.static_range(GATE // BLOCK_N):
            cols = key_block * GATE + part * BLOCK_N + tl.arange(0, BLOCK_N)
            k = tl.load(K + base + cols[None, :] * stride_n + dims[:, None])
            qk = tl.dot(q, k) * qk_scale
            if CAUSAL:
                qk = tl.where(rows[:, None] >= cols[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + base + cols[:, None] * stride_n + dims[None, :])
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + base + rows[:, None] * stride_n + dims[None, :], acc.to(O.dtype.element_ty))


@dataclass
class Selection:
    keep: torch.Tensor      # bool (batch, heads, query blocks, key blocks)
    kv_index: torch.Tensor  # int32 (batch * heads * query blocks, key blocks): kept blocks first, ascending
    kv_count: torch.Tensor  # int32 (batch * heads * query blocks,)

    @property
    def density(self) -> float:
        return float(self.kv_count.sum()) / self.keep.numel()


def _select(q, k, block: int, mass_target, permeability, causal: bool):
    keep = block_mask_unchecked(q, k, block, mass_target, permeability, causal)
    blocks = keep.shape[-1]
    flat = keep.reshape(-1, blocks)
    # Kept blocks first in ascending order: sort by (not kept, index).
    order = torch.argsort((~flat).to(torch.int32) * blocks + torch.arange(blocks, device=keep.device), dim=-1)
    return keep, order.to(torch.int32).contiguous(), flat.sum(-1).to(torch.int32).contiguous()


# On a GPU the selection is compiled into a few fused kernels (about 4x faster than eager torch at
# 16K tokens on an H100); mass_target and permeability travel as tensors so one compile serves all.
_select_compiled = torch.compile(_select, dynamic=False)


def select(q: torch.Tensor, k: torch.Tensor, block: int, mass_target: float, permeability: float,
           causal: bool) -> Selection:
    check_shapes(q, k, k, block)
    check_gate(mass_target, permeability)
    if q.is_cuda:
        scalars = torch.tensor([mass_target, permeability], device=q.device, dtype=torch.float64)
        return Selection(*_select_compiled(q, k, block, scalars[0], scalars[1], causal))
    return Selection(*_select(q, k, block, mass_target, permeability, causal))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: Selection, block: int,
           causal: bool) -> torch.Tensor:
    check_shapes(q, k, v, block)
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise InputError(f"the block-sparse kernel takes fp16 or bf16, got {q.dtype}")
    if q.shape[-1] not in (64, 128):
        raise InputError(f"head_dim must be 64 or 128, got {q.shape[-1]}")
    if block not in (64, 128):
        raise InputError(f"block must be 64 or 128 tokens, got {block}")
    q, k, v = (t.contiguous() for t in (q, k, v))
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    grid = (n // block, b * h)
    _block_attention_kernel[grid](q, k, v, out, selection.kv_index, selection.kv_count,
                                  1.0 / math.sqrt(d) * 1.4426950408889634,
                                  q.stride(0), q.stride(1), q.stride(2), h, n, selection.kv_index.shape[-1],
                                  GATE=block, HEAD_DIM=d, CAUSAL=causal)
    return out


def mass_gated_attention(q, k, v, block: int = 128, mass_target: float = 0.9, permeability: float = 0.5,
                         causal: bool = False) -> tuple[torch.Tensor, Selection]:
    """Block gate and block-sparse attention; returns the output and the selection it used."""
    check_shapes(q, k, v, block)
    selection = select(q, k, block, mass_target, permeability, causal)
    return attend(q, k, v, selection, block, causal), selection
