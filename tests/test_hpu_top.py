"""The whole HPU in Amaranth's simulator, bit-exact against the golden model."""

import random

import pytest

import torch

from golden_model.contract import run_contract
from golden_model.stimulus import Row, adversarial_rows, batch, expected, random_rows
from hpu.config import HPUConfig
from hpu.testbench import simulate_rows

from conftest import REPO

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")


def kept_indices(cfg, rows):
    """The golden model's kept set of each row, in index order: what the HPU must ask values for."""
    scores, values, lengths = batch(cfg, rows)
    keep = run_contract(cfg, scores[:, None, :], values, lengths[:, None]).keep[:, 0]
    return [torch.nonzero(k).flatten().tolist() for k in keep]


def first_mismatch(rows, got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"row {i}: scores {rows[i].scores}\n got  {g}\n want {w}"
    return None


@pytest.mark.parametrize("schedule", ["lockstep", "compact"])
@pytest.mark.parametrize("mode", ["mass", "topk", "dense"])
def test_200_random_rows_bit_exact(seed, mode, schedule):
    rng = random.Random(seed)
    cfg = SMALL.replace(mode=mode, schedule=schedule, permeability=rng.choice([0.25, 0.5, 0.75]),
                        mass_target=rng.choice([0.8, 0.9, 0.97]), k_min=rng.randint(1, 3))
    rows = random_rows(cfg, 200, rng) + adversarial_rows(cfg, rng)
    run = simulate_rows(cfg, rows, gaps=0.2, backpressure=0.3, seed=seed)
    want = expected(cfg, rows)
    assert len(run.results) == len(rows)
    assert first_mismatch(rows, run.results, want) is None, first_mismatch(rows, run.results, want)
    # Gate first: the HPU asked for the values of exactly the kept keys, in index order.
    assert run.requests == kept_indices(cfg, rows)


@pytest.mark.parametrize("schedule", ["lockstep", "compact"])
def test_default_configuration_full_rows(seed, schedule):
    rng = random.Random(seed)
    cfg = HPUConfig(schedule=schedule)
    rows = random_rows(cfg, 3, rng, n=cfg.max_keys) + [Row((5,), ((-128,) * 64,))]
    run = simulate_rows(cfg, rows, backpressure=0.2, seed=seed)
    assert run.results == expected(cfg, rows)


def test_gate_held_open_is_the_dense_contract(seed):
    rng = random.Random(seed)
    cfg = SMALL.replace(mode="mass", schedule="compact")
    rows = random_rows(cfg, 40, rng)
    run = simulate_rows(cfg, rows, gate_open=True)
    assert run.results == expected(cfg.replace(mode="dense"), rows)
    assert run.requests == [list(range(row.n)) for row in rows]


def test_back_to_back_rows_reach_the_mac_bound():
    """Without gaps the MAC array is the bottleneck in lockstep: n * chunks cycles per row plus a few."""
    cfg = SMALL.replace(mode="dense", schedule="lockstep")
    rows = random_rows(cfg, 12, random.Random(1), n=cfg.max_keys)
    run = simulate_rows(cfg, rows)
    ideal = cfg.max_keys * cfg.chunks
    # The exp/gate stage needs n + 2**prob_bits + ~6 cycles: with the small configuration that is the bound.
    front = cfg.max_keys + (1 << cfg.prob_bits) + 8
    assert run.steady_cycles_per_row() <= max(ideal + 8, front)


def test_stall_is_reported_not_hung():
    cfg = SMALL
    rows = random_rows(cfg, 2, random.Random(0), n=4)
    with pytest.raises(TimeoutError, match="HPU stalled"):
        simulate_rows(cfg, rows, timeout_cycles=5)
