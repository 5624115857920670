"""The mass gate as a Hugging Face attention implementation: ``attn_implementation="hpu_mass"``.

`register()` adds it to transformers' `AttentionInterface` (and its mask builder, `gate_mask`, to
`AttentionMaskInterface`), so any decoder whose attention dispatches through the
interface (Llama, Mistral, Qwen, ...) trains or evaluates with the gate unchanged. The gate's
parameters live in the model's config as ``hpu_gate``, a table of `HPUConfig` fields (mode,
permeability, mass_target, k_min); they are saved with the checkpoint and read on every call, so a
training loop anneals the permeability by writing ``model.config.hpu_gate``.

Per query row the gate keeps the keys of `golden_model.gate.select`'s float rule on the row's
softmax probabilities: the most probable keys until their mass reaches the target, at most
``ceil(permeability x admissible keys)``, at least ``k_min``, ties by index. Renormalizing over the
kept set is a softmax with the dropped keys masked out, so the output is scaled-dot-product
attention under the keep mask. The selection is a step function and carries no gradient: gradients
flow through the renormalized softmax of the kept keys (to q, k and v), exactly as through dense
attention restricted to that set.

The probabilities the gate ranks are float32, from q and k as the model hands them (bf16 under
autocast), computed as `golden_model.quantize.attention_scores` does, and the golden model's `select`
ranks them. On a GPU the Triton kernels of `gpu_kernels.row_gate` replace the sort: for causal rows
without a padding mask (training, prefill) one kernel goes straight from q and k to the kept set
without writing scores or probabilities; otherwise the probabilities are computed as above and the
kernel selects from them. Both equal the rule up to float rounding (docs/TRAINING.md). The
attention over the kept keys is then `gpu_kernels.kept_attention` on a GPU in half precision (flash
attention forward and backward that skips every tile keeping no key), SDPA under the keep mask
elsewhere. The function runs eagerly inside a compiled model (`torch.compiler.disable`); the rest of
the model compiles.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

from golden_model.gate import select as reference_select
from golden_model.quantize import attention_scores
from hpu.config import HPUConfig

NAME = "hpu_mass"
GATE_FIELDS = ("mode", "permeability", "mass_target", "k_min")


@functools.lru_cache(maxsize=256)
def gate_config(mode: str, permeability: float, mass_target: float, k_min: int) -> HPUConfig:
    """The validated gate of one call (cached: the loop changes it at most once a step)."""
    return HPUConfig(mode=mode, permeability=permeability, mass_target=mass_target, k_min=k_min)


def gate_of(config) -> HPUConfig:
    """The gate a Hugging Face config carries in ``hpu_gate``; the HPU's defaults where a field is absent."""
    table = dict(getattr(config, "hpu_gate", None) or {})
    defaults = HPUConfig()
    return gate_config(*(table.get(name, getattr(defaults, name)) for name in GATE_FIELDS))


class KeptCount:
    """Kept and admissible (query, key) pairs summed over every gated call inside `counting()`."""

    def __init__(self):
        self.kept = self.admissible = 0

    @property
    def fraction(self) -> float:
        return float(self.kept) / float(self.admissible) if self.admissible else 1.0


_counting: KeptCount | None = None


@contextlib.contextmanager
def counting(count: KeptCount | None = None):
    """Count kept keys in the gated calls of the block, into `count` if given (adding to it), else a
    new count (the sums stay on the device until read)."""
    global _counting
    _counting, previous = count or KeptCount(), _counting
    try:
        yield _counting
    finally:
        _counting = previous


def keep_mask(probs: torch.Tensor, valid: torch.Tensor, gate: HPUConfig, causal: bool = False) -> torch.Tensor:
    """(..., Q, K) bool: the keys each row keeps (the Triton kernel on CUDA, the golden model elsewhere).

    ``causal``: `valid` is the causal mask itself, which the kernel derives instead of reading."""
    if probs.is_cuda:
        from gpu_kernels.row_gate import select

        return select(probs, valid, gate, causal=causal)[0]
    return reference_select(probs, valid.expand(probs.shape), gate)[0]


def admissible(attention_mask: torch.Tensor | None, n_q: int, n_k: int, causal: bool, device) -> torch.Tensor:
    """(B or 1, 1, Q, K) bool: the keys each query may see, from HF's mask (None, bool, or additive float)."""
    if attention_mask is None:
        rows = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
        # The last query sees the last key: queries are the newest n_q of n_k positions.
        return (rows.tril(n_k - n_q) if causal else rows)[None, None]
    mask = attention_mask[..., :n_k]
    return mask if mask.dtype == torch.bool else mask == 0


def autocast_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """q, k and v as SDPA takes them under autocast (on its lower-precision list): one half dtype for
    the three, which matters because rotary embeddings in float32 hand q and k over in float32, v in
    half. Unchanged outside autocast."""
    if not torch.is_autocast_enabled(query.device.type):
        return query, key, value
    half = torch.get_autocast_dtype(query.device.type)
    return query.to(half), key.to(half), value.to(half)


def repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Key-value heads shared by `groups` query heads each (grouped-query attention), repeated."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


FUSED_KEYS = 2048  # the longest row the fused kernel holds in registers (one row a program)


def fused_selection(query: torch.Tensor, attention_mask, causal: bool, n_keys: int, gate: HPUConfig) -> bool:
    """Whether the kept set comes straight from q and k (`gpu_kernels.row_gate.select_causal_qk`): causal
    rows without a padding mask, half-precision q and k on a GPU, rows short enough for registers."""
    return (query.is_cuda and attention_mask is None and causal and n_keys <= FUSED_KEYS
            and query.dtype in (torch.float16, torch.bfloat16) and gate.mode != "dense")


def tiled_attention(query: torch.Tensor, dropout: float) -> bool:
    """Whether the kept keys' attention runs in `gpu_kernels.kept_attention` (which visits only the tiles
    that keep a key) rather than SDPA under the keep mask: half precision on a GPU, no dropout."""
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] in (16, 32, 64, 128)
            and dropout == 0.0)


def _keep_from_probs(query, key, valid, empty, gate: HPUConfig, scale: float, causal: bool) -> torch.Tensor:
    """The kept set from float32 softmax probabilities computed as the golden model computes them."""
    dim = query.shape[-1]
    # attention_scores divides by sqrt(d); a model with another scale folds the ratio into q.
    q = query.float() if scale == dim ** -0.5 else query.float() * (scale * math.sqrt(dim))
    probs = torch.softmax(attention_scores(q, key.float()).masked_fill_(~valid, float("-inf")), dim=-1)
    if empty is None:
        return keep_mask(probs, valid, gate, causal)
    return keep_mask(probs.nan_to_num_(), valid | empty, gate) & ~empty


def mass_gate_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An `AttentionInterface` function: q (B, H, Q, D), k and v (B, Hkv, K, D) -> ((B, Q, H, D), None).

    Returns the keep mask as the attention weights' stand-in only when the caller asks for
    ``output_attentions`` (a (B, H, Q, K) bool tensor), else None.
    """
    # The casts and the layout change stay in the caller's compiled graph, fused with the rotary
    # embedding and the output projection; only the gate itself runs outside it.
    query, key, value = autocast_inputs(query, key, value)
    out, keep = _gated_attention(module, query, key, value, attention_mask, scaling, dropout, is_causal)
    return out.transpose(1, 2).contiguous(), keep if kwargs.get("output_attentions") else None


# Kept out of torch.compile's graphs: the gate is read from the config on every call (the loop anneals
# the permeability), which compiled code would guard on and recompile for at each new value.
@torch.compiler.disable
def _gated_attention(module, query, key, value, attention_mask, scaling, dropout, is_causal):
    """(out (B, H, Q, D), keep (B, H, Q, K)) of `mass_gate_forward` on its q, k and v in one dtype."""
    gate = gate_of(module.config)
    n_q, n_k, dim = query.shape[2], key.shape[2], query.shape[3]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    valid = admissible(attention_mask, n_q, n_k, causal, query.device)
    scale = dim ** -0.5 if scaling is None else scaling
    # Without a mask every row sees at least one key (its own, when causal). With one, a row may see
    # none (a padded query): it attends to nothing and outputs zero.
    empty = None if attention_mask is None else ~valid.any(-1, keepdim=True)
    with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
        if fused_selection(query, attention_mask, causal, n_k, gate):
            from gpu_kernels.row_gate import select_causal_qk

            keep = select_causal_qk(query, key, gate, scale)
        else:
            keep = _keep_from_probs(query, repeat_heads(key, query.shape[1] // key.shape[1]), valid, empty, gate,
                                    scale, causal)
        if _counting is not None:
            # Under a router, the rows it routed: the gate's work on the others is thrown away.
            router = getattr(module, "router", None)
            rows = (router.last["routed"][:, None, :, None] if router is not None and "routed" in router.last
                    else torch.ones((), dtype=torch.bool, device=keep.device))
            _counting.kept = _counting.kept + (keep & rows).sum()
            _counting.admissible = _counting.admissible + (valid.expand(keep.shape) & rows).sum()
        if not module.training:   # for `training.routing.unread`, which reads evaluating passes only
            module.gate_reads = _reads_another(keep)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_heads(key, groups), repeat_heads(value, groups)
    dropout = dropout if module.training else 0.0
    if tiled_attention(query, dropout):
        from gpu_kernels.kept_attention import kept_attention

        # A padded query keeps no key, and the kernel gives such a row zeros.
        out = kept_attention(query, key, value, keep, scale)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=keep if empty is None else keep | empty,
                                             scale=scale, dropout_p=dropout)
        out = out if empty is None else out.masked_fill(empty, 0.0)
    return out, keep


def _reads_another(keep: torch.Tensor) -> torch.Tensor:
    """(B, H, Q, K) keep mask, the queries the last Q of the keys' positions: (B, Q) bool, whether the
    query keeps a key other than its own in any head."""
    n_q, n_k = keep.shape[-2:]
    kept = keep.any(1)
    own = kept[:, torch.arange(n_q, device=keep.device), torch.arange(n_k - n_q, n_k, device=keep.device)]
    return kept.sum(-1) > own.int()


def gate_mask(*args, **kwargs):
    """The gate's `AttentionMaskInterface` builder: None for plain causal rows (no padding, no window,
    as many queries as keys), else `sdpa_mask`'s boolean mask.

    Decided from the arguments alone, never from mask values, so it holds inside torch.compile, where
    `sdpa_mask` materializes even a plain causal mask; without a mask the gate derives the causal rows
    itself and takes the fused path (`fused_selection`). Arguments this version of transformers does
    not name fall back to `sdpa_mask`.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    q_length = kwargs.get("q_length")
    if q_length is None and isinstance(kwargs.get("cache_position"), torch.Tensor):
        q_length = kwargs["cache_position"].shape[0]  # transformers before q_length: one position a query
    plain = (not args and kwargs.get("attention_mask") is None and kwargs.get("local_size") is None
             and kwargs.get("mask_function") is causal_mask_function and kwargs.get("allow_is_causal_skip") is True
             and q_length is not None and q_length == kwargs.get("kv_length") and kwargs.get("kv_offset", 0) == 0)
    return None if plain else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register the gate with transformers (idempotent); returns its ``attn_implementation`` name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, mass_gate_forward)
    AttentionMaskInterface.register(NAME, gate_mask)
    return NAME
