"""`training`: the gate as a Hugging Face attention implementation, and the A/B training loop.

The golden model is the specification: the attention's kept sets and outputs are checked against
`golden_model.reference.mass_gated_attention`, the Triton selection against `golden_model.gate.select`.
Training runs a tiny Llama on text the test writes itself, on the CPU in float32.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import gpu_kernels  # chooses Triton's interpreter on a machine without a GPU
from golden_model.gate import select as reference_select
from golden_model.reference import mass_gated_attention
from golden_model.routing import route_causal
from hpu.config import ConfigError, HPUConfig
from hpu.errors import InputError
from training import attention
from training.config import TrainConfig
from training.data import DataConfig, prepare
from training.loop import RESULT, Ranks, build_model, evaluate, sequence_loss, step_sequences, train

GATES = [HPUConfig(permeability=0.5, mass_target=0.9), HPUConfig(permeability=0.2, mass_target=0.9, k_min=3),
         HPUConfig(mode="topk", permeability=0.3), HPUConfig(permeability=1.0, mass_target=0.5)]


def fake_attention_module(gate: HPUConfig, causal=True):
    config = types.SimpleNamespace(hpu_gate={name: getattr(gate, name) for name in attention.GATE_FIELDS})
    return types.SimpleNamespace(config=config, is_causal=causal, training=False)


@pytest.mark.parametrize("gate", GATES, ids=lambda g: f"{g.mode}-{g.permeability}-{g.mass_target}-{g.k_min}")
@pytest.mark.parametrize("causal", [True, False])
def test_attention_equals_float_reference(gate, causal, seed):
    """Grouped-query heads, causal or not: kept sets equal the reference's, outputs to float64 rounding."""
    g = torch.Generator().manual_seed(seed)
    b, heads, kv_heads, n, d = 2, 4, 2, 24, 8
    q = torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) * 2
    k = torch.randn(b, kv_heads, n, d, generator=g, dtype=torch.float64) * 2
    v = torch.randn(b, kv_heads, n, d, generator=g, dtype=torch.float64)
    k[..., 5, :] = k[..., 3, :]  # exact ties between keys 3 and 5 in every row
    out, keep = attention.mass_gate_forward(fake_attention_module(gate, causal), q, k, v, None,
                                            scaling=d ** -0.5, output_attentions=True)
    rep = lambda x: x.repeat_interleave(heads // kv_heads, dim=1)
    expected = mass_gated_attention(q.float(), rep(k).float(), rep(v), gate, causal=causal)
    assert torch.equal(keep, expected.keep)
    reference = mass_gated_attention(q, rep(k), rep(v), gate, causal=causal)
    assert torch.allclose(out.transpose(1, 2), reference.out, atol=1e-10, rtol=0)


def test_kept_fraction_under_a_router_counts_the_routed_rows(seed):
    """A routed and gated layer counts the kept keys of its routed rows only, and a count given to
    `counting` adds up over blocks."""
    g = torch.Generator().manual_seed(seed)
    b, heads, n, d = 2, 2, 24, 8
    q, k, v = (torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    module = fake_attention_module(GATES[0])
    routed = torch.rand(b, n, generator=g) < 0.3
    module.router = types.SimpleNamespace(last={"routed": routed})
    count = attention.KeptCount()
    for blocks in (1, 2):
        with attention.counting(count):
            _, keep = attention.mass_gate_forward(module, q, k, v, None, output_attentions=True)
        rows = routed[:, None, :, None]
        admissible = torch.ones(n, n, dtype=torch.bool).tril().expand(keep.shape) & rows
        assert (int(count.kept), int(count.admissible)) == (blocks * int((keep & rows).sum()),
                                                             blocks * int(admissible.sum()))
    assert 0 < count.fraction < 1


def test_attention_gradients_flow_through_the_kept_softmax(seed):
    """d out / d (q, k, v) equals dense attention's under the kept set as an additive mask."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    gate = HPUConfig(permeability=0.25, mass_target=0.8)
    out, keep = attention.mass_gate_forward(fake_attention_module(gate), q, k, v, None, output_attentions=True)
    weights = torch.ones_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / 2.0
    manual = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v
    expected = torch.autograd.grad((manual.transpose(1, 2) * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-10)
    assert keep.sum() < keep.numel() // 2  # the gate really dropped keys


def _probs(seed, rows=6, n=40, ties=False, causal=True):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, 2, rows, n, generator=g) * 3
    if ties:
        scores = torch.round(scores)
    valid = torch.ones(rows, n, dtype=torch.bool).tril(n - rows) if causal else torch.ones(rows, n, dtype=torch.bool)
    valid = valid.expand(scores.shape)
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    return probs.to(gpu_kernels.DEVICE), valid.to(gpu_kernels.DEVICE)


@pytest.mark.parametrize("ties", [False, True])
def test_triton_selection_equals_select(ties, seed):
    """The sort-free kernel keeps exactly the rule's set: ties by index, k_min, the cap, topk."""
    from gpu_kernels.row_gate import select

    for causal in (True, False):
        probs, valid = _probs(seed, ties=ties, causal=causal)
        for gate in GATES:
            want, want_kept = reference_select(probs, valid, gate)
            # The causal mask is derived in the kernel (valid unread) or read as a tensor: the same set.
            for keep, kept in (select(probs, valid, gate), select(probs, None if causal else valid, gate, causal=causal)):
                assert torch.equal(keep, want), gate
                assert torch.equal(kept, want_kept)


def test_fused_selection_from_q_and_k_equals_select(seed):
    """Causal rows straight from half-precision q and k (grouped heads): the rule's kept sets on the
    softmax of the same scores. (fp16: Triton's CPU interpreter cannot compute in bf16.)"""
    from golden_model.quantize import attention_scores
    from gpu_kernels.row_gate import select_causal_qk

    g = torch.Generator().manual_seed(seed)
    b, heads, kv_heads, n, d = 1, 2, 1, 40, 16
    q = torch.randn(b, heads, n, d, generator=g).half()
    k = torch.randn(b, kv_heads, n, d, generator=g).half()
    k[:, :, 7] = k[:, :, 3]  # exact ties
    valid = torch.ones(n, n, dtype=torch.bool).tril()
    scores = attention_scores(q.float(), k.float().repeat_interleave(heads // kv_heads, 1))
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    for gate in GATES:
        want = reference_select(probs, valid.expand(probs.shape), gate)[0]
        got = select_causal_qk(q.to(gpu_kernels.DEVICE), k.to(gpu_kernels.DEVICE), gate, d ** -0.5).cpu()
        assert torch.equal(got, want), gate


def test_kept_attention_kernel_equals_the_masked_softmax(seed):
    """Forward and all three gradients against float64 softmax attention over the kept keys, with a
    tile that keeps nothing (skipped), a row that keeps nothing (zeros, no gradient) and a ragged edge."""
    from gpu_kernels.kept_attention import TILE, kept_attention, keep_tiles

    g = torch.Generator().manual_seed(seed)
    n, d = 2 * TILE + 3, 16
    q, k, v = (torch.randn(1, 2, n, d, generator=g).half().requires_grad_() for _ in range(3))
    keep = (torch.rand(1, 2, n, n, generator=g) < 0.1) & torch.ones(n, n, dtype=torch.bool).tril()
    keep[..., TILE:2 * TILE, :TILE] = False
    keep |= torch.eye(n, dtype=torch.bool)
    keep[0, 1, 7] = False
    tiles = keep_tiles(keep.to(gpu_kernels.DEVICE)).cpu()
    padded = F.pad(keep.reshape(2, n, n), (0, 3 * TILE - n, 0, 3 * TILE - n))
    assert torch.equal(tiles, padded.view(2, 3, TILE, 3, TILE).any(4).any(2).to(torch.int8))
    assert tiles[0, 1, 0] == 0 and tiles[0, 0, 1] == 0 and tiles[0, 2, 2] == 1
    grad = torch.randn(1, 2, n, d, generator=g).half()
    out = kept_attention(q.to(gpu_kernels.DEVICE), k.to(gpu_kernels.DEVICE), v.to(gpu_kernels.DEVICE), keep.to(gpu_kernels.DEVICE),
                         0.3)
    out.backward(grad.to(gpu_kernels.DEVICE))
    want = [x.detach().double().requires_grad_() for x in (q, k, v)]
    probs = torch.softmax((want[0] @ want[1].transpose(-1, -2) * 0.3).masked_fill(~keep, float("-inf")), -1)
    reference = probs.nan_to_num() @ want[2]
    reference.backward(grad.double())
    assert torch.equal(out[0, 1, 7].cpu(), torch.zeros(d, dtype=torch.half))
    # fp16 inputs and float32 accumulation: errors of a few fp16 steps of the largest magnitudes.
    assert torch.allclose(out.cpu().double(), reference, atol=3e-3)
    for got, ref in zip((q, k, v), want):
        assert torch.allclose(got.grad.double(), ref.grad, atol=5e-3 * float(ref.grad.abs().max()))
    assert torch.equal(q.grad[0, 1, 7], torch.zeros(d, dtype=torch.half))


def test_triton_selection_at_full_mass_differs_only_below_rounding(seed):
    """At mass target 1 the rule keeps keys until the float sum stops growing; the kernel's tree sum
    and the reference's ordered sum may stop on different negligible keys, never on others."""
    from gpu_kernels.row_gate import select

    probs, valid = _probs(seed, ties=True)
    gate = HPUConfig(permeability=1.0, mass_target=1.0)
    keep, _ = select(probs, valid, gate)
    want, _ = reference_select(probs, valid, gate)
    n = valid.sum(-1, keepdim=True)
    negligible = probs <= n * torch.finfo(torch.float32).eps
    assert torch.equal(keep & ~negligible, want & ~negligible)


# -- Hugging Face models --------------------------------------------------------------------------

def tiny_llama(implementation: str, gate: HPUConfig | None = None, kv_heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    attention.register()
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                         attn_implementation=implementation)
    if gate is not None:
        config.hpu_gate = {name: getattr(gate, name) for name in attention.GATE_FIELDS}
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_compiled_gated_training_takes_the_fused_path_within_the_recompile_limit_at_any_depth(monkeypatch):
    """Training compiles each decoder layer (`compile_layers`): the gate sees no mask on plain causal
    rows (so on a GPU it takes its fused causal kernel; compiled whole, transformers' traced mask
    builder hands it a full mask), and one compiled frame serves every layer (12 layers > dynamo's
    recompile limit of 8, past which a layer would silently run uncompiled); evaluation compiles nothing."""
    import torch._dynamo

    from training.loop import compile_layers, sequence_loss

    masks = []
    gated = attention._gated_attention

    @torch.compiler.disable
    def spy(module, query, key, value, attention_mask, *args):
        masks.append(attention_mask)
        return gated(module, query, key, value, attention_mask, *args)

    monkeypatch.setattr(attention, "_gated_attention", spy)
    model = tiny_llama(attention.NAME, HPUConfig(mode="mass", mass_target=0.9, permeability=0.5))
    layers = 12
    model.model.layers.extend(type(model.model.layers[0])(model.config, i) for i in range(2, layers))
    model.config.num_hidden_layers = layers
    model.train()
    assert layers > torch._dynamo.config.recompile_limit
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(5))
    eager = sequence_loss(model, tokens)
    compile_layers(model, backend="eager")
    # config.patch, not monkeypatch: undoing a monkeypatch deletes the entry, which then hides it from dynamo.
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for _ in range(2):
                loss = sequence_loss(model, tokens)
                loss.backward()
        assert torch._dynamo.utils.counters["frames"]["ok"] > 0   # the layers did compile
    finally:
        torch._dynamo.reset()
    assert len(masks) == 3 * layers and all(mask is None for mask in masks)
    assert torch.equal(loss, eager)


def test_evaluation_of_a_compiled_model_compiles_nothing(data_config, corpus):
    """`evaluate` runs layers compiled by `compile_layers` eagerly: a no-grad pass through compiled code
    would add an entry per grad mode and routing choice towards dynamo's recompile limit."""
    import torch._dynamo

    from training.loop import compile_layers, evaluate, sequence_loss

    cfg = tiny_experiment(data_config)
    model = build_model(cfg, cfg.arm("mass50"), corpus, seed=1)
    compile_layers(model, backend="eager")
    frames = torch._dynamo.utils.counters["frames"]
    try:
        sequence_loss(model, torch.from_numpy(step_sequences(corpus.train, 0, 2, 32))).backward()
        compiled = dict(frames)
        assert compiled.get("ok", 0) > 0
        assert evaluate(model, corpus, cfg, Ranks())["loss"] > 0
        assert dict(frames) == compiled
    finally:
        torch._dynamo.reset()


def test_dense_gate_in_a_llama_equals_sdpa():
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(3))
    dense = tiny_llama("sdpa")(ids).logits
    gated = tiny_llama(attention.NAME, HPUConfig(mode="dense"))(ids).logits
    assert torch.allclose(gated, dense, atol=1e-5)


def test_gate_mask_reads_both_forms_of_the_query_length():
    """transformers names the query length (q_length) or gives its positions (cache_position); either
    way plain causal rows get None, and a window, padding or a cache offset gets sdpa's mask."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    plain = {"batch_size": 2, "kv_length": 6, "kv_offset": 0, "mask_function": causal_mask_function,
             "attention_mask": None, "allow_is_causal_skip": True}
    for length in ({"q_length": 6}, {"cache_position": torch.arange(6)}):
        assert attention.gate_mask(**plain, **length) is None
    padding = torch.ones(2, 6, dtype=torch.bool)
    padding[1, 4:] = False
    for change in ({"local_size": 3}, {"attention_mask": padding}):
        mask = attention.gate_mask(**{**plain, "q_length": 6, **change})
        assert mask is not None and mask.dtype == torch.bool
    # Rows of a cache (an offset, fewer queries than keys) are left to sdpa_mask's own rule.
    cached = {**plain, "q_length": 2, "kv_length": 8, "kv_offset": 2}
    want = sdpa_mask(**cached)
    got = attention.gate_mask(**cached)
    assert (got is None and want is None) or torch.equal(got, want)


def test_unpadded_causal_rows_reach_the_gate_without_a_mask():
    """No padding: the gate gets no mask (`gate_mask`), so on a GPU the fused kernel serves training and
    prefill. Padding: sdpa's mask, and a right-padded sequence's real tokens keep their unpadded logits."""
    from transformers import AttentionInterface

    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return attention.mass_gate_forward(module, query, key, value, attention_mask, **kwargs)

    model = tiny_llama(attention.NAME, HPUConfig(permeability=0.5))
    AttentionInterface.register(attention.NAME, spy)
    try:
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
        model(ids)
        assert len(masks) == 2 and all(mask is None for mask in masks)
        masks.clear()
        pad = torch.ones_like(ids)
        pad[1, 8:] = 0
        padded = model(ids, attention_mask=pad).logits
        assert len(masks) == 2 and all(mask is not None and mask.dtype == torch.bool for mask in masks)
    finally:
        attention.register()
    alone = model(ids[1:, :8]).logits
    assert torch.allclose(padded[1, :8], alone[0], atol=1e-5)


def test_under_autocast_the_gate_computes_in_the_autocast_dtype(monkeypatch):
    """Rotary embeddings hand q and k over in float32 under autocast; the gate casts q, k and v to the
    autocast dtype as SDPA would, so the half-precision kernels (selection, attention) serve training."""
    seen = []
    tiled = attention.tiled_attention
    monkeypatch.setattr(attention, "tiled_attention", lambda query, dropout: seen.append(query.dtype) or
                        tiled(query, dropout))
    model = tiny_llama(attention.NAME, HPUConfig(permeability=0.5)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(6))).logits.sum().backward()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(p.grad is not None for p in model.model.layers[0].self_attn.parameters())


def test_gated_llama_generates_with_a_cache():
    """Decoding one token at a time sees every cached key, as the rule's causal rows do."""
    model = tiny_llama(attention.NAME, HPUConfig(permeability=0.3))
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(4))
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)
    # Greedy decoding with the cache gives the tokens a full forward pass gives.
    logits = model(out[:, :-1]).logits
    assert torch.equal(logits[0, 5:].argmax(-1), out[0, 6:])


# -- the training loop ----------------------------------------------------------------------------

TEXT = """The scheduler picks the next task to run on each processor. A task that sleeps gives the
processor back; a task that wakes is placed on the run queue of the processor it last ran on,
unless that processor is busy and another is idle. Interrupts are handled first, then softirqs,
then the task with the earliest deadline. Memory is allocated in pages of four kilobytes.
"""


@pytest.fixture(scope="module")
def data_config(tmp_path_factory) -> DataConfig:
    root = tmp_path_factory.mktemp("text")
    for i in range(40):
        words = TEXT.split()
        rng = np.random.default_rng(i)
        body = " ".join(words[j] for j in rng.permutation(len(words)))
        (root / ("Documentation" if i % 3 == 0 else "kernel")).mkdir(exist_ok=True)
        suffix = ".rst" if i % 3 == 0 else ".c"
        (root / ("Documentation" if i % 3 == 0 else "kernel") / f"f{i}{suffix}").write_text(body * 4)
    return DataConfig(source=str(root), vocab_size=300, val_fraction=0.3, val_tokens=0,
                      cache=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def corpus(data_config):
    return prepare(data_config, progress=False)


def tiny_experiment(data_config, **run) -> TrainConfig:
    table = {
        "model": {"hidden_size": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 64},
        "run": {"context": 32, "batch": 4, "micro_batch": 2, "tokens": 4 * 32 * 12, "lr": 3e-3, "min_lr": 3e-4,
                "warmup_steps": 2, "anneal_steps": 4, "eval_every": 6, "eval_tokens": 256, "log_every": 1,
                "checkpoint_every": 5, "compile": False, "seeds": [1], **run},
        "data": dataclasses.asdict(data_config),
        "arms": {"dense": {"attention": "sdpa"},
                 "mass50": {"attention": attention.NAME, "permeability": 0.5, "mass_target": 0.9}},
    }
    return TrainConfig.from_dict(table)


def test_loss_decreases_and_the_run_is_deterministic(data_config, corpus, tmp_path):
    cfg = tiny_experiment(data_config)
    arm = cfg.arm("mass50")
    first = train(cfg, arm, 1, corpus, tmp_path / "a", progress=False, ranks=Ranks())
    again = train(cfg, arm, 1, corpus, tmp_path / "b", progress=False, ranks=Ranks())
    losses = [loss for _, _, loss in first["history"]["train"]]
    assert losses[-1] < losses[0] - 0.5
    assert first["history"] == again["history"]
    assert first["final"]["kept_fraction"] < 0.9  # the gate kept a part of the keys
    # A finished run is read back, not trained again; its checkpoint loads with transformers.
    assert train(cfg, arm, 1, corpus, tmp_path / "a", progress=False, ranks=Ranks())["history"] == first["history"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "mass50-seed1" / "model",
                                                 attn_implementation=attention.NAME)
    assert model.config.hpu_gate["permeability"] == 0.5
    assert AutoTokenizer.from_pretrained(tmp_path / "a" / "mass50-seed1" / "model")("the task").input_ids


def test_runs_side_by_side_equal_runs_one_after_another(data_config, corpus, tmp_path, monkeypatch):
    """`--jobs 2`: two runs in worker processes of their own give the results one after another gives,
    in the same order; under torchrun it is refused."""
    from training.loop import run_experiment

    cfg = tiny_experiment(data_config)
    pairs = lambda results: [(r["arm"], r["seed"]) for r in results]
    alone = run_experiment(cfg, tmp_path / "alone", ["dense", "mass50"], [1], progress=False)
    side = run_experiment(cfg, tmp_path / "side", ["dense", "mass50"], [1], progress=False, jobs=2)
    assert pairs(side) == pairs(alone) == [("dense", 1), ("mass50", 1)]
    assert [r["history"] for r in side] == [r["history"] for r in alone]
    assert [r["final"] for r in side] == [r["final"] for r in alone]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="leave --jobs out"):
        run_experiment(cfg, tmp_path / "ranks", ["dense"], [1], progress=False, jobs=2)
    from hpu.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "x.toml", "--jobs", "0"])


def test_a_run_that_fails_side_by_side_stops_the_rest(data_config, tmp_path):
    """With --jobs, a failing run's error is raised, and the runs not yet started never start."""
    from hpu.files import OutputError
    from training.loop import run_experiment

    cfg = tiny_experiment(data_config)
    (tmp_path / "dense-seed1").write_text("a file where the first run's folder goes")
    with pytest.raises(OutputError, match="dense-seed1 is a file"):
        run_experiment(cfg, tmp_path, ["dense"], [1, 2, 3], progress=False, jobs=2)
    assert not (tmp_path / "dense-seed3").exists()


def test_arms_differ_only_in_attention(data_config, corpus):
    cfg = tiny_experiment(data_config)
    dense, gated = (build_model(cfg, cfg.arm(name), corpus, seed=7) for name in ("dense", "mass50"))
    assert dense.config._attn_implementation == "sdpa" and gated.config._attn_implementation == attention.NAME
    a, b = dense.state_dict(), gated.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert np.array_equal(step_sequences(corpus.train, 3, 4, 32), step_sequences(corpus.train, 3, 4, 32))


def test_a_run_cut_short_resumes_to_the_same_result(data_config, corpus, tmp_path, monkeypatch):
    cfg = tiny_experiment(data_config)
    arm = cfg.arm("mass50")
    whole = train(cfg, arm, 1, corpus, tmp_path / "whole", progress=False, ranks=Ranks())
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def crash_after_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, arm, 1, corpus, tmp_path / "cut", progress=False, ranks=Ranks())
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert (tmp_path / "cut" / "mass50-seed1" / "state.pt").exists()
    resumed = train(cfg, arm, 1, corpus, tmp_path / "cut", progress=False, ranks=Ranks())
    assert resumed["history"]["train"] == whole["history"]["train"]
    assert resumed["final"] == whole["final"]


def _rank_main(rank, world, port, cfg_table, out, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from training.loop import start_ranks

    cfg = TrainConfig.from_dict(cfg_table)
    corpus = prepare(cfg.data, progress=False)
    result = train(cfg, cfg.arm("mass50"), 1, corpus, out, progress=False, ranks=start_ranks())
    if rank == 0:
        queue.put((result["history"]["train"], result["final"]))
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one(data_config, corpus, tmp_path):
    """The same global batch split over two ranks gives the same losses as one rank, to float tolerance."""
    import torch.multiprocessing as mp

    cfg = tiny_experiment(data_config, tokens=4 * 32 * 6)
    one = train(cfg, cfg.arm("mass50"), 1, corpus, tmp_path / "one", progress=False, ranks=Ranks())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_rank_main, args=(2, port, cfg.to_dict(), str(tmp_path / "two"), queue), nprocs=2, join=True)
    two, final = queue.get(timeout=60)
    assert [s for s, _, _ in two] == [s for s, _, _ in one["history"]["train"]]
    assert np.allclose([l for *_, l in two], [l for *_, l in one["history"]["train"]], atol=1e-5, rtol=0)
    # The evaluation too: each rank scores its share of the held-out sequences, the sums reduced (the
    # kept keys among them).
    assert final.keys() == one["final"].keys() and final["kept_fraction"] < 1
    assert all(final[k] == pytest.approx(one["final"][k], abs=1e-5) for k in final if k != "tokens")


def test_bad_experiments_are_refused_in_one_line(data_config):
    base = tiny_experiment(data_config).to_dict()
    for table, words in [
        ({**base, "run": {**base["run"], "micro_batch": 3}}, "micro_batch = 3"),
        ({**base, "model": {**base["model"], "kv_heads": 3}}, "kv_heads = 3"),
        ({**base, "arms": {"x": {"attention": "flash"}}}, "[arms.x] attention = 'flash'"),
        ({**base, "arms": {"x": {"attention": attention.NAME, "permeability": 1.5}}}, "permeability = 1.5"),
        ({**base, "arms": {"x": {"attention": "sdpa", "permeability": 0.5}}}, "gate fields need"),
        ({**base, "run": {**base["run"], "seeds": [1, 1]}}, "must not repeat"),
        ({**base, "extra": {}}, "unknown table [extra]"),
        ({**base, "arms": {"x": {"route": "drop"}}}, "[arms.x] illegal router: route = 'drop'"),
        ({**base, "arms": {"x": {"route_fraction": 0.2}}}, "router fields need route"),
        ({**base, "arms": {"x": {"route": "sqdk", "route_fraction": 0}}}, "route_fraction"),
        ({**base, "arms": {"x": {"route": "skip", "route_block": 5}}}, "must divide the context (32)"),
        ({**base, "arms": {"x": {"route": "sqdk", "route_layers": "odd"}}}, "route_layers = 'odd'"),
        ({**base, "arms": {"x": {"attention": "hpu_routed"}}}, "[arms.x] attention = 'hpu_routed': gathers"),
        ({**base, "arms": {"x": {"attention": "hpu_routed", "route": "skip"}}}, "add route = \"sqdk\""),
        ({**base, "arms": {"x": {"attention": "hpu_routed", "route": "sqdk", "route_window": 4}}}, "no route_window"),
    ]:
        with pytest.raises(ConfigError) as error:
            TrainConfig.from_dict(table)
        assert words in str(error.value) and "\n" not in str(error.value)


def _tiny_checkpoint(data_config, corpus, root: Path, arm: str, table: dict | None = None) -> Path:
    """The tiny experiment's `arm` (given `table`, an arm of that table alone), trained at seed 1 under `root`."""
    cfg = tiny_experiment(data_config)
    if table is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "arms": {arm: table}})
    train(cfg, cfg.arm(arm), 1, corpus, root, progress=False, ranks=Ranks())
    return root / f"{arm}-seed1" / "model"


@pytest.fixture(scope="module")
def gated_checkpoint(data_config, corpus, tmp_path_factory) -> Path:
    """The tiny experiment's mass50 arm, trained once for the tests of the hardware view."""
    return _tiny_checkpoint(data_config, corpus, tmp_path_factory.mktemp("gated"), "mass50")


def test_a_trained_model_through_the_hpu_fixed_point(gated_checkpoint, corpus):
    """Dense, float gate and the HPU's integer contract on the trained model's own attention."""
    from training.hardware import fixed_point_quality

    hpu = HPUConfig(head_dim=8, lanes=8, max_keys=32)
    report = fixed_point_quality(gated_checkpoint, hpu, corpus.train, sequences=2, length=32)
    assert report["gate"] == "trained"
    assert report["hpu"]["permeability"] == 0.5 and report["hpu"]["head_dim"] == 8
    assert 0 < report["kept_fraction"]["fixed_point"] < 1 and 0 < report["kept_fraction"]["float_gate"] < 1
    # The HPU's 8-bit probabilities and values cost this model little: the same keys kept on average,
    # attention outputs close to the float gate's, a loss within a few hundredths.
    assert abs(report["kept_fraction"]["fixed_point"] - report["kept_fraction"]["float_gate"]) < 0.05
    assert report["attention_cosine_mean"] > 0.95
    assert abs(report["fixed_minus_float"]) < 0.02
    assert report["rows_clipped"] == 0 and 0 < report["score_peak"] < 2 ** 7
    with pytest.raises(InputError, match="head_dim 64"):
        fixed_point_quality(gated_checkpoint, HPUConfig(), corpus.train, sequences=1, length=32)


def test_the_language_model_configuration_holds_its_scores_at_the_defaults_width_and_lut_step():
    """configs/lm.toml is the default HPU with the score format `holding` names for the trained model's
    scores (row tops up to 365) and its mass target: same width, same EXP_LUT step in nats."""
    from conftest import REPO
    from golden_model.quantize import holding, lut_step

    default, lm = HPUConfig.load(f"{REPO}/configs/default.toml"), HPUConfig.load(f"{REPO}/configs/lm.toml")
    assert holding(default, 365.0) == default.replace(score_frac=lm.score_frac, exp_shift=lm.exp_shift)
    assert lm == default.replace(score_frac=6, exp_shift=2, mass_target=0.99) and holding(lm, 365.0) == lm
    assert lut_step(lm) == lut_step(default) == 1 / 16


def test_scores_outgrowing_the_score_format_are_reported_with_a_format_that_holds_them(gated_checkpoint, corpus,
                                                                                       tmp_path):
    """Scores past the score format's range clip rows, and the report says how many and how large;
    `golden_model.quantize.holding` trades fractional bits for range at the same width until none
    clips. (The tiny model's scores stay below 1, which every format holds: its queries are scaled up
    here, as a trained model's peaked attention scales its scores.)"""
    from transformers import AutoModelForCausalLM

    from golden_model.quantize import holding
    from training.hardware import fixed_point_quality

    model = AutoModelForCausalLM.from_pretrained(gated_checkpoint)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(3000.0)
    model.save_pretrained(tmp_path / "peaked")
    hpu = HPUConfig(head_dim=8, lanes=8, max_keys=32)
    report = fixed_point_quality(tmp_path / "peaked", hpu, corpus.train, sequences=2, length=32)
    assert report["rows_clipped"] > 0 and report["score_peak"] > 2 ** 7
    wider = holding(hpu, report["score_peak"])
    assert wider.score_bits == hpu.score_bits and wider.score_frac < hpu.score_frac
    assert wider.exp_shift == max(0, hpu.exp_shift - (hpu.score_frac - wider.score_frac))
    held = fixed_point_quality(tmp_path / "peaked", wider, corpus.train, sequences=2, length=32)
    assert held["rows_clipped"] == 0 and held["attention_cosine_mean"] > report["attention_cosine_mean"]


@pytest.fixture(scope="module")
def dense_checkpoint(data_config, corpus, tmp_path_factory) -> Path:
    """The tiny experiment's dense arm, trained once: the baseline of the hardware view and of gaps."""
    return _tiny_checkpoint(data_config, corpus, tmp_path_factory.mktemp("dense"), "dense")


def test_a_dense_run_is_gated_after_the_fact(dense_checkpoint, corpus):
    """A run trained without the gate gets the configuration's gate after the fact: how sparse the rule
    finds a model that never trained with it, and what that costs."""
    from training.hardware import fixed_point_quality

    hpu = HPUConfig(head_dim=8, lanes=8, max_keys=32, permeability=0.3, mass_target=0.8)
    report = fixed_point_quality(dense_checkpoint, hpu, corpus.train, sequences=2, length=32)
    assert report["gate"] == "post hoc"
    assert (report["hpu"]["permeability"], report["hpu"]["mass_target"]) == (hpu.permeability, hpu.mass_target)
    assert 0 < report["kept_fraction"]["float_gate"] < 1 and report["loss"]["float_gate"] != report["loss"]["dense"]


def test_trained_rows_are_captured_through_the_trained_gate(gated_checkpoint, corpus, tmp_path):
    """The attention file of a gated checkpoint for `hpu sim`: layer 0 sees the embeddings whatever the
    attention, so its rows are a dense pass's; the deeper layers' rows come from the gated stream."""
    import random

    from transformers import AutoModelForCausalLM

    from golden_model.sources import file_rows
    from training.hardware import capture_rows

    folder = gated_checkpoint
    tokens = corpus.train[:32]
    path = capture_rows(folder, tokens, tmp_path / "rows.npz")
    with np.load(path) as f:
        scores, values, lengths = (torch.from_numpy(f[k]) for k in ("scores", "values", "lengths"))
    assert scores.shape == (2, 4, 32, 32) and values.shape == (2, 4, 32, 8)
    assert torch.equal(lengths[1, 3], torch.arange(1, 33))
    causal = torch.ones(32, 32, dtype=torch.bool).tril()
    captured = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    dense = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float64).eval()
    with torch.no_grad():
        probs = dense(input_ids=torch.from_numpy(tokens.astype(np.int64))[None], output_attentions=True).attentions
    assert torch.allclose(captured[0], probs[0][0], atol=1e-12)
    assert not torch.allclose(captured[1], probs[1][0], atol=1e-6)
    assert len(file_rows(path, HPUConfig(head_dim=8, lanes=8, max_keys=32), 20, random.Random(0))) == 20


def test_train_hardware_command_writes_its_report_and_rows(gated_checkpoint, corpus, tmp_path):
    """`hpu train-hardware RUN --capture`: the report and one attention file per held-out split, nothing else."""
    from hpu.cli import main

    out = tmp_path / "hw"
    assert main(["train-hardware", str(gated_checkpoint.parent), "--set", "head_dim=8", "--set", "lanes=8",
                 "--set", "max_keys=32", "--sequences", "1", "--length", "32", "--capture", "--quiet",
                 "-o", str(out)]) == 0
    splits = sorted(corpus.val)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["hardware.json"] + [f"rows-{split}.npz" for split in splits])


# -- the A/B report ---------------------------------------------------------------------------------

def _result(arm: str, seed: int, loss: float, experiment: dict | None = None) -> dict:
    config = experiment or {"model": {"hidden_size": 32}, "run": {"context": 32, "seeds": [1, 2, 3]}}
    gate = None if arm == "dense" else {"permeability": 0.5, "mass_target": 0.9}
    return {"arm": arm, "seed": seed, "attention": "sdpa" if gate is None else attention.NAME, "gate": gate,
            "config": config, "data": "tokens-fingerprint", "tokens": 1000, "steps": 10, "parameters": 5,
            "epochs": 0.5, "tokens_per_s": 100.0 if gate is None else 60.0, "versions": {"device": "cpu"},
            "final": {"loss": loss, "loss_code": loss - 1, "loss_prose": loss + 1, "kept_fraction": 0.5},
            "history": {"train": [[i, 100 * i, loss + 1 / (i + 1)] for i in range(10)],
                        "val": [{"tokens": 0, "loss": 9.0, "kept_fraction": 1.0},
                                {"tokens": 1000, "loss": loss, "kept_fraction": 0.5 if gate else 1.0}]}}


def test_the_report_pairs_seeds_and_tests_both_ways(tmp_path):
    """Welch's test over the arms' seeds, and the per-seed differences with their paired test, against
    scipy on the same numbers; a missing seed is listed and left out of the pairs; every output written."""
    from scipy import stats

    from hpu.files import write_json
    from training import report

    dense = {1: 3.0, 2: 3.2, 3: 3.1}
    gated = {1: 3.05, 2: 3.27}
    for arm, losses in (("dense", dense), ("mass50", gated)):
        for seed, loss in losses.items():
            (tmp_path / "runs" / f"{arm}-seed{seed}").mkdir(parents=True)
            write_json(tmp_path / "runs" / f"{arm}-seed{seed}" / RESULT, _result(arm, seed, loss))
    (tmp_path / "out").mkdir()
    summary = report.report(tmp_path / "runs", tmp_path / "out")
    row = summary["arms"]["mass50"]
    assert row["missing_seeds"] == [3] and row["tokens_per_s_vs_dense"] == 0.6
    gap = row["loss_gap"]
    assert gap["mean"] == np.mean([3.05, 3.27]) - np.mean([3.0, 3.2, 3.1])
    assert gap["p"] == pytest.approx(stats.ttest_ind([3.05, 3.27], [3.0, 3.2, 3.1], equal_var=False).pvalue, rel=1e-12)
    assert gap["paired"]["seeds"] == [1, 2]
    assert gap["paired"]["differences"] == [3.05 - 3.0, 3.27 - 3.2]
    assert gap["paired"]["p"] == pytest.approx(stats.ttest_rel([3.05, 3.27], [3.0, 3.2]).pvalue, rel=1e-12)
    # Two differences 0.05 and 0.07: mean 0.06, standard error 0.01, t(0.975, 1 degree) = 12.7062...
    half = 12.706204736174698 * 0.01
    assert gap["paired"]["interval95"] == pytest.approx([0.06 - half, 0.06 + half], rel=1e-9)
    table = (tmp_path / "out" / report.TABLE).read_text()
    assert "| +0.050, +0.070 | 0.105 | -0.067..+0.187 |" in table and "| mass50 | 0.9 | 0.50 | - | 2 |" in table
    # The kept fraction over training, per gated arm, at the evaluations every seed recorded.
    assert [(p["tokens"], p["mean"], p["n"]) for p in row["kept_over_training"]] == [(0, 1.0, 2), (1000, 0.5, 2)]
    assert "kept_over_training" not in summary["arms"]["dense"] and "| mass50 | 1.000 | 0.500 |" in table
    # The gap over training: at each shared evaluation, the arm minus dense at the same seed (seeds 1, 2).
    assert [(p["tokens"], p["values"]) for p in row["gap_over_training"]] == [(0, [0.0, 0.0]),
                                                                             (1000, [3.05 - 3.0, 3.27 - 3.2])]
    assert "gap_over_training" not in summary["arms"]["dense"] and "| mass50 | +0.000 | +0.060 |" in table
    # An evaluation that one run lacks is left out, not guessed.
    longer = _result("mass50", 1, 3.05)
    longer["history"]["val"].append({"tokens": 2000, "loss": 2.0})
    assert [p["tokens"] for p in report.gap_over_training(
        [longer], [_result("dense", 1, 3.0), _result("dense", 4, 3.0)])] == [0, 1000]
    assert report.gap_over_training([longer], [_result("dense", 2, 3.0)]) == []
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {report.JSON, report.TABLE, report.PLOT}
    # A routed arm at half the attention FLOPs meets dense after half its tokens: between the same
    # seed's dense evaluations at 0 tokens (9.0) and 1000 (its final loss), so at (9.0 + loss) / 2.
    routed = _result("sqdk50", 1, 3.3)
    routed["final"].update(tokens=1000, attention_fraction=0.5)
    equal = report.equal_flops_gap([routed], [_result("dense", seed, loss) for seed, loss in dense.items()])
    assert equal["baseline_tokens"] == 500 and equal["mean"] == pytest.approx(3.3 - 6.0)
    assert equal["seeds"] == [1] and equal["differences"] == [equal["mean"]]
    # Each seed against its own: seed 2 meets dense seed 2 at (9.0 + 3.2) / 2; a seed dense lacks is
    # left out, and none shared gives no figure.
    second, alone = _result("sqdk50", 2, 3.4), _result("sqdk50", 7, 1.0)
    for run in (second, alone):
        run["final"].update(tokens=1000, attention_fraction=0.5)
    equal = report.equal_flops_gap([routed, second, alone], [_result("dense", s, loss) for s, loss in dense.items()])
    assert equal["seeds"] == [1, 2] and equal["differences"] == pytest.approx([3.3 - 6.0, 3.4 - 6.1])
    assert report.equal_flops_gap([alone], [_result("dense", s, loss) for s, loss in dense.items()]) is None
    # At equal training FLOPs: 6 a parameter a token (2,048 of them: 12,288) plus three times causal
    # attention's 4 * 2 layers * 32 wide * (31 + 1) / 2 keys = 4,096 (12,288), the routed arm's half of
    # that: 18,432 against dense's 24,576, so dense after 750 of its tokens, at 9.0 - 0.75 * (9.0 - loss).
    experiment = {"model": {"hidden_size": 32, "layers": 2}, "run": {"context": 31, "seeds": [1, 2, 3]}}
    routed.update(config=experiment, parameters=2048)
    base = [dict(_result("dense", seed, loss, experiment), parameters=2048) for seed, loss in dense.items()]
    equal = report.equal_flops_gap([routed], base, report.training_flops)
    assert equal["baseline_tokens"] == 750 and equal["mean"] == pytest.approx(3.3 - (2.25 + 0.75 * 3.0))
    (tmp_path / "runs" / "dense-seed9").mkdir()
    write_json(tmp_path / "runs" / "dense-seed9" / RESULT,
               _result("dense", 9, 3.0, {"model": {"hidden_size": 64}, "run": {"context": 32, "seeds": [9]}}))
    with pytest.raises(InputError, match="belongs to another experiment"):
        report.summarize(report.collect(tmp_path / "runs"))


def test_a_report_without_a_dense_arm_has_no_gaps(tmp_path):
    """Gated runs alone report their losses and kept fractions, and no gap (nothing to pair with)."""
    from hpu.files import write_json
    from training import report

    for seed, loss in ((1, 3.05), (2, 3.27)):
        (tmp_path / "runs" / f"mass50-seed{seed}").mkdir(parents=True)
        write_json(tmp_path / "runs" / f"mass50-seed{seed}" / RESULT, _result("mass50", seed, loss))
    (tmp_path / "out").mkdir()
    summary = report.report(tmp_path / "runs", tmp_path / "out")
    assert summary["baseline"] is None and "gap_over_training" not in summary["arms"]["mass50"]
    assert summary["arms"]["mass50"]["loss"]["values"] == [3.05, 3.27]
    assert (tmp_path / "out" / report.PLOT).stat().st_size > 0


def test_the_report_says_what_routing_otherwise_than_by_the_top_k_costs(tmp_path):
    """Per routed arm: each choice's agreement, share and loss minus the top-k's, mean over seeds; a
    figure that one run of the arm predates is left out, not averaged over the others."""
    from hpu.files import write_json
    from training import report

    figures = {"routed_fraction": 0.2, "attention_fraction": 0.2, "hpu_agreement": 1.0, "loss_hpu": 3.5,
               "predictor_accuracy": 0.94, "predicted_fraction": 0.19, "loss_predicted": 3.51,
               "unread_fraction": 0.25, "unread_loss_part": 1.5}
    for seed, loss, causal in ((1, 3.5, {"causal_accuracy": 0.97, "causal_fraction": 0.2, "loss_causal": 3.52}),
                               (2, 3.4, {})):
        run = _result("sqdk20", seed, loss)
        run.update(attention="sdpa", gate=None, router={"route": "sqdk", "route_fraction": 0.2})
        run["final"].update(figures, **causal)
        run["final"]["predictor_accuracy"] += seed / 100
        (tmp_path / "runs" / f"sqdk20-seed{seed}").mkdir(parents=True)
        write_json(tmp_path / "runs" / f"sqdk20-seed{seed}" / RESULT, run)
    (tmp_path / "out").mkdir()
    summary = report.report(tmp_path / "runs", tmp_path / "out")
    row = summary["arms"]["sqdk20"]
    assert summary["baseline"] is None   # a routed arm on SDPA is no dense baseline
    assert row["predictor_accuracy"]["values"] == [0.95, 0.96]
    assert row["loss_predicted_over_topk"]["values"] == pytest.approx([0.01, 0.11])
    assert row["loss_hpu_over_topk"]["values"] == pytest.approx([0.0, 0.1])
    assert "causal_accuracy" not in row and "loss_causal_over_topk" not in row
    table = (tmp_path / "out" / report.TABLE).read_text()
    # The tokens that read no other: 1.5 nats of the mean loss over a quarter of the tokens, 6 on each of them.
    assert row["unread_loss"]["values"] == [6.0, 6.0]
    assert row["read_loss"]["values"] == pytest.approx([2 / 0.75, 1.9 / 0.75])
    assert ("| sqdk20 | 2 | 0.200 | 0.9550 | 0.190 | +0.0600 | - | - | - | 1.0000 | +0.0500 | 0.250 | 6.0000 | 2.6000 |"
            in table)


# -- the learned router -------------------------------------------------------------------------------

def test_router_top_k_per_block_is_the_hpu_routing_step(seed):
    """On integer-valued logits (ties included) the learned router routes exactly the tokens of the
    bit-exact contract's routing step: the same order, the same capacity per block."""
    from golden_model.contract import run_routing
    from training.routing import RouterConfig, block_topk, hpu_routing

    g = torch.Generator().manual_seed(seed)
    for fraction, block in ((0.2, 16), (0.5, 8), (1 / 3, 48)):
        cfg = RouterConfig(route_fraction=fraction, route_block=block)
        logits = torch.randint(-4, 5, (3, 48), generator=g)
        got = block_topk(logits.float(), cfg)
        want = run_routing(cfg.hpu, logits.reshape(-1, min(block, 48))).routed.reshape(3, 48)
        assert torch.equal(got, want)
        assert (got.reshape(3, -1, min(block, 48)).sum(-1) == cfg.hpu.route_capacity(min(block, 48))).all()
        # Quantizing integer scores to route_bits scales them without reordering: the HPU agrees.
        assert torch.equal(hpu_routing(logits.float(), cfg), got)


def _layer_zero(model):
    """Layer 0's attention input (hidden states, rotary embeddings) and output, recorded by hooks."""
    seen = {}
    attn = model.model.layers[0].self_attn
    attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    attn.register_forward_hook(lambda m, a, out: seen.update(out=out[0]))
    return seen


@pytest.mark.parametrize("mode", ["sqdk", "skip"])
def test_routed_attention_scales_routed_rows_and_zeros_the_rest(mode):
    """sqdk: a routed token's attention output is the unrouted model's times sigmoid(score); skip: the
    same over the routed keys (and itself) only; unrouted rows are zero. The score gets a gradient
    through the scale; the predictor none from the model's loss, its own from the auxiliary loss."""
    from training import routing

    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(7))
    plain, routed = tiny_llama("sdpa"), tiny_llama("sdpa")
    (router, *_) = routing.attach(routed, routing.RouterConfig(route=mode, route_fraction=0.5, route_block=8))
    base, mine = _layer_zero(plain), _layer_zero(routed)
    plain(ids)
    routed(ids).logits.sum().backward()
    chosen = router.last["top"]
    assert chosen.sum() == 2 * 2 * 4  # 4 of each block of 8
    scale = torch.sigmoid(router.last["logits"]).detach()
    if mode == "sqdk":
        want = base["out"]
    else:
        keys = torch.ones(16, 16, dtype=torch.bool).tril() & chosen[:, None, None, :] | torch.eye(16, dtype=torch.bool)
        want = plain.model.layers[0].self_attn(hidden_states=base["hidden_states"],
                                               position_embeddings=base["position_embeddings"],
                                               attention_mask=keys)[0]
    assert torch.allclose(mine["out"], want * (scale * chosen).unsqueeze(-1), atol=1e-6)
    assert router.score.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in router.predictor.parameters())
    routing.auxiliary_loss(routed).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in router.predictor.parameters())
    stats = routing.statistics(routed)
    assert stats["routed_fraction"] == 0.5
    # The predictors' own choice, uncapped: the share of tokens whose logit is positive, over layers.
    predicted = torch.stack([(r.last["predicted"] > 0).float().mean() for r in routing.routers(routed)])
    assert stats["predicted_fraction"] == float(predicted.mean())
    assert stats["predictor_accuracy"] == float(torch.stack([((r.last["predicted"] > 0) == r.last["top"]).float().mean()
                                                             for r in routing.routers(routed)]).mean())
    causal = [route_causal(r.last["logits"].detach(), r.cfg.hpu) for r in routing.routers(routed)]
    assert stats["causal_fraction"] == float(torch.stack([c.float().mean() for c in causal]).mean())
    assert stats["causal_accuracy"] == float(torch.stack([(c == r.last["top"]).float().mean()
                                                          for c, r in zip(causal, routing.routers(routed))]).mean())
    if mode == "skip":
        # A cache does not remember which earlier tokens were routed: refused, and decoding without one works.
        with routing.choosing(routed, "predictor"), torch.no_grad():
            with pytest.raises(ValueError, match="cannot decode with a cache"):
                routed.generate(ids[:1, :4], max_new_tokens=2, do_sample=False, pad_token_id=0)
            assert routed.generate(ids[:1, :4], max_new_tokens=2, do_sample=False, pad_token_id=0,
                                   use_cache=False).shape == (1, 6)


def _beam_search_drift(model, prompt: torch.Tensor, steps: int, beams: int) -> list[float]:
    """Beam search under the routers' current choice: at each step, how far the first router's kept
    scores lie from the scores of each beam's own tokens so far (its layer reads the embeddings)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from training import routing

    first, layer, drift = routing.routers(model)[0], model.model.layers[0], []

    class Compare(LogitsProcessor):
        def __call__(self, input_ids, scores):
            own = first.score(layer.input_layernorm(model.model.embed_tokens(input_ids))).squeeze(-1).float()
            drift.append(float((own - first.earlier).abs().max()))
            return scores

    with torch.no_grad():
        model.generate(prompt, max_new_tokens=steps, num_beams=beams, do_sample=False, pad_token_id=0,
                       logits_processor=LogitsProcessorList([Compare()]), cache_implementation="dynamic")
    return drift


@pytest.mark.parametrize("window", [0, 3])
def test_the_causal_choice_decodes_token_by_token_as_it_routes_a_whole_sequence(window, data_config):
    """Under choosing(model, "causal") each router routes by the top-k's rule over its block so far:
    `generate` with a cache (the router keeps the block's earlier scores) makes the decisions and
    scores that the generated sequence gets whole, each block's last token the whole-block top-k's
    decision. A cache the router did not see filled, or padding (which would count in the blocks),
    is refused; a cache cropped back reads the scores it kept. Evaluation's `loss_causal` is the
    loss under that choice."""
    from training import routing

    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(9))
    model = tiny_llama("sdpa").eval()
    routing.attach(model, routing.RouterConfig(route_fraction=0.25, route_block=8, route_window=window))
    decided = []
    hooks = [m.register_forward_hook(lambda m, a, o: decided.append(m.router.last["routed"]))
             for m in routing.attention_modules(model) if hasattr(m, "router")]
    with torch.no_grad(), routing.choosing(model, "causal"):
        out = model.generate(prompt, max_new_tokens=11, do_sample=False, pad_token_id=0, output_scores=True,
                             return_dict_in_generate=True, cache_implementation="dynamic")
        for hook in hooks:
            hook.remove()
        whole = model(out.sequences).logits
        routed = [r.last["routed"] for r in routing.routers(model)]
        with pytest.raises(ValueError, match="holds no scores for the 3 cached tokens"):
            with routing.choosing(model, "causal"):
                routing.routers(model)[0].decide(torch.zeros(2, 1, model.config.hidden_size), cached=3)
        with routing.choosing(model, "causal"):
            (router, *_) = routing.routers(model)
            hidden = torch.randn(2, 16, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
            router.decide(hidden, decoding=True)
            whole_choice = router.last["routed"]
            router.decide(hidden[:, 10:], cached=10, decoding=True)   # as if the cache were cropped back to 10
            assert torch.equal(router.last["routed"], whole_choice[:, 10:])
        padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt[:1, :3]], 1)
        with routing.choosing(model, "causal"), pytest.raises(ValueError, match="take unpadded sequences"):
            model.generate(torch.cat([padded, prompt[1:, :5]]), attention_mask=(torch.arange(5) >= 2) | (
                torch.arange(2)[:, None] == 1), max_new_tokens=1, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model(out.sequences)
    top = [r.last["top"] for r in routing.routers(model)]
    layers = len(routed)
    for layer, (mine, best) in enumerate(zip(routed, top)):
        assert torch.equal(torch.cat(decided[layer::layers], 1), mine[:, :15])   # the last token is never fed
        assert torch.equal(mine[:, 7::8], best[:, 7::8])
        assert 0 < mine.sum() < mine.numel()
    assert torch.allclose(torch.stack(out.scores, 1), whole[:, 4:15], atol=1e-5)
    # Beam search reorders the cache's rows between steps, and the routers' scores with them.
    with routing.choosing(model, "causal"):
        drift = _beam_search_drift(model, prompt[:1], steps=10, beams=3)
    assert len(drift) == 10 and max(drift) < 1e-5 and "_reorder_cache" not in model.__dict__
    cfg = tiny_experiment(data_config)
    # Three sequences in micro-batches of two: each figure is over sequences, whatever the batches.
    stream = np.random.default_rng(2).integers(0, 64, 3 * cfg.run.context + 1)
    final = evaluate(model, types.SimpleNamespace(val={"prose": stream}), cfg, Ranks())
    batch = torch.from_numpy(np.stack([stream[i:i + 33] for i in (0, 32, 64)]).astype(np.int64))
    with torch.no_grad():
        for choice, (*_, figure) in routing.MEASURED.items():
            with routing.choosing(model, choice):
                assert final[figure] == pytest.approx(float(sequence_loss(model, batch)), abs=1e-6)
    assert final["loss_causal"] != final["loss_predicted"] and 0 < final["causal_accuracy"] < 1
    # The tokens that read no other (with a window, only the first of each sequence), and their part of the loss.
    model.eval()   # evaluate hands it back in training mode
    with torch.no_grad():
        stats = routing.statistics(model, sequence_loss(model, batch, reduction="none"))
    assert (final["unread_fraction"] == 1 / 32) == bool(window)
    assert final["unread_fraction"] == pytest.approx(stats["unread_fraction"], abs=1e-12)
    assert final["unread_loss_part"] == pytest.approx(stats["unread_loss_part"], abs=1e-6)


def test_a_rank_predictor_reads_the_block_so_far_and_decodes_as_it_evaluates(data_config, corpus, tmp_path):
    """route_predictor = "rank": the predictor reads the hidden state and `rank_features` of the
    router's scores over the block so far (brute force here). It trains through `train` on its BCE
    only and its checkpoint reloads; decoding with a cache keeps the scores (to rounding the whole
    sequence's) and reads the ranks they give. Its routers start as a hidden-state predictor's, and
    the field stays out of an arm's table at its default, so earlier runs keep their fingerprints."""
    from training import routing

    plain, ranked = tiny_llama("sdpa"), tiny_llama("sdpa")
    plain_routers = routing.attach(plain, routing.RouterConfig(route_block=16), seed=3)
    ranked_routers = routing.attach(ranked, routing.RouterConfig(route_block=16, route_predictor="rank"), seed=3)
    for a, b in zip(plain_routers, ranked_routers):
        assert torch.equal(a.score.weight, b.score.weight) and torch.equal(a.predictor[2].weight, b.predictor[2].weight)
        hidden = a.predictor[0].in_features
        assert torch.equal(b.predictor[0].weight[:, :hidden], a.predictor[0].weight)
        assert not b.predictor[0].weight[:, hidden:].any()

    assert "route_predictor" not in routing.RouterConfig().as_dict()
    assert routing.RouterConfig(route_predictor="rank").as_dict()["route_predictor"] == "rank"
    with pytest.raises(ConfigError, match="route_predictor = 'mlp'"):
        routing.RouterConfig(route_predictor="mlp")
    scores = torch.tensor([[1.0, 3.0, 2.0, 5.0, 0.0, 0.0, 9.0, 1.0]])
    cfg = routing.RouterConfig(route_fraction=0.25, route_block=4)
    seen = torch.arange(8) % 4 + 1
    features = routing.rank_features(routing.causal_ahead(scores, cfg.hpu), seen, cfg)
    ahead = [0, 0, 1, 0, 0, 1, 0, 1]   # earlier tokens of the block with a score at least as high
    assert features[0, :, 0].tolist() == pytest.approx([(a - 1) / n for a, n in zip(ahead, seen.tolist())])
    assert features[0, :, 1].tolist() == pytest.approx([1 / n for n in seen.tolist()])   # capacity 1 of 4
    assert features[0, :, 2].tolist() == pytest.approx([math.log(n) / math.log(5) for n in seen.tolist()])
    assert features[0, :, 3].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    # In bf16 (the predictor under autocast) the ranks around a 4096-token block's threshold stay apart (as
    # shares of the tokens seen they would not: bf16 spaces numbers near 0.2 by 1/1024).
    cfg = routing.RouterConfig(route_fraction=0.2, route_block=4096)
    capacity = int(cfg.hpu.route_capacity(4096))
    near = torch.arange(capacity - 3, capacity + 4, dtype=torch.float32)[None]
    distance = routing.rank_features(near, torch.tensor([4096]), cfg)[0, :, 0].bfloat16()
    assert len(set(distance.tolist())) == 7

    experiment = tiny_experiment(data_config)
    table = experiment.to_dict()
    table["arms"] = {"rank": {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.25, "route_block": 16,
                              "route_predictor": "rank"}}
    experiment = TrainConfig.from_dict(table)
    result = train(experiment, experiment.arm("rank"), 1, corpus, tmp_path, progress=False, ranks=Ranks())
    assert result["router"]["route_predictor"] == "rank" and 0 < result["final"]["predictor_accuracy"] <= 1
    model = routing.load(tmp_path / "rank-seed1" / "model").eval()
    assert all(r.predictor[0].in_features == model.config.hidden_size + routing.RANK_FEATURES
               for r in routing.routers(model))
    # Token by token through a cache, each predictor reads the ranks that its scores so far give over
    # the whole sequence at once, and those scores are the whole sequence's (to rounding: a repeated
    # token ties its score, so ranks are compared on the same scores, not on a second pass).
    read = []
    hooks = [r.predictor.register_forward_pre_hook(lambda m, a: read.append(a[0][..., -routing.RANK_FEATURES:]))
             for r in routing.routers(model)]
    prompt = torch.from_numpy(step_sequences(corpus.val["prose"], 0, 2, 32)[:, :6].astype(np.int64))
    with torch.no_grad(), routing.choosing(model, "predictor"):
        out = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                             cache_implementation="dynamic")
        kept = [r.earlier for r in routing.routers(model)]
    for hook in hooks:
        hook.remove()
    with torch.no_grad(), routing.choosing(model, "predictor"):
        model(out)
    layers, seen = len(kept), torch.arange(25) % 16 + 1
    for layer, (router, scores) in enumerate(zip(routing.routers(model), kept)):
        assert scores.shape == (2, 25) and torch.allclose(scores, router.last["logits"][:, :25], atol=1e-5)
        want = routing.rank_features(routing.causal_ahead(scores, router.cfg.hpu), seen, router.cfg)
        assert torch.allclose(torch.cat(read[layer::layers], 1), want, atol=1e-6)
    # Beam search reorders the kept scores with the cache's rows; padding, which would count among a
    # block's tokens, is refused; a pass without a cache (training, evaluation) keeps nothing.
    with torch.no_grad(), routing.choosing(model, "predictor"):
        drift = _beam_search_drift(model, prompt[:1], steps=8, beams=2)
        with pytest.raises(ValueError, match="take unpadded sequences"):
            model.generate(prompt, attention_mask=torch.tensor([[0] * 2 + [1] * 4, [1] * 6]), max_new_tokens=1,
                           do_sample=False, pad_token_id=0)
    assert len(drift) == 8 and max(drift) < 1e-5
    model.train()
    model(prompt, use_cache=False)
    assert all(r.earlier is None for r in routing.routers(model))


@pytest.mark.parametrize("router, gated", [
    (dict(route_fraction=0.25, route_block=8), False), (dict(route="skip", route_fraction=0.5, route_block=8), False),
    (dict(route_fraction=0.25, route_block=8, route_window=2), False),
    (dict(route_fraction=0.25, route_block=8, route_window=1), False),
    (dict(route_fraction=0.25, route_block=8, route_layers="alternate"), False),
    (dict(route_fraction=0.5, route_block=8), True), (dict(route_fraction=0.5, route_block=8, route_layers="alternate"), True)])
def test_unread_tokens_are_those_whose_prediction_no_other_token_reaches(router, gated):
    """`unread` marks a token exactly when its logits have no gradient from any other token's input:
    with every layer routed (sqdk, skip, a window of one key) some tokens are such, with a dense
    layer or a wider window only the first; under a mass gate that keeps a row its own key alone
    (queries made to favour it), dense layers leave some too. The evaluation's figures are their
    share and their part of the mean loss."""
    from training import routing
    from training.loop import sequence_loss

    if gated:
        model = tiny_llama(attention.NAME, HPUConfig(mode="mass", mass_target=0.1, permeability=1.0), kv_heads=4)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.copy_(layer.self_attn.k_proj.weight * 8)
    else:
        model = tiny_llama("sdpa")
    routing.attach(model, routing.RouterConfig(**router))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(9))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeds).logits
    alone = routing.unread(model)
    count = 0
    for b, t in itertools.product(range(2), range(16)):
        (grad,) = torch.autograd.grad(logits[b, t].sum(), embeds, retain_graph=True)
        reached = grad[b].abs().sum(-1) > 0
        reached[t] = False
        assert bool(alone[b, t]) == (not reached.any()), (b, t)
        count += not reached.any()
    if not gated and ("route_layers" in router or router.get("route_window", 0) > 1):
        assert torch.equal(alone, (torch.arange(16) == 0).expand(2, 16))
    else:
        assert alone[:, 1:].any()
    with torch.no_grad():
        losses = sequence_loss(model, torch.cat([ids, ids[:, :1]], 1), reduction="none")
        stats = routing.statistics(model, losses)
    assert stats["unread_fraction"] == count / 32
    assert stats["unread_loss_part"] == pytest.approx(float(losses[alone].sum() / 32), rel=1e-6)
    # A training pass records no gate reads (nothing extra in a training step): no figure, not a stale one.
    model.train()
    model(ids)
    assert routing.unread(model) is None and "unread_fraction" not in routing.statistics(model)


def test_a_window_gives_unrouted_tokens_their_recent_keys():
    """route_window W: a routed token's output is unchanged (times sigmoid(score)); an unrouted one's is
    the attention over its last W keys, unscaled. The attention FLOPs count those windows, and
    decoding with a cache (the window cut from the cached keys) picks what decoding without one does."""
    from training import routing

    window = 3
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(8))
    plain, routed = tiny_llama("sdpa"), tiny_llama("sdpa")
    (router, *_) = routing.attach(routed, routing.RouterConfig(route_fraction=0.5, route_block=8,
                                                               route_window=window))
    base, mine = _layer_zero(plain), _layer_zero(routed)
    plain(ids)
    routed(ids).logits.sum().backward()
    chosen, full = router.last["top"], base["out"]   # (the band's pass below records over base)
    position = torch.arange(16)
    band = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - window)
    near = plain.model.layers[0].self_attn(hidden_states=base["hidden_states"],
                                           position_embeddings=base["position_embeddings"],
                                           attention_mask=band)[0]
    scale = torch.sigmoid(router.last["logits"]).detach()
    want = torch.where(chosen.unsqueeze(-1), full * scale.unsqueeze(-1), near)
    assert torch.allclose(mine["out"], want, atol=1e-6)
    assert router.score.weight.grad.abs().sum() > 0
    seen = position + 1.0
    work = [float((r.last["top"] * seen + ~r.last["top"] * seen.clamp(max=window)).sum() / (2 * seen.sum()))
            for r in routing.routers(routed)]
    assert routing.statistics(routed)["attention_fraction"] == pytest.approx(sum(work) / len(work))
    with routing.choosing(routed, "predictor"), torch.no_grad():
        cached, fresh = (routed.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0,
                                         use_cache=cache, output_scores=True, return_dict_in_generate=True)
                         for cache in (True, False))
        # Windows were in play: the 11 tokens outgrow the window of 3, and some went unrouted.
        assert not router.last["routed"].all()
    assert torch.equal(cached.sequences, fresh.sequences)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached.scores, fresh.scores))
    from training.report import _router_cell

    assert _router_cell(router.cfg) == "sqdk 0.50 window 3"
    assert _router_cell(routing.RouterConfig(route_layers="alternate")) == "sqdk 0.20 every other layer"
    assert _router_cell(routing.RouterConfig(route_predictor="rank")) == "sqdk 0.20 rank predictor"
    assert _router_cell(routing.RouterConfig(route_fraction=1 / 256)) == "sqdk 0.003906"


@pytest.mark.parametrize("fields, message", [({"route": "skip", "route_window": 4}, "needs route = 'sqdk'"),
                                             ({"route_window": -1}, "route_window = -1"),
                                             ({"route_window": 2.5}, "route_window = 2.5")])
def test_a_bad_window_is_refused(fields, message):
    from training.routing import RouterConfig

    with pytest.raises(ConfigError, match=message):
        RouterConfig(**fields)


def test_a_windowed_arm_trains_and_the_hpu_sends_its_windows(data_config, corpus, tmp_path):
    """An arm with route_window trains through `train` (its attention FLOPs count the windows). Its
    capture goes through `hpu sim --route-window`: the routed tokens' rows, then each unrouted token's
    last 4 keys as a row (refused where max_keys would cut the whole rows), whose golden result is the model's
    window attention over the captured scores and values up to the HPU's quantization; all of it
    bit-exact under Icarus, with the Verilog router's choice."""
    from golden_model.quantize import dequantize_out, quantize_scores
    from golden_model.sources import routed_tokens
    from golden_model.stimulus import expected
    from hpu.cli import main
    from training.hardware import capture_rows, sim_arguments

    table = tiny_experiment(data_config).to_dict()
    table["arms"] = {"window": {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.25, "route_block": 16,
                                "route_window": 4}}
    cfg = TrainConfig.from_dict(table)
    result = train(cfg, cfg.arm("window"), 1, corpus, tmp_path, progress=False)
    assert result["router"]["route_window"] == 4
    final = result["final"]
    # Routed rows see every earlier key, unrouted ones at most 4: between the routed share and all.
    assert final["routed_fraction"] < final["attention_fraction"] < 1
    model = tmp_path / "window-seed1" / "model"
    # Beyond the base configuration: the model's head width, the gate held open (it trained without
    # one), its routers' block and capacity (route_bits 16 is the base's), their window.
    settings = sim_arguments(HPUConfig(lanes=4), model)
    assert settings == ["--set head_dim=8", "--set mode=dense", "--set route_block=16", "--set route_fraction=0.25",
                        "--route-window 4"]
    path = capture_rows(model, corpus.val["prose"][:32], tmp_path / "rows.npz")
    with np.load(path) as f:
        scores, values = torch.from_numpy(f["scores"]), torch.from_numpy(f["values"])

    hpu = HPUConfig(head_dim=8, lanes=4, max_keys=32, route_block=16, route_fraction=0.25, mode="dense")
    rows, blocks, windows = routed_tokens(str(path), hpu, 32, seed=0, window=4)
    head = next(s for s in range(scores.shape[0] * scores.shape[1])
                if torch.equal(quantize_scores(scores.flatten(0, 1)[s, 31], hpu), torch.tensor(rows[31].scores)))
    for t, window in enumerate(windows):
        keys = slice(max(0, t - 3), t + 1)
        assert window.scores == tuple(quantize_scores(scores.flatten(0, 1)[head, t, keys], hpu).tolist())
        out = dequantize_out(torch.tensor([expected(hpu, [window])[0].out]),
                             values.flatten(0, 1)[head, keys].abs().max()[None] / 127, hpu)[0]
        float_out = torch.softmax(scores.flatten(0, 1)[head, t, keys], -1) @ values.flatten(0, 1)[head, keys]
        assert torch.allclose(out, float_out, atol=0.03 * float(values.flatten(0, 1)[head, keys].abs().max()))
    # max_keys 16 would cut whole rows past 16 keys but not their windows: not the same work, refused;
    # so is a file whose rows are not causal.
    with pytest.raises(InputError, match="rows of up to 32 keys, past max_keys .16."):
        routed_tokens(str(path), hpu.replace(max_keys=16), 32, seed=0, window=4)
    with np.load(path) as f:
        np.savez(tmp_path / "wide.npz", **{k: f[k] for k in f.files if k != "lengths"})
    with pytest.raises(InputError, match=r"is not causal .query 0 of head set \d+ has 32 keys, not 1."):
        routed_tokens(str(tmp_path / "wide.npz"), hpu, 32, seed=0, window=4)

    summary = tmp_path / "summary.json"
    argv = [word for setting in settings for word in setting.split()]
    assert main(["sim", "--set", "lanes=4", "--set", "max_keys=32", *argv,
                 "--rows", "32", "--source", str(path), "--build", str(tmp_path / "build"), "-o", str(summary),
                 "--quiet"]) == 0
    gated = json.loads(summary.read_text())["runs"]["gated"]
    # Blocks of 16 route 4 each: 8 whole rows and 24 windows, every one checked.
    assert (gated["tokens"], gated["rows"], gated["window_rows"], gated["route_window"]) == (32, 32, 24, 4)
    assert (gated["rows_checked"], gated["mismatches"], gated["routing_mismatches"]) == (32, 0, 0)
    assert main(["sim", "--set", "head_dim=8", "--set", "lanes=4", "--set", "max_keys=32", "--route-window", "4",
                 "--rows", "32", "--source", str(path), "--build", str(tmp_path / "build"), "-o", str(summary),
                 "--quiet"]) == 2    # a window without a router
    # The benchmark's whole path on this run: one block of 16 tokens, 4 routed, 12 windows, on the
    # routing configuration with the model's heads of 8 (lanes that divide them).
    from benchmarks.routed_hardware import measure
    from conftest import REPO

    routing_hpu = HPUConfig.load(f"{REPO}/configs/routing.toml")
    with pytest.raises(InputError, match="pass a --config whose lanes divide head_dim 8"):
        measure(tmp_path / "window-seed1", routing_hpu, None, 1, tmp_path / "bench", None)
    figures = measure(tmp_path / "window-seed1", routing_hpu.replace(lanes=4), None, 1, tmp_path / "bench", None)
    assert (figures["arm"], figures["route_window"], figures["hpu"]["mode"], figures["hpu"]["head_dim"]) == \
        ("window", 4, "dense", 8)
    for split in corpus.val:
        s = figures["splits"][split]
        assert (s["tokens"], s["routed_rows"], s["window_rows"], s["mismatches"], s["routing_mismatches"]) == \
            (16, 4, 12, 0, 0)
        assert s["unrouted_fraction"] == 0.75 and 0 < s["saving"]["hpu"] < 1
        assert s["hpu16_agreement"] == 1.0 and s["loss"]["hpu16"] == s["loss"]["topk"]


def test_the_shipped_experiments_load_with_a_dense_baseline():
    """Every experiment under configs/train parses (model, run, data, each arm's gate and router) and
    has the dense arm its reports measure gaps against."""
    experiments = sorted((Path(__file__).parent.parent / "configs" / "train").glob("*.toml"))
    assert {p.stem for p in experiments} >= {"ab", "pilot", "cpu_routing"}
    for path in experiments:
        assert "dense" in [arm.name for arm in TrainConfig.load(path).arms], path.name


def test_the_committed_runs_keep_their_fingerprints():
    """A field added to an arm's configuration leaves the runs already trained with their fingerprints
    (`hpu train` reads a finished run back only when they agree; a mismatch refuses the folder)."""
    runs = sorted((Path(__file__).parent.parent / "benchmarks" / "results").glob("training*/runs/*/result.json"))
    assert runs
    for path in runs:
        result = json.loads(path.read_text())
        cfg = TrainConfig.from_dict(result["config"])
        assert cfg.fingerprint(cfg.arm(result["arm"])) == result["fingerprint"], path.parent.name


def test_a_routed_run_reports_its_router_and_decodes_with_the_predictor(data_config, corpus, tmp_path, capfd):
    """A routed arm trains; its evaluation carries the predictor's and the HPU's agreement, the routed
    and attention fractions and the predictor- and HPU-routed losses; the checkpoint reloads with its routers (same logits),
    and generation routes token by token through the predictors."""
    from training import routing

    cfg = tiny_experiment(data_config)
    table = cfg.to_dict()
    table["arms"] = {"sqdk50": {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.5, "route_block": 16}}
    cfg = TrainConfig.from_dict(table)
    result = train(cfg, cfg.arm("sqdk50"), 1, corpus, tmp_path, progress=False)
    final = result["final"]
    assert result["router"] == {"route": "sqdk", "route_fraction": 0.5, "route_block": 16, "route_layers": "all",
                                "route_bits": 16}
    assert final["routed_fraction"] == pytest.approx(cfg.arm("sqdk50").router.hpu.route_capacity(16) / 16)
    assert 0 <= final["predictor_accuracy"] <= 1 and math.isfinite(final["loss_predicted"])
    # Each held-out split keeps its own loss beside the router's figures, and the whole is between them.
    assert sorted(k for k in final if k.startswith("loss_")) == ["loss_causal", "loss_code", "loss_hpu", "loss_predicted",
                                                                 "loss_prose"]
    assert min(final["loss_code"], final["loss_prose"]) <= final["loss"] <= max(final["loss_code"], final["loss_prose"])
    # 16-bit scores keep the order of a few hundred distinct float scores but for rounding ties.
    assert final["hpu_agreement"] > 0.95 and abs(final["loss_hpu"] - final["loss"]) < 0.05
    # Half the rows of every layer over their causal keys: about half the FLOPs.
    assert 0.3 < final["attention_fraction"] < 0.7
    from safetensors.torch import load_file

    folder = tmp_path / "sqdk50-seed1" / "model"
    capfd.readouterr()
    model = routing.load(folder).eval()
    assert "UNEXPECTED" not in "".join(capfd.readouterr())   # the routers' weights are expected ones
    saved = load_file(folder / "model.safetensors")
    trained = {name: tensor for name, tensor in model.state_dict().items() if ".router." in name}
    assert len(routing.routers(model)) == 2 and len(trained) == 2 * 6
    assert all(torch.equal(tensor, saved[name]) for name, tensor in trained.items())
    ids = torch.from_numpy(step_sequences(corpus.val["prose"], 0, 1, 32)[:, :-1].astype(np.int64))
    with routing.choosing(model, "predictor"), torch.no_grad():
        out = model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
        # The predictor reads each token alone, so greedy decoding with the cache picks what one pass over
        # the whole sequence, teacher-forced, picks.
        logits = model(out[:, :-1]).logits
    assert out.shape == (1, 12) and torch.equal(logits[0, 7:].argmax(-1), out[0, 8:])
    # The top-k (the default) ranks whole blocks: after the prompt each token would be a block of one,
    # always routed, so decoding with a cache is refused.
    with pytest.raises(ValueError, match="ranks whole blocks"), torch.no_grad():
        model.generate(ids[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)


@pytest.fixture(scope="module")
def routed_checkpoint(data_config, corpus, tmp_path_factory) -> Path:
    """The tiny experiment with a router on its second layer only (alternate), trained once."""
    return _tiny_checkpoint(data_config, corpus, tmp_path_factory.mktemp("routed"), "sqdk50",
                            {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.5, "route_block": 16,
                             "route_layers": "alternate"})


def test_fit_predictors_moves_the_predictors_only(routed_checkpoint, gated_checkpoint, tmp_path, capsys):
    """`hpu fit-predictors` trains the finished run's predictors alone: every other weight of the
    checkpoint it writes is the run's, bit for bit, so the loss by the top-k is unchanged; the predictors
    move, and their agreement with the top-k on the held-out text rises. A run without routers, or
    another token stream, is refused in one line, as is an output folder that is the run's own."""
    from safetensors.torch import load_file

    from hpu.cli import main
    from hpu.files import read_json
    from training import routing

    out = tmp_path / "fit"
    assert main(["fit-predictors", str(routed_checkpoint.parent), "--steps", "24", "--quiet", "-o", str(out)]) == 0
    fit = read_json(out / "predictors.json", "fit")
    before, after = fit["before"], fit["after"]
    assert fit["steps"] == 24 and fit["tokens"] == 24 * 4 * 32 and fit["arm"] == "sqdk50"
    assert after["loss"] == before["loss"] and after["routed_fraction"] == before["routed_fraction"]
    assert after["predictor_accuracy"] > before["predictor_accuracy"]
    old, new = load_file(routed_checkpoint / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert old.keys() == new.keys()
    moved = {name for name in old if not torch.equal(old[name], new[name])}
    assert moved and all(".router.predictor." in name for name in moved)
    assert len(routing.routers(routing.load(out / "model"))) == 1
    assert "by the predictors" in capsys.readouterr().out

    assert main(["fit-predictors", str(gated_checkpoint.parent), "-o", str(out)]) == 2
    assert "has no routers" in capsys.readouterr().err
    assert (out / "predictors.json").exists()   # refused before anything was cleared
    assert main(["fit-predictors", str(routed_checkpoint.parent), "-o", str(routed_checkpoint.parent)]) == 2
    assert "the run's own folder" in capsys.readouterr().err and (routed_checkpoint / "model.safetensors").exists()
    with pytest.raises(SystemExit):
        main(["fit-predictors", str(routed_checkpoint.parent), "--lr", "0"])
    assert "must be a positive, finite number" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    for i in range(10):
        (tmp_path / "other" / f"{i}.txt").write_text(f"other text entirely {i}, " * 400)
    assert main(["fit-predictors", str(routed_checkpoint.parent), "--data", str(tmp_path / "other"),
                 "-o", str(tmp_path / "no")]) == 2
    assert "not the token stream" in capsys.readouterr().err


def test_a_trained_router_through_the_hpu_routing_step(routed_checkpoint, corpus, tmp_path):
    """A routed checkpoint's own router logits, captured with its rows, quantized per block and routed
    by the HPU's routing step, pick the trained model's top-k; the Verilog router under Icarus picks
    the same tokens, and the routed rows are bit-exact."""
    from golden_model.quantize import quantize_logits
    from golden_model.sources import routed_tokens
    from golden_model.stimulus import expected_routed
    from sim.job import Options
    from sim.runner import make_routed_job, run
    from training import routing
    from training.hardware import capture_rows, router_quality

    quality = router_quality(routed_checkpoint, corpus.val["prose"], sequences=2)
    assert quality["routed_fraction"] == 0.5 and quality["agreement_with_topk"]["topk"] == 1.0
    assert quality["agreement_with_topk"]["hpu16"] == 1.0 and quality["loss"]["hpu16"] == quality["loss"]["topk"]
    assert set(quality["loss"]) == {"topk", "predictor", "causal", "norm", "hpu16", "hpu12", "hpu8", "hpu6", "hpu4"}
    assert all(0 <= a <= 1 for a in quality["agreement_with_topk"].values())
    # Every choice here routes the capacity, so each token it swaps out of the top-k's set is one in:
    # the overlap falls by the swaps over the routed tokens, the agreement by twice them over all tokens.
    capped = [c for c in quality["loss"] if c not in ("predictor", "causal")]
    assert quality["overlap_with_topk"]["topk"] == 1.0 and all(
        quality["overlap_with_topk"][c] == pytest.approx(1 - (1 - quality["agreement_with_topk"][c]) / (2 * 0.5))
        for c in capped)

    tokens = corpus.val["prose"][:32]
    path = capture_rows(routed_checkpoint, tokens, tmp_path / "rows.npz")
    model = routing.load(routed_checkpoint, dtype=torch.float64).eval()
    with torch.no_grad():
        model(input_ids=torch.from_numpy(tokens.astype(np.int64))[None])
    (router,) = routing.routers(model)
    with np.load(path) as f:
        assert f["scores"].shape == (1, 4, 32, 32)          # the routed layer only
        logits = torch.from_numpy(f["router"])
    assert logits.shape == (1, 4, 32) and torch.allclose(logits[0, 2], router.last["logits"][0].double())

    cfg = HPUConfig(head_dim=8, lanes=4, max_keys=32, route_block=16, route_fraction=0.5)
    rows, blocks, _ = routed_tokens(str(path), cfg, 32, seed=0)
    assert [len(row.scores) for row in rows] == list(range(1, 33))     # one head's tokens, in order
    assert blocks == [quantize_logits(logits[0, 0, i:i + 16], cfg).tolist() for i in (0, 16)]
    top = router.last["top"][0]
    assert [p for b, positions in enumerate(expected_routed(cfg, blocks)) for p in [16 * b + t for t in positions]] \
        == top.nonzero().flatten().tolist()
    job = make_routed_job(cfg, rows, str(path), Options(seed=0), blocks)
    outcome = run(job, "icarus", build_root=tmp_path / "build", work_dir=tmp_path / "sim")
    assert (outcome.rows_checked, outcome.mismatches, outcome.routing_mismatches) == (16, 0, 0)
    assert outcome.routed == job.routed
    # The same through `hpu sim`: the file's own tokens and logits, not random ones.
    from hpu.cli import main

    summary = tmp_path / "summary.json"
    assert main(["sim", "--set", "head_dim=8", "--set", "lanes=4", "--set", "max_keys=32", "--set", "route_block=16",
                 "--set", "route_fraction=0.5", "--rows", "32", "--source", str(path), "--build", str(tmp_path / "build"),
                 "-o", str(summary), "--quiet"]) == 0
    gated = json.loads(summary.read_text())["runs"]["gated"]
    assert (gated["tokens"], gated["blocks"], gated["rows"], gated["routing_mismatches"], gated["mismatches"]) == \
        (32, 2, 16, 0, 0)
    assert gated["keys"] == sum(len(rows[t].scores) for t in top.nonzero().flatten().tolist())


@given(st.integers(1, 5000))
def test_position_bins_tile_the_sequence_in_doubling_widths(context):
    from training.attribution import position_bins

    bins = position_bins(context)
    widths = [last - first + 1 for first, last in bins]
    assert bins[0] == (0, 0) and bins[-1][1] == context - 1
    assert all(last + 1 == first for (_, last), (first, _) in zip(bins, bins[1:]))
    # Each bin holds the tokens that have read 2^i .. 2^(i+1) - 1 tokens; the last takes the remainder,
    # no narrower than the bin before it.
    assert all(width == 2 ** i for i, width in enumerate(widths[:-1]))
    assert widths[-1] < 2 ** len(widths) and (len(widths) == 1 or widths[-1] >= widths[-2])
    if context == 1024:
        assert bins[-1] == (511, 1023)


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 40), st.booleans())
def test_a_gap_is_the_sum_of_its_parts(seed, context, routed):
    """However the tokens split (read or not, by position), the parts of the gap add up to it."""
    from training.attribution import split_gap

    g = torch.Generator().manual_seed(seed)
    arm, base = torch.rand(3, context, generator=g, dtype=torch.float64) * 8, torch.rand(3, context, generator=g,
                                                                                          dtype=torch.float64) * 8
    unread = torch.rand(3, context, generator=g) < 0.3 if routed else None
    out = split_gap(arm, base, unread)
    assert out["gap"] == pytest.approx(float(arm.mean() - base.mean()), abs=1e-12)
    assert sum(p["part"] for p in out["positions"]) == pytest.approx(out["gap"], abs=1e-12)
    assert sum(p["tokens"] for p in out["positions"]) == arm.numel()
    if routed:
        assert out["unread"]["part"] + out["read"]["part"] == pytest.approx(out["gap"], abs=1e-12)
        assert out["unread"]["tokens"] == int(unread.sum()) and out["read"]["tokens"] == int((~unread).sum())
    else:
        assert "unread" not in out and all("unread_share" not in p for p in out["positions"])


def test_split_gap_by_hand():
    from training.attribution import split_gap

    arm = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    base = torch.tensor([[4.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    unread = torch.tensor([[True, True, False, False]])
    out = split_gap(arm, base, unread)
    assert out["gap"] == 0.5
    assert (out["unread"]["share"], out["unread"]["gap"], out["unread"]["part"]) == (0.5, 0.5, 0.25)
    assert (out["read"]["loss_arm"], out["read"]["loss_base"], out["read"]["part"]) == (1.5, 1.0, 0.25)
    # Bins [0, 0], [1, 2], [3, 3]; the last, narrower than the one before, joins it.
    assert [(p["first"], p["last"], p["part"], p["unread_share"]) for p in out["positions"]] == [
        (0, 0, 0.0, 1.0), (1, 3, 0.5, pytest.approx(1 / 3))]
    assert out["positions"][1]["gap"] == pytest.approx(2 / 3)


class _Copier(torch.nn.Module):
    """A model that only copies: where the current token occurred before, it predicts (logit 50) the
    token that followed its latest earlier occurrence; elsewhere it knows nothing (uniform)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, use_cache=False):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        for row, p in itertools.product(range(b), range(t)):
            earlier = (input_ids[row, :p] == input_ids[row, p]).nonzero()
            if len(earlier):
                logits[row, p, input_ids[row, int(earlier[-1]) + 1]] = 50.0
        return types.SimpleNamespace(logits=logits)


@pytest.mark.parametrize("context", [16, 17])
def test_the_copy_probe_separates_copying_from_knowing(context):
    """A pure copier knows nothing on the first pass (uniform: ln V) and everything on the repeat. The
    draws are distinct tokens of the text other than EOS: a stream of few tokens, each repeated, still
    gives the copier an unambiguous repeat (a token drawn twice would send it to the wrong successor)."""
    from training.attribution import copy_probe

    vocab = 50_000
    probe = copy_probe(_Copier(vocab), np.arange(vocab), context, sequences=3, micro_batch=2, eos_id=0)
    assert (probe["half"], probe["sequences"]) == (8, 3)
    assert probe["first"] == pytest.approx(math.log(vocab), abs=1e-5)
    assert probe["repeat"] == pytest.approx(0.0, abs=1e-6)
    assert probe["copied"] == pytest.approx(math.log(vocab), abs=1e-5)
    few = np.repeat(np.arange(20), 5)
    probe = copy_probe(_Copier(20), few, context, sequences=4, micro_batch=4, eos_id=0)
    assert probe["first"] == pytest.approx(math.log(20), abs=1e-5) and probe["repeat"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="4 or more tokens"):
        copy_probe(_Copier(vocab), np.arange(vocab), 3, sequences=1, micro_batch=1, eos_id=0)
    with pytest.raises(InputError, match="7 distinct tokens"):   # EOS does not count
        copy_probe(_Copier(vocab), np.arange(8), context, sequences=1, micro_batch=1, eos_id=3)


@pytest.fixture(scope="module")
def routed_everywhere(data_config, corpus, tmp_path_factory) -> Path:
    """The tiny experiment with a router on every layer (sqdk, 25% of each 16-token block), trained once."""
    return _tiny_checkpoint(data_config, corpus, tmp_path_factory.mktemp("routed-all"), "sqdk25",
                            {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.25, "route_block": 16})


def test_a_predictor_leaves_the_model_it_predicts_untouched(data_config, corpus, tmp_path):
    """The predictors learn beside the model without moving it: the same arm with a rank predictor in
    place of the hidden-state one trains the same model, bit for bit (its gradient is stopped, and its
    gradient norm is clipped apart from the model's: the clip here binds at every step), while the
    predictors differ."""
    from safetensors.torch import load_file

    table = tiny_experiment(data_config, grad_clip=0.01).to_dict()
    router = {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.25, "route_block": 16}
    table["arms"] = {"hidden": router, "rank": {**router, "route_predictor": "rank"}}
    cfg = TrainConfig.from_dict(table)
    runs = {name: train(cfg, cfg.arm(name), 1, corpus, tmp_path, progress=False, ranks=Ranks()) for name in ("hidden", "rank")}
    assert runs["rank"]["history"]["train"] == runs["hidden"]["history"]["train"]
    assert runs["rank"]["final"]["loss"] == runs["hidden"]["final"]["loss"]
    assert runs["rank"]["final"]["predictor_accuracy"] != runs["hidden"]["final"]["predictor_accuracy"]
    mine, theirs = (load_file(tmp_path / f"{name}-seed1" / "model" / "model.safetensors") for name in ("rank", "hidden"))
    model_weights = [name for name in theirs if ".router.predictor." not in name]
    assert model_weights and all(torch.equal(mine[name], theirs[name]) for name in model_weights)


def test_the_unread_tokens_of_a_gap_are_those_no_layer_routed(routed_everywhere, corpus):
    """With a router on every layer (sqdk, no window) a token reads nothing exactly where no layer
    routed it: `token_losses` hands back that mask, one micro-batch at a time, and the model's own
    per-token losses."""
    from training import attribution, routing
    from training.hardware import trained_model

    model = trained_model(routed_everywhere, dtype=torch.float32)
    seqs = np.stack([corpus.val["prose"][i * 32:i * 32 + 33] for i in range(3)])
    losses, unread = attribution.token_losses(model, seqs, micro_batch=1)
    expected = []
    for seq in seqs:
        with torch.no_grad():
            direct = sequence_loss(model, torch.from_numpy(seq[None].astype(np.int64)), reduction="none")
        assert torch.equal(losses[len(expected)], direct[0].double())
        never = torch.stack([~r.last["routed"][0] for r in routing.routers(model)]).all(0)
        never[0] = True
        expected.append(never)
    assert torch.equal(unread, torch.stack(expected))
    assert 0 < unread[:, 1:].float().mean() < 1   # some tokens read nothing, others something


def test_a_gated_runs_gap_is_read_through_its_trained_gate(gated_checkpoint, dense_checkpoint, corpus):
    """A gated run is evaluated with the gate it trained with, so its losses are its recorded ones; with
    no router it gets no unread split."""
    from hpu.files import read_json
    from training import attribution

    result = attribution.loss_gap(gated_checkpoint.parent, dense_checkpoint.parent, corpus)
    final = read_json(gated_checkpoint.parent / RESULT, "run")["final"]
    for split, s in result["splits"].items():
        assert s["loss_arm"] == pytest.approx(final[f"loss_{split}"], abs=1e-5) and "unread" not in s


def test_a_routed_runs_gap_to_dense_token_by_token(routed_checkpoint, dense_checkpoint, corpus, tmp_path, capsys):
    """`hpu train-gap RUN BASELINE`: both checkpoints on the sequences their evaluation read, so each
    model's loss is its run's recorded validation loss; the gap splits into the arm's unread tokens and
    the rest, each part the model's own per-token losses. A run against itself has no gap anywhere.
    Runs of different experiments, a folder that is no run and a device that is no CPU or GPU of this
    machine are refused in one line, before the report folder is touched."""
    from hpu.cli import main
    from hpu.files import read_json
    from training import attribution

    arm_run, base_run = routed_checkpoint.parent, dense_checkpoint.parent
    out = tmp_path / "gap"
    # A process of its own: transformers, imported fresh, must not draw its weight-loading bars either.
    done = subprocess.run([sys.executable, "-m", "hpu.cli", "train-gap", str(arm_run), str(base_run), "--quiet",
                           "-o", str(out)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and done.stderr == "" and "read no other token" in done.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["gap.json", "gap.md", "gap.png"]
    result = read_json(out / "gap.json", "gap")
    arm, base = (read_json(run / RESULT, "run")["final"] for run in (arm_run, base_run))
    assert result["arm"] == "sqdk50" and result["base"] == "dense" and set(result["splits"]) == set(corpus.val)
    for split, s in result["splits"].items():
        assert s["loss_arm"] == pytest.approx(arm[f"loss_{split}"], abs=1e-5)
        assert s["loss_base"] == pytest.approx(base[f"loss_{split}"], abs=1e-5)
        assert s["recorded"] == {"arm": arm[f"loss_{split}"], "base": base[f"loss_{split}"]}
        assert s["unread"]["part"] + s["read"]["part"] == pytest.approx(s["gap"], abs=1e-9)
        assert set(s["copy"]) == {"arm", "base"} and s["copy"]["arm"]["sequences"] == s["sequences"]
    # Every layer of this arm but the routed one reads every earlier token: only the first token reads none.
    assert all(s["unread"]["tokens"] == s["sequences"] for s in result["splits"].values())

    same = attribution.loss_gap(base_run, base_run, corpus, sequences=2)
    assert all(s["gap"] == 0 and all(p["gap"] == 0 for p in s["positions"]) and "unread" not in s
               for s in same["splits"].values())

    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    changed = read_json(base_run / RESULT, "run")
    changed["config"]["run"]["context"] = 16
    (other / RESULT).write_text(json.dumps(changed))
    capsys.readouterr()
    before = (out / "gap.json").read_bytes()
    for argv, words in ((["train-gap", str(arm_run), str(other)], "differ in the context"),
                        (["train-gap", str(arm_run), str(tmp_path)], "finished `hpu train` run"),
                        (["train-gap", str(arm_run), str(base_run), "--device", "mps"], "name cpu, cuda or cuda:N"),
                        (["train-gap", str(arm_run), str(base_run), "--device", "cuda:7"], "CUDA GPUs")):
        assert main([*argv, "--quiet", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
        assert (out / "gap.json").read_bytes() == before   # refused before the report folder was touched


def test_attention_files_name_bad_router_logits(tmp_path):
    from golden_model.sources import routed_tokens

    cfg = HPUConfig(head_dim=8, lanes=4, max_keys=8, route_block=8)
    arrays = {"scores": np.zeros((2, 8, 8)), "values": np.zeros((2, 8, 8))}
    for router, message in ((np.zeros((2, 7)), r"router \(2, 7\) must have the shape \(\.\.\., Q\) = \(2, 8\)"),
                            (np.full((2, 8), np.nan), "router logits hold NaN"),
                            (np.zeros((2, 8), dtype=np.int64), "`router` is int")):
        np.savez(tmp_path / "a.npz", router=router, **arrays)
        with pytest.raises(InputError, match=message):
            routed_tokens(str(tmp_path / "a.npz"), cfg, 8, 0)
    np.savez(tmp_path / "a.npz", router=np.zeros((2, 8)), **arrays)
    with pytest.raises(InputError, match="holds 8 tokens a head"):
        routed_tokens(str(tmp_path / "a.npz"), cfg, 9, 0)
    # Without router logits, random ones (the same as before files could carry them).
    np.savez(tmp_path / "b.npz", **arrays)
    rows, blocks, _ = routed_tokens(str(tmp_path / "b.npz"), cfg, 8, 0)
    assert len(rows) == 8 and [len(b) for b in blocks] == [8]


def test_routed_attention_computes_the_routed_rows_only(seed, monkeypatch):
    """`hpu_routed` on its kernel path (the routed queries gathered through `kept_attention`, forced here
    onto the CPU through Triton's interpreter) equals softmax attention over each routed row's causal
    keys with every other row zero, in the forward pass and all three gradients (GQA); when the
    router chose otherwise than by top-k it is SDPA on every row."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from training import routing

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=routing.register())
    model = LlamaForCausalLM(config)
    cfg = routing.RouterConfig(route_fraction=0.25, route_block=40)
    (router,) = routing.attach(model, cfg)
    module = routing.attention_modules(model)[0]
    g = torch.Generator().manual_seed(seed)
    n, d = 80, 16
    q = torch.randn(2, 4, n, d, generator=g).half().requires_grad_()
    k, v = (torch.randn(2, 2, n, d, generator=g).half().requires_grad_() for _ in range(2))
    router.last = {"positions": routing.block_positions(torch.randn(2, n, generator=g), cfg)}
    routed = routing._routed_mask(router.last["positions"], (2, n))
    assert routed.sum(-1).tolist() == [20, 20]
    monkeypatch.setattr(attention, "tiled_attention", lambda query, dropout: True)
    out, _ = routing.routed_forward(module, q, k, v, None)
    grad = torch.randn(out.shape, generator=g).half()
    out.backward(grad)
    want = [x.detach().double().requires_grad_() for x in (q, k, v)]
    scores = want[0] @ attention.repeat_heads(want[1], 2).transpose(-1, -2) * d ** -0.5
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    reference = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1) @ attention.repeat_heads(want[2], 2)
    reference = (reference * routed[:, None, :, None]).transpose(1, 2)
    reference.backward(grad.double())
    assert torch.allclose(out.double(), reference, atol=3e-3)
    assert torch.equal(out[~routed], torch.zeros_like(out[~routed]))
    for got, ref in zip((q, k, v), want):
        assert torch.allclose(got.grad.double(), ref.grad, atol=5e-3 * float(ref.grad.abs().max()))
    router.choice = "predictor"
    full, _ = routing.routed_forward(module, q.float(), k.float(), v.float(), None)
    assert torch.equal(full, sdpa_attention_forward(module, q.float(), k.float(), v.float(), None)[0])


def test_train_speed_counts_frames_given_up_at_the_recompile_limit():
    """A frame past dynamo's recompile limit runs eagerly without an error; the benchmark counts it."""
    import torch._dynamo

    from benchmarks.train_speed import _dynamo_counts

    before = _dynamo_counts()

    @torch.compile(backend="eager")
    def scaled(x, factor):
        return x * factor

    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            for factor in range(4):   # each constant a new specialization
                assert torch.equal(scaled(torch.ones(2), factor), torch.full((2,), float(factor)))
    finally:
        torch._dynamo.reset()
    after = _dynamo_counts()
    assert {key: after[key] - before[key] for key in after} == {"frames": 2, "compiled": 1, "recompile_limit": 1}


def test_train_speed_times_the_loops_own_step(data_config, corpus):
    """`benchmarks.train_speed` trains through `training.loop.train_step` (the routers' predictor loss
    included): on the CPU one timed step per arm, gated and routed alike, reports its figures."""
    from benchmarks.train_speed import arm_speed

    cfg = tiny_experiment(data_config)
    table = cfg.to_dict()
    table["arms"]["sqdk50"] = {"attention": "sdpa", "route": "sqdk", "route_fraction": 0.5, "route_block": 16}
    table["arms"]["sqdk50_gathered"] = {**table["arms"]["sqdk50"], "attention": "hpu_routed"}
    cfg = TrainConfig.from_dict(table)
    for name in ("mass50", "sqdk50", "sqdk50_gathered"):
        result = arm_speed(cfg, name, steps=1, warmup=1, device=torch.device("cpu"), corpus=corpus, profile=True)
        assert result["arm"] == name and result["steps"] == 1 and result["tokens_per_s"] > 0
        assert result["attention"] == cfg.arm(name).attention
        assert 0 < result["kept_fraction"] <= 1 and result["warmup_on"] == "text"
        # On the CPU nothing runs on a device: no device time, no host synchronisation to count.
        assert result["device_ms"] == 0 and result["device_busy"] == 0 and result["host_syncs"] is None
        assert result["kernels"] == []
        assert result["dynamo"] == {"frames": 0, "compiled": 0, "recompile_limit": 0}   # compiled on GPUs only
