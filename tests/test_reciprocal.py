"""The normalizer's reciprocal arithmetic equals the contract's division, for every acc and z_kept.

Proven exhaustively where the configuration is small enough to enumerate, and on the shipped
configurations with hypothesis plus the boundary cases: the largest |acc| of either sign, z_kept of
1, powers of two and their neighbours, the largest z_kept, and dividends on either side of the
saturation threshold.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from golden_model.contract import normalize as contract_normalize
from golden_model.contract import signed_range
from golden_model.reciprocal import normalize, reciprocal, shift_of
from hpu.config import HPUConfig

from conftest import REPO

TINY = [HPUConfig(head_dim=1, lanes=1, max_keys=k, prob_bits=p, value_bits=v, out_bits=o, out_frac=f,
                  score_bits=8, score_frac=4, exp_shift=1, lut_size=16)
        for k, p, v, o, f in [(4, 3, 3, 6, 2), (5, 2, 4, 12, 5), (3, 4, 2, 3, 0), (7, 3, 3, 20, 10), (1, 1, 2, 2, 1)]]
SHIPPED = {name: HPUConfig.load(f"{REPO}/configs/{name}.toml") for name in ("default", "large", "minilm", "small")}


def contract_out(acc: int, z: int, cfg: HPUConfig) -> int:
    """The contract's step 6 itself."""
    return int(contract_normalize(torch.tensor([acc]), torch.tensor([z]), cfg)[0])


def z_range(cfg: HPUConfig) -> range:
    return range(1, cfg.max_keys * cfg.e_max + 1)


def acc_range(cfg: HPUConfig) -> range:
    low, high = signed_range(cfg.acc_bits)
    return range(low, high + 1)


@pytest.mark.parametrize("cfg", TINY, ids=lambda c: f"keys{c.max_keys}-p{c.prob_bits}-v{c.value_bits}-o{c.out_bits}-f{c.out_frac}")
def test_exhaustive_on_tiny_configurations(cfg):
    for z in z_range(cfg):
        m = reciprocal(z, cfg)
        assert m < 1 << cfg.reciprocal_bits
        for acc in acc_range(cfg):
            assert normalize(acc, z, m, cfg) == contract_out(acc, z, cfg), (acc, z)


def test_exhaustive_on_the_small_configuration():
    """Every acc_bits-wide accumulator against every z_kept the small HPU can produce (vectorized)."""
    cfg = SHIPPED["small"]
    assert cfg.quotient_bits + cfg.reciprocal_bits <= 62   # the products fit int64
    acc_low, acc_high = signed_range(cfg.acc_bits)
    acc = np.arange(acc_low, acc_high + 1, dtype=np.int64)
    n = np.abs(acc) << cfg.out_frac
    low, high = signed_range(cfg.out_bits)
    big = (n >> cfg.quotient_bits) != 0
    for z in z_range(cfg):
        m = reciprocal(z, cfg)
        quotient = np.where(big, high + 1, (np.where(big, 0, n) * m) >> (cfg.quotient_bits + shift_of(z)))
        ours = np.where(acc < 0, -np.minimum(quotient, high + 1), np.minimum(quotient, high))
        contract = contract_normalize(torch.from_numpy(acc), torch.tensor([z]), cfg).numpy()
        assert np.array_equal(ours, contract), z


def boundary_cases(cfg: HPUConfig) -> list[tuple[int, int]]:
    low, high = signed_range(cfg.acc_bits)
    z_max = cfg.max_keys * cfg.e_max
    zs = {1, 2, 3, z_max, z_max - 1}
    for j in range(cfg.z_bits):
        zs |= {(1 << j) - 1, 1 << j, (1 << j) + 1}
    zs = sorted(z for z in zs if 1 <= z <= z_max)
    cases = []
    out_high = (1 << (cfg.out_bits - 1)) - 1
    for z in zs:
        # Dividends on either side of saturation, and of the exact-width limit 2**quotient_bits.
        edge = -(-(z * (out_high + 1)) >> cfg.out_frac)
        limit = (1 << cfg.quotient_bits) >> cfg.out_frac
        for a in (0, 1, low, high, edge - 1, edge, edge + 1, limit - 1, limit, limit + 1, z, z - 1):
            for acc in (a, -a):
                if low <= acc <= high:
                    cases.append((acc, z))
    return cases


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_boundaries_of_shipped_configurations(name):
    cfg = SHIPPED[name]
    for acc, z in boundary_cases(cfg):
        assert normalize(acc, z, reciprocal(z, cfg), cfg) == contract_out(acc, z, cfg), (acc, z)


@pytest.mark.parametrize("name", sorted(SHIPPED))
@given(data=st.data())
def test_random_pairs_of_shipped_configurations(name, data):
    cfg = SHIPPED[name]
    acc = data.draw(st.integers(*signed_range(cfg.acc_bits)))
    z = data.draw(st.integers(1, cfg.max_keys * cfg.e_max))
    assert normalize(acc, z, reciprocal(z, cfg), cfg) == contract_out(acc, z, cfg)


def test_reciprocal_width_and_shift():
    cfg = SHIPPED["default"]
    assert (cfg.quotient_bits, cfg.reciprocal_bits) == (31, 32)
    assert [shift_of(z) for z in (1, 2, 3, 4, 5, 65535)] == [0, 1, 2, 2, 3, 16]
    assert reciprocal(1, cfg) == 1 << 31 and reciprocal(65025, cfg) < 1 << 32
