"""Where a loss gap lives: an arm's run against a baseline's, token by token on the same held-out text.

A validation loss is one number a run, and the gap between an arm and dense says how much the arm
loses, not where. `loss_gap` evaluates both checkpoints (float32 weights, each with the attention it
was trained with, under training's autocast: bf16 on a GPU) on the same sequences of the runs'
context, the ones `training.loop.evaluate` reads, and splits the mean gap two ways, each a sum:

- by what the arm lets a token read (`training.routing.unread`): the tokens that read no other token
  in any layer, and the rest. Each part is the share of tokens times the mean gap on them, so the parts
  add up to the gap. A token unread everywhere has a hidden state of itself alone, so the arm predicts
  it from the token alone, and the gap there is what missing context costs on it. The split is
  descriptive: the other tokens carry routing's cost too (under sqdk they read keys built from
  context-free hidden states), and the choice is the top-k's, which looks ahead within a block. An
  arm whose routers leave a layer unrouted (``route_layers = "alternate"``) leaves only each
  sequence's first token unread, and an arm without routers (the mass gate alone) gets no such split.
- by position in the sequence, in bins of doubling width (tokens read so far: 1, 2-3, 4-7, ...; the
  last bin takes the remainder): a token deep into a sequence has more context to read, so a model
  that reads its context gains there and one that cannot does not. The bins' parts add up to the gap
  as well.

And it probes copying directly (`copy_probe`, the repeated-random-tokens test of induction heads, Olsson et
al. 2022): distinct tokens drawn at random from those the held-out text holds (no end-of-text token),
then the same tokens again. Nothing predicts the first pass but the tokens' frequencies; a model that
can look a token up in its context and copy what followed it predicts the repeat. The drop from the
first pass to the repeat is how much a model copies from its context.

Both runs must share the experiment's model shape, context, evaluation and token stream; anything else
is refused before anything is read or written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from hpu.errors import InputError
from hpu.files import read_json, staged, write_json, write_text
from training import routing
from training.data import Corpus
from training.hardware import trained_model
from training.loop import MODEL, RESULT, autocast, held_out_sequences, sequence_loss

JSON, TABLE, PLOT = "gap.json", "gap.md", "gap.png"


def position_bins(context: int) -> list[tuple[int, int]]:
    """[first, last] positions (0-based: the token at position p predicts the next one having read
    p + 1 tokens) of bins of doubling width over a sequence of `context` tokens: [0, 0], [1, 2], [3, 6],
    ...; a last bin narrower than the one before it joins that one (a bin of a few tokens is noise)."""
    bins, first = [], 0
    while first < context:
        bins.append((first, min(context, 2 * first + 1) - 1))
        first = 2 * first + 1
    if len(bins) > 1 and bins[-1][1] - bins[-1][0] < bins[-2][1] - bins[-2][0]:
        bins[-2:] = [(bins[-2][0], bins[-1][1])]
    return bins


@torch.no_grad()
def token_losses(model, sequences: np.ndarray, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, T + 1) token ids: each position's next-token loss (N, T) float64, and with routers the (N, T)
    bool of the tokens that read no other token (`routing.unread`), else None."""
    device = next(model.parameters()).device
    losses, alone = [], []
    for i in range(0, len(sequences), micro_batch):
        batch = torch.from_numpy(sequences[i:i + micro_batch].astype(np.int64)).to(device)
        with autocast(device):   # as training's evaluation ran: bf16 on a GPU
            losses.append(sequence_loss(model, batch, reduction="none").double().cpu())
        mask = routing.unread(model)
        alone.append(None if mask is None else mask.cpu())
    return torch.cat(losses), None if alone[0] is None else torch.cat(alone)


def _part(mask: torch.Tensor, arm: torch.Tensor, base: torch.Tensor) -> dict:
    """The tokens under `mask`: their share, each model's mean loss on them, the mean gap there and
    its part of the whole gap (share x gap)."""
    n = int(mask.sum())
    share = n / mask.numel()
    if not n:
        return {"tokens": 0, "share": 0.0, "loss_arm": None, "loss_base": None, "gap": None, "part": 0.0}
    loss_arm, loss_base = float(arm[mask].mean()), float(base[mask].mean())
    return {"tokens": n, "share": share, "loss_arm": loss_arm, "loss_base": loss_base,
            "gap": loss_arm - loss_base, "part": share * (loss_arm - loss_base)}


def split_gap(arm: torch.Tensor, base: torch.Tensor, unread: torch.Tensor | None) -> dict:
    """(N, T) per-token losses of the arm and the baseline on the same tokens, and the arm's unread
    tokens (None without routers): the gap, by what the arm lets a token read and by position."""
    gap = float(arm.mean() - base.mean())
    out = {"tokens": arm.numel(), "loss_arm": float(arm.mean()), "loss_base": float(base.mean()), "gap": gap}
    if unread is not None:
        out["unread"] = _part(unread, arm, base)
        out["read"] = _part(~unread, arm, base)
    positions = []
    for first, last in position_bins(arm.shape[1]):
        mask = torch.zeros_like(arm, dtype=torch.bool)
        mask[:, first:last + 1] = True
        part = _part(mask, arm, base)
        if unread is not None:
            part["unread_share"] = float(unread[:, first:last + 1].double().mean())
        positions.append({"first": first, "last": last, **part})
    out["positions"] = positions
    return out


@torch.no_grad()
def copy_probe(model, stream: np.ndarray, context: int, sequences: int, micro_batch: int, eos_id: int,
               seed: int = 0) -> dict:
    """Sequences of `context` + 1 tokens: ``context // 2`` distinct tokens drawn at random from those
    `stream` holds (never `eos_id`, which ends a document), repeated until the sequence is full. The
    mean loss on the first pass's tokens after its first (``first``) and on the same tokens in the
    second pass (``repeat``), the repeat's start left out (no model can know the repeat begins);
    ``copied`` = first - repeat."""
    half = context // 2
    tokens = np.setdiff1d(np.unique(np.asarray(stream)), [eos_id])
    if half < 2 or len(tokens) < half:
        raise InputError(f"the copy probe needs a context of 4 or more tokens and as many distinct tokens as half of "
                         f"it: this one has {context}, and the held-out text {len(tokens)} distinct tokens")
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(tokens, half, replace=False) for _ in range(sequences)])
    seqs = np.tile(draws, (1, context // half + 1))[:, :context + 1]
    losses, _ = token_losses(model, seqs, micro_batch)
    # Position p predicts token p + 1: the first pass's tokens 1..half-1, then the same tokens repeated.
    first, repeat = float(losses[:, :half - 1].mean()), float(losses[:, half:2 * half - 1].mean())
    return {"sequences": sequences, "half": half, "first": first, "repeat": repeat, "copied": first - repeat}


def _run(folder: Path) -> dict:
    run = read_json(folder / RESULT, "run result", "name the folder of a finished `hpu train` run")
    if not (folder / MODEL).is_dir():
        raise InputError(f"{folder} holds no checkpoint ({MODEL}/): name the folder of a finished `hpu train` run")
    return run


def check(arm_run: str | Path, base_run: str | Path, device: str) -> tuple[dict, dict, torch.device]:
    """The two runs' results and the torch device, once both are known fit to compare there.

    Raises
    ------
    InputError
        A folder that is no finished run, runs of different experiments (model, context, evaluation,
        text), or a device that is neither the CPU nor a CUDA GPU this machine has.
    """
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if not match:
        raise InputError(f"device {device!r}: name cpu, cuda or cuda:N")
    if device != "cpu" and int(match.group(1) or 0) >= torch.cuda.device_count():
        raise InputError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs; name one of them "
                         "or cpu")
    arm, base = _run(Path(arm_run)), _run(Path(base_run))
    for what, get in (("the token stream", lambda r: r["data"]), ("the model", lambda r: r["config"]["model"]),
                      ("the context", lambda r: r["config"]["run"]["context"]),
                      ("the evaluation", lambda r: r["config"]["run"]["eval_tokens"])):
        if get(arm) != get(base):
            raise InputError(f"{arm_run} and {base_run} differ in {what}: compare runs of one experiment")
    return arm, base, torch.device(device)


def loss_gap(arm_run: str | Path, base_run: str | Path, corpus: Corpus, sequences: int | None = None,
             device: str = "cpu", micro_batch: int | None = None) -> dict:
    """The gap of `arm_run`'s checkpoint to `base_run`'s on each held-out split of `corpus` (the runs'
    token stream), split by what the arm lets a token read and by position (`split_gap`), with each
    model's `copy_probe`. `sequences` per split: by default the runs' evaluation's (eval_tokens /
    context), so that the losses are the runs' recorded validation losses (``recorded``), up to the
    compiled kernels' rounding on a GPU; `micro_batch` sequences at a time (default: the run's).
    Refuses what `check` refuses."""
    arm, base, device = check(arm_run, base_run, device)
    run = arm["config"]["run"]
    context = run["context"]
    wanted = sequences * context if sequences else run["eval_tokens"]
    micro_batch = micro_batch or run["micro_batch"]
    models = {name: trained_model(Path(folder) / MODEL, dtype=torch.float32).to(device)
              for name, folder in (("arm", arm_run), ("base", base_run))}
    splits = {}
    for split, stream in sorted(corpus.val.items()):
        seqs = held_out_sequences(stream, context, wanted)
        n = len(seqs)
        if not n:
            continue
        arm_losses, unread = token_losses(models["arm"], seqs, micro_batch)
        base_losses, _ = token_losses(models["base"], seqs, micro_batch)
        splits[split] = {"sequences": n, **split_gap(arm_losses, base_losses, unread),
                         "recorded": {"arm": arm["final"].get(f"loss_{split}"), "base": base["final"].get(f"loss_{split}")},
                         "copy": {name: copy_probe(model, stream, context, n, micro_batch, corpus.eos_id)
                                  for name, model in models.items()}}
    if not splits:
        raise InputError(f"no held-out split holds a sequence of {context + 1} tokens")
    return {"arm": arm["arm"], "arm_seed": arm["seed"], "arm_run": str(arm_run), "base": base["arm"],
            "base_seed": base["seed"], "base_run": str(base_run), "context": context, "router": arm.get("router"),
            "device": str(device), "splits": splits}


def markdown(result: dict) -> str:
    def f(x, sign=""):
        return "-" if x is None else f"{x:{sign}.4f}"

    lines = [f"# Where the gap lives: {result['arm']} (seed {result['arm_seed']}) against {result['base']} "
             f"(seed {result['base_seed']})", "", f"Evaluated on {result['device']}.", ""]
    for split, s in result["splits"].items():
        recorded = s["recorded"]
        lines += [f"## {split}: {s['sequences']} sequences of {result['context']} tokens", "",
                  f"loss {s['loss_arm']:.4f} against {s['loss_base']:.4f}: gap {s['gap']:+.4f} (the runs recorded "
                  f"{f(recorded['arm'])} and {f(recorded['base'])})", ""]
        copy = s["copy"]
        lines += [f"Repeated random tokens ({copy['arm']['sequences']} sequences of {copy['arm']['half']} tokens drawn from "
                  "this text, then the same again): the loss on the first pass and on the repeat.", "",
                  "| model | first pass | repeat | copied |", "|---|---|---|---|"]
        for name, label in (("arm", result["arm"]), ("base", f"{result['base']} (baseline)")):
            c = copy[name]
            lines.append(f"| {label} | {c['first']:.4f} | {c['repeat']:.4f} | {c['copied']:+.4f} |")
        lines.append("")
        if "unread" in s:
            lines += ["| tokens | share | loss, arm | loss, baseline | gap there | part of the gap |", "|---|---|---|---|---|---|"]
            for name, label in (("unread", "read no other token"), ("read", "read another")):
                p = s[name]
                lines.append(f"| {label} | {p['share']:.3f} | {f(p['loss_arm'])} | {f(p['loss_base'])} | "
                             f"{f(p['gap'], '+')} | {p['part']:+.4f} |")
            lines.append("")
        lines += ["| tokens read | loss, arm | loss, baseline | gap there | part of the gap |"
                  + (" read nothing |" if "unread" in s else ""),
                  "|---|---|---|---|---|" + ("---|" if "unread" in s else "")]
        for p in s["positions"]:
            span = f"{p['first'] + 1}" if p["first"] == p["last"] else f"{p['first'] + 1}-{p['last'] + 1}"
            lines.append(f"| {span} | {f(p['loss_arm'])} | {f(p['loss_base'])} | {f(p['gap'], '+')} | "
                         f"{p['part']:+.4f} |" + (f" {p['unread_share']:.3f} |" if "unread" in s else ""))
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Per split, each model's mean loss by position bin (log scale), the arm dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = result["splits"]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    for ax, (split, s) in zip(axes[0], splits.items()):
        middle = [(p["first"] + p["last"]) / 2 + 1 for p in s["positions"]]
        ax.plot(middle, [p["loss_base"] for p in s["positions"]], "k-o", label=f"{result['base']} (baseline)")
        ax.plot(middle, [p["loss_arm"] for p in s["positions"]], "--o", color="tab:red", label=result["arm"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens read so far (bin middle)")
        ax.set_ylabel("next-token loss (nats)")
        ax.set_title(f"{split}: gap {s['gap']:+.3f}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with staged(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)


def write(result: dict, out: str | Path) -> None:
    out = Path(out)
    plot(result, out / PLOT)
    write_text(out / TABLE, markdown(result))
    write_json(out / JSON, result)
