"""The block gate (float reference) for fast mass-gated attention on GPUs.

The mass gate of the brief, applied to blocks instead of keys: queries and keys are mean-pooled
over blocks of `block` tokens, the pooled scores go through a softmax over key blocks, and each
query block keeps the key blocks holding `mass_target` of that mass (largest first, ties by
index), at most ceil(permeability x its visible key blocks) and at least one; under a causal mask
the diagonal block is always kept and blocks above it are never visible. Attention is then the
exact softmax attention over the tokens of the kept blocks (causal inside the diagonal block).
`gpu_kernels/block_sparse.py` must match `block_attention` within bf16 tolerance.
"""

from __future__ import annotations

import math

import torch

from hpu.errors import InputError


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise InputError(f"q, k, v must share one (batch, heads, tokens, head_dim) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] % block:
        raise InputError(f"sequence length {q.shape[2]} is not a multiple of the block size {block}")


def check_gate(mass_target: float, permeability: float) -> None:
    if not 0 < permeability <= 1 or not 0 < mass_target <= 1:
        raise InputError(f"permeability {permeability} and mass_target {mass_target} must lie in (0, 1]")


def block_cap(permeability: float, visible: torch.Tensor) -> torch.Tensor:
    """Most key blocks a query block may keep of `visible` ones: max(1, ceil(permeability x visible)),
    in float64 (less 1e-9, so that a product a rounding above a whole number does not round up)."""
    return torch.clamp(torch.ceil(permeability * visible.double() - 1e-9).long(), min=1)


def block_mask(q: torch.Tensor, k: torch.Tensor, block: int, mass_target: float, permeability: float,
               causal: bool) -> torch.Tensor:
    """Kept key blocks: bool (batch, heads, query blocks, key blocks)."""
    check_gate(mass_target, permeability)
    b, h, n, d = q.shape
    blocks = n // block
    qp = q.float().reshape(b, h, blocks, block, d).mean(3)
    kp = k.float().reshape(b, h, blocks, block, d).mean(3)
    scores = qp @ kp.transpose(-1, -2) / math.sqrt(d)
    row = torch.arange(blocks, device=q.device)
    visible = (row[None, :] <= row[:, None]) if causal else torch.ones(blocks, blocks, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    mass = torch.softmax(scores, dim=-1)
    # Largest first, ties by index: a stable sort of the negated mass.
    order = torch.sort(-mass, dim=-1, stable=True).indices
    sorted_mass = torch.gather(mass, -1, order)
    before = torch.cumsum(sorted_mass, dim=-1) - sorted_mass
    count = visible.sum(-1)
    limit = block_cap(permeability, count)
    rank = torch.arange(blocks, device=q.device)
    keep_sorted = (before < mass_target) & (rank < limit[:, None]) & (rank < count[:, None])
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    if causal:
        keep |= torch.eye(blocks, dtype=torch.bool, device=q.device)
    return keep


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, block: int,
                    causal: bool) -> torch.Tensor:
    """Softmax attention over the tokens of the kept key blocks, in float32."""
    n = q.shape[2]
    tokens = keep.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    if causal:
        tokens = tokens & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~tokens, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.float()


def mass_gated_block_attention(q, k, v, block: int = 128, mass_target: float = 0.9, permeability: float = 0.5,
                               causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    check_shapes(q, k, v, block)
    keep = block_mask(q, k, block, mass_target, permeability, causal)
    return block_attention(q, k, v, keep, block, causal), keep
