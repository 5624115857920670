"""The bit-accurate model against hand-worked cases and against the contract's rules for all inputs."""

import math

import pytest
import torch
from hypothesis import given, strategies as st

from golden_model.contract import run_contract, signed_range
from golden_model.lut import exp_lut
from hpu.config import HPUConfig
from hpu.errors import InputError

CFG = HPUConfig()


def one_row(cfg, scores, values):
    """Run one row; values is a list of per-key vectors, or per-key scalars repeated over head_dim."""
    vals = [[v] * cfg.head_dim if isinstance(v, int) else v for v in values]
    r = run_contract(cfg, torch.tensor([scores]), torch.tensor(vals))
    return r


def test_exp_lut_values():
    lut = exp_lut(CFG)
    assert len(lut) == 256
    assert lut[0] == 255
    assert lut[1] == 240          # 255 * exp(-1/16) = 239.55
    assert lut[2] == 225          # 255 * exp(-1/8)  = 225.04
    assert lut[16] == 94          # 255 * exp(-1)    = 93.81
    assert lut[255] == 0
    assert list(lut) == sorted(lut, reverse=True)


def test_single_key_row():
    r = one_row(CFG, [-1234], [-128])
    assert r.kept.tolist() == [1] and r.z.tolist() == [255] and r.z_kept.tolist() == [255]
    assert r.acc[0, 0].item() == -255 * 128
    assert r.out[0, 0].item() == -128 * 256


def test_all_equal_scores_keep_the_lowest_indices():
    # e = 255 each, Z = 1020, T = ceil(1020 * 230 / 256) = 917 -> L_m = 4; cap = ceil(4 * 128 / 256) = 2.
    for mode, kept in (("mass", 2), ("topk", 2), ("dense", 4)):
        r = one_row(CFG.replace(mode=mode), [100, 100, 100, 100], [1, 2, 3, 4])
        assert r.kept.tolist() == [kept]
        assert r.keep[0].tolist() == [True] * kept + [False] * (4 - kept)
    r = one_row(CFG.replace(mode="mass"), [100, 100, 100, 100], [1, 2, 3, 4])
    assert r.acc[0, 0].item() == 255 * (1 + 2) and r.z_kept.item() == 510
    assert r.out[0, 0].item() == (255 * 3 * 256) // 510   # 384 = 1.5 in out_frac = 8


def test_one_dominant_key():
    # (0 - (-2560)) >> 4 = 160 -> 255 * exp(-10) rounds to 0: the others carry no mass.
    r = one_row(CFG.replace(permeability=1.0), [-2560, 0, -2560, -2560], [7, -9, 7, 7])
    assert r.e[0].tolist() == [0, 255, 0, 0]
    assert r.kept.tolist() == [1] and r.keep[0].tolist() == [False, True, False, False]
    assert r.out[0, 0].item() == -9 * 256


def test_mass_target_landing_exactly_on_a_prefix_sum():
    # Z = 510; tau_q = 128 gives T = 255 = the first prefix sum exactly: one key is enough.
    cfg = CFG.replace(permeability=1.0, mass_target=0.5)
    assert one_row(cfg, [0, 0], [1, 1]).kept.tolist() == [1]
    # tau_q = 129 gives T = ceil(510 * 129 / 256) = 257: the second key is needed.
    cfg = CFG.replace(permeability=1.0, mass_target=129 / 256)
    assert one_row(cfg, [0, 0], [1, 1]).kept.tolist() == [2]


def test_negative_values_truncate_toward_zero():
    # e = [255, 240]; acc = -255; out = -255 * 256 / 495 = -131.87 -> -131 (not -132).
    r = one_row(CFG.replace(mode="dense"), [0, -16], [-1, 0])
    assert r.e[0].tolist() == [255, 240]
    assert r.acc[0, 0].item() == -255 and r.z_kept.item() == 495
    assert r.out[0, 0].item() == -131


def test_saturation_to_out_bits():
    cfg = CFG.replace(out_bits=12, mode="dense")   # outputs in -2048..2047, out_frac = 8
    r = one_row(cfg, [5, 5], [127, 127])
    assert r.acc[0, 0].item() == 2 * 255 * 127
    assert r.out[0, 0].item() == 2047
    r = one_row(cfg, [5, 5], [-128, -128])
    assert r.out[0, 0].item() == -2048


def test_k_min_raises_the_cap():
    # One dominant key would be enough for the mass rule, but the cap ... and k_min is a floor of the cap only.
    cfg = CFG.replace(mode="topk", permeability=1 / 256, k_min=3)
    assert one_row(cfg, [0, -16, -32, -48, -64], [1] * 5).kept.tolist() == [3]
    # k_min larger than the row keeps the whole row.
    assert one_row(cfg, [0, -16], [1] * 2).kept.tolist() == [2]


def test_rows_of_different_lengths_share_values():
    scores = torch.tensor([[[0, 0, 0, 99]], [[0, -16, 0, 0]]])
    values = torch.arange(2 * 4 * CFG.head_dim).reshape(2, 4, CFG.head_dim) % 50
    lengths = torch.tensor([[3], [2]])
    r = run_contract(CFG.replace(mode="dense"), scores, values, lengths)
    assert r.kept.tolist() == [[3], [2]]
    assert r.e[0, 0].tolist() == [255, 255, 255, 0]
    alone = run_contract(CFG.replace(mode="dense"), scores[:1, :, :3], values[:1, :3])
    assert torch.equal(alone.out, r.out[:1])


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="scores must fit score_bits = 16"):
        one_row(CFG, [40000], [1])
    with pytest.raises(InputError, match="values must fit value_bits = 8"):
        one_row(CFG, [0], [200])
    with pytest.raises(InputError, match="row lengths must lie in 1..2"):
        run_contract(CFG, torch.zeros(1, 1, 2, dtype=torch.int64), torch.zeros(1, 2, 64, dtype=torch.int64),
                     torch.tensor([[0]]))
    with pytest.raises(TypeError, match="quantize floats first"):
        run_contract(CFG, torch.zeros(1, 2), torch.zeros(2, 64))


# -- properties over random inputs -----------------------------------------------------------------



@st.composite
def gated_rows(draw):
    cfg = HPUConfig(
        head_dim=4, lanes=2, max_keys=24, score_bits=10, score_frac=4, value_bits=5, prob_bits=5,
        exp_shift=draw(st.integers(0, 3)), lut_size=draw(st.sampled_from([8, 32, 64])), out_frac=4, out_bits=9,
        mode=draw(st.sampled_from(["mass", "topk", "dense"])),
        permeability=draw(st.integers(1, 256)) / 256, mass_target=draw(st.integers(1, 256)) / 256,
        k_min=draw(st.integers(1, 24)))
    n = draw(st.integers(1, cfg.max_keys))
    lo, hi = signed_range(cfg.score_bits)
    # Few distinct scores make long tie runs likely.
    palette = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=6))
    scores = draw(st.lists(st.sampled_from(palette) | st.integers(lo, hi), min_size=n, max_size=n))
    vlo, vhi = signed_range(cfg.value_bits)
    values = draw(st.lists(st.lists(st.integers(vlo, vhi), min_size=4, max_size=4), min_size=n, max_size=n))
    return cfg, scores, values


@given(gated_rows())
def test_contract_rules_hold_for_all_rows(case):
    cfg, scores, values = case
    n = len(scores)
    r = run_contract(cfg, torch.tensor([scores]), torch.tensor(values))
    lut = exp_lut(cfg)
    m = max(scores)
    e = [lut[min((m - s) >> cfg.exp_shift, cfg.lut_size - 1)] for s in scores]
    assert r.e[0].tolist() == e
    z = sum(e)
    order = sorted(range(n), key=lambda j: (-e[j], j))
    keep = r.keep[0].tolist()
    kept = r.kept.item()
    # The kept set is a prefix of the (e desc, index asc) order: ties resolve by index.
    assert sorted(j for j in range(n) if keep[j]) == sorted(order[:kept])
    cap = max(cfg.k_min, math.ceil(n * cfg.rho_q / 256))
    target = math.ceil(z * cfg.tau_q / 256)
    prefix = [sum(e[j] for j in order[:i + 1]) for i in range(n)]
    shortest = next(i + 1 for i in range(n) if prefix[i] >= target)
    if cfg.mode == "dense":
        assert kept == n
    elif cfg.mode == "topk":
        assert kept == min(cap, n)
    else:
        assert kept == min(shortest, cap)
        assert kept <= cap
        # Shortest: one key fewer would miss the target (unless the cap cut the prefix short).
        if kept == shortest and kept > 1:
            assert prefix[kept - 2] < target
    assert kept >= min(cfg.k_min, n) or cfg.mode == "mass"
    # Accumulator, normalization, saturation.
    z_kept = sum(e[j] for j in range(n) if keep[j])
    assert r.z.item() == z and r.z_kept.item() == z_kept and z_kept > 0
    acc = [sum(e[j] * values[j][d] for j in range(n) if keep[j]) for d in range(4)]
    assert r.acc[0].tolist() == acc
    olo, ohi = signed_range(cfg.out_bits)
    truncated = [(abs(a) << cfg.out_frac) // z_kept * (1 if a >= 0 else -1) for a in acc]
    want = [max(olo, min(ohi, q)) for q in truncated]
    assert r.out[0].tolist() == want
    alo, ahi = signed_range(cfg.acc_bits)
    assert all(alo <= a <= ahi for a in acc)


@given(st.lists(st.integers(-8, 8), min_size=1, max_size=40), st.integers(1, 256))
def test_routing_is_the_float_routers_order_on_integer_logits(logits, route_q):
    """The integer routing step and the float reference's router pick the same tokens (same order rule,
    ties by position), with the fraction taken as route_q / 256."""
    from golden_model.contract import run_routing
    from golden_model.routing import route_topk

    cfg = HPUConfig(route_block=64, route_fraction=route_q / 256)
    routed = run_routing(cfg, torch.tensor([logits]))
    assert routed.positions() == route_topk(torch.tensor([logits], dtype=torch.float32), route_q / 256).tolist()
    assert routed.count.item() == cfg.route_capacity(len(logits))


def test_routing_refusals():
    from golden_model.contract import run_routing

    with pytest.raises(InputError, match="routing needs a router: set route_block"):
        run_routing(HPUConfig(), torch.tensor([[1, 2]]))
    with pytest.raises(InputError, match=r"router logits must fit route_bits = 4 signed bits \(-8..7\); got 1..8"):
        run_routing(HPUConfig(route_block=4, route_bits=4), torch.tensor([[1, 8]]))
    with pytest.raises(InputError, match="block lengths must lie in 1..2"):
        run_routing(HPUConfig(route_block=4), torch.tensor([[1, 2]]), torch.tensor([3]))


@given(st.lists(st.floats(-3000, 3000, allow_nan=False), min_size=1, max_size=12),
       st.integers(2, 20), st.integers(0, 19), st.integers(0, 8))
def test_a_row_clips_where_its_largest_score_leaves_the_format_and_holding_widens_it(scores, bits, frac, shift):
    """`clipped_rows`: a row clips exactly when its largest score, quantized, falls outside score_bits.
    `holding(cfg, peak)` keeps the width and drops the fewest fractional bits after which the row's top
    fits, lowering exp_shift as far: the EXP_LUT is unchanged wherever exp_shift could follow."""
    from golden_model.lut import exp_lut
    from golden_model.quantize import clipped_rows, holding, lut_step, quantize_scores, row_tops

    frac, shift = min(frac, bits - 1), min(shift, bits)
    cfg = HPUConfig(score_bits=bits, score_frac=frac, exp_shift=shift)
    row = torch.tensor(scores, dtype=torch.float64)
    valid = torch.ones_like(row, dtype=torch.bool)
    low, high = signed_range(bits)
    top = round(max(scores) * 2 ** frac)
    tops = row_tops(row, valid)
    assert bool(clipped_rows(tops, cfg)) == (not low <= top <= high)
    # The largest score keeps its order above the others only when the row does not clip.
    if not clipped_rows(tops, cfg):
        assert int(quantize_scores(row, cfg).max()) == top
    peak = abs(max(scores))
    try:
        wider = holding(cfg, peak)
    except InputError:
        assert round(peak) > high
        return
    dropped = frac - wider.score_frac
    assert wider.score_bits == bits and dropped >= 0 and wider.exp_shift == max(0, shift - dropped)
    assert not clipped_rows(tops, wider)
    assert dropped == 0 or round(peak * 2 ** (wider.score_frac + 1)) > high   # the fewest bits dropped
    if shift >= dropped:
        assert lut_step(wider) == lut_step(cfg) and exp_lut(wider) == exp_lut(cfg)


def test_holding_takes_a_tiny_peak_and_rounds_as_the_quantizer():
    from golden_model.quantize import holding

    cfg = HPUConfig()   # 16 bits, 8 fractional: +-32767 / 256
    assert holding(cfg, 5e-324) == cfg
    assert holding(cfg, 32767.4 / 256) == cfg                       # rounds to the top code: fits
    assert holding(cfg, 511.989).score_frac == 6                    # 32765.3 at 6 bits: fits
    assert holding(cfg, 32767.4).score_frac == 0
    with pytest.raises(InputError, match="widen score_bits"):
        holding(cfg, 32767.6)
