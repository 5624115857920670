"""A trained model back through the HPU's view: its own attention in the HPU's fixed point.

`fixed_point_quality` evaluates a trained checkpoint on held-out text three ways, in one pass each:
dense attention, the float gate it was trained with (``hpu_mass``), and the HPU's bit-accurate
integer contract (``hpu_fixed``: every layer's attention computed by
`golden_model.reference.fixed_point_attention`, scores quantized to score_bits, values to value_bits,
probabilities from the EXP_LUT, the integer gate, the normalizer). It reports the next-token loss of
each, the cosine of every layer's fixed-point attention output against the float gate's, and both kept
fractions. The HPU configuration is the user's (`HPUConfig`: widths, max_keys), with its gate fields
taken from the checkpoint's trained gate, so the hardware gates as the model was trained to be gated.

`capture_rows` writes a sequence's attention as an attention file for `hpu sim --source`, recorded
while the model runs its trained float gate (``hpu_capture``), so that the deeper layers' rows come
from the residual stream the gated model really has.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from golden_model.reference import fixed_point_attention
from hpu.config import HPUConfig
from hpu.errors import InputError
from training import attention

FIXED = "hpu_fixed"
CAPTURE = "hpu_capture"


class _Recorder:
    """Per layer call: the cosines of fixed-point against float-gate outputs, and the kept counts."""

    def __init__(self):
        self.cosines: list[torch.Tensor] = []
        self.kept = self.admissible = 0


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
    result = fixed_point_attention(q, k, v, cfg, causal=True)
    if _recording is not None:
        gated, _ = attention.mass_gate_forward(module, query, key, value, None, scaling=scaling)
        _recording.cosines.append(F.cosine_similarity(result.out.transpose(1, 2).double(), gated.double(), dim=-1))
        _recording.kept += int(result.kept.sum())
        _recording.admissible += int(result.admissible.sum())
    return result.out.to(query.dtype).transpose(1, 2).contiguous(), None


_captured: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def capture_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """An `AttentionInterface` function that records each layer's scores q.k * scale and values, then
    attends as the model was trained to (the float gate), so that every layer's rows come from the
    gated model's own residual stream."""
    groups = query.shape[1] // key.shape[1]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    k, v = (attention.repeat_heads(x, groups).double() for x in (key, value))
    _captured.append((query.double() @ k.transpose(-1, -2) * scale, v))
    return attention.mass_gate_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    attention.register()
    AttentionInterface.register(FIXED, fixed_forward)
    AttentionMaskInterface.register(FIXED, sdpa_mask)
    AttentionInterface.register(CAPTURE, capture_forward)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)


def capture_rows(model_dir: str | Path, tokens: np.ndarray, out: Path) -> Path:
    """The attention file (`hpu sim --source`) of a trained gated checkpoint on one sequence of
    `tokens`, causal: every layer's and head's scores and values, taken while the model runs with
    its trained float gate. (`golden_model.capture` runs a model with dense attention instead, which
    would hand the deeper layers a residual stream the gated model never sees.)"""
    from golden_model.capture import write_attention_file

    global _captured
    model = _gated_model(model_dir, CAPTURE)
    _captured = []
    try:
        with torch.no_grad():
            model(input_ids=torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None])
        scores = torch.cat([s for s, _ in _captured])        # (L, H, N, N)
        values = torch.cat([v for _, v in _captured])        # (L, H, N, D)
    finally:
        _captured = None
    layers, heads, n, _ = scores.shape
    return write_attention_file(out, scores, values, (torch.arange(n) + 1).expand(layers, heads, n))


def _gated_model(model_dir: str | Path, implementation: str):
    """A gated arm's checkpoint in float64 with the attention implementation given, for evaluation."""
    from transformers import AutoModelForCausalLM

    register()
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=implementation,
                                                 dtype=torch.float64).eval()
    if not getattr(model.config, "hpu_gate", None):
        raise InputError(f"{model_dir} was trained without the gate (no hpu_gate in its config): "
                         "take a run of a gated arm")
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
    """Loss and attention agreement of a trained checkpoint: dense, float gate and the HPU's fixed point."""
    model = _gated_model(model_dir, "sdpa")
    trained = model.config.hpu_gate
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    if hpu.head_dim != head_dim or hpu.max_keys < length:
        raise InputError(f"the HPU configuration has head_dim {hpu.head_dim} and max_keys {hpu.max_keys}; this model "
                         f"needs head_dim {head_dim} and max_keys >= {length}: pass --set head_dim={head_dim} "
                         f"--set max_keys={length} or a shorter --length")
    hpu = dataclasses.replace(hpu, **{name: trained[name] for name in attention.GATE_FIELDS}, acc_bits=0)
    model.config.hpu_hardware = hpu.to_dict()
    if len(stream) < sequences * length + 1:
        raise InputError(f"the held-out text has {len(stream)} tokens, fewer than {sequences} x {length}")
    seqs = torch.from_numpy(np.stack([stream[i * length:(i + 1) * length + 1] for i in range(sequences)])
                            .astype(np.int64))
    dense_loss, _, _ = _pass(model, "sdpa", seqs)
    float_loss, _, float_kept = _pass(model, attention.NAME, seqs)
    fixed_loss, fixed, _ = _pass(model, FIXED, seqs)
    layers = model.config.num_hidden_layers
    per_layer = [torch.cat([c.flatten() for c in fixed.cosines[layer::layers]]) for layer in range(layers)]
    every = torch.cat(per_layer)
    return {"model": str(model_dir), "hpu": hpu.to_dict(), "sequences": sequences, "length": length,
            "loss": {"dense": dense_loss, "float_gate": float_loss, "fixed_point": fixed_loss},
            "fixed_minus_float": fixed_loss - float_loss,
            "kept_fraction": {"float_gate": float_kept, "fixed_point": fixed.kept / fixed.admissible},
            "attention_cosine_mean": float(every.mean()), "attention_cosine_min": float(every.min()),
            "per_layer": [{"layer": i, "cosine_mean": float(c.mean()), "cosine_min": float(c.min())}
                          for i, c in enumerate(per_layer)]}
