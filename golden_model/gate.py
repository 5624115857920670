"""The gate's selection rule, shared by the float reference and the bit-accurate model.

Keys are ordered by (weight descending, index ascending). The rule keeps a
prefix of that order whose length depends on the mode:

- ``mass``: the shortest prefix whose weight sum reaches T, but at most ``cap``;
- ``topk``: ``min(cap, n)``;
- ``dense``: all ``n``.

with ``cap = max(k_min, ceil(n * rho_q / 256))`` and ``T = ceil(Z * tau_q / 256)``
for integer weights (exact), ``T = Z * tau_q / 256`` for float weights.
"""

from __future__ import annotations

import torch

from hpu.config import GATE_SCALE, HPUConfig


def select(weights: torch.Tensor, valid: torch.Tensor, cfg: HPUConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep mask and kept count of every row.

    weights: (..., N), non-negative where valid, integer or float.
    valid:   (..., N) bool; each row needs at least one valid key.
    Returns ``(keep (..., N) bool, kept (...) int64)``.
    """
    n = valid.sum(-1)
    if cfg.mode == "dense":
        return valid.clone(), n
    # Invalid keys get weight -1 so a stable descending sort puts them after every
    # valid key, whatever its weight; stability resolves ties by index.
    ranked = torch.where(valid, weights, torch.full_like(weights, -1))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    cap = torch.clamp((n * cfg.rho_q + GATE_SCALE - 1) // GATE_SCALE, min=cfg.k_min)
    kept = torch.minimum(cap, n)
    if cfg.mode == "mass":
        masked = torch.where(valid, weights, torch.zeros_like(weights))
        z = masked.sum(-1)
        if weights.is_floating_point():
            target = z * (cfg.tau_q / GATE_SCALE)
        else:
            target = (z * cfg.tau_q + GATE_SCALE - 1) // GATE_SCALE
        prefix = torch.gather(masked, -1, order).cumsum(-1)
        # Float prefix sums can fall an ulp short of T = Z; the clamp to n keeps the
        # rule total there. Integer sums are exact and reach T by n at the latest.
        shortest = torch.minimum((prefix < target.unsqueeze(-1)).sum(-1) + 1, n)
        kept = torch.minimum(shortest, kept)
    rank = torch.arange(weights.shape[-1], device=weights.device)
    keep_sorted = rank < kept.unsqueeze(-1)
    keep = torch.zeros_like(valid).scatter(-1, order, keep_sorted)
    return keep, kept
