"""Capture a Hugging Face model's attention as an attention file for `hpu sim --source FILE.npz`.

    python -m golden_model.capture --model PATH_OR_ID --text-file doc.txt -o rows.npz [--causal]

The file holds, for every layer and head, float ``scores`` (L, H, N, N), ``values`` (L, H, N, D) and
``lengths`` (L, H, N): the layout `golden_model.sources.file_rows` reads (docs/ARCHITECTURE.md,
"Workloads"). Scores are the log of the model's attention probabilities: softmax does not change
when a row's scores move together, and the HPU subtracts each row's maximum, so they act exactly as
q.k / sqrt(d) would. Values are the outputs of each layer's value projection (a module named
`value` or `v_proj`, as in BERT- and LLaMA-style models), split into heads; key-value heads shared
by several query heads (grouped-query attention) are repeated. With ``--causal`` query i has i + 1
keys. The model is loaded offline (HF_HUB_OFFLINE=1): pass a local folder or a cached id.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from hpu.errors import HPUError, InputError
from hpu.files import output_file, staged

VALUE_MODULES = ("value", "v_proj")
TINY = 1e-30   # probabilities below it are taken as it: a score of about -69, far below any kept key
# A Hugging Face id ("name" or "owner/name"); anything else is a local path.
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")


@torch.no_grad()
def capture(model_path: str, text: str, out: Path, causal: bool = False, max_tokens: int | None = None) -> Path:
    """Every argument is checked before the model loads; `max_tokens` defaults to the model's positions."""
    output_file(out, "attention file", suffix=".npz")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens {max_tokens}: must be at least 1")
    folder = Path(model_path)
    if folder.is_file():
        raise InputError(f"model {model_path} is a file: pass the model's folder (config.json, weights, tokenizer)")
    if not folder.exists() and not _HUB_ID.fullmatch(model_path):
        raise InputError(f"model folder {model_path} does not exist")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise InputError(f"model folder {model_path} has no config.json: pass a Hugging Face model's folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with _loading(model_path, folder):
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    positions = getattr(config, "max_position_embeddings", None)
    if max_tokens is not None and positions is not None and max_tokens > positions:
        raise InputError(f"--max-tokens {max_tokens}: model {model_path} takes at most {positions} tokens")
    with _loading(model_path, folder):
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
        model = AutoModel.from_pretrained(model_path, config=config, attn_implementation="eager",
                                          trust_remote_code=False).eval()
    projections = [(name, m) for name, m in model.named_modules() if name.split(".")[-1] in VALUE_MODULES]
    if not projections:
        raise InputError(f"model {model_path!r} has no value projection named {' or '.join(VALUE_MODULES)}: "
                         "export its attention yourself in the documented layout")
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
             for _, m in projections]
    try:
        limit = max_tokens or positions
        inputs = tokenizer(text, return_tensors="pt", truncation=limit is not None, max_length=limit)
        attentions = model(**inputs, output_attentions=True).attentions
    finally:
        for hook in hooks:
            hook.remove()
    if attentions is None or len(attentions) != len(captured):
        raise InputError(f"model {model_path!r} gave {len(captured)} value projections but "
                         f"{0 if attentions is None else len(attentions)} attention maps")
    probs = torch.stack([a[0] for a in attentions]).double()                  # (L, H, N, N)
    layers, heads, n, _ = probs.shape
    values = torch.stack([v[0] for v in captured]).double()                   # (L, N, Hkv * D)
    kv_heads = getattr(model.config, "num_key_value_heads", None) or heads
    values = values.reshape(layers, n, kv_heads, -1).permute(0, 2, 1, 3)      # (L, Hkv, N, D)
    values = values.repeat_interleave(heads // kv_heads, dim=1)
    lengths = (torch.arange(n) + 1 if causal else torch.full((n,), n)).expand(layers, heads, n)
    return write_attention_file(out, torch.log(probs.clamp_min(TINY)), values, lengths)


def write_attention_file(out: Path, scores: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                         router: torch.Tensor | None = None) -> Path:
    """An attention file in the layout `golden_model.sources.file_rows` reads: scores (L, H, N, N),
    values (L, H, N, D), lengths (L, H, N), and a routed model's router logits (L, H, N) if given;
    written whole or not at all."""
    arrays = {"scores": scores.double().numpy(), "values": values.double().numpy(),
              "lengths": lengths.numpy().astype(np.int64)}
    if router is not None:
        arrays["router"] = router.double().numpy()
    with staged(out) as temp, open(temp, "wb") as f:
        np.savez(f, **arrays)
    return out


@contextlib.contextmanager
def _loading(model_path: str, folder: Path) -> Iterator[None]:
    """Loading errors of transformers and torch as one line each."""
    try:
        yield
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code: never.
        raise InputError(f"model {model_path}: its weights file (pytorch_model.bin) holds pickled Python objects, "
                         "which are never loaded: save the weights as model.safetensors where they were "
                         "made") from None
    except Exception as exc:   # whatever a damaged folder (weights, config values) makes the loaders raise
        if "trust_remote_code" in str(exc):
            # transformers' advice is to run the folder's Python code: never.
            raise InputError(f"model {model_path} needs its own Python code to load, which is never run: export "
                             "its attention yourself in the documented layout") from None
        if not folder.exists():
            raise InputError(f"model {model_path}: no such folder, nor a Hugging Face id in the local cache "
                             "(loading is offline): pass a model folder, or download the model first") from None
        raise InputError(f"cannot load model {model_path} offline: {type(exc).__name__}: {exc}".splitlines()[0]) \
            from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"text file {path} is not UTF-8 text: pass a plain text file") from None
    except OSError as exc:
        raise InputError(f"text file {path} cannot be read: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golden_model.capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local folder or cached Hugging Face id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the input text")
    source.add_argument("--text-file", help="a file holding the input text")
    parser.add_argument("--causal", action="store_true", help="query i sees keys 0..i (decoder models)")
    parser.add_argument("--max-tokens", type=int,
                        help="truncate the input to this many tokens (default: as many as the model has positions)")
    parser.add_argument("-o", "--output", required=True, help="attention file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        text = args.text if args.text is not None else _read_text(Path(args.text_file))
        path = capture(args.model, text, Path(args.output), args.causal, args.max_tokens)
    except HPUError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"capture: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"attention file: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
