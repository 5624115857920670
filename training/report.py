"""The A/B report: every finished run in a results folder, per arm, against the dense arm.

Per arm: the final validation loss (all held-out text, code, prose) as mean and sample standard
deviation over seeds; the gap of the mean to the dense arm's with Welch's t-test (unequal variances;
two-sided p) and, seed by seed, the paired differences with their paired t-test; the kept fraction
at the end and over training; tokens/s; and for a routed arm its router, the attention FLOPs as a
fraction of dense, the gap at equal attention FLOPs and at equal training FLOPs (the whole step's), and
the rest of what its evaluation recorded
(`training.routing.EVALUATED`: the predictor's, the causal choice's and the HPU's agreement with the
top-k, the losses when they route, and those losses minus the top-k's, in a table of their own, with
the share of tokens that read no other token in any layer and the loss on them and on the rest).
Runs join one report only when they share the experiment (model, schedule and token stream);
anything else is refused. A run still training (no result.json) is listed as missing, not guessed.
Outputs: ``ab.json`` (every figure, with each run's device and versions), ``ab.md`` (the table) and
``ab.png`` (every arm's training and validation curves, its gap to the baseline over training, and
each gated arm's kept fraction), written whole or not at all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import read_json, staged, write_json, write_text
from training.loop import RESULT
from training.routing import EVALUATED, MEASURED, RouterConfig

JSON, TABLE, PLOT = "ab.json", "ab.md", "ab.png"


def collect(root: str | Path) -> list[dict]:
    """The results of every finished run directly under `root`, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"results folder {root} does not exist: train with `hpu train` first")
    runs = [read_json(path, "run result") for path in sorted(root.glob(f"*/{RESULT}"))]
    if not runs:
        raise InputError(f"results folder {root} holds no finished run (no */{RESULT})")
    return runs


def _experiment(run: dict) -> dict:
    config = dict(run["config"])
    config["run"] = {k: v for k, v in config["run"].items() if k != "seeds"}
    return {"model": config["model"], "run": config["run"], "data": run["data"]}


def _stats(values: list[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "max": float(values.max()), "n": len(values), "values": values.tolist()}


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's t-test of mean(a) - mean(b); p is None with fewer than two values on a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None}
    t, p = stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(t), "p": float(p) if math.isfinite(p) else None}


def paired(arm: dict[int, float], base: dict[int, float]) -> dict:
    """The per-seed differences arm - base over the seeds both ran, their paired t-test and the 95%
    t interval of their mean. A seed gives both arms the same initial weights and token order, so its
    difference cancels the seed's own luck, which Welch's test counts as noise. The interval says what
    the seeds can bound (a target gap inside it is neither met nor refuted); p and the interval are
    None with fewer than two shared seeds."""
    from scipy import stats

    seeds = sorted(set(arm) & set(base))
    differences = [arm[s] - base[s] for s in seeds]
    result = {"seeds": seeds, "differences": differences, "t": None, "p": None, "interval95": None}
    if len(seeds) >= 2 and np.ptp(differences) > 0:
        t, p = stats.ttest_rel([arm[s] for s in seeds], [base[s] for s in seeds])
        low, high = stats.t.interval(0.95, len(seeds) - 1, loc=np.mean(differences), scale=stats.sem(differences))
        result.update(t=float(t), p=float(p) if math.isfinite(p) else None, interval95=[float(low), float(high)])
    return result


def attention_flops(run: dict) -> float:
    """A run's attention FLOPs per token as a fraction of dense causal attention's (1 without a router)."""
    return run["final"].get("attention_fraction", 1.0)


def training_flops(run: dict) -> float:
    """A run's training FLOPs per token: 6 a parameter (forward and backward of every product; the
    embedding, tied to the output head, counted once as the head) plus three times the forward score
    and value products of causal attention, 4 * hidden * (context + 1) / 2 a layer, times the run's
    attention fraction. The routers' own weights are among the parameters."""
    model, context = run["config"]["model"], run["config"]["run"]["context"]
    attention = 4 * model["layers"] * model["hidden_size"] * (context + 1) / 2
    return 6 * run["parameters"] + 3 * attention * attention_flops(run)


def equal_flops_gap(arm: list[dict], base: list[dict], flops=attention_flops) -> dict | None:
    """A routed arm against the baseline at equal FLOPs, by `flops` per token (`attention_flops`, or
    `training_flops` for the whole step), seed by seed: each run spent its tokens times its FLOPs per
    token, so it is compared with the baseline run of its own seed (same initial weights, same token
    order) after as many FLOPs, linear between that run's evaluations. Against the baseline's mean over
    all its seeds, an arm with fewer seeds would carry the luck of the seeds it lacks. None when the
    arms share no seed."""
    by_seed = {r["seed"]: r for r in base}
    pairs = [(r, by_seed[r["seed"]]) for r in arm if r["seed"] in by_seed]
    if not pairs:
        return None
    tokens, at = [], []
    for run, baseline in pairs:
        tokens.append(run["final"]["tokens"] * flops(run) / flops(baseline))
        val = baseline["history"]["val"]
        at.append(float(np.interp(tokens[-1], [v["tokens"] for v in val], [v["loss"] for v in val])))
    differences = [run["final"]["loss"] - loss for (run, _), loss in zip(pairs, at)]
    return {"seeds": [run["seed"] for run, _ in pairs], "baseline_tokens": float(np.mean(tokens)),
            "baseline_loss": float(np.mean(at)), "differences": differences, "mean": float(np.mean(differences))}


def _history(run: dict, figure: str = "loss") -> dict[int, float]:
    """A run's `figure` (by default its validation loss) at each evaluation that recorded it, by tokens
    seen."""
    return {v["tokens"]: v[figure] for v in run["history"]["val"] if figure in v}


def _shared(histories: list[dict[int, float]]) -> list[int]:
    """The evaluations (tokens seen) that every one of `histories` recorded, in order."""
    return sorted(set.intersection(*(set(h) for h in histories)))


def kept_over_training(runs: list[dict]) -> list[dict]:
    """The kept fraction at each evaluation that every one of `runs` (an arm's seeds) recorded, over seeds."""
    points = [_history(r, "kept_fraction") for r in runs]
    return [{"tokens": t, **_stats([p[t] for p in points])} for t in _shared(points)]


def gap_over_training(runs: list[dict], base: list[dict]) -> list[dict]:
    """At each evaluation that every paired run recorded, over the seeds both arms ran: the arm's
    validation loss minus the baseline's at the same seed (same initial weights, same token order).
    Where along training a gap opens or closes is what a final figure cannot say."""
    by_seed = {r["seed"]: r for r in base}
    pairs = [(r, by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    if not pairs:
        return []
    histories = [_history(run) for pair in pairs for run in pair]
    return [{"tokens": t, **_stats([arm[t] - baseline[t] for arm, baseline in zip(histories[::2], histories[1::2])])}
            for t in _shared(histories)]


def summarize(runs: list[dict]) -> dict:
    experiment = _experiment(runs[0])
    for run in runs[1:]:
        if _experiment(run) != experiment:
            raise InputError(f"run {run['arm']} seed {run['seed']} belongs to another experiment (model, schedule "
                             "or token stream differ): report each experiment's folder apart")
    arms: dict[str, list[dict]] = {}
    for run in runs:
        arms.setdefault(run["arm"], []).append(run)
    dense = [name for name, rs in arms.items() if rs[0]["attention"] == "sdpa" and not rs[0].get("router")]
    baseline = "dense" if "dense" in dense else (dense[0] if dense else None)
    seeds = sorted({run["seed"] for run in runs})
    table = {}
    for name, rs in arms.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"attention": rs[0]["attention"], "gate": rs[0]["gate"], "seeds": [r["seed"] for r in rs],
               "missing_seeds": [s for s in seeds if s not in {r["seed"] for r in rs}],
               "kept_fraction": _stats([r["final"]["kept_fraction"] for r in rs]),
               "tokens_per_s": _stats([r["tokens_per_s"] for r in rs]),
               "tokens": rs[0]["tokens"], "devices": sorted({r["versions"]["device"] for r in rs}),
               "router": rs[0].get("router")}
        if row["gate"] is not None:
            row["kept_over_training"] = kept_over_training(rs)
        for key in EVALUATED:
            if all(key in r["final"] for r in rs):   # runs before a figure was recorded lack it
                row[key] = _stats([r["final"][key] for r in rs])
        # The loss on the tokens that read no other token in any layer, and on the rest.
        if "unread_loss_part" in row:
            final = [r["final"] for r in rs]
            row["unread_loss"] = _stats([f["unread_loss_part"] / f["unread_fraction"] for f in final])
            row["read_loss"] = _stats([(f["loss"] - f["unread_loss_part"]) / (1 - f["unread_fraction"]) for f in final])
        # What routing otherwise than by the top-k costs: each run's loss by that choice minus its own.
        for *_, key in MEASURED.values():
            if key in row:
                row[f"{key}_over_topk"] = _stats([r["final"][key] - r["final"]["loss"] for r in rs])
        # The whole held-out loss and each split's (loss_code, ...); the router's losses are figures above.
        for split in ("loss", *sorted(k for k in rs[0]["final"] if k.startswith("loss_") and k not in EVALUATED)):
            row[split] = _stats([r["final"][split] for r in rs])
            if baseline and name != baseline:
                base = [r["final"][split] for r in arms[baseline]]
                mine = [r["final"][split] for r in rs]
                row[f"{split}_gap"] = {"mean": float(np.mean(mine) - np.mean(base)), **welch(mine, base),
                                       "paired": paired({r["seed"]: r["final"][split] for r in rs},
                                                        {r["seed"]: r["final"][split] for r in arms[baseline]})}
        if baseline:
            # Fastest run against fastest run: runs that share a device only ever slow down.
            row["tokens_per_s_vs_dense"] = row["tokens_per_s"]["max"] / max(r["tokens_per_s"] for r in arms[baseline])
        if baseline and name != baseline:
            row["gap_over_training"] = gap_over_training(rs, arms[baseline])
        if baseline and "attention_fraction" in row:
            row["loss_gap_equal_attention_flops"] = equal_flops_gap(rs, arms[baseline])
            row["loss_gap_equal_training_flops"] = equal_flops_gap(rs, arms[baseline], training_flops)
        table[name] = row
    return {"baseline": baseline, "experiment": experiment, "arms": table,
            "runs": [{k: r[k] for k in ("arm", "seed", "tokens_per_s", "final", "versions", "steps", "tokens",
                                        "parameters", "epochs")} for r in runs]}


def markdown(summary: dict) -> str:
    def fmt(x, digits=4):
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [f"Baseline: {summary['baseline']}. Final validation loss over seeds (mean ± sample std); gap = "
             "arm − baseline, Welch t-test p (two-sided); per seed: arm − baseline at each seed both ran (same "
             "initial weights, same token order), paired t-test p and the 95% t interval of their mean; gap at "
             "equal attention FLOPs: a routed arm against the baseline's validation loss after the routed arm's attention FLOPs (linear between evaluations), seed by seed; "
             "at equal training FLOPs: the same after the routed arm's whole training FLOPs (6 a parameter a token, plus "
             "attention's score and value products; the step's matrix products dominate them at this context); "
             "tokens/s: the arm's fastest training run, a speed figure only where that run had the device to itself "
             "(`benchmarks.train_speed` times the arms one after another, alone on the device).", "",
             "| arm | mass target | permeability | router | seeds | val loss | gap | p | gap per seed | paired p | paired 95% "
             "interval | prose gap "
             "| code gap | kept fraction | attention FLOPs | gap at equal attention FLOPs | gap at equal training FLOPs "
             "| tokens/s (fastest run) | vs dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary["arms"].items():
        # The arm's gate as the run read it: its table over the HPU's defaults (`training.config.Arm.hpu`).
        gate = None if row["gate"] is None else HPUConfig(**row["gate"])
        gap = row.get("loss_gap", {})
        per_seed = gap.get("paired", {})
        lines.append("| " + " | ".join([
            name, f"{gate.mass_target:g}" if gate is not None and gate.mode == "mass" else "-",
            "-" if gate is None else fmt(gate.permeability, 2),
            "-" if not row.get("router") else _router_cell(RouterConfig(**row["router"])),
            str(len(row["seeds"])),
            f"{fmt(row['loss']['mean'])} ± {fmt(row['loss']['std'])}", fmt(gap.get("mean")), fmt(gap.get("p"), 3),
            ", ".join(f"{d:+.3f}" for d in per_seed.get("differences", [])) or "-", fmt(per_seed.get("p"), 3),
            "-" if not per_seed.get("interval95") else "{:+.3f}..{:+.3f}".format(*per_seed["interval95"]),
            fmt(row.get("loss_prose_gap", {}).get("mean")), fmt(row.get("loss_code_gap", {}).get("mean")),
            fmt(row["kept_fraction"]["mean"], 3), fmt(row.get("attention_fraction", {}).get("mean"), 3),
            fmt((row.get("loss_gap_equal_attention_flops") or {}).get("mean")),
            fmt((row.get("loss_gap_equal_training_flops") or {}).get("mean")),
            f"{row['tokens_per_s']['max']:,.0f}",
            fmt(row.get("tokens_per_s_vs_dense"), 2)]) + " |")
    routed = {name: row for name, row in summary["arms"].items() if "routed_fraction" in row}
    if routed:
        head = [f"{choice} {figure}" for choice, (_, share, _) in MEASURED.items()
                for figure in ("agreement", *(["routes"] if share else []), "loss")]
        lines += ["", "Routers at the final evaluation (held-out text, mean over seeds; '-' where a run of the arm "
                  "predates the figure). Agreement: the share of routed layers' tokens on which a choice "
                  "agrees with the top-k; routes: the share it routes (the predictor and the causal choice are "
                  "not held to the capacity); loss: its loss minus the top-k's, teacher-forced. The predictor and "
                  "the causal choice are decoding's; hpu: the HPU's routing step on the scores quantized to "
                  "route_bits. Reads no token: the share of tokens that read no other token's value in any layer "
                  "(`training.routing.unread`; each sequence's first token among them), so that the next token "
                  "is predicted from the token alone; the top-k's loss on them and on the other tokens.", "",
                  "| arm | seeds | top-k routes | " + " | ".join(head) + " | reads no token | loss there | loss elsewhere |",
                  "|---|" + "---|" * (5 + len(head))]
        for name, row in routed.items():
            cells = [name, str(len(row["seeds"])), fmt(row["routed_fraction"]["mean"], 3)]
            for agreement, share, key in MEASURED.values():
                cells += [fmt(row.get(agreement, {}).get("mean"), 4),
                          *([fmt(row.get(share, {}).get("mean"), 3)] if share else []),
                          "-" if f"{key}_over_topk" not in row else f"{row[f'{key}_over_topk']['mean']:+.4f}"]
            cells += [fmt(row.get("unread_fraction", {}).get("mean"), 3),
                      fmt(row.get("unread_loss", {}).get("mean")), fmt(row.get("read_loss", {}).get("mean"))]
            lines.append("| " + " | ".join(cells) + " |")
    for key, caption, form in (
            ("gap_over_training", "Validation-loss gap to the baseline at each evaluation (held-out text; mean over "
             "the seeds both arms ran of arm − baseline at the same seed):", "{:+.3f}"),
            ("kept_over_training", "Kept fraction of the admissible keys at each evaluation (held-out text, mean "
             "over seeds; the permeability anneals from 1 over the first steps):", "{:.3f}")):
        curves = {name: row[key] for name, row in summary["arms"].items() if row.get(key)}
        if not curves:
            continue
        tokens = sorted({p["tokens"] for points in curves.values() for p in points})
        lines += ["", caption, "", "| arm | " + " | ".join(f"{t / 1e6:.3g}M" for t in tokens) + " |",
                  "|---|" + "---|" * len(tokens)]
        for name, points in curves.items():
            at = {p["tokens"]: p["mean"] for p in points}
            # round, then + 0.0: a difference of -1e-17 prints as 0.000, not -0.000.
            lines.append(f"| {name} | " + " | ".join("-" if t not in at else form.format(round(at[t], 3) + 0.0)
                                                     for t in tokens) + " |")
    return "\n".join(lines) + "\n"


def _smoothed_train(run: dict, width: int = 20) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens, loss) of a run's logged training loss as a moving mean over `width` logs (single batches
    are noisy)."""
    steps = np.asarray(run["history"]["train"], dtype=np.float64)
    if not len(steps):
        return None
    width = min(width, len(steps))
    return steps[width - 1:, 1], np.convolve(steps[:, 2], np.ones(width) / width, mode="valid")


def _band(ax, tokens, values: list[list[float]], style: dict, label: str) -> None:
    """An arm's mean over seeds as a line, the seeds' range as a band around it."""
    values = np.asarray(values, dtype=np.float64)
    x = np.asarray(tokens, dtype=np.float64) / 1e6
    ax.plot(x, values.mean(axis=0), label=label, **style)
    if len(values) > 1:
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=style["color"], alpha=0.15, lw=0)


def plot(runs: list[dict], summary: dict, path: Path) -> None:
    """Four panels over training, one line per arm (the mean over its seeds, their range shaded):
    training loss, validation loss, the validation gap to the baseline at the same seed, and each
    gated arm's kept fraction. The baseline is black; routed arms are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = summary["baseline"]
    others = sorted(name for name in summary["arms"] if name != baseline)
    # tab20's even entries first: neighbouring arms get different hues, not a dark and a light one.
    palette = plt.cm.tab20(np.r_[0:20:2, 1:20:2] / 19)
    styles = {name: {"color": palette[i % 20], "lw": 1.1, "ls": "--" if summary["arms"][name].get("router") else "-"}
              for i, name in enumerate(others)}
    order = others
    if baseline is not None:
        styles[baseline] = {"color": "black", "lw": 1.6, "ls": "-"}
        order = [baseline, *others]
    fig, axes = plt.subplots(2, 2, figsize=(17, 11))
    (train_ax, val_ax), (gap_ax, kept_ax) = axes
    arms: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        arms.setdefault(run["arm"], []).append(run)
    for name in order:
        rs, row = arms[name], summary["arms"][name]
        label = f"{name} ({len(rs)} seed{'s' if len(rs) > 1 else ''})"
        curves = [c for c in map(_smoothed_train, rs) if c is not None]
        shortest = min((len(c[0]) for c in curves), default=0)
        if shortest:
            _band(train_ax, curves[0][0][:shortest], [c[1][:shortest] for c in curves], styles[name], label)
        histories = [_history(r) for r in rs]
        shared = _shared(histories)
        _band(val_ax, shared, [[h[t] for t in shared] for h in histories], {**styles[name], "marker": "."}, label)
        for key, ax in (("gap_over_training", gap_ax), ("kept_over_training", kept_ax)):
            if row.get(key):
                points = row[key]
                _band(ax, [p["tokens"] for p in points], np.transpose([p["values"] for p in points]).tolist(),
                      {**styles[name], "marker": "."}, label)
    for ax, title, ylabel in (
            (train_ax, "training loss (moving mean of 20 logs)", "loss (nats/token)"),
            (val_ax, "validation loss (held-out files)", "loss (nats/token)"),
            (gap_ax, f"validation gap to {baseline or 'a baseline (none here)'} at the same seed",
             "arm − baseline (nats/token)"),
            (kept_ax, "kept fraction (gated arms, held-out files)", "kept fraction of admissible keys")):
        ax.set_xlabel("tokens (M)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=8, ncol=2)
    gap_ax.axhline(0, color="black", lw=1.0)
    kept_ax.set_yscale("log")
    lows = [v["loss"] for r in runs for v in r["history"]["val"][1:]] or [0]
    val_ax.set_ylim(min(lows) - 0.05, np.percentile(lows, 90) + 0.1)
    # The first evaluation (before any step) sets no gap worth the axis: zoom past it.
    gaps = [v for row in summary["arms"].values() for p in row.get("gap_over_training", [])[1:] for v in p["values"]]
    if gaps:
        gap_ax.set_ylim(min(min(gaps), 0) - 0.05, max(max(gaps), 0) + 0.05)
    fig.tight_layout()
    with staged(path) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)


def report(root: str | Path, out: str | Path) -> dict:
    """Write the A/B report of `root`'s runs into the folder `out`; returns the summary."""
    runs = collect(root)
    summary = summarize(runs)
    out = Path(out)
    plot(runs, summary, out / PLOT)
    write_text(out / TABLE, markdown(summary))
    write_json(out / JSON, summary)
    return summary


def _router_cell(router: RouterConfig) -> str:
    fraction = router.route_fraction
    # Two decimals where they say it all; a capacity like 1/256 keeps its figures instead of reading 0.00.
    return " ".join([router.route, f"{fraction:.2f}" if round(fraction, 2) == fraction else f"{fraction:.4g}",
                     *(["every other layer"] if router.route_layers == "alternate" else []),
                     *([f"window {router.route_window}"] if router.route_window else []),
                     *(["rank predictor"] if router.route_predictor == "rank" else [])])
