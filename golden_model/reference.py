"""Float reference of mass-gated attention, and the same attention through the HPU's integer contract."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from golden_model.contract import run_contract
from golden_model.gate import select
from golden_model.quantize import attention_scores, dequantize_out, quantize_scores, quantize_values
from hpu.config import HPUConfig


@dataclass(frozen=True)
class GatedAttention:
    """Outputs of gated attention for q, k, v of shape (B, H, N, D).

    out:       (B, H, N, D) attention output, renormalized over the kept set.
    keep:      (B, H, N, N) bool, True where query row i keeps key j.
    kept:      (B, H, N) kept count per row.
    admissible:(B, H, N) keys a row may see (N, or i + 1 when causal).
    kept_mass: (B, H, N) softmax mass of the kept keys before renormalization.
    """

    out: torch.Tensor
    keep: torch.Tensor
    kept: torch.Tensor
    admissible: torch.Tensor
    kept_mass: torch.Tensor

    @property
    def kept_fraction(self) -> torch.Tensor:
        return self.kept.double() / self.admissible.double()


def admissible_mask(shape: tuple[int, ...], causal: bool, device) -> torch.Tensor:
    """(Q, K) keys each query may see for scores of `shape` (..., Q, K): all, or when causal the keys
    up to the query's own position, the last query the last key."""
    n_q, n_k = shape[-2], shape[-1]
    if not causal:
        return torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)


def mass_gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: HPUConfig,
                         causal: bool = False) -> GatedAttention:
    """The gate on float softmax probabilities (mode, permeability, mass target, k_min from cfg)."""
    scores = attention_scores(q, k)
    valid = admissible_mask(scores.shape, causal, scores.device).expand(scores.shape)
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    keep, kept = select(probs, valid, cfg)
    kept_probs = torch.where(keep, probs, torch.zeros_like(probs))
    kept_mass = kept_probs.sum(-1)
    out = torch.matmul(kept_probs / kept_mass.unsqueeze(-1), v.to(probs.dtype))
    return GatedAttention(out=out, keep=keep, kept=kept, admissible=valid.sum(-1), kept_mass=kept_mass)


def fixed_point_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: HPUConfig,
                          causal: bool = False) -> GatedAttention:
    """The same attention computed through the HPU: quantize, run the contract, dequantize.

    Causal rows see a prefix of the keys, which is exactly the HPU's row length n.
    kept_mass is measured in the contract's own probabilities (z_kept / Z).
    """
    return scored_fixed_point_attention(attention_scores(q, k), v, cfg, causal)


def scored_fixed_point_attention(scores: torch.Tensor, v: torch.Tensor, cfg: HPUConfig,
                                 causal: bool = False) -> GatedAttention:
    """`fixed_point_attention` of float scores q.k / sqrt(d) (`attention_scores`) already computed, for
    a caller that reads them too (training.hardware records the rows whose scores the format clips)."""
    values, scale = quantize_values(v, cfg)
    lengths = admissible_mask(scores.shape, causal, scores.device).sum(-1).expand(scores.shape[:-1])
    result = run_contract(cfg, quantize_scores(scores, cfg), values, lengths)
    out = dequantize_out(result.out, scale, cfg)
    return GatedAttention(out=out, keep=result.keep, kept=result.kept, admissible=lengths,
                          kept_mass=result.z_kept.double() / result.z.double())
