"""Stimulus sources by name: random rows, adversarial rows, and real attention rows of all-MiniLM-L6-v2."""

from __future__ import annotations

import random

import torch

from golden_model.quantize import attention_scores, quantize_scores, quantize_values
from golden_model.stimulus import Row, adversarial_rows, random_rows
from hpu.config import HPUConfig
from hpu.errors import InputError

SOURCES = ("random", "adversarial", "minilm")
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


def minilm_rows(cfg: HPUConfig, count: int, rng: random.Random) -> list[Row]:
    """Real attention rows: one query row of one head of one layer per HPU row.

    Scores are the model's q.k / sqrt(d) quantized to score_bits; values are the
    head's value vectors quantized per head. A row keeps its first max_keys keys.
    MiniLM heads are 32 wide: a narrower HPU takes the first head_dim elements, a
    wider one continues with the next heads' values (the weights stay those of
    the head that scored the row).
    """
    from golden_model.minilm import MiniLM
    from golden_model.texts import TEXTS

    model = MiniLM()
    rows: list[Row] = []
    texts = list(TEXTS)
    rng.shuffle(texts)
    # One row per layer and text, cycling through the texts: rows of every length.
    for text in texts * (1 + count // (6 * len(texts))):
        for layer in model.run(text, trace=True).layers:
            heads, n = layer.q.shape[1], min(layer.q.shape[2], cfg.max_keys)
            scores = quantize_scores(attention_scores(layer.q, layer.k), cfg)[0]   # (H, N, N)
            wide = layer.v[0].transpose(0, 1).reshape(layer.v.shape[2], -1)         # (N, H * 32)
            head, query = rng.randrange(heads), rng.randrange(layer.q.shape[2])
            start = head * model.head_dim
            columns = torch.arange(start, start + cfg.head_dim) % wide.shape[1]
            values, _ = quantize_values(wide[:n, columns], cfg)
            rows.append(Row(tuple(scores[head, query, :n].tolist()), tuple(map(tuple, values.tolist()))))
            if len(rows) == count:
                return rows
    return rows


def rows_from(source: str, cfg: HPUConfig, count: int, seed: int) -> list[Row]:
    """`count` rows from a named source (adversarial rows repeat their set with fresh values)."""
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
    raise InputError(f"unknown stimulus source {source!r}: choose one of {', '.join(SOURCES)}")
