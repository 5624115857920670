"""Stimulus sources by name: random rows, adversarial rows, and real attention rows of all-MiniLM-L6-v2."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from golden_model.quantize import attention_scores, quantize_scores, quantize_values
from golden_model.stimulus import Row, adversarial_rows, random_rows
from hpu.config import HPUConfig
from hpu.errors import InputError

SOURCES = ("random", "adversarial", "minilm", "minilm-long")
FILE_SUFFIXES = (".npz", ".pt")
# Rows are held in memory as Python integers (and as the job file the testbench reads): a run's rows
# may hold at most this many value elements at full length, about 2 GB of Python objects.
MAX_RUN_VALUES = 1 << 25


def max_rows(cfg: HPUConfig) -> int:
    """The most rows one run takes: MAX_RUN_VALUES over a full row's max_keys * head_dim values."""
    return max(1, MAX_RUN_VALUES // (cfg.max_keys * cfg.head_dim))


def check_row_count(cfg: HPUConfig, count: int) -> None:
    if not 1 <= count <= max_rows(cfg):
        raise InputError(f"--rows {count}: a run takes 1..{max_rows(cfg)} rows of this configuration "
                         f"(max_keys x head_dim = {cfg.max_keys * cfg.head_dim} values per row); "
                         "split more rows into several runs")


def head_rows(scores: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, cfg: HPUConfig, count: int,
              rng: random.Random) -> list[Row]:
    """`count` HPU rows from float attention: scores (S, Q, N) = q.k / sqrt(d) per head set S and query
    row Q, values (S, N, D), lengths (S, Q) admissible keys per row (a prefix: causal rows are shorter).

    Each row is one (set, query) drawn at random: its first min(length, max_keys) keys, scores
    quantized to score_bits, values quantized per set with the golden model's quantizers. Heads
    narrower than head_dim continue with the next set's columns (wrapping), wider ones are cut."""
    sets, queries, keys = scores.shape
    wide = values.transpose(0, 1).reshape(keys, -1)                 # (N, S * D)
    rows: list[Row] = []
    for _ in range(count):
        s, q = rng.randrange(sets), rng.randrange(queries)
        n = min(int(lengths[s, q]), cfg.max_keys)
        columns = (torch.arange(cfg.head_dim) + s * values.shape[-1]) % wide.shape[1]
        quantized, _ = quantize_values(wide[:n, columns], cfg)
        row_scores = quantize_scores(scores[s, q, :n], cfg)
        rows.append(Row(tuple(row_scores.tolist()), tuple(map(tuple, quantized.tolist()))))
    return rows


def minilm_rows(cfg: HPUConfig, count: int, rng: random.Random, long: bool = False) -> list[Row]:
    """Real attention rows of all-MiniLM-L6-v2: one query row of one head of one layer per HPU row.

    ``long=False``: the built-in texts one at a time (rows of a few to a few hundred keys, most of a
    few dozen). ``long=True``: texts joined into passages of LONG_MIN_TOKENS..min(max_keys, MINILM_MAX_TOKENS) tokens, so every
    row has that many keys: the workload where attention is expensive."""
    from golden_model.minilm import MiniLM
    from golden_model.texts import TEXTS

    model = MiniLM()
    texts = list(TEXTS)
    rng.shuffle(texts)
    passages = _passages(model, texts, cfg, rng) if long else texts
    rows: list[Row] = []
    # One row per layer and passage, cycling through the passages.
    while len(rows) < count:
        for text in passages:
            for layer in model.run(text, trace=True).layers:
                scores = attention_scores(layer.q, layer.k)[0]            # (H, N, N)
                lengths = torch.full(scores.shape[:2], scores.shape[-1])
                rows += head_rows(scores, layer.v[0], lengths, cfg, 1, rng)
                if len(rows) == count:
                    return rows
    return rows


LONG_MIN_TOKENS = 128
MINILM_MAX_TOKENS = 512


def _passages(model, texts: list[str], cfg: HPUConfig, rng: random.Random) -> list[str]:
    top = min(cfg.max_keys, MINILM_MAX_TOKENS)
    if top < LONG_MIN_TOKENS:
        raise InputError(f"the minilm-long source makes rows of {LONG_MIN_TOKENS}..{MINILM_MAX_TOKENS} keys; "
                         f"max_keys = {cfg.max_keys} cannot hold one")
    passages: list[str] = []
    for _ in range(8):
        target = rng.randint(LONG_MIN_TOKENS, top)
        # Each passage opens with a text of its own, then takes texts at random until long enough.
        words = texts[len(passages) % len(texts)].split()
        while model.token_count(" ".join(words)) < target:
            words += rng.choice(texts).split()
        while model.token_count(" ".join(words)) > top:
            words.pop()
        passages.append(" ".join(words))
    return passages


def file_rows(path: Path, cfg: HPUConfig, count: int, rng: random.Random) -> list[Row]:
    """Rows from attention a user exported (docs/ARCHITECTURE.md, "Workloads"): an .npz (numpy,
    no pickle) or .pt (torch, weights only) holding float ``scores`` (..., Q, N) = q.k / sqrt(d),
    ``values`` (..., N, D) and optionally ``lengths`` (..., Q), leading axes (layers, heads) alike."""
    what = f"attention file {path}"
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as data:
                arrays = {k: torch.from_numpy(data[k]) for k in data.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{what} does not exist") from None
    except Exception as exc:   # a corrupt archive: name it, never run it
        raise InputError(f"{what} cannot be read as {path.suffix}: {type(exc).__name__}: {exc}") from None
    if not isinstance(arrays, dict) or not {"scores", "values"} <= set(arrays):
        raise InputError(f"{what} must hold arrays `scores` and `values` (and optionally `lengths`)")
    scores, values = arrays["scores"], arrays["values"]
    if not (torch.is_tensor(scores) and torch.is_tensor(values)) or scores.dim() < 2 or values.dim() < 2 \
            or scores.shape[:-2] != values.shape[:-2] or scores.shape[-1] != values.shape[-2]:
        raise InputError(f"{what}: scores {tuple(getattr(scores, 'shape', ()))} and values "
                         f"{tuple(getattr(values, 'shape', ()))} must be (..., Q, N) and (..., N, D) with the same "
                         "leading axes and N")
    if not (scores.is_floating_point() and values.is_floating_point()):
        raise InputError(f"{what}: scores and values must be floating point (they are quantized here)")
    lead = scores.shape[:-2]
    scores = scores.reshape(-1, *scores.shape[-2:]).double()
    values = values.reshape(-1, *values.shape[-2:]).double()
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = torch.full(scores.shape[:2], scores.shape[-1])
    elif tuple(lengths.shape) != tuple(lead) + (scores.shape[1],) or lengths.is_floating_point() \
            or int(lengths.min()) < 1 or int(lengths.max()) > scores.shape[-1]:
        raise InputError(f"{what}: lengths must be integers in 1..N of shape (..., Q) = "
                         f"{tuple(lead) + (scores.shape[1],)}")
    else:
        lengths = lengths.reshape(scores.shape[:2])
    if not torch.isfinite(values).all():
        raise InputError(f"{what}: values hold NaN or infinity")
    admissible = torch.arange(scores.shape[-1]) < lengths[..., None]
    if not torch.isfinite(scores[admissible]).all():
        raise InputError(f"{what}: scores of admissible keys hold NaN or infinity")
    return head_rows(scores, values, lengths, cfg, count, rng)


def rows_from(source: str, cfg: HPUConfig, count: int, seed: int) -> list[Row]:
    """`count` rows from a named source or an attention file (adversarial rows repeat their set with
    fresh values)."""
    check_row_count(cfg, count)
    rng = random.Random(seed)
    if source == "random":
        return random_rows(cfg, count, rng)
    if source == "adversarial":
        rows: list[Row] = []
        while len(rows) < count:
            rows += adversarial_rows(cfg, rng)
        return rows[:count]
    if source == "minilm":
        return minilm_rows(cfg, count, rng)
    if source == "minilm-long":
        return minilm_rows(cfg, count, rng, long=True)
    if Path(source).suffix in FILE_SUFFIXES:
        return file_rows(Path(source), cfg, count, rng)
    raise InputError(f"unknown stimulus source {source!r}: choose one of {', '.join(SOURCES)}, "
                     f"or a file of exported attention ({' or '.join(FILE_SUFFIXES)})")
