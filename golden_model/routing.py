"""Token routing and sparse-query attention (SQDK: sparse queries, dense keys), the float reference.

A router scores every token with a per-token logit (a linear projection of its hidden state) and
sends only the top fraction of a sequence's tokens through attention as queries. Those queries
attend to every admissible key (dense keys); an unrouted token gets no attention output (zeros
here: the residual stream carries it). The HPU's mass gate composes with it: routed queries, mass-
gated keys.

- Capacity: `k = ceil(T * route_q / 256)` routed tokens per sequence, route_q the fraction in
  units of 1/256 as the HPU holds it (at least 1), the rule of every path that routes.
- Order: (logit descending, position ascending), the rule of the gate's `topk`; the routed positions
  are returned in ascending order.
- Streaming (decode time): a token is routed when its logit reaches a threshold, decided from the
  token alone, so it needs no look-ahead. Or causally by the top-k's own rule (`route_causal`):
  a token is routed when it would be if its block ended with it, decided from the block's logits
  so far.
- Causal: query position p (of T) sees keys j <= p + S - T (of S), the last query the last key.
- Grouped-query attention: query head h reads key/value head h // (Hq / Hkv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from golden_model.gate import select
from golden_model.reference import admissible_mask
from hpu.config import HPUConfig, route_capacity
from hpu.errors import InputError


def capacity(tokens: int, route_fraction: float) -> int:
    """Routed tokens per sequence of `tokens`: the hardware's rule (`hpu.config.route_capacity`)."""
    if not 0 < route_fraction <= 1:
        raise InputError(f"route_fraction = {route_fraction}: must be in (0, 1]")
    if tokens < 1:
        raise InputError(f"a sequence of {tokens} tokens: routing needs at least one")
    return int(route_capacity(tokens, route_fraction))


def router_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """(B, T, D) hidden states and a (D,) projection: (B, T) float32 logits."""
    if hidden.dim() != 3 or weight.shape != hidden.shape[-1:]:
        raise InputError(f"router: hidden states {tuple(hidden.shape)} must be (B, T, D) and the weight (D,), "
                         f"not {tuple(weight.shape)}")
    return hidden.float() @ weight.float() + bias


def route_topk(logits: torch.Tensor, route_fraction: float) -> torch.Tensor:
    """(B, T) logits: (B, k) routed positions, ascending, of the top k by (logit desc, position asc)."""
    if logits.dim() != 2:
        raise InputError(f"router logits {tuple(logits.shape)}: must be (B, T)")
    if torch.isnan(logits).any():
        raise InputError("router logits hold NaN: a NaN has no place in the order")
    return order_topk(logits, capacity(logits.shape[-1], route_fraction))


def order_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(..., T) float logits: (..., k) positions, ascending, of the first k by (logit desc, position asc)."""
    t = logits.shape[-1]
    # One integer key per token orders by logit, then by position: the float's bits made monotonic
    # (negative floats have all but the sign bit flipped; -0.0 becomes +0.0 first, as it compares
    # equal), above the position counted down. Keys are distinct, so top-k is exact without a
    # stable sort, and it is one kernel on a GPU.
    x = logits.float()
    bits = torch.where(x == 0, torch.zeros_like(x), x).view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    key = (ordered << 32) | (t - 1 - torch.arange(t, device=logits.device))
    return torch.sort(torch.topk(key, k, dim=-1, sorted=False).indices, dim=-1).values


def route_streaming(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, T) logits: (B, T) bool, routed where the token's own logit reaches `threshold`."""
    return logits >= threshold


def causal_ahead(logits: torch.Tensor, hpu: HPUConfig, first: int = 0) -> torch.Tensor:
    """(B, N) logits of a sequence's tokens 0..N-1: (B, N - first) int32, for each of tokens
    first..N-1 how many earlier tokens of its block (``hpu.route_block`` tokens from position 0) come
    before it by (logit descending, position ascending): its rank in the block so far, from 0. It
    reads no later token. NaN is not checked here (no host synchronisation inside a training step):
    `route_causal` checks."""
    if logits.dim() != 2 or not 0 <= first < logits.shape[-1]:
        raise InputError(f"router logits {tuple(logits.shape)} and first {first}: must be (B, N) with 0 <= first < N")
    if hpu.route_block < 1:
        raise InputError(f"route_block = {hpu.route_block}: causal routing needs blocks of at least one token")
    n, block = logits.shape[-1], hpu.route_block
    ranks = []
    for start in range(first - first % block, n, block):   # each block holding a token asked: (B, Q, K) at most
        tokens = logits[:, start:start + block]
        mine = torch.arange(max(first, start) - start, tokens.shape[-1], device=logits.device)
        earlier = torch.arange(tokens.shape[-1], device=logits.device) < mine[:, None]
        # An earlier token of the block with an equal logit comes first in the order.
        ranks.append(((tokens[:, None, :] >= tokens[:, mine, None]) & earlier).sum(-1, dtype=torch.int32))
    return torch.cat(ranks, 1)


def block_seen(first: int, n: int, hpu: HPUConfig, device=None) -> torch.Tensor:
    """For each of tokens first..n-1: how many tokens of its block (``hpu.route_block`` tokens from
    position 0) there are up to and including it."""
    return torch.arange(first, n, device=device) % hpu.route_block + 1


def route_causal(logits: torch.Tensor, hpu: HPUConfig, first: int = 0) -> torch.Tensor:
    """(B, N) logits of a sequence's tokens 0..N-1: (B, N - first) bool, the decisions for tokens
    first..N-1. Token t is routed when it is among the first ``hpu.route_capacity(n)`` of the n tokens
    of its block up to and including itself by `causal_ahead`'s order: the top-k's decision had the
    block ended with it. It reads no later token, so decoding can take it token by token; at a
    block's last token it is the top-k's decision for that token, and earlier ones rest on a shorter
    prefix."""
    if torch.isnan(logits).any():
        raise InputError("router logits hold NaN: a NaN has no place in the order")
    ahead = causal_ahead(logits, hpu, first)
    return ahead < hpu.route_capacity(block_seen(first, logits.shape[-1], hpu, logits.device))


def routed_mask(routed: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, R) routed positions as a (B, tokens) bool mask; a (B, tokens) mask is returned as it is."""
    if routed.dtype == torch.bool:
        return routed
    if routed.numel() and (routed.min() < 0 or routed.max() >= tokens):
        raise InputError(f"routed positions must lie in 0..{tokens - 1}")
    return torch.zeros(routed.shape[0], tokens, dtype=torch.bool, device=routed.device).scatter(1, routed.long(), True)


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise InputError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: must be (B, Hq, T, D), "
                         "(B, Hkv, S, D) and (B, Hkv, S, D)")
    if q.shape[1] % k.shape[1]:
        raise InputError(f"{q.shape[1]} query heads cannot share {k.shape[1]} key/value heads evenly")
    if q.shape[2] > k.shape[2]:
        raise InputError(f"{q.shape[2]} queries over {k.shape[2]} keys: a query needs its own key")
    return q.shape[1] // k.shape[1]


@dataclass(frozen=True)
class RoutedAttention:
    """Sparse-query attention over (B, Hq, T, D) queries.

    out:      (B, Hq, T, D), zeros in unrouted rows.
    routed:   (B, T) bool.
    kept:     (B, Hq, T) keys kept per row (0 in unrouted rows; every admissible key without a gate).
    admissible: (B, T) keys a row may see.
    """

    out: torch.Tensor
    routed: torch.Tensor
    kept: torch.Tensor
    admissible: torch.Tensor

    def stats(self) -> dict[str, float]:
        """Routed fraction, and keys kept per routed row (mean, and as a fraction of admissible)."""
        routed = self.routed.unsqueeze(1).expand_as(self.kept)
        rows = int(routed.sum())
        admissible = self.admissible.unsqueeze(1).expand_as(self.kept)
        return {"routed_fraction": float(self.routed.double().mean()),
                "kept_per_routed_row": float(self.kept[routed].double().sum()) / max(rows, 1),
                "kept_fraction_of_routed_rows": float(self.kept[routed].double().sum())
                / max(float(admissible[routed].double().sum()), 1.0)}


def sqdk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routed: torch.Tensor, causal: bool,
                   scale: float | None = None, gate: HPUConfig | None = None) -> RoutedAttention:
    """Attention for the routed rows only, each over every admissible key (or, with `gate`, over the
    keys the mass gate keeps of its softmax), computed in float32 and scattered back in place.

    routed: (B, T) bool, or (B, R) positions (as `route_topk` returns them)."""
    group = check_heads(q, k, v)
    b, hq, t, d = q.shape
    routed = routed_mask(routed, t)
    if routed.shape != (b, t):
        raise InputError(f"routed mask {tuple(routed.shape)}: must be (B, T) = {(b, t)}")
    scale = 1 / math.sqrt(d) if scale is None else scale
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    valid = admissible_mask(scores.shape, causal, q.device)
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    keep = valid.expand_as(probs)
    if gate is not None:
        keep, _ = select(probs, keep, gate)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    rows = routed[:, None, :, None]
    out = torch.where(rows, probs @ vf, torch.zeros(()))
    kept = torch.where(routed[:, None, :], keep.sum(-1), torch.zeros((), dtype=torch.int64))
    return RoutedAttention(out=out, routed=routed, kept=kept, admissible=valid.sum(-1).expand(b, t))
