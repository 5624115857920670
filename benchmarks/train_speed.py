"""Training throughput of each arm of an experiment, in one run, and the gate's selection alone.

    python -m benchmarks.train_speed --config configs/train/ab.toml --arms dense mass50 mass05 -o OUT.json

Each arm builds the experiment's model (same weights) and trains `--steps` optimizer steps of the
experiment's batch after `--warmup` steps (compilation, and with `--data` the first steps of real
training, which give the attention the peaked shape the gate works on); random tokens of its vocabulary
without `--data`. Tokens/s counts the timed steps only, with the device synchronized; peak memory is
the allocator's; what torch.compile did (frames compiled, frames given up at the recompile limit) is
counted over the arm's steps; `--profile` adds one step's device time by operator and kernel, the
device's busy time against the timed step (when well below 1, the host, not the GPU, sets the pace)
and the host synchronisations that step makes (torch's sync debug mode), which is where a host-bound
arm loses its time.
Ratios are against the first arm (dense) of the same run. The selection is timed apart on the
probabilities of one layer: the sort-free Triton kernels against the golden model's sort-based `select`,
and the attention over the kept keys: `gpu_kernels.kept_attention` and SDPA under the mask against dense
causal SDPA (random q and k: nearly every tile keeps a key, unlike a trained model's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import write
from training import attention
from training.config import TrainConfig
from training.loop import (Ranks, autocast, build_model, compile_for_training, learning_rate, sequence_loss,
                           step_sequences, train_step)


class _Vocabulary:
    def __init__(self, size: int):
        self.vocab_size, self.eos_id = size, 0


def arm_speed(cfg: TrainConfig, name: str, steps: int, warmup: int, device: torch.device, corpus=None,
              profile: bool = False) -> dict:
    """One arm's training throughput."""
    arm = cfg.arm(name)
    run = cfg.run
    model = build_model(cfg, arm, corpus or _Vocabulary(cfg.data.vocab_size), seed=0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, fused=device.type == "cuda")
    compile_for_training(model, cfg, device)   # each arm afresh, as its own training process does
    noise = np.random.default_rng(0).integers(0, cfg.data.vocab_size, (run.batch, run.context + 1))
    ranks = Ranks(device=device)

    def batch(index: int) -> np.ndarray:
        # Real text trains the attention into its real, peaked shape (the gate's work depends on it).
        return noise if corpus is None else step_sequences(corpus.train, index, run.batch, run.context)

    def step(index: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(index, cfg)
        train_step(model, model, optimizer, batch(index), cfg, ranks)

    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    before = _dynamo_counts()
    elapsed = 0.0
    for index in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            elapsed += time.perf_counter() - tick
    dynamo = {key: count - before[key] for key, count in _dynamo_counts().items()}
    profiled = _profile(lambda: step(warmup + steps), device) if profile else {}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    with attention.counting() as kept, torch.no_grad(), torch.compiler.set_stance("force_eager"), autocast(device):
        sequence_loss(model, torch.from_numpy(batch(warmup + steps + 1)[:run.micro_batch]).to(device))
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"arm": name, "attention": arm.attention,
            "steps": steps,
            "tokens_per_s": steps * run.batch * run.context / elapsed, "step_ms": 1e3 * elapsed / steps,
            "peak_memory_gib": peak, "warmup_on": "noise" if corpus is None else "text",
            "kept_fraction": kept.fraction, "dynamo": dynamo, **profiled,
            **({"device_busy": profiled["device_ms"] / (1e3 * elapsed / steps)} if profiled else {})}


def _dynamo_counts() -> dict[str, int]:
    """torch.compile's process-wide tallies: its compile attempts (frames not found in its cache), the
    frames it compiled, and the code objects it gave up on at the recompile limit (their frames then
    run eagerly, silently: a host-bound step's usual cause). Older torch names that limit the cache
    limit."""
    from torch._dynamo.utils import counters

    def at_limit(reason: str) -> bool:
        reason = reason.lower()
        return "limit exceeded" in reason and ("recompile" in reason or "cache" in reason)

    return {"frames": counters["frames"]["total"], "compiled": counters["frames"]["ok"],
            "recompile_limit": sum(n for reason, n in counters["unimplemented"].items() if at_limit(reason))}


def _profile(step, device: torch.device, top: int = 25) -> dict:
    """One step's device time by operator and by kernel (each row its self time; an operator's row
    repeats its kernels' time), the largest first; the device time of the kernels alone, summed; and on
    a GPU how many times the step made the host wait for the device (``torch.cuda.set_sync_debug_mode``:
    item(), nonzero(), copies to the host...)."""
    import warnings

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mode = torch.cuda.get_sync_debug_mode() if cuda else None
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(mode)
                torch.cuda.synchronize()
    rows, busy = [], 0.0
    for event in prof.key_averages():
        ms = getattr(event, "self_device_time_total", 0) / 1e3
        if ms > 0:
            rows.append({"kernel": event.key[:120], "ms": round(ms, 3), "calls": event.count})
        if event.device_type == DeviceType.CUDA and not event.is_user_annotation:
            busy += ms   # kernels, not the operators that launched them nor record_function's GPU spans
    syncs = sum("synchroniz" in str(w.message) for w in caught) if cuda else None
    return {"kernels": sorted(rows, key=lambda r: -r["ms"])[:top], "device_ms": busy, "host_syncs": syncs}


def selection_speed(cfg: TrainConfig, name: str, device: torch.device, repeats: int = 10) -> dict:
    """One layer's selection, (batch, heads, context, context) causal rows: kernel against sort."""
    from golden_model.gate import select as sort_select
    from gpu_kernels.row_gate import select as kernel_select
    from gpu_kernels.kept_attention import keep_tiles, kept_attention
    from gpu_kernels.row_gate import select_causal_qk

    run, heads = cfg.run, cfg.model.heads
    gate = cfg.arm(name).hpu
    g = torch.Generator(device).manual_seed(1)
    scores = torch.randn(run.batch, heads, run.context, run.context, device=device, generator=g) * 2
    valid = torch.ones(run.context, run.context, dtype=torch.bool, device=device).tril()
    probs = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    q, k, v = (torch.randn(run.batch, heads, run.context, cfg.model.hidden_size // heads, device=device,
                           dtype=torch.bfloat16, generator=g, requires_grad=True) for _ in range(3))
    steps = {
        "triton": lambda: kernel_select(probs, None, gate, causal=True),
        "fused_qk": lambda: select_causal_qk(q, k, gate, q.shape[-1] ** -0.5),
        "sort": lambda: sort_select(probs, valid.expand(probs.shape), gate),
        "scores_softmax": lambda: torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2))
                                                .masked_fill_(~valid, float("-inf")), -1),
        "sdpa_masked_fwd_bwd": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=keep).sum().backward(),
        "sdpa_causal_fwd_bwd": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True).sum().backward(),
        "kept_attention_fwd_bwd": lambda: kept_attention(q, k, v, keep, q.shape[-1] ** -0.5).sum().backward(),
    }
    keep = kernel_select(probs, None, gate, causal=True)[0]
    times = {}
    for label, fn in steps.items():
        fn()
        torch.cuda.synchronize()
        tick = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        times[label] = 1e3 * (time.perf_counter() - tick) / repeats
    want = sort_select(probs, valid.expand(probs.shape), gate)[0]
    differ = (keep != want).any(-1)
    fused = select_causal_qk(q, k, gate, q.shape[-1] ** -0.5)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    exact = sort_select(torch.softmax(scores.masked_fill_(~valid, float("-inf")), -1), valid.expand(probs.shape), gate)[0]
    fused_differ = (fused != exact).any(-1)
    # Rows that differ must differ only where float rounding decides: the target within the float32
    # sums' error of the mass at the kernel's last kept key.
    tiles = keep_tiles(keep)
    return {"arm": name, "shape": list(probs.shape), "layer_ms": times,
            "kept_tiles_fraction": float(tiles.sum() / keep_tiles(valid.expand(keep.shape)).sum()), "speedup": times["sort"] / times["triton"],
            "kept_fraction": float(keep.sum() / valid.expand(probs.shape).sum()),
            "rows": differ.numel(), "rows_differing": int(differ.sum()),
            "keys_differing": int((keep != want).sum()),
            "fused_rows_differing": int(fused_differ.sum()),
            "fused_kept_fraction": float(fused.sum() / valid.expand(probs.shape).sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train/ab.toml", help="the experiment's TOML")
    parser.add_argument("--arms", nargs="+", default=["dense", "mass50", "mass05"], help="arms, the baseline first")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per arm")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--data", metavar="PATH", help="train on this text (the experiment's source, a folder or "
                        "a pack) instead of random tokens, so the attention the gate sees is a trained one")
    parser.add_argument("--profile", action="store_true", help="also record one step's device time by kernel")
    parser.add_argument("-o", "--output", default="benchmarks/results/train_speed.json", help="JSON to write")
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    corpus = None
    if args.data:
        from training.data import prepare

        corpus = prepare(cfg.with_source(args.data).data, progress=False)
    arms = []
    for name in args.arms:
        arms.append(arm_speed(cfg, name, args.steps, args.warmup, device, corpus, args.profile))
        arms[-1]["vs_first"] = arms[-1]["tokens_per_s"] / arms[0]["tokens_per_s"]
        print(f"{arms[-1]['arm']}: {arms[-1]['tokens_per_s']:,.0f} tokens/s ({arms[-1]['vs_first']:.2f}x {args.arms[0]}), "
              f"peak {arms[-1]['peak_memory_gib']} GiB, kept {arms[-1]['kept_fraction']:.3f}", flush=True)
        print(f"    torch.compile: {arms[-1]['dynamo']}")
        if "device_ms" in arms[-1]:
            print(f"    device busy {arms[-1]['device_busy']:.2f} of the step, {arms[-1]['host_syncs']} host syncs")
        for row in arms[-1].get("kernels", [])[:12]:
            print(f"    {row['ms']:8.3f} ms {row['calls']:4d}x {row['kernel']}")
    selection = [selection_speed(cfg, name, device) for name in args.arms
                 if cfg.arm(name).attention == attention.NAME] if device.type == "cuda" else []
    for s in selection:
        print(f"selection {s['arm']}: {s['layer_ms']}, rows differing {s['rows_differing']} of {s['rows']} "
              f"({s['keys_differing']} keys)", flush=True)
    write(args.output, {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                        "config": args.config, "batch": cfg.run.batch, "context": cfg.run.context,
                        "arms": arms, "selection": selection})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
