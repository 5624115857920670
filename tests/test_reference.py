"""The float reference, and how closely the bit-accurate model tracks it.

Tracking bounds (default configuration, random rows, errors in units of the
value set's largest |v|):
- dense: every output element within 0.05, mean error below 0.005, every
  row's cosine above 0.995. The gap is the LUT's step of 2**exp_shift score
  LSBs (exp(-x) read at x rounded down to 1/16), 8-bit probabilities and 8-bit
  values.
- mass / topk: keys near the threshold may be chosen differently, so the
  bounds are on averages: mean row cosine above 0.99, mean element error below
  0.01, kept fraction within 0.02 on average.
"""

import pytest
import torch

from golden_model.reference import fixed_point_attention, mass_gated_attention
from hpu.config import HPUConfig

CFG = HPUConfig()


def random_qkv(seed, b=2, h=3, n=96, d=64, temperature=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    return q * temperature, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_dense_mode_is_softmax_attention(seed, causal):
    q, k, v = random_qkv(seed)
    got = mass_gated_attention(q, k, v, CFG.replace(mode="dense"), causal=causal)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(got.out, want, atol=1e-12)
    assert got.keep.sum(-1).tolist() == got.admissible.tolist()
    assert torch.allclose(got.kept_mass, torch.ones_like(got.kept_mass))


@pytest.mark.parametrize("mode", ["mass", "topk"])
def test_gated_rows_follow_the_rule(seed, mode):
    cfg = CFG.replace(mode=mode, permeability=0.3, mass_target=0.8, k_min=2)
    q, k, v = random_qkv(seed, temperature=2.0)
    got = mass_gated_attention(q, k, v, cfg, causal=True)
    admissible = got.admissible
    cap = torch.clamp((admissible * cfg.rho_q + 255) // 256, min=cfg.k_min)
    assert torch.all(got.kept <= torch.minimum(cap, admissible))
    assert torch.equal(got.keep.sum(-1), got.kept)
    # No key beyond the causal diagonal.
    n = q.shape[-2]
    assert not got.keep[..., torch.ones(n, n, dtype=torch.bool).triu(1)].any()
    probs = torch.softmax((q @ k.transpose(-2, -1) / 8).masked_fill(
        torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")), -1)
    # Every kept key is at least as probable as every dropped admissible key.
    kept_min = torch.where(got.keep, probs, torch.full_like(probs, 2.0)).amin(-1)
    dropped_max = torch.where(~got.keep & (probs > 0), probs, torch.full_like(probs, -1.0)).amax(-1)
    assert torch.all(kept_min >= dropped_max)
    if mode == "mass":
        reached = got.kept_mass >= cfg.tau_q / 256 - 1e-12
        assert torch.all(reached | (got.kept == cap))
    # Renormalized over the kept set.
    manual = (torch.where(got.keep, probs, 0) / got.kept_mass.unsqueeze(-1)) @ v
    assert torch.allclose(got.out, manual, atol=1e-10)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_fixed_point_tracks_float_in_dense_mode(seed, temperature):
    q, k, v = random_qkv(seed, temperature=temperature)
    cfg = CFG.replace(mode="dense")
    ref, fix = mass_gated_attention(q, k, v, cfg), fixed_point_attention(q, k, v, cfg)
    err = (ref.out - fix.out).abs() / v.abs().amax(dim=(-2, -1), keepdim=True)
    cos = torch.nn.functional.cosine_similarity(ref.out, fix.out, dim=-1)
    print(f"max err {err.max():.4f} mean err {err.mean():.5f} min cos {cos.min():.5f}")
    assert err.max() < 0.05 and err.mean() < 0.005 and cos.min() > 0.995


@pytest.mark.parametrize("mode", ["mass", "topk"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_fixed_point_tracks_float_when_gated(seed, mode, temperature):
    q, k, v = random_qkv(seed, temperature=temperature)
    cfg = CFG.replace(mode=mode)
    ref, fix = mass_gated_attention(q, k, v, cfg), fixed_point_attention(q, k, v, cfg)
    err = (ref.out - fix.out).abs() / v.abs().amax(dim=(-2, -1), keepdim=True)
    cos = torch.nn.functional.cosine_similarity(ref.out, fix.out, dim=-1)
    kept_gap = (ref.kept_fraction - fix.kept_fraction).abs().mean()
    print(f"mean err {err.mean():.5f} mean cos {cos.mean():.5f} kept gap {kept_gap:.4f}")
    assert cos.mean() > 0.99 and err.mean() < 0.01 and kept_gap < 0.02
