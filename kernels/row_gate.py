"""The mass gate's per-row selection on the GPU: `golden_model.gate.select` without a sort.

The rule keeps a prefix of each row's order (probability descending, index ascending). That prefix is
the set of keys above one threshold value plus the first few keys *at* it, by index. So instead of
sorting, one Triton program holds a few whole rows in registers and finds the thresholds by
bisection on the bit patterns of the probabilities (non-negative float32 order like their int32
patterns, so every comparison is exact):

1. mass: the largest value ``p*`` whose keys at or above it hold at least the target mass; the
   shortest prefix reaching the target ends among the keys equal to ``p*``, counted by index;
2. cap: the kept count ``L = min(L_mass, cap)``; its last key's value ``p_L`` comes from a second
   bisection on counts, and the first ``L - #(p > p_L)`` keys equal to ``p_L`` complete the set.

Each bisection is 30 passes over registers (probabilities are at most 1.0, below 2**30 as bits):
O(30 N) per row against the sort's O(N log N) memory passes. Ties, k_min, the cap and invalid keys
follow the rule exactly. The one difference from the reference is float rounding: the reference
sums the prefix in sorted order, this kernel sums by a tree, so a row whose prefix mass lies within
float32 rounding (about n * 6e-8 of the row's mass) of the target may end one key apart.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from golden_model.gate import select as reference_select
from hpu.config import GATE_SCALE, HPUConfig

# Probabilities lie in [0, 1]; 1.0 is 0x3F800000 < 2**30 as int32 bits.
_BITS_SPAN = 30


@triton.jit
def _row_gate(P, VALID, CAP, TARGET, KEEP, rows, n_keys, stride_p, stride_v, stride_k,
              MASS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, SPAN: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_N)
    live = (r[:, None] < rows) & (c[None, :] < n_keys)
    valid = tl.load(VALID + r[:, None] * stride_v + c[None, :], mask=live, other=0) != 0
    p = tl.load(P + r[:, None] * stride_p + c[None, :], mask=live, other=0.0)
    p = tl.where(valid, p, 0.0)
    # Invalid keys get bits -1, below every threshold the bisections try (all >= 0).
    bits = tl.where(valid, p.to(tl.int32, bitcast=True), -1)
    cap = tl.load(CAP + r, mask=r < rows, other=1)
    kept = cap
    if MASS:
        target = tl.load(TARGET + r, mask=r < rows, other=0.0)
        # Largest t with sum(p >= t) >= target; rows where even t = 0 falls short (a float sum an
        # ulp below the target) keep every valid key, as the reference's clamp to n does.
        lo = tl.zeros([BLOCK_R], tl.int32)
        hi = tl.full([BLOCK_R], 1 << SPAN, tl.int32)
        for _ in tl.static_range(SPAN):
            mid = lo + (hi - lo) // 2
            mass = tl.sum(tl.where(bits >= mid[:, None], p, 0.0), 1)
            lo = tl.where(mass >= target, mid, lo)
            hi = tl.where(mass >= target, hi, mid)
        above = bits > lo[:, None]
        tie = bits == lo[:, None]
        mass_above = tl.sum(tl.where(above, p, 0.0), 1)
        p_star = tl.max(tl.where(tie, p, 0.0), 1)
        rank = tl.cumsum(tie.to(tl.int32), 1)
        short = tie & ((mass_above[:, None] + rank.to(tl.float32) * p_star[:, None]) < target[:, None])
        n = tl.sum(valid.to(tl.int32), 1)
        reached = tl.sum(tl.where(bits >= 0, p, 0.0), 1) >= target
        l_mass = tl.sum(above.to(tl.int32), 1) + tl.sum(short.to(tl.int32), 1) + 1
        l_mass = tl.where(reached, tl.minimum(l_mass, n), n)
        kept = tl.minimum(kept, l_mass)
    # Largest t with count(bits >= t) >= kept: the value of the kept prefix's last key.
    lo = tl.zeros([BLOCK_R], tl.int32)
    hi = tl.full([BLOCK_R], 1 << SPAN, tl.int32)
    for _ in tl.static_range(SPAN):
        mid = lo + (hi - lo) // 2
        count = tl.sum((bits >= mid[:, None]).to(tl.int32), 1)
        lo = tl.where(count >= kept, mid, lo)
        hi = tl.where(count >= kept, hi, mid)
    above = bits > lo[:, None]
    tie = bits == lo[:, None]
    rank = tl.cumsum(tie.to(tl.int32), 1)
    need = kept - tl.sum(above.to(tl.int32), 1)
    keep = above | (tie & (rank <= need[:, None]))
    tl.store(KEEP + r[:, None] * stride_k + c[None, :], keep.to(tl.int8), mask=live)


def select(probs: torch.Tensor, valid: torch.Tensor, cfg: HPUConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask and kept count of every row, as `golden_model.gate.select` on float probabilities.

    probs: (..., N) float32 softmax probabilities (zero where invalid), on a CUDA device (or any device
    under TRITON_INTERPRET=1).
    valid: (..., N) bool, broadcastable to probs; each row needs at least one valid key.
    Returns ``(keep (..., N) bool, kept (...) int64)``.
    """
    valid = valid.expand(probs.shape)
    if cfg.mode == "dense":
        return reference_select(probs, valid, cfg)
    n_keys = probs.shape[-1]
    p = probs.reshape(-1, n_keys).contiguous().float()
    v = valid.reshape(-1, n_keys).contiguous().view(torch.int8)
    rows = p.shape[0]
    n = v.sum(-1, dtype=torch.int32)
    cap = torch.clamp((n * cfg.rho_q + GATE_SCALE - 1) // GATE_SCALE, min=cfg.k_min)
    cap = torch.minimum(cap, n).to(torch.int32)
    target = p.sum(-1) * (cfg.tau_q / GATE_SCALE)
    keep = torch.empty((rows, n_keys), dtype=torch.int8, device=p.device)
    block_n = triton.next_power_of_2(n_keys)
    block_r = max(1, min(16, 4096 // block_n))
    _row_gate[(triton.cdiv(rows, block_r),)](
        p, v, cap, target, keep, rows, n_keys, p.stride(0), v.stride(0), keep.stride(0),
        MASS=cfg.mode == "mass", BLOCK_R=block_r, BLOCK_N=block_n, SPAN=_BITS_SPAN,
        num_warps=4 if block_n * block_r <= 2048 else 8)
    keep = keep.view(torch.bool).reshape(probs.shape)
    return keep, keep.sum(-1)
