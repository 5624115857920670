"""A trained model back through the HPU's view: its own attention in the HPU's fixed point.

`fixed_point_quality` evaluates a trained checkpoint on held-out text three ways, in one pass each:
dense attention, the float gate it was trained with (``hpu_mass``), and the HPU's bit-accurate
integer contract (``hpu_fixed``: every layer's attention computed by
`golden_model.reference.fixed_point_attention`, scores quantized to score_bits, values to value_bits,
probabilities from the EXP_LUT, the integer gate, the normalizer). It reports the next-token loss of
each, the cosine of every layer's fixed-point attention output against the float gate's, both kept
fractions, and the share of attention rows whose largest score the score format clips (a trained
model's peaked attention can outgrow the format; docs/TRAINING.md has the case). The HPU
configuration is the user's (`HPUConfig`: widths, max_keys), with its gate fields taken from the
checkpoint's trained gate, so the hardware gates as the model was trained to be gated.

`capture_rows` writes a sequence's attention as an attention file for `hpu sim --source`, recorded
while the model runs as it was trained (``hpu_capture``: its float gate, its routers), so that the
deeper layers' rows come from the residual stream the trained model really has. A routed model's file
holds its routed layers only, with each token's router logit (``router``), so `hpu sim` routes the
model's own tokens (with ``--route-window W`` for a model trained with route_window W: each unrouted
token's last W keys as a row of its own, the window the model gave it).

`router_quality` evaluates a routed checkpoint's loss by how its routers choose: the float top-k it was
trained with, its causal predictors, the HPU's routing step on scores quantized to each of several
route_bits (with the share of tokens on which it agrees with the top-k), and the untrained
hidden-state-norm router at the same capacity.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from golden_model.quantize import attention_scores, clipped_rows, row_tops
from golden_model.reference import admissible_mask, scored_fixed_point_attention
from hpu.config import ConfigError, HPUConfig
from hpu.errors import InputError
from training import attention, routing
from training.loop import held_out_sequences

FIXED = "hpu_fixed"
CAPTURE = "hpu_capture"


class _Recorder:
    """Per layer call: the cosines of fixed-point against float-gate outputs, the kept counts, the rows
    whose scores the score format clips (`golden_model.quantize.clipped_rows`) and the largest row top."""

    def __init__(self):
        self.cosines: list[torch.Tensor] = []
        self.kept = self.admissible = self.rows = self.clipped = 0
        self.peak = 0.0


_recording: _Recorder | None = None


def fixed_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function computing attention through the HPU's integer contract.

    While recording, the float gate runs on the same q, k and v, so each layer's agreement is measured
    on identical inputs rather than after earlier layers' differences have compounded."""
    if attention_mask is not None:
        raise InputError("the fixed-point attention takes unpadded causal sequences (no attention mask)")
    cfg = HPUConfig(**module.config.hpu_hardware)
    groups = query.shape[1] // key.shape[1]
    dim = query.shape[-1]
    scale = dim ** -0.5 if scaling is None else scaling
    q = query.double() * (scale * dim ** 0.5)
    k, v = (attention.repeat_heads(x, groups).double() for x in (key, value))
    scores = attention_scores(q, k)
    result = scored_fixed_point_attention(scores, v, cfg, causal=True)
    if _recording is not None:
        tops = row_tops(scores, admissible_mask(scores.shape, True, scores.device))
        _recording.rows += tops.numel()
        _recording.clipped += int(clipped_rows(tops, cfg).sum())
        _recording.peak = max(_recording.peak, float(tops.abs().max()))
        gated, _ = attention.mass_gate_forward(module, query, key, value, None, scaling=scaling)
        _recording.cosines.append(F.cosine_similarity(result.out.transpose(1, 2).double(), gated.double(), dim=-1))
        _recording.kept += int(result.kept.sum())
        _recording.admissible += int(result.admissible.sum())
    return result.out.to(query.dtype).transpose(1, 2).contiguous(), None


_captured: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def capture_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """An `AttentionInterface` function that records each layer's scores q.k * scale and values, then
    attends as the model was trained to (the float gate, or SDPA), so that every layer's rows come
    from the trained model's own residual stream."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = query.shape[1] // key.shape[1]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    k, v = (attention.repeat_heads(x, groups).double() for x in (key, value))
    _captured.append((query.double() @ k.transpose(-1, -2) * scale, v))
    attend = attention.mass_gate_forward if getattr(module.config, "hpu_gate", None) else sdpa_attention_forward
    return attend(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    attention.register()
    AttentionInterface.register(FIXED, fixed_forward)
    AttentionMaskInterface.register(FIXED, sdpa_mask)
    AttentionInterface.register(CAPTURE, capture_forward)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)


def capture_rows(model_dir: str | Path, tokens: np.ndarray, out: Path) -> Path:
    """The attention file (`hpu sim --source`) of a trained checkpoint on one sequence of `tokens`,
    causal: every layer's and head's scores and values, taken while the model runs as it
    was trained. (`golden_model.capture` runs a model with dense attention instead, which would hand
    the deeper layers a residual stream the trained model never sees.) A routed model's file holds its
    routed layers, each token's router logit repeated over the heads as ``router``."""
    from golden_model.capture import write_attention_file

    global _captured
    model = trained_model(model_dir, CAPTURE)
    chosen = routing.routers(model)
    if any(r.cfg.route == "skip" for r in chosen):
        raise InputError(f"{model_dir} routes by skipping (unrouted tokens are no keys either); the HPU routes "
                         "queries only (sparse queries, dense keys): take a run of an sqdk arm")
    _captured = []
    try:
        with torch.no_grad():
            model(input_ids=torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None])
        scores = torch.stack([s[0] for s, _ in _captured])        # (L, H, N, N)
        values = torch.stack([v[0] for _, v in _captured])        # (L, H, N, D)
    finally:
        _captured = None
    router = None
    if chosen:
        layers = [i for i, m in enumerate(routing.attention_modules(model)) if hasattr(m, "router")]
        scores, values = scores[layers], values[layers]
        router = torch.stack([r.last["logits"][0] for r in chosen])[:, None, :].expand(scores.shape[:3])
    layers, heads, n, _ = scores.shape
    return write_attention_file(out, scores, values, (torch.arange(n) + 1).expand(layers, heads, n), router)


def trained_model(model_dir: str | Path, implementation: str | None = None, needs: tuple[str, ...] = (),
                  dtype=torch.float64):
    """A run's checkpoint (routers reattached) for evaluation, with the attention implementation given
    (by default the one it trained with: the float gate for a gated run, else SDPA); with `needs`,
    refused unless its config holds one of them (``hpu_gate``, ``hpu_router``)."""
    register()
    if implementation is None:
        implementation = attention.NAME if trained_with(model_dir)[0] else "sdpa"
    model = routing.load(model_dir, attn_implementation=implementation, dtype=dtype).eval()
    if needs and not any(getattr(model.config, need, None) for need in needs):
        what = " or ".join({"hpu_gate": "the gate", "hpu_router": "a router"}[need] for need in needs)
        raise InputError(f"{model_dir} was trained without {what} (no {' or '.join(needs)} in its config): "
                         f"take a run of an arm with {what}")
    return model


def _pass(model, implementation: str, sequences: torch.Tensor) -> tuple[float, _Recorder, float]:
    """Mean next-token loss of one attention implementation; its recorder; the float gate's kept fraction."""
    global _recording
    model.set_attn_implementation(implementation)
    recorder, total = _Recorder(), 0.0
    _recording = recorder
    try:
        with torch.no_grad(), attention.counting() as kept:
            for seq in sequences:
                logits = model(input_ids=seq[None, :-1]).logits[0]
                total += float(F.cross_entropy(logits.double(), seq[1:]))
    finally:
        _recording = None
    return total / len(sequences), recorder, kept.fraction


def fixed_point_quality(model_dir: str | Path, hpu: HPUConfig, stream: np.ndarray, sequences: int,
                        length: int) -> dict:
    """Loss and attention agreement of a checkpoint: dense, float gate and the HPU's fixed point. A gated
    run is gated as it was trained; any other run gets the gate of `hpu` after the fact (``gate``:
    ``"post hoc"``), which measures how sparse the rule finds a model that never trained with it."""
    model = trained_model(model_dir, "sdpa")
    trained = getattr(model.config, "hpu_gate", None)
    if not trained:
        trained = model.config.hpu_gate = {name: getattr(hpu, name) for name in attention.GATE_FIELDS}
    head_dim = _head_dim(model.config)
    if hpu.head_dim != head_dim or hpu.max_keys < length:
        raise InputError(f"the HPU configuration has head_dim {hpu.head_dim} and max_keys {hpu.max_keys}; this model "
                         f"needs head_dim {head_dim} and max_keys >= {length}: pass --set head_dim={head_dim} "
                         f"--set max_keys={length} or a shorter --length")
    hpu = dataclasses.replace(hpu, **{name: trained[name] for name in attention.GATE_FIELDS}, acc_bits=0)
    model.config.hpu_hardware = hpu.to_dict()
    if len(stream) < sequences * length + 1:
        raise InputError(f"the held-out text has {len(stream)} tokens, fewer than {sequences} x {length}")
    seqs = torch.from_numpy(held_out_sequences(stream, length, sequences * length))
    dense_loss, _, _ = _pass(model, "sdpa", seqs)
    float_loss, _, float_kept = _pass(model, attention.NAME, seqs)
    fixed_loss, fixed, _ = _pass(model, FIXED, seqs)
    layers = model.config.num_hidden_layers
    per_layer = [torch.cat([c.flatten() for c in fixed.cosines[layer::layers]]) for layer in range(layers)]
    every = torch.cat(per_layer)
    return {"model": str(model_dir), "gate": "trained" if trained_with(model_dir)[0] else "post hoc",
            "hpu": hpu.to_dict(), "sequences": sequences, "length": length,
            "loss": {"dense": dense_loss, "float_gate": float_loss, "fixed_point": fixed_loss},
            "fixed_minus_float": fixed_loss - float_loss,
            "kept_fraction": {"float_gate": float_kept, "fixed_point": fixed.kept / fixed.admissible},
            "rows_clipped": fixed.clipped / fixed.rows, "score_peak": fixed.peak,
            "attention_cosine_mean": float(every.mean()), "attention_cosine_min": float(every.min()),
            "per_layer": [{"layer": i, "cosine_mean": float(c.mean()), "cosine_min": float(c.min())}
                          for i, c in enumerate(per_layer)]}


def router_quality(model_dir: str | Path, stream: np.ndarray, sequences: int,
                   bits: tuple[int, ...] = (16, 12, 8, 6, 4)) -> dict:
    """A routed checkpoint's held-out loss by how its routers choose (`routing.CHOICES`): the float
    top-k, the predictors, the causal choice, the hidden-state norm, and the HPU's routing step at
    each of `bits`; for each choice the share of routed layers' tokens on which it agrees with the
    top-k, and the share of the top-k's routed tokens it routes too (the overlap: at a routed fraction f
    a swap of two tokens costs 2/T of the agreement but 1/(f T) of the overlap). In float32 (the
    model trained in bfloat16 autocast), on `sequences` sequences of one router block each
    (route_block tokens), so that each top-k is the one the model was trained with."""
    model = trained_model(model_dir, needs=("hpu_router",), dtype=torch.float32)
    cfg = routing.routers(model)[0].cfg
    length = cfg.route_block
    if len(stream) < sequences * length + 1:
        raise InputError(f"the held-out text has {len(stream)} tokens, fewer than {sequences} x {length}")
    seqs = torch.from_numpy(held_out_sequences(stream, length, sequences * length))
    choices = [(c, None) for c in routing.CHOICES if c != "hpu"] + [("hpu", b) for b in bits]
    losses = {f"{c}{'' if b is None else b}": 0.0 for c, b in choices}
    agree, overlap = dict.fromkeys(losses, 0.0), dict.fromkeys(losses, 0.0)
    with torch.no_grad():
        for seq in seqs:
            top = None   # the first choice's, the top-k
            for (choice, b), name in zip(choices, losses):
                with routing.choosing(model, choice, route_bits=b):
                    logits = model(input_ids=seq[None, :-1]).logits[0]
                routed = torch.stack([r.last["routed"] for r in routing.routers(model)])
                top = routed if top is None else top
                losses[name] += float(F.cross_entropy(logits.double(), seq[1:])) / sequences
                agree[name] += float((routed == top).double().mean()) / sequences
                overlap[name] += float((routed & top).sum() / top.sum()) / sequences
    return {"model": str(model_dir), "sequences": sequences, "length": length, "router": model.config.hpu_router,
            "routed_fraction": float(cfg.hpu.route_capacity(length)) / length, "loss": losses,
            "agreement_with_topk": agree, "overlap_with_topk": overlap}


def router_config(model_dir: str | Path) -> routing.RouterConfig | None:
    """A checkpoint's router settings (``hpu_router`` in its config), none for an unrouted model."""
    from transformers import AutoConfig

    router = getattr(AutoConfig.from_pretrained(model_dir), "hpu_router", None)
    return routing.RouterConfig(**router) if router else None


def _head_dim(config) -> int:
    """The width of a checkpoint's attention heads, from its Hugging Face configuration."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def hpu_for(base: HPUConfig, model_dir: str | Path) -> tuple[HPUConfig, int]:
    """`base` set to run a checkpoint's captured rows as the model ran them: its head width, its trained
    gate (held open, mode dense, for a model trained without one), its routers' block, capacity and
    logit width; and their window (0 without one). Everything else (widths, lanes, max_keys) is base's."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    changes = {"head_dim": _head_dim(config)}
    gate = getattr(config, "hpu_gate", None)
    changes.update({name: gate[name] for name in attention.GATE_FIELDS} if gate else {"mode": "dense"})
    router = router_config(model_dir)
    if router:
        changes.update({name: getattr(router.hpu, name) for name in ("route_block", "route_fraction", "route_bits")})
    try:
        return base.replace(**changes), router.route_window if router else 0
    except ConfigError as exc:
        raise InputError(f"{model_dir}: the HPU configuration cannot take this model's settings ({exc}); pass a "
                         f"--config whose lanes divide head_dim {changes['head_dim']}") from None


def sim_arguments(base: HPUConfig, model_dir: str | Path) -> list[str]:
    """The `hpu sim` arguments, beyond `base`'s, under which the HPU runs a checkpoint's captured rows as
    the model did (`hpu_for`): the fields that differ, and the routers' window."""
    cfg, window = hpu_for(base, model_dir)
    given = base.to_dict()
    differ = [f"--set {name}={value}" for name, value in cfg.to_dict().items() if given[name] != value]
    return differ + ([f"--route-window {window}"] if window else [])


def trained_with(model_dir: str | Path) -> tuple[bool, bool]:
    """Whether a checkpoint was trained (gated, routed)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return bool(getattr(config, "hpu_gate", None)), bool(getattr(config, "hpu_router", None))
