"""Integer HPU rows: random and adversarial stimulus, and the golden model's expected results for them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from golden_model.contract import ContractResult, run_contract, run_routing, signed_range
from hpu.config import HPUConfig
from hpu.errors import InputError


@dataclass(frozen=True)
class Row:
    """One HPU row: n scores and n value vectors of head_dim integers."""

    scores: tuple[int, ...]
    values: tuple[tuple[int, ...], ...]

    @property
    def n(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class RowResult:
    """What the HPU reports for one row."""

    acc: tuple[int, ...]
    out: tuple[int, ...]
    z_kept: int
    kept: int


def validate_blocks(cfg: HPUConfig, blocks: list[list[int]]) -> None:
    """Refuse blocks of router logits the configured router cannot take, naming the first bad one."""
    if cfg.route_block == 0:
        raise InputError("blocks of router logits need a router: set route_block above 0")
    low, high = signed_range(cfg.route_bits)
    for i, block in enumerate(blocks):
        if not 1 <= len(block) <= cfg.route_block:
            raise InputError(f"block {i}: {len(block)} tokens; the router takes 1..route_block ({cfg.route_block})")
        bad = next((r for r in block if type(r) is not int or not low <= r <= high), None)
        if bad is not None:
            raise InputError(f"block {i}: router logit {bad!r} is not an integer in {low}..{high} "
                             f"(route_bits = {cfg.route_bits})")


def validate_rows(cfg: HPUConfig, rows: list[Row], where: str = "row") -> None:
    """Refuse rows the configured HPU cannot take, naming the first offending row and why.

    The HPU would misread such a row (a score wider than score_bits wraps), so the blame belongs
    to the input, not to the hardware."""
    s_low, s_high = signed_range(cfg.score_bits)
    v_low, v_high = signed_range(cfg.value_bits)
    for i, row in enumerate(rows):
        if not 1 <= row.n <= cfg.max_keys:
            raise InputError(f"{where} {i}: n = {row.n} keys; the HPU takes 1..max_keys ({cfg.max_keys})")
        if len(row.values) != row.n:
            raise InputError(f"{where} {i}: {row.n} scores but {len(row.values)} value vectors")
        for s in row.scores:
            if type(s) is not int or not s_low <= s <= s_high:
                raise InputError(f"{where} {i}: score {s!r} is not an integer in {s_low}..{s_high} "
                                 f"(score_bits = {cfg.score_bits})")
        for j, v in enumerate(row.values):
            if len(v) != cfg.head_dim:
                raise InputError(f"{where} {i}: value vector {j} has {len(v)} elements, head_dim is {cfg.head_dim}")
            if not all(type(x) is int and v_low <= x <= v_high for x in v):
                bad = next(x for x in v if type(x) is not int or not v_low <= x <= v_high)
                raise InputError(f"{where} {i}: value {bad!r} of key {j} is not an integer in {v_low}..{v_high} "
                                 f"(value_bits = {cfg.value_bits})")


def batch(cfg: HPUConfig, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of any lengths as zero-padded tensors: scores (R, N), values (R, N, head_dim), lengths (R,)."""
    width = max(row.n for row in rows)
    scores = torch.zeros(len(rows), width, dtype=torch.int64)
    values = torch.zeros(len(rows), width, cfg.head_dim, dtype=torch.int64)
    for i, row in enumerate(rows):
        scores[i, :row.n] = torch.tensor(row.scores)
        values[i, :row.n] = torch.tensor(row.values)
    return scores, values, torch.tensor([row.n for row in rows])


def expected(cfg: HPUConfig, rows: list[Row]) -> list[RowResult]:
    """The golden model's results for each row (rows of any lengths, batched)."""
    if not rows:
        return []
    scores, values, lengths = batch(cfg, rows)
    return results_of(run_contract(cfg, scores[:, None, :], values, lengths[:, None]))


def batch_blocks(blocks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of router logits of any lengths as zero-padded tensors: logits (B, T), lengths (B,)."""
    logits = torch.zeros(len(blocks), max(map(len, blocks)), dtype=torch.int64)
    for i, block in enumerate(blocks):
        logits[i, :len(block)] = torch.tensor(block)
    return logits, torch.tensor([len(b) for b in blocks])


def expected_routed(cfg: HPUConfig, blocks: list[list[int]]) -> list[list[int]]:
    """The golden model's routed positions for each block (blocks of any lengths, batched)."""
    return run_routing(cfg, *batch_blocks(blocks)).positions() if blocks else []


def random_blocks(cfg: HPUConfig, count: int, rng: random.Random,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """Blocks of router logits: lengths 1..route_block (or `lengths`), uniform over the range or over a
    few levels (ties), a tenth of them the range's ends."""
    low, high = signed_range(cfg.route_bits)
    blocks = []
    for i in range(count):
        levels = rng.choice([None, 3, 16])
        draw = (lambda: rng.randint(low, high)) if levels is None else \
            (lambda pool=[rng.randint(low, high) for _ in range(levels)]: rng.choice(pool))
        blocks.append([rng.choice((low, high)) if rng.random() < 0.1 else draw()
                       for _ in range(lengths[i] if lengths else rng.randint(1, cfg.route_block))])
    return blocks


def adversarial_blocks(cfg: HPUConfig, rng: random.Random) -> list[list[int]]:
    """Blocks that stress the router's order: ties across the capacity, the range's ends, one token,
    a full block of one value, and ties before a larger logit (the later ties are not routed)."""
    low, high = signed_range(cfg.route_bits)
    full = cfg.route_block
    pattern = [3, 3, 3, 9, 3, 9, 3, 3, 3, 3]
    return [
        [rng.randint(low, high)],
        [low, high, low, high, 0, -1, 1][:full],
        [7] * full,
        [-1] * (full - 2) + [high, high] if full > 2 else [high] * full,
        [rng.choice((-3, 0, 5)) for _ in range(full)],
        [rng.choice((low, high)) for _ in range(full)],
        [rng.randint(-2, 2) * (high // 4) + rng.randint(0, 1) for _ in range(full)],
        (pattern * full)[:full],
        list(range(full))[::-1],
    ]


ROUTING_SOURCES = ("random", "adversarial")


def blocks_from(source: str, cfg: HPUConfig, count: int, seed: int) -> list[list[int]]:
    """`count` blocks of router logits: 'random', or 'adversarial' (its set repeated with fresh draws)."""
    rng = random.Random(seed)
    if source == "random":
        return random_blocks(cfg, count, rng)
    if source == "adversarial":
        blocks: list[list[int]] = []
        while len(blocks) < count:
            blocks += adversarial_blocks(cfg, rng)
        return blocks[:count]
    raise InputError(f"unknown source of router logits {source!r}: choose one of {', '.join(ROUTING_SOURCES)}")


def results_of(result: ContractResult) -> list[RowResult]:
    acc, out = result.acc.reshape(-1, result.acc.shape[-1]), result.out.reshape(-1, result.out.shape[-1])
    return [RowResult(tuple(a), tuple(o), z, k) for a, o, z, k in
            zip(acc.tolist(), out.tolist(), result.z_kept.flatten().tolist(), result.kept.flatten().tolist())]


def random_rows(cfg: HPUConfig, count: int, rng: random.Random, n: int | None = None,
                spread: float | None = None) -> list[Row]:
    """Random rows: lengths 1..max_keys (or n), scores spread over a random number of LUT steps.

    Extremes are drawn on purpose: a tenth of the values are the range's ends.
    """
    s_low, s_high = signed_range(cfg.score_bits)
    v_low, v_high = signed_range(cfg.value_bits)
    rows = []
    for _ in range(count):
        length = n or rng.randint(1, cfg.max_keys)
        # Spread in score LSBs: from a few LUT steps (flat rows) to the whole range (peaked rows).
        width = spread if spread is not None else rng.choice([0.05, 0.2, 1.0, 4.0, 16.0, 64.0])
        scale = max(1, int(width * (1 << cfg.exp_shift) * 4))
        centre = rng.randint(s_low // 2, s_high // 2)
        scores = tuple(max(s_low, min(s_high, centre + int(rng.gauss(0, scale)))) for _ in range(length))
        values = tuple(tuple(rng.choice((v_low, v_high)) if rng.random() < 0.1 else rng.randint(v_low, v_high)
                             for _ in range(cfg.head_dim)) for _ in range(length))
        rows.append(Row(scores, values))
    return rows


def adversarial_rows(cfg: HPUConfig, rng: random.Random) -> list[Row]:
    """Rows that stress the gate: ties, a dominant key, mass thresholds on tie runs, saturated LUT, extremes."""
    s_low, s_high = signed_range(cfg.score_bits)
    v_low, v_high = signed_range(cfg.value_bits)
    full = cfg.max_keys

    def values(n, pick=lambda: rng.randint(v_low, v_high)):
        return tuple(tuple(pick() for _ in range(cfg.head_dim)) for _ in range(n))

    def scores(*levels):
        # Every level is clamped into the score range: small score_bits leave no room for wide steps.
        return tuple(max(s_low, min(s_high, s)) for s in levels)

    step = 1 << cfg.exp_shift
    rows = [
        Row((0,), values(1)),                                              # n = 1
        Row((s_low,), ((v_low,) * cfg.head_dim,)),                         # n = 1, extreme value
        Row(scores(*(123,) * full), values(full)),                         # all-equal scores, full row
        Row((s_high,) + (s_low,) * (full - 1), values(full)),              # one dominant key, LUT saturated
        Row((s_low,) * (full - 1) + (s_high,), values(full)),              # dominant key last
        Row(tuple(s_high if j % 2 else s_low for j in range(full)), values(full)),   # two tie runs far apart
        Row((0,) * full, values(full, lambda: v_high)),                    # outputs at the top of the range
        Row((0,) * full, values(full, lambda: v_low)),                     # and at the bottom
        Row(scores(*(-step * (j // 4) for j in range(full))), values(full)),          # tie runs of 4, descending
        Row(scores(*(-step * ((full - j) // 8) for j in range(full))), values(full)),  # ascending tie runs of 8
        Row(scores(*(rng.choice((0, -step, -2 * step)) for _ in range(full))), values(full)),  # three levels
        Row(tuple(rng.randint(s_low, s_high) for _ in range(full)), values(full)),  # whole range: e mostly 0
    ]
    # Rows whose mass target lands inside a tie run: two levels with the split at the threshold.
    for split in (1, full // 3, full // 2):
        rows.append(Row(scores(*(0,) * split, *(-step,) * (full - split)), values(full)))
    return rows
