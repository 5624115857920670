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
    order = ranking(weights, valid)
    cap = cfg.gate_cap(n)
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
    return keep_prefix(order, kept, valid), kept


def ranking(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(..., N) indices in the order (valid first, weight descending, index ascending).

    Weights may be any sign (router logits are signed): invalid keys go last by a second stable sort
    on validity, not by a sentinel weight that a real weight could equal."""
    by_weight = torch.sort(weights, dim=-1, descending=True, stable=True).indices
    invalid_last = torch.sort((~torch.gather(valid, -1, by_weight)).to(torch.uint8), dim=-1, stable=True).indices
    return torch.gather(by_weight, -1, invalid_last)


def keep_prefix(order: torch.Tensor, kept: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The first `kept` keys of each row's `order`, as a (..., N) bool mask."""
    rank = torch.arange(order.shape[-1], device=order.device)
    return torch.zeros_like(valid).scatter(-1, order, rank < kept.unsqueeze(-1))
