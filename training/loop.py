"""One training run: an arm of an experiment at one seed, on one or many GPUs (torchrun and DDP).

The token stream is fixed: optimizer step ``s`` trains on the ``batch`` sequences that start at token
``s * batch * context`` of the training split (wrapping round at its end), for every arm, seed and
number of ranks. Rank ``r`` of ``W`` takes the sequences ``r * batch / W`` up to the next rank's, in
micro-batches; each rank's loss is the mean over its tokens and DDP averages the gradients, so a step
is the same on one rank as on many, to float tolerance. The seed sets the initial weights, the same
for every arm: the arms differ only in attention.

A run writes into its own folder: ``result.json`` (every hyperparameter, the device, the versions, the
curves, the final validation losses and tokens/s), ``model/`` (safetensors in the Hugging Face layout,
with the tokenizer) and, while it runs, ``state.pt`` (weights and optimizer every
``checkpoint_every`` steps) from which a run cut short resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hpu.errors import InputError
from hpu.files import claim, read_json, staged, write_json
from training import attention, routing
from training.config import Arm, TrainConfig
from training.data import EOS, Corpus, prepare

RESULT = "result.json"
STATE = "state.pt"
MODEL = "model"


# -- ranks ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """The number of ranks torchrun started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_ranks() -> Ranks:
    """This process's rank from torchrun's environment (one rank without it); NCCL on GPUs, else gloo."""
    world = world_size()
    if world == 1:
        return Ranks(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=rank, world=world, device=device)


# -- the token stream -------------------------------------------------------------------------------

def step_sequences(stream: np.ndarray, step: int, batch: int, context: int) -> np.ndarray:
    """(batch, context + 1) tokens of optimizer step `step`: inputs and their next-token targets."""
    start = step * batch * context
    index = (start + np.arange(batch)[:, None] * context + np.arange(context + 1)[None, :]) % len(stream)
    return stream[index].astype(np.int64)


def held_out_sequences(stream: np.ndarray, context: int, tokens: int) -> np.ndarray:
    """(N, context + 1) int64: the first sequences of a held-out stream, as many as `tokens` asks (at
    least one) and the stream holds whole, each with its next-token targets: what evaluation reads.
    N is 0 when the stream is no longer than `context`."""
    n = max(0, min(max(1, tokens // context), (len(stream) - 1) // context))
    return stream[np.arange(n)[:, None] * context + np.arange(context + 1)].astype(np.int64)


def rank_micro_batches(sequences: np.ndarray, ranks: Ranks, micro_batch: int) -> list[np.ndarray]:
    mine = np.array_split(sequences, ranks.world)[ranks.rank]
    return [mine[i:i + micro_batch] for i in range(0, len(mine), micro_batch)]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    run = cfg.run
    if step < run.warmup_steps:
        return run.lr * (step + 1) / run.warmup_steps
    return cosine((step - run.warmup_steps) / max(1, run.steps - run.warmup_steps), run.lr, run.min_lr)


def cosine(progress: float, high: float, low: float) -> float:
    """From `high` at progress 0 to `low` at progress 1 (and after) along a half cosine."""
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw(parameters, cfg: TrainConfig, device: torch.device, lr: float) -> torch.optim.AdamW:
    """Training's optimizer over `parameters`: weight decay on matrices only, fused on a GPU."""
    parameters = list(parameters)
    return torch.optim.AdamW([{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": cfg.run.weight_decay},
                              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def permeability(step: int, cfg: TrainConfig, arm: Arm) -> float:
    """The gate opens fully at step 0 and closes linearly to the arm's permeability over anneal_steps."""
    target = arm.hpu.permeability
    if step >= cfg.run.anneal_steps:
        return target
    return 1.0 - (1.0 - target) * step / cfg.run.anneal_steps


# -- the model ----------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, arm: Arm, corpus: Corpus, seed: int):
    """A Llama-style decoder from scratch; the same weights for every arm at one seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    attention.register()
    routing.register()
    m = cfg.model
    config = LlamaConfig(vocab_size=corpus.vocab_size, hidden_size=m.hidden_size,
                         intermediate_size=m.intermediate_size, num_hidden_layers=m.layers,
                         num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                         max_position_embeddings=cfg.run.context,
                         rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
                         bos_token_id=None, eos_token_id=corpus.eos_id, pad_token_id=None,
                         tie_word_embeddings=True, attn_implementation=arm.attention)
    if arm.attention == attention.NAME:
        config.hpu_gate = {name: getattr(arm.hpu, name) for name in attention.GATE_FIELDS}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if arm.router is not None:
        routing.attach(model, arm.router, seed=seed)
    return model


def set_permeability(model, value: float) -> None:
    gate = getattr(model.config, "hpu_gate", None)
    if gate is not None:
        model.config.hpu_gate = {**gate, "permeability": value}


def autocast(device: torch.device):
    # bf16 on GPUs (the protocol); the CPU trains in float32 so tests compare exactly.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def sequence_loss(model, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(B, T + 1) tokens: the mean next-token loss, or with ``reduction="none"`` each position's (B, T)."""
    # No KV cache: nothing decodes here, and a cache makes torch.compile guard on each layer's cache entry.
    logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction=reduction)
    return loss.view(tokens.shape[0], -1) if reduction == "none" else loss


def compile_layers(model, backend: str = "inductor") -> None:
    """Compile each decoder layer of `model` in place (regional compilation), after clearing what
    earlier models in this process compiled.

    Not the whole model: traced, transformers' mask builder cannot see that a cache-less batch holds one
    sequence a row (its packed-sequence check reads the position ids), so it builds a full boolean mask,
    and the gate, given a mask, leaves its fused causal kernel for the probabilities under the mask
    (docs/TRAINING.md, "Speed"). Run eagerly, the builder gives plain causal rows no mask.
    The layers share one code object, and with modules inlined (dynamo's default) one compiled frame
    serves every layer at any depth. Earlier models' entries are cleared because they count towards
    dynamo's recompile limit, past which a layer would silently run uncompiled. No-grad passes
    (evaluation, counting) run under ``torch.compiler.set_stance("force_eager")``: they compile nothing."""
    torch._dynamo.reset()
    for layer in model.model.layers:
        layer.compile(backend=backend)


def compile_for_training(model, cfg: TrainConfig, device: torch.device) -> None:
    """`compile_layers` where training compiles: ``run.compile`` set, on a GPU (the CPU trains eagerly,
    so that its tests compare exactly and start at once)."""
    if cfg.run.compile and device.type == "cuda":
        compile_layers(model)


@torch.no_grad()
@torch.compiler.set_stance("force_eager")
def evaluate(model, corpus: Corpus, cfg: TrainConfig, ranks: Ranks) -> dict:
    """Mean next-token loss on the first eval_tokens of each held-out split, and the kept fraction."""
    model.eval()
    context, losses = cfg.run.context, {}
    total = count = 0.0
    # With routers: the predictors', the causal choice's and the HPU's agreement with the top-k, the
    # routed and attention-FLOP fractions, and the loss when the predictors or the causal choice route
    # (decoding's choices, teacher-forced) and when the HPU's routing step does (scores quantized to
    # route_bits), summed per sequence.
    routed = torch.zeros(len(routing.EVALUATED), dtype=torch.float64, device=ranks.device)
    kept = attention.KeptCount()   # of the main pass only (not the predictors' or the HPU's passes)
    for name, stream in sorted(corpus.val.items()):
        seqs = held_out_sequences(stream, context, cfg.run.eval_tokens)
        if not len(seqs):
            continue
        mine = np.array_split(seqs, ranks.world)[ranks.rank]
        loss_sum = torch.zeros((), dtype=torch.float64, device=ranks.device)
        for i in range(0, len(mine), cfg.run.micro_batch):
            batch = torch.from_numpy(mine[i:i + cfg.run.micro_batch]).to(ranks.device)
            with autocast(ranks.device):
                with attention.counting(kept):
                    per_token = sequence_loss(model, batch, reduction="none")
                loss_sum += per_token.double().mean() * len(batch)
                stats = routing.statistics(model, per_token)
                if stats:
                    for choice, (*_, figure) in routing.MEASURED.items():
                        with routing.choosing(model, choice):
                            stats[figure] = float(sequence_loss(model, batch))
                    routed += torch.tensor([stats[k] for k in routing.EVALUATED], dtype=torch.float64,
                                           device=ranks.device) * len(batch)
        if ranks.world > 1:
            dist.all_reduce(loss_sum)
        losses[name] = float(loss_sum) / len(seqs)
        total += float(loss_sum) * context
        count += len(seqs) * context
    model.train()
    if ranks.world > 1:
        dist.all_reduce(routed)
        # Each rank counted the kept keys of its own share of the sequences.
        counts = torch.stack([torch.as_tensor(c, dtype=torch.float64, device=ranks.device)
                              for c in (kept.kept, kept.admissible)])
        dist.all_reduce(counts)
        kept.kept, kept.admissible = counts
    sequences = count / context
    return {"loss": total / count, **{f"loss_{name}": value for name, value in losses.items()},
            "kept_fraction": kept.fraction,
            **({k: float(v) / sequences for k, v in zip(routing.EVALUATED, routed)} if routing.routers(model) else {})}


# -- the run ------------------------------------------------------------------------------------------

def train_step(model, wrapped, optimizer, sequences: np.ndarray, cfg: TrainConfig, ranks: Ranks) -> torch.Tensor:
    """One optimizer step on the step's `sequences` (this rank takes its share): micro-batches under
    autocast through `wrapped` (`model` or its DDP wrapper, gradients reduced on the last micro-batch
    only), the routers' predictor loss beside the model's, gradients clipped. Returns this rank's
    loss, on the device (no host sync)."""
    micro = rank_micro_batches(sequences, ranks, cfg.run.micro_batch)
    loss_sum = torch.zeros((), device=ranks.device)
    for i, part in enumerate(micro):
        tokens = torch.from_numpy(part).to(ranks.device, non_blocking=True)
        sync = ranks.world == 1 or i == len(micro) - 1
        with contextlib.nullcontext() if sync else wrapped.no_sync(), autocast(ranks.device):
            share = len(part) / (cfg.run.batch / ranks.world)
            loss = sequence_loss(wrapped, tokens) * share
            # The routers' predictors learn beside the model (their own weights only).
            aux = routing.auxiliary_loss(model)
        (loss if aux is None else loss + aux * share).backward()
        loss_sum += loss.detach()
    # The predictors' gradients are clipped apart from the model's: clipped together, a predictor (kept
    # out of the model's loss by its stopped gradient) would still rescale the model's update.
    predictors = routing.predictor_parameters(model)
    theirs = {id(p) for p in predictors}
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if id(p) not in theirs], cfg.run.grad_clip)
    if predictors:
        torch.nn.utils.clip_grad_norm_(predictors, cfg.run.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def run_corpus(run: dict, source: str | Path | None = None, progress: bool = True) -> Corpus:
    """The corpus a finished run's result (`RESULT`) names, its text read from `source` when given."""
    return prepare(TrainConfig.from_dict(run["config"]).with_source(source).data, progress=progress)


def run_folder(root: str | Path, arm: Arm, seed: int) -> Path:
    return Path(root) / f"{arm.name}-seed{seed}"


def versions() -> dict:
    import transformers
    import triton

    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
            f"cpu ({platform.processor() or platform.machine()})"}


def train(cfg: TrainConfig, arm: Arm, seed: int, corpus: Corpus, root: str | Path, progress: bool = True,
          ranks: Ranks | None = None) -> dict:
    """Train one arm at one seed into ``root/ARM-seedSEED``; returns its result (also written as JSON).

    A finished run is not trained again (its result is returned); a run cut short resumes from its
    last state if that state was written by the same configuration.
    """
    ranks = ranks or start_ranks()
    if cfg.run.batch % ranks.world:
        raise InputError(f"batch = {cfg.run.batch} sequences cannot be shared by {ranks.world} ranks: "
                         "choose a batch that the number of ranks divides")
    folder = run_folder(root, arm, seed)
    fingerprint = cfg.fingerprint(arm)
    if (folder / RESULT).exists():
        done = read_json(folder / RESULT, "run result")
        if done.get("fingerprint") == fingerprint and done.get("data") == corpus.fingerprint:
            return done
        raise InputError(f"{folder} holds a run of another configuration or token stream: "
                         "choose another results folder or remove that run")
    # The folder is this run's alone (a second process training the same arm and seed is refused);
    # its resume state is kept, since resuming is the point of it.
    with claim(folder, "run folder") if ranks.main else contextlib.nullcontext():
        return _train(cfg, arm, seed, corpus, folder, fingerprint, progress, ranks)


def _train(cfg: TrainConfig, arm: Arm, seed: int, corpus: Corpus, folder: Path, fingerprint: str, progress: bool,
           ranks: Ranks) -> dict:
    model = build_model(cfg, arm, corpus, seed).to(ranks.device)
    optimizer = adamw(model.parameters(), cfg, ranks.device, cfg.run.lr)
    history = {"train": [], "val": []}
    start, tokens_seen, train_seconds = 0, 0, 0.0
    state_path = folder / STATE
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location=ranks.device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise InputError(f"{state_path} is not a resume state this toolkit wrote ({type(exc).__name__}): "
                             "remove it to train this run from the start") from None
        if state["fingerprint"] == fingerprint and state["data"] == corpus.fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, tokens_seen, train_seconds = state["step"], state["tokens"], state["seconds"]
            history = state["history"]
    compile_for_training(model, cfg, ranks.device)
    wrapped = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)
    steps, run = cfg.run.steps, cfg.run
    bar = None
    if progress and ranks.main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"{arm.name} seed {seed}", unit="step", dynamic_ncols=True)
    last_eval = {"kept_fraction": 1.0}
    timed_from = None
    for step in range(start, steps):
        if step % run.eval_every == 0:
            set_permeability(model, permeability(step, cfg, arm))
            last_eval = {"step": step, "tokens": tokens_seen, **evaluate(model, corpus, cfg, ranks)}
            history["val"].append(last_eval)
        set_permeability(model, permeability(step, cfg, arm) if arm.attention == attention.NAME else 1.0)
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if ranks.device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss_sum = train_step(model, wrapped, optimizer,
                              step_sequences(corpus.train, step, run.batch, run.context), cfg, ranks)
        if ranks.world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= ranks.world
        tokens_seen += run.batch * run.context
        if step % run.log_every == 0 or step == steps - 1:
            value = float(loss_sum)  # one host sync per log interval
            history["train"].append([step, tokens_seen, value])
        if ranks.device.type == "cuda":
            torch.cuda.synchronize()
        # The first steps compile and warm up: tokens/s counts from the third step on.
        if step >= start + 2:
            train_seconds += time.perf_counter() - tick
            timed_from = timed_from if timed_from is not None else step
        if bar is not None:
            bar.update(1)
            if history["train"]:
                bar.set_postfix(loss=f"{history['train'][-1][2]:.3f}",
                                tok_s=f"{_rate(run, step, timed_from, train_seconds):,.0f}",
                                kept=f"{last_eval['kept_fraction']:.3f}", refresh=False)
        if (step + 1) % run.checkpoint_every == 0 and step + 1 < steps and ranks.main:
            _save_state(state_path, model, optimizer, step + 1, tokens_seen, train_seconds, history,
                        fingerprint, corpus.fingerprint)
    if bar is not None:
        bar.close()
    set_permeability(model, arm.hpu.permeability if arm.attention == attention.NAME else 1.0)
    final = {"step": steps, "tokens": tokens_seen, **evaluate(model, corpus, cfg, ranks)}
    history["val"].append(final)
    result = {
        "arm": arm.name, "seed": seed, "attention": arm.attention,
        "gate": {name: getattr(arm.hpu, name) for name in attention.GATE_FIELDS} if arm.attention == attention.NAME else None,
        **({"router": arm.router.as_dict()} if arm.router is not None else {}),
        "fingerprint": fingerprint, "data": corpus.fingerprint, "config": cfg.to_dict(), "ranks": ranks.world,
        "parameters": sum(p.numel() for p in model.parameters()), "versions": versions(),
        "steps": steps, "tokens": tokens_seen, "epochs": tokens_seen / len(corpus.train),
        "tokens_per_s": _rate(run, steps - 1, timed_from, train_seconds), "train_seconds": train_seconds,
        "final": final, "history": history,
    }
    if ranks.main:
        save_checkpoint(model, corpus, folder / MODEL)
        write_json(folder / RESULT, result)
        state_path.unlink(missing_ok=True)
    return result


def _rate(run, step: int, timed_from: int | None, seconds: float) -> float:
    if timed_from is None or seconds <= 0:
        return 0.0
    return (step - timed_from + 1) * run.batch * run.context / seconds


def _save_state(path: Path, model, optimizer, step, tokens, seconds, history, fingerprint, data) -> None:
    with staged(path) as temp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "tokens": tokens, "seconds": seconds, "history": history,
                    "fingerprint": fingerprint, "data": data}, temp)


def save_checkpoint(model, corpus: Corpus, folder: Path) -> None:
    """The model in the Hugging Face layout (safetensors; routers' weights and settings included), with
    its tokenizer, so that `AutoModelForCausalLM.from_pretrained` and `routing.load` read it."""
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_file=str(corpus.tokenizer_path), eos_token=EOS).save_pretrained(folder)


def run_experiment(cfg: TrainConfig, root: str | Path, arms: list[str] | None = None, seeds: list[int] | None = None,
                   progress: bool = True, jobs: int = 1) -> list[dict]:
    """Every (arm, seed) asked for into `root`, in seed-major order; finished runs are read back, not
    retrained. One after another, or `jobs` at a time, each in a process of its own on this machine's
    device: a run of this size leaves most of a large GPU idle, and runs side by side are as
    independent as runs apart (same seeds, same token order, one output folder each). A run that
    fails stops the rest: the runs under way finish, none starts after, and its error is raised. An
    interrupt reaches every worker (they share the terminal's process group) and stops them all;
    each run resumes from its last saved state when trained again."""
    from training.data import prepare

    chosen = [cfg.arm(name) for name in arms] if arms else list(cfg.arms)
    pairs = [(arm.name, seed) for seed in (seeds or cfg.run.seeds) for arm in chosen]
    if jobs == 1:
        ranks = start_ranks()
        corpus = prepare(cfg.data, progress=progress and ranks.main)
        return [train(cfg, cfg.arm(arm), seed, corpus, root, progress=progress, ranks=ranks) for arm, seed in pairs]
    if world_size() > 1:
        raise InputError("--jobs runs whole runs side by side on one device; under torchrun the ranks share "
                         "each run: leave --jobs out")
    prepare(cfg.data, progress=progress)   # once, here: the workers read the cache
    import concurrent.futures as futures
    import multiprocessing
    from collections import deque

    results, waiting = {}, deque(pairs)
    # spawn: a fork would copy this process's CUDA and thread state; one run a process, so that no
    # run inherits another's allocator reservations. Only `jobs` runs are submitted at a time, so that
    # a failure or an interrupt leaves nothing queued behind the running ones.
    with futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                     max_tasks_per_child=1) as pool:
        running = {}
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    arm, seed = waiting.popleft()
                    running[pool.submit(_train_alone, cfg, arm, seed, str(root))] = (arm, seed)
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    arm, seed = running.pop(future)
                    results[arm, seed] = future.result()
                    if progress:
                        print(f"{arm} seed {seed}: finished ({len(results)} of {len(pairs)})", flush=True)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [results[pair] for pair in pairs]


def _train_alone(cfg: TrainConfig, arm: str, seed: int, root: str) -> dict:
    """One run in a worker process of `run_experiment` (no progress bar: several would interleave)."""
    from training.data import prepare

    return train(cfg, cfg.arm(arm), seed, prepare(cfg.data, progress=False), root, progress=False)
