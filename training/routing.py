"""A learned token router on a Hugging Face decoder's attention (Mixture-of-Depths style, the HSPMN seeds' idea).

`attach(model, router)` gives each routed layer's attention module a `Router`: a linear score of the
hidden state entering the layer. Per block of ``route_block`` tokens the top ``route_capacity`` tokens
by (score descending, position ascending) are routed: the golden model's routing order
(`golden_model.routing.order_topk`) with the HPU's capacity (`HPUConfig.route_capacity`), so the
trained choice is the one the HPU's router makes. A routed token's attention output is multiplied by
sigmoid(score), which is how the score gets a gradient; an unrouted token's is zero (the residual
stream carries it), or, with ``route_window`` W > 0, its attention over its last W keys (itself
included), unscaled: a cheap stream that still lets every token read its recent context (the
seed `004_*` gives unrouted tokens a linear-attention stream for the same reason). Two modes:

- ``sqdk``: unrouted tokens still serve as keys and values (sparse queries, dense keys: the seeds'
  semantics and `gpu_kernels.sqdk`'s);
- ``skip``: unrouted tokens skip the layer's attention as keys too (Mixture-of-Depths). A query
  always sees itself, so no row is empty.

Top-k over a block looks ahead, which decoding cannot. So each router also has a predictor: a small
MLP on the hidden state (and with ``route_predictor = "rank"`` on `rank_features` of the router's
scores over the block so far) with its gradient stopped, trained by binary cross-entropy to say
whether the token is in the top-k. Inside `choosing(model, "predictor")` the predictor decides instead
(probability above one half), token by token, as in `model.generate`. Inside
`choosing(model, "causal")` the router's own scores decide, also token by token, by the top-k's rule
over the block so far (`golden_model.routing.route_causal`): decoding keeps the scores of the
block's earlier tokens. Inside `choosing(model, "hpu")` the HPU's routing step decides on the scores
quantized to ``route_bits``. The predictor's loss reaches only its own weights, and `auxiliary_loss`
hands it to the training loop.

The router's settings live in the model's config as ``hpu_router`` (saved with the checkpoint), its
weights in the checkpoint beside the model's; `load` reattaches both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_model.contract import run_routing
from golden_model.quantize import quantize_logits
from golden_model.routing import block_seen, causal_ahead, order_topk, route_causal
from hpu.config import ConfigError, HPUConfig
from hpu.errors import InputError

NAME = "hpu_routed"
ROUTE_FIELDS = ("route", "route_fraction", "route_block", "route_layers", "route_bits", "route_window",
                "route_predictor")
# How a router chooses: its float top-k (training, teacher-forced evaluation), its predictor (token by
# token, decoding), the HPU's routing step on its scores quantized to route_bits, or, for comparison,
# the untrained router `hpu quality` uses (the top-k of the hidden state's L2 norm), or the top-k's rule
# over the block so far (causal, decoding).
CHOICES = ("topk", "predictor", "hpu", "norm", "causal")
# The choices that rank a whole block of route_block tokens at once (no token by token decoding).
WHOLE_BLOCK = ("topk", "hpu", "norm")
MODES = ("sqdk", "skip")
LAYERS = ("all", "alternate")
# What a predictor reads: the hidden state alone, or also the token's rank among its block's tokens so
# far by the router's scores (`rank_features`), which says where the block's top-k threshold lies.
PREDICTORS = ("hidden", "rank")
PREDICTOR_WIDTH = 64
RANK_FEATURES = 4
# What an evaluation measures of each choice besides the top-k: its agreement with the top-k, the share
# of tokens it routes (None: it is held to the capacity), and the loss when it routes.
MEASURED = {"predictor": ("predictor_accuracy", "predicted_fraction", "loss_predicted"),
            "causal": ("causal_accuracy", "causal_fraction", "loss_causal"),
            "hpu": ("hpu_agreement", None, "loss_hpu")}
# What an evaluation records of a routed model (`statistics` and those losses), in this order. Beside
# the fractions: the share of tokens that read no other token in any layer (`unread`: a next-token
# prediction made from the token alone) and their part of the mean loss (so that the loss on them is
# unread_loss_part / unread_fraction, exact over batches of any size).
EVALUATED = ("routed_fraction", "attention_fraction", "unread_fraction", "unread_loss_part",
             *(figure for figures in MEASURED.values() for figure in figures if figure))


@dataclass(frozen=True)
class RouterConfig:
    """Which layers route, how, and how many tokens: the ``route*`` keys of a training arm.

    Parameters
    ----------
    route : str
        ``"sqdk"`` (unrouted tokens still serve as keys) or ``"skip"`` (they skip the layer's attention).
    route_fraction : float
        Routed fraction of each block, `HPUConfig.route_fraction` (quantized to 1/256 as the HPU's).
    route_block : int
        Tokens per top-k block; it must divide every sequence the model is given whole.
    route_layers : str
        ``"all"``, or ``"alternate"``: every other layer from the second (as Mixture-of-Depths).
    route_bits : int
        Width of the quantized scores the HPU's router orders, `HPUConfig.route_bits`.
    route_window : int
        0: an unrouted token gets no attention output. W > 0 (``sqdk`` only): it attends to its last W
        keys, itself included, unscaled.
    route_predictor : str
        What the decoding predictor reads: ``"hidden"`` (the hidden state) or ``"rank"`` (also
        `rank_features` of the router's scores over the block so far).

    Raises
    ------
    ConfigError
        A field outside its range, in one line naming it.
    """

    route: str = "sqdk"
    route_fraction: float = 0.2
    route_block: int = 1024
    route_layers: str = "all"
    route_bits: int = 16
    route_window: int = 0
    route_predictor: str = "hidden"

    def __post_init__(self):
        if self.route not in MODES:
            raise ConfigError(f"illegal router: route = {self.route!r}: must be one of {', '.join(MODES)}")
        if self.route_layers not in LAYERS:
            raise ConfigError(f"illegal router: route_layers = {self.route_layers!r}: must be one of "
                              f"{', '.join(LAYERS)}")
        if isinstance(self.route_block, bool) or not isinstance(self.route_block, int) or self.route_block < 1:
            raise ConfigError(f"illegal router: route_block = {self.route_block!r}: must be a whole number of "
                              "tokens, at least 1")
        if isinstance(self.route_window, bool) or not isinstance(self.route_window, int) or self.route_window < 0:
            raise ConfigError(f"illegal router: route_window = {self.route_window!r}: must be a whole number of "
                              "keys, 0 for none")
        if self.route_predictor not in PREDICTORS:
            raise ConfigError(f"illegal router: route_predictor = {self.route_predictor!r}: must be one of "
                              f"{', '.join(PREDICTORS)}")
        if self.route_window and self.route != "sqdk":
            raise ConfigError(f"illegal router: route_window = {self.route_window} needs route = 'sqdk' (under "
                              "skip the unrouted tokens are no keys to attend to)")
        self.hpu  # route_fraction checked by the HPU's configuration

    @property
    def hpu(self) -> HPUConfig:
        """The router's fields as the HPU's one configuration object."""
        return HPUConfig(route_fraction=self.route_fraction, route_block=self.route_block,
                         route_bits=self.route_bits)

    def routes(self, layer: int) -> bool:
        return self.route_layers == "all" or layer % 2 == 1

    def as_dict(self) -> dict:
        # Fields that came later are left out at their defaults: earlier runs keep their fingerprints.
        later = {"route_window": 0, "route_predictor": "hidden"}
        return {name: getattr(self, name) for name in ROUTE_FIELDS
                if name not in later or getattr(self, name) != later[name]}


class Router(nn.Module):
    """One layer's router: ``score`` (hidden -> logit) and ``predictor`` (hidden, with a rank predictor
    also `rank_features`, gradient stopped -> logit)."""

    def __init__(self, hidden: int, cfg: RouterConfig):
        super().__init__()
        self.cfg = cfg
        self.score = nn.Linear(hidden, 1)
        extra = RANK_FEATURES if cfg.route_predictor == "rank" else 0
        self.predictor = nn.Sequential(nn.Linear(hidden + extra, PREDICTOR_WIDTH), nn.SiLU(),
                                       nn.Linear(PREDICTOR_WIDTH, 1))
        self.choice = "topk"
        self.last: dict[str, torch.Tensor] = {}
        self.earlier: torch.Tensor | None = None   # the scores of the tokens a cache holds (causal ranks)

    def decide(self, hidden: torch.Tensor, cached: int = 0,
               decoding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) hidden states of the tokens after the `cached` ones a cache holds (`decoding`: a
        cache is in use, so the scores are kept for the next tokens' ranks): (routed (B, T) bool, scale
        (B, T): sigmoid(score) where routed, else 0, or 1 with a window).
        Keeps the scores, the predictor's logits, the choice made and the top-k choice (with the HPU's
        choice on the same scores when evaluating) for `auxiliary_loss` and `statistics`."""
        if cached and self.choice in WHOLE_BLOCK:
            # Such a choice looks ahead to the block's last token; after a cache each token would be a
            # block of its own, always routed.
            raise ValueError(f"the router's {self.choice!r} choice ranks whole blocks of route_block tokens, "
                             f"not tokens after {cached} cached ones: decode inside routing.choosing(model, "
                             "'predictor') or 'causal'")
        logits = self.score(hidden).squeeze(-1).float()
        ahead = None
        if self.choice == "causal" or self.cfg.route_predictor == "rank":
            ahead = self._ahead(logits.detach(), cached, decoding)
        seen = block_seen(cached, cached + logits.shape[-1], self.cfg.hpu, logits.device)
        inputs = hidden.detach()
        if self.cfg.route_predictor == "rank":
            inputs = torch.cat([inputs, rank_features(ahead, seen, self.cfg).to(inputs.dtype)], -1)
        predicted = self.predictor(inputs).squeeze(-1).float()
        self.last = {"logits": logits, "predicted": predicted}
        if self.choice == "predictor":
            routed = predicted > 0
        elif self.choice == "causal":
            routed = ahead < self.cfg.hpu.route_capacity(seen)
        elif self.choice == "hpu":
            routed = hpu_routing(logits.detach(), self.cfg)
        elif self.choice == "norm":
            routed = block_topk(hidden.detach().float().norm(dim=-1), self.cfg)
        else:
            self.last["positions"] = block_positions(logits.detach(), self.cfg)
            routed = self.last["top"] = _routed_mask(self.last["positions"], logits.shape)
            if not self.training:
                self.last["hpu"] = hpu_routing(logits.detach(), self.cfg)
        self.last["routed"] = routed
        unrouted = torch.full_like(logits, float(self.cfg.route_window > 0))
        return routed, torch.where(routed, torch.sigmoid(logits), unrouted)

    def _ahead(self, logits: torch.Tensor, cached: int, decoding: bool) -> torch.Tensor:
        """`golden_model.routing.causal_ahead` of these tokens, over the scores of the tokens before
        them that the router kept (decoding with a cache) and theirs."""
        # The scores of the tokens a cache holds, by row: a cache cropped back (assisted decoding) keeps
        # a prefix of them; beam search reorders their rows (`choosing`).
        if cached and (self.earlier is None or self.earlier.shape[0] != logits.shape[0]
                       or self.earlier.shape[1] < cached):
            raise ValueError(f"the router holds no scores for the {cached} cached tokens of this batch, which "
                             "its causal ranks need: decode from the prompt's first token within one "
                             "choosing(model, ...) block")
        if not self.training and torch.isnan(logits).any():   # no host synchronisation in a training step
            raise InputError("router scores hold NaN: a NaN has no place in the order")
        scores = torch.cat([self.earlier[:, :cached], logits], 1) if cached else logits
        if decoding:   # a training step (no cache, compiled) keeps no state
            self.earlier = scores
        return causal_ahead(scores, self.cfg.hpu, first=cached)


def rank_features(ahead: torch.Tensor, seen: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """(B, T) ranks in the block so far (`causal_ahead`) of tokens that are each the `seen`-th (T,) of
    their block: (B, T, RANK_FEATURES) float, what a rank predictor reads beside the hidden state: the
    rank's distance past the capacity as a share of the tokens seen, the capacity's share of them, how
    far into the block the token is (log scale), and the causal choice (1 routed, 0 not)."""
    capacity = cfg.hpu.route_capacity(seen)
    seen = seen.float().expand_as(ahead)
    # The distance is zero at the threshold, where the choice is decided, so that half precision (the
    # predictor runs under bf16 autocast) still tells one rank from the next there, at any block size.
    return torch.stack([(ahead - capacity) / seen, capacity / seen, torch.log(seen) / math.log(cfg.route_block + 1),
                        (ahead < capacity).float()], -1)


def _blocks(logits: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """(B, T) scores as (B * T / block, block) rows of route_block tokens (the whole row if shorter)."""
    b, t = logits.shape
    block = min(t, cfg.route_block)
    if t % block:
        raise ValueError(f"router: {t} tokens do not split into blocks of route_block = {cfg.route_block}; "
                         "give sequences a multiple of it (or route by the predictor)")
    return logits.reshape(b * (t // block), block)


def block_topk(logits: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """(B, T) float logits: (B, T) bool, per block of route_block tokens the first
    ``HPUConfig.route_capacity(block)`` by (logit descending, position ascending)."""
    return _routed_mask(block_positions(logits, cfg), logits.shape)


def block_positions(logits: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """`block_topk`'s choice as (B, routed) positions in the sequence, ascending (every sequence routes
    as many tokens: each block its capacity)."""
    blocks = _blocks(logits, cfg)
    b, t = logits.shape
    picked = order_topk(blocks, int(cfg.hpu.route_capacity(blocks.shape[-1])))
    starts = torch.arange(0, b * t, blocks.shape[-1], device=logits.device) % t
    return (picked + starts[:, None]).reshape(b, -1)


def _routed_mask(positions: torch.Tensor, shape) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bool, device=positions.device).scatter(1, positions, True)


def hpu_routing(logits: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """(B, T) float scores: (B, T) bool, the HPU's routing step (`golden_model.contract.run_routing`)
    on each block's scores quantized to route_bits (`golden_model.quantize.quantize_logits`)."""
    hpu = cfg.hpu
    return run_routing(hpu, quantize_logits(_blocks(logits, cfg), hpu)).routed.reshape(logits.shape)


def routed_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function (``attn_implementation="hpu_routed"``) that spends attention
    FLOPs on the routed queries only. When the layer's router chose by top-k (training,
    teacher-forced evaluation), over unpadded causal rows, in half precision on a GPU, the routed
    queries are gathered, attend to their causal keys in `gpu_kernels.kept_attention` (forward and
    backward; the key tiles past a query tile's last routed position are skipped) and are scattered
    back, every other row zero, which the router's scale makes it anyway. Otherwise (no router, the
    predictor's or the HPU's choice, a mask, the CPU) it is SDPA on every row, the same result. A
    router with a window always takes SDPA: its unrouted rows are not zero (the window's mask)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from training import attention

    router = getattr(module, "router", None)
    positions = router.last.get("positions") if router is not None and router.choice == "topk" else None
    dropout = dropout if module.training else 0.0
    if (positions is None or router.cfg.route_window or attention_mask is not None or query.shape[2] != key.shape[2]
            or not attention.tiled_attention(attention.autocast_inputs(query, key, value)[0], dropout)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    # The casts, gather and scatter stay in the caller's compiled graph; only the kernel runs outside it.
    query, key, value = attention.autocast_inputs(query, key, value)
    b, heads, n, dim = query.shape
    groups = heads // key.shape[1]
    key, value = attention.repeat_heads(key, groups), attention.repeat_heads(value, groups)
    index = positions[:, None, :, None].expand(b, heads, positions.shape[1], dim)
    keep = positions[:, None, :, None] >= torch.arange(n, device=query.device)   # (B, 1, routed, N): causal
    routed = _kept(query.gather(2, index), key, value, keep, dim ** -0.5 if scaling is None else scaling)
    out = torch.zeros_like(query).scatter(2, index, routed)
    return out.transpose(1, 2).contiguous(), None


@torch.compiler.disable
def _kept(query, key, value, keep, scale):
    from gpu_kernels.kept_attention import kept_attention

    return kept_attention(query, key, value, keep, scale)


def register() -> str:
    """Register `routed_forward` with transformers (idempotent); returns its ``attn_implementation`` name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from training import attention

    AttentionInterface.register(NAME, routed_forward)
    # The gate's mask builder: no mask for plain causal rows, so the routed path can take them.
    AttentionMaskInterface.register(NAME, attention.gate_mask)
    return NAME


def _before(module, args, kwargs):
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    cached = cache.get_seq_length(module.layer_idx) if cache is not None else 0
    router = module.router
    ranks = router.choice == "causal" or (router.choice == "predictor" and router.cfg.route_predictor == "rank")
    if ranks and kwargs.get("attention_mask") is not None:
        own = _own_mask(kwargs["attention_mask"], hidden.shape[1], hidden.shape[1] + cached, hidden.device)
        if not own.any(dim=-2).all():   # a key no query sees: padding, which would count in the blocks
            raise ValueError("causal ranks (the causal choice, a rank predictor) take unpadded sequences (padding "
                             "would count among a block's tokens): generate one prompt at a time, or prompts of "
                             "one length")
    routed, scale = router.decide(hidden, cached, decoding=cache is not None)
    router.scale = scale
    cfg = router.cfg
    if cfg.route == "sqdk" and not cfg.route_window:
        return args, kwargs
    if cfg.route == "skip" and cached:
        raise ValueError("skip routing cannot decode with a cache: the cache does not remember which earlier "
                         "tokens were routed (generate with use_cache=False, or route with sqdk)")
    from transformers import DynamicCache

    if cache is not None and not isinstance(cache, DynamicCache):
        # A static or sliding cache's key axis is its buffer, not the tokens seen: the window would slip.
        raise ValueError(f"a router's window decodes with transformers' DynamicCache, not {type(cache).__name__}: "
                         "generate with cache_implementation='dynamic' or use_cache=False")
    own = _own_mask(kwargs.get("attention_mask"), routed.shape[-1], routed.shape[-1] + cached, routed.device)
    mask = _skip_mask(own, routed) if cfg.route == "skip" else _window_mask(own, routed, cfg.route_window)
    return args, {**kwargs, "attention_mask": mask}


def _own_mask(mask: torch.Tensor | None, queries: int, keys: int, device) -> torch.Tensor:
    """The layer's own mask as bool: causal when None (the queries the last of the keys' positions),
    an additive float mask allowed where 0."""
    if mask is None:
        return torch.arange(keys, device=device) <= torch.arange(keys - queries, keys, device=device)[:, None]
    return mask if mask.dtype == torch.bool else mask == 0


def _window_mask(own: torch.Tensor, routed: torch.Tensor, window: int) -> torch.Tensor:
    """(B, 1, Q, K) bool: the layer's own mask with each unrouted query cut to its last `window` keys,
    itself included."""
    queries, keys = routed.shape[-1], own.shape[-1]
    position = torch.arange(keys - queries, keys, device=routed.device)[:, None]
    near = torch.arange(keys, device=routed.device) > position - window
    return own & (routed[:, None, :, None] | near)


def _skip_mask(own: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: the layer's own mask restricted to routed keys, each query keeping itself so
    that no row is empty (an unrouted row's output is zeroed anyway)."""
    return (own & routed[:, None, None, :]) | torch.eye(routed.shape[-1], dtype=torch.bool, device=routed.device)


def _after(module, args, output):
    out, weights = output[0], output[1:]
    return (out * module.router.scale.unsqueeze(-1).to(out.dtype), *weights)


def attention_modules(model) -> list[nn.Module]:
    """Each decoder layer's attention module (``self_attn``), in order."""
    return [m.self_attn for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


def attach(model, cfg: RouterConfig, seed: int = 0) -> list[Router]:
    """Give the routed layers of `model` a `Router` each (initialized from `seed`, so the model's own
    weights are untouched) and record `cfg` in ``model.config.hpu_router``; returns the routers."""
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    routers = []
    for index, attn in enumerate(attention_modules(model)):
        if not cfg.routes(index):
            continue
        router = Router(hidden, cfg)
        with torch.no_grad():
            for name, p in router.named_parameters():
                # The model's own init: normal weights of std initializer_range, zero biases. A rank
                # predictor's rank columns start at zero, so the draws, and every router, are a hidden-
                # state predictor's.
                if p.dim() == 1:
                    p.zero_()
                    continue
                drawn = p.shape if name != "predictor.0.weight" else (p.shape[0], hidden)
                weight = torch.randn(drawn, generator=generator) * model.config.initializer_range
                p.copy_(F.pad(weight, (0, p.shape[-1] - drawn[-1])))
        param = next(attn.parameters())
        attn.router = router.to(device=param.device, dtype=param.dtype).train(attn.training)
        attn.register_forward_pre_hook(_before, with_kwargs=True)
        attn.register_forward_hook(_after)
        routers.append(attn.router)
    if not routers:
        raise ConfigError("illegal router: no layer routes (route_layers = 'alternate' on a one-layer model)")
    model.config.hpu_router = cfg.as_dict()
    return routers


def routers(model) -> list[Router]:
    return [m.router for m in attention_modules(model) if hasattr(m, "router")]


def predictor_parameters(model) -> list[torch.nn.Parameter]:
    """The weights of every router's decoding predictor: what learns from `auxiliary_loss` alone."""
    return [p for r in routers(model) for p in r.predictor.parameters()]


def auxiliary_loss(model) -> torch.Tensor | None:
    """The predictors' binary cross-entropy on the last forward pass's top-k choice, summed over
    layers (None without routers, or when they chose otherwise). Only the predictors learn from it."""
    losses = [F.binary_cross_entropy_with_logits(r.last["predicted"], r.last["top"].float())
              for r in routers(model) if "top" in r.last]
    return torch.stack(losses).sum() if losses else None


def unread(model) -> torch.Tensor | None:
    """(B, T) bool of the last forward pass (a whole sequence, no cache, evaluating): the tokens that
    read no other token's value in any layer, so that the model predicts the next token from the token
    alone. A layer without a router reads every earlier token; a routed layer's routed tokens read
    theirs (sqdk: every earlier token; skip: the earlier routed ones, so the sequence's first routed
    token reads none); with a window of more than one key the unrouted tokens read their window.
    Under the mass gate a token reads only where the gate kept it a key besides its own
    (`attention.py`'s ``gate_reads``). The first token reads no other anywhere. None without routers,
    or after a training pass (the gate records its reads when evaluating only)."""
    chosen = routers(model)
    if not chosen or any("routed" not in r.last or r.training for r in chosen):
        return None
    shape = chosen[0].last["routed"].shape
    alone = torch.ones(shape, dtype=torch.bool, device=chosen[0].last["routed"].device)
    for attn in attention_modules(model):
        router = getattr(attn, "router", None)
        reads = torch.ones_like(alone)
        if router is not None:
            # What `_skip_mask`, `_window_mask` and the router's scale let a row read.
            routed = router.last["routed"]
            if router.cfg.route == "skip":
                reads = routed & (routed.cumsum(-1) > 1)
            else:
                reads = routed | (router.cfg.route_window > 1)
        gated = getattr(attn, "gate_reads", None)
        if gated is not None:
            reads = reads & gated
        alone &= ~reads
    alone[..., 0] = True
    return alone


def statistics(model, losses: torch.Tensor | None = None) -> dict[str, float]:
    """Of the last forward pass: the routed fraction, how often each predictor and the causal choice
    agree with the top-k and the share of tokens each would route (decoding does not hold the top-k's
    capacity), and the attention FLOPs (score and value products) as a fraction of dense causal attention,
    counted from the positions routed (sqdk: routed rows over all their keys; skip: over routed keys
    and themselves; with a window, unrouted rows over their window), unrouted layers counting whole;
    when evaluating, the share of tokens on which the HPU's routing step (quantized scores) agrees
    with the float top-k, the share of tokens that read no other token (`unread`) and, given the pass's
    (B, T) next-token `losses`, their part of the mean loss. Empty without routers, or when they chose
    otherwise."""
    chosen = [r for r in routers(model) if "top" in r.last]
    if not chosen:
        return {}
    layers = len(attention_modules(model))
    work = []
    for r in chosen:
        top = r.last["top"].float()
        seen = torch.arange(1, top.shape[-1] + 1, device=top.device, dtype=torch.float32)
        keys = seen if r.cfg.route == "sqdk" else top.cumsum(-1)  # a routed row: the routed keys up to itself
        near = seen.clamp(max=r.cfg.route_window)  # an unrouted row's window (none without one)
        work.append(float((top * keys + (1 - top) * near).sum() / (seen.sum() * top.shape[0])))
    # Decoding's choices, uncapped: the predictors', and the top-k's rule over each block so far.
    decoding = {"predict": [r.last["predicted"] > 0 for r in chosen],
                "causal": [route_causal(r.last["logits"].detach(), r.cfg.hpu) for r in chosen]}
    chosen = [r.last for r in chosen]
    agree = {name: float(torch.stack([(d == last["top"]).float().mean() for d, last in zip(choice, chosen)]).mean())
             for name, choice in decoding.items()}
    share = {name: float(torch.stack([d.float().mean() for d in choice]).mean()) for name, choice in decoding.items()}
    routed = torch.stack([last["top"].float().mean() for last in chosen])
    stats = {"predictor_accuracy": agree["predict"], "predicted_fraction": share["predict"],
             "causal_accuracy": agree["causal"], "causal_fraction": share["causal"],
             "routed_fraction": float(routed.mean()),
             "attention_fraction": (layers - len(work) + sum(work)) / layers}
    alone = unread(model)
    if alone is not None:
        stats["unread_fraction"] = float(alone.float().mean())
        if losses is not None:
            stats["unread_loss_part"] = float((losses * alone).sum() / losses.numel())
    if all("hpu" in last for last in chosen):
        stats["hpu_agreement"] = float(torch.stack([(last["hpu"] == last["top"]).float().mean()
                                                     for last in chosen]).mean())
    return stats


@contextlib.contextmanager
def choosing(model, choice: str, route_bits: int | None = None):
    """Every router of `model` (the model `generate` is called on) chooses by `choice` inside the block:
    ``"predictor"`` or ``"causal"`` (token by token, no look-ahead: decoding, or the teacher-forced loss
    of decoding's choices; ``"causal"`` and a rank predictor keep each row's scores beside the cache,
    and beam search reorders them with the cache's rows), ``"hpu"`` (the HPU's routing step on the scores quantized
    to `route_bits`, by default the router's own) or ``"norm"``; ``"topk"`` is the default."""
    if choice not in CHOICES:
        raise ValueError(f"a router chooses by one of {', '.join(CHOICES)}, not {choice!r}")
    chosen = routers(model)
    before = [(r.choice, r.cfg) for r in chosen]
    for r in chosen:
        r.choice, r.earlier = choice, None
        if route_bits is not None:
            r.cfg = dataclasses.replace(r.cfg, route_bits=route_bits)
    # transformers' hook for state a model keeps beside its cache (the scores causal ranks read): beam
    # search hands it the rows. The class's own hook (a static or a plain method), if any, still
    # reorders the cache.
    own = model.__dict__.get("_reorder_cache")
    native = inspect.getattr_static(type(model), "_reorder_cache", None)
    native = None if native is None else native.__get__(model, type(model))
    model._reorder_cache = functools.partial(_reorder, native, chosen)
    try:
        yield
    finally:
        for r, (choice_was, cfg_was) in zip(chosen, before):
            r.choice, r.cfg, r.earlier = choice_was, cfg_was, None
        del model._reorder_cache
        if own is not None:
            model._reorder_cache = own


def _reorder(reorder, chosen: list[Router], cache, beam_idx: torch.Tensor):
    """Beam search's reordering of the cache's rows (by the model's own hook if it has one), and of
    the causal routers' scores with them."""
    if reorder is not None:
        cache = reorder(cache, beam_idx)
    else:
        cache.reorder_cache(beam_idx)
    for r in chosen:
        if r.earlier is not None:
            r.earlier = r.earlier.index_select(0, beam_idx.to(r.earlier.device))
    return cache


def load(path, **kwargs):
    """A checkpoint written by `hpu train`, its routers reattached with their trained weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from training import attention

    attention.register()
    register()
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(file))
    # The routers are not the model class's own modules: transformers is handed the weights it owns
    # only, so that its load report does not list the routers' as unexpected.
    trained = {name: state.pop(name) for name in list(state) if ".router." in name}
    config = AutoConfig.from_pretrained(path)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=state, **kwargs)
    model.name_or_path = str(path)
    if (Path(path) / "generation_config.json").is_file():   # read by from_pretrained only given a path
        model.generation_config = GenerationConfig.from_pretrained(path)
    table = getattr(model.config, "hpu_router", None)
    if table:
        attach(model, RouterConfig(**table))
        missing = [k for k in model.state_dict() if ".router." in k and k not in trained]
        if missing:
            raise ValueError(f"{path}: the checkpoint lacks router weights ({missing[0]}, ...)")
        model.load_state_dict(trained, strict=False)
    return model
