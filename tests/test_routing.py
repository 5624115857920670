"""Token routing and sparse-query attention: the float reference (golden_model.routing) by its rules,
and the Triton SQDK kernel (gpu_kernels.sqdk) against it.

Tolerance: against the float32 reference, the kernel's output may differ by at most 4e-3 (fp16) or
2e-2 (bf16) absolute on unit-variance inputs. On the CPU interpreter only fp16 runs (it has no
bfloat16 arithmetic); bf16 runs on a GPU."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from golden_model.routing import (capacity, order_topk, route_causal, route_streaming, route_topk, router_logits,
                                  sqdk_attention)
from hpu.config import HPUConfig
from hpu.errors import InputError
from gpu_kernels import DEVICE
from gpu_kernels.sqdk import route, routed_attention, sqdk

DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def qkv(seed, t, d, heads=8, kv_heads=2, s=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = t if s is None else s
    q = torch.randn(1, heads, t, d, generator=g)
    k, v = (torch.randn(1, kv_heads, s, d, generator=g) for _ in range(2))
    return [x.to(dtype) for x in (q, k, v)]


@given(st.integers(1, 300), st.floats(0.001, 1.0))
def test_capacity_is_the_hardwares_ceiling_of_the_fraction_in_256ths(tokens, fraction):
    """Every path routes as many tokens as the HPU: the fraction in whole 256ths (at least one), then the
    ceiling, in exact arithmetic."""
    from fractions import Fraction

    steps = min(256, max(1, round(fraction * 256)))
    k = capacity(tokens, fraction)
    assert k == math.ceil(Fraction(tokens * steps, 256)) and 1 <= k <= tokens
    assert k == HPUConfig(route_fraction=fraction).route_capacity(tokens)


def test_capacity_where_the_fraction_is_no_whole_256th():
    # 0.8 is 204.8/256, held as 205/256; 0.2 as 51/256.
    assert capacity(10, 0.8) == 9 and capacity(1024, 0.2) == 204 and capacity(1024, 0.5) == 512


SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, -1e-45])


@given(st.lists(st.one_of(st.integers(-3, 3).map(float), SPECIAL, st.floats(allow_nan=False, width=32)),
                min_size=1, max_size=40), st.sampled_from([0.2, 0.5, 0.8, 1.0]))
def test_route_topk_orders_by_logit_then_position(logits, fraction):
    """Routed: the k best by (logit desc, position asc), returned ascending; ties (-0.0 and 0.0 too) go
    to the earlier token."""
    x = torch.tensor([logits], dtype=torch.float32)
    routed = route_topk(x, fraction)[0].tolist()
    k = capacity(len(logits), fraction)
    expected = sorted(sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:k])
    assert routed == expected


@given(st.lists(st.one_of(st.integers(-3, 3).map(float), SPECIAL, st.floats(allow_nan=False, width=32)),
                min_size=1, max_size=40), st.sampled_from([0.2, 0.5, 0.8, 1.0]), st.integers(1, 12),
       st.integers(0, 39))
def test_route_causal_is_the_top_k_of_the_block_so_far(logits, fraction, block, first):
    """Each token: routed when it is among the HPU's capacity of its block's tokens up to itself by
    (logit desc, position asc), the top-k's decision had the block ended with it; `first` gives the
    tail of the same decisions, and a block's last token decides as the whole block's top-k does."""
    first = first % len(logits)
    hpu = HPUConfig(route_fraction=fraction, route_block=block)
    x = torch.tensor([logits], dtype=torch.float32)
    expected = []
    for t in range(len(logits)):
        start = t - t % block
        prefix = sorted(range(start, t + 1), key=lambda i: (-logits[i], i))
        expected.append(t in prefix[:int(hpu.route_capacity(t - start + 1))])
    assert route_causal(x, hpu)[0].tolist() == expected
    assert route_causal(x, hpu, first=first)[0].tolist() == expected[first:]
    for end in range(block - 1, len(logits), block):
        whole = order_topk(x[:, end - block + 1:end + 1], int(hpu.route_capacity(block)))[0] + end - block + 1
        assert expected[end] == (end in whole.tolist())


def test_router_and_refusals():
    hidden = torch.ones(2, 5, 4)
    logits = router_logits(hidden, torch.tensor([1.0, 2.0, 3.0, 4.0]), bias=-1.0)
    assert logits.shape == (2, 5) and torch.equal(logits, torch.full((2, 5), 9.0))
    assert route_streaming(torch.tensor([[0.5, 2.0, 1.0]]), 1.0).tolist() == [[False, True, True]]
    with pytest.raises(InputError, match=r"route_fraction = 0: must be in \(0, 1\]"):
        capacity(10, 0)
    with pytest.raises(InputError, match="NaN"):
        route_topk(torch.tensor([[0.0, float("nan")]]), 0.5)
    with pytest.raises(InputError, match="NaN"):
        route_causal(torch.tensor([[0.0, float("nan")]]), HPUConfig(route_fraction=0.5, route_block=2))
    with pytest.raises(InputError, match=r"must be \(B, N\) with 0 <= first < N"):
        route_causal(torch.zeros(1, 3), HPUConfig(route_fraction=0.5, route_block=2), first=3)
    with pytest.raises(InputError, match="route_block = 0: causal routing needs blocks"):
        route_causal(torch.zeros(1, 3), HPUConfig(route_fraction=0.5))
    q, k, v = qkv(0, 8, 16, heads=3, kv_heads=2)
    with pytest.raises(InputError, match="3 query heads cannot share 2 key/value heads"):
        sqdk_attention(q, k, v, torch.tensor([[0]]), causal=False)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_is_dense_attention_on_routed_rows_and_zero_elsewhere(causal):
    """Routed rows equal plain softmax attention with each query head on its key/value head
    (h // 4 for 8 query and 2 key/value heads); unrouted rows are zero; without a gate every
    admissible key is kept."""
    q, k, v = qkv(1, 12, 16)
    positions = torch.tensor([[0, 3, 4, 11]])
    r = sqdk_attention(q, k, v, positions, causal)
    mask = torch.ones(12, 12, dtype=torch.bool).tril() if causal else torch.ones(12, 12, dtype=torch.bool)
    for h in range(8):
        scores = (q[0, h] @ k[0, h // 4].T) / 4.0
        dense = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v[0, h // 4]
        for t in range(12):
            expected = dense[t] if t in positions[0].tolist() else torch.zeros(16)
            assert torch.allclose(r.out[0, h, t], expected, atol=1e-5)
    assert r.routed[0].nonzero().flatten().tolist() == [0, 3, 4, 11]
    kept = r.kept[0, 0].tolist()
    assert kept == [(t + 1 if causal else 12) if t in (0, 3, 4, 11) else 0 for t in range(12)]
    stats = r.stats()
    assert stats["routed_fraction"] == pytest.approx(4 / 12) and stats["kept_fraction_of_routed_rows"] == 1.0


def test_mass_gate_on_routed_rows_keeps_fewer_keys_and_renormalizes():
    q, k, v = qkv(2, 64, 16, heads=2, kv_heads=1)
    q = q * 3   # peaked rows, so the gate has mass to cut
    cfg = HPUConfig().with_overrides(["mode=mass", "permeability=0.25", "mass_target=0.5"])
    positions = route_topk(torch.randn(1, 64, generator=torch.Generator().manual_seed(5)), 0.25)
    gated = sqdk_attention(q, k, v, positions, causal=True, gate=cfg)
    plain = sqdk_attention(q, k, v, positions, causal=True)
    routed = gated.routed[0]
    assert (gated.kept[0][:, routed] <= plain.kept[0][:, routed]).all()
    assert (gated.kept[0][:, routed] >= 1).all() and (gated.kept[0][:, ~routed] == 0).all()
    assert gated.stats()["kept_per_routed_row"] < plain.stats()["kept_per_routed_row"]
    assert gated.out[0][:, ~routed].abs().max() == 0


CASES = [
    # (tokens, routed positions, causal, head_dim, query heads, key/value heads)
    (100, "fraction 0.37", True, 64, 8, 2),      # unaligned routed count, GQA 4:1
    (100, "fraction 0.37", False, 64, 8, 2),
    (77, "all", True, 128, 4, 4),
    (77, "one: first", True, 64, 4, 1),
    (77, "one: last", False, 64, 4, 1),
    (130, "first and last", True, 128, 6, 3),
]


def _positions(kind, t, seed):
    if kind.startswith("fraction"):
        logits = torch.randn(1, t, generator=torch.Generator().manual_seed(seed))
        return route_topk(logits, float(kind.split()[1]))
    return {"all": torch.arange(t)[None], "one: first": torch.tensor([[0]]), "one: last": torch.tensor([[t - 1]]),
            "first and last": torch.tensor([[0, t - 1]])}[kind]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t, kind, causal, d, heads, kv_heads", CASES)
def test_kernel_matches_the_reference(seed, t, kind, causal, d, heads, kv_heads, dtype):
    q, k, v = qkv(seed, t, d, heads, kv_heads)
    positions = _positions(kind, t, seed)
    expected = sqdk_attention(q, k, v, positions, causal).out
    got = sqdk(*(x.to(DEVICE, dtype) for x in (q, k, v)), positions.to(DEVICE), causal).float().cpu()
    assert (got - expected).abs().max() <= TOLERANCE[dtype]
    unrouted = torch.ones(t, dtype=torch.bool)
    unrouted[positions[0]] = False
    assert not unrouted.any() or got[0][:, unrouted].abs().max() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_with_more_keys_than_queries_and_ragged_batches(seed, dtype):
    """Decode-style: 40 queries over 96 keys (query p sees keys up to p + 56), two sequences routing
    different counts (the second's padding ignored)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 40, 64, generator=g)
    k, v = (torch.randn(2, 2, 96, 64, generator=g) for _ in range(2))
    positions = torch.tensor([[1, 5, 17, 39], [0, 22, 0, 0]])
    counts = torch.tensor([4, 2])
    got = sqdk(*(x.to(DEVICE, dtype) for x in (q, k, v)), positions.to(DEVICE), True, counts=counts.to(DEVICE))
    for b in range(2):
        expected = sqdk_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], positions[b:b + 1, :counts[b]], True).out
        assert (got[b:b + 1].float().cpu() - expected).abs().max() <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_takes_views_of_a_fused_projection(seed, dtype):
    """q, k and v as slices of one fused (B, H, T, 3D) tensor, the last axis the only dense one: the
    output lands on the routed rows, as the reference's do, and the rows not routed stay zero."""
    g = torch.Generator().manual_seed(seed)
    fused = torch.randn(2, 4, 40, 3 * 64, generator=g)
    q, k, v = fused[..., :64], fused[..., 64:128], fused[..., 128:]
    positions = torch.tensor([[0, 1, 17, 39], [3, 4, 5, 30]])
    views = [x for x in fused.to(DEVICE, dtype).split(64, dim=-1)]
    got = sqdk(*views, positions.to(DEVICE), True)
    assert views[0].stride() != got.stride()   # a view's strides, which the output's are not
    expected = sqdk_attention(q, k, v, positions, True).out
    assert (got.float().cpu() - expected).abs().max() <= TOLERANCE[dtype]


def test_routed_attention_routes_on_the_device_and_attends():
    q, k, v = qkv(3, 64, 64, heads=4, kv_heads=1)
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(9))
    out, positions = routed_attention(*(x.to(DEVICE, torch.float16) for x in (q, k, v)), logits.to(DEVICE), 0.2, True)
    assert positions.tolist() == route_topk(logits, 0.2).tolist() and positions.shape == (1, 13)
    expected = sqdk_attention(q, k, v, positions.cpu(), True).out
    assert (out.float().cpu() - expected).abs().max() <= TOLERANCE[torch.float16]


@given(st.lists(st.one_of(st.integers(-3, 3).map(float), SPECIAL, st.floats(allow_nan=False, width=32)),
                min_size=1, max_size=300), st.sampled_from([0.2, 0.5, 1.0]))
def test_kernel_routing_is_the_reference_routing(logits, fraction):
    x = torch.tensor([logits, logits[::-1]], dtype=torch.float32)
    positions, nans = route(x.to(DEVICE), fraction)
    assert torch.equal(positions.cpu(), route_topk(x, fraction)) and nans.tolist() == [0, 0]


def test_kernel_routing_of_long_rows_with_ties(seed):
    """Rows longer than one warp's worth, of few distinct logits (ties straddle the capacity), both signs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (3, 4099), generator=g).float() * 0.5
    x[1] = torch.randn(4099, generator=g)
    for fraction in (0.2, 0.5):
        positions, nans = route(x.to(DEVICE), fraction)
        assert torch.equal(positions.cpu(), route_topk(x, fraction)) and nans.tolist() == [0, 0, 0]


def test_kernel_routing_refuses_nan():
    q, k, v = qkv(4, 64, 64, heads=2, kv_heads=1)
    logits = torch.zeros(1, 64)
    logits[0, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        routed_attention(*(x.to(DEVICE, torch.float16) for x in (q, k, v)), logits.to(DEVICE), 0.5, True)
