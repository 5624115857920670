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
import os
import sys
from pathlib import Path

import numpy as np
import torch

from hpu.errors import HPUError, InputError
from hpu.files import output_file, staged

VALUE_MODULES = ("value", "v_proj")
TINY = 1e-30   # probabilities below it are taken as it: a score of about -69, far below any kept key


@torch.no_grad()
def capture(model_path: str, text: str, out: Path, causal: bool = False, max_tokens: int = 512) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {model_path!r} offline: {exc}".splitlines()[0]) from None
    projections = [(name, m) for name, m in model.named_modules() if name.split(".")[-1] in VALUE_MODULES]
    if not projections:
        raise InputError(f"model {model_path!r} has no value projection named {' or '.join(VALUE_MODULES)}: "
                         "export its attention yourself in the documented layout")
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
             for _, m in projections]
    try:
        inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
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
    output_file(out, "attention file", suffix=".npz")
    with staged(out) as temp, open(temp, "wb") as f:
        np.savez(f, scores=torch.log(probs.clamp_min(TINY)).numpy(), values=values.numpy(),
                 lengths=lengths.numpy().astype(np.int64))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golden_model.capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local folder or cached Hugging Face id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the input text")
    source.add_argument("--text-file", help="a file holding the input text")
    parser.add_argument("--causal", action="store_true", help="query i sees keys 0..i (decoder models)")
    parser.add_argument("--max-tokens", type=int, default=512, help="truncate the input to this many tokens")
    parser.add_argument("-o", "--output", required=True, help="attention file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        text = args.text if args.text is not None else Path(args.text_file).read_text()
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
