"""Quality of the gate on real attention: all-MiniLM-L6-v2 with the gate in every layer.

For each (permeability, mass target) setting, every built-in text runs once
through the float gate and once through the HPU's integer contract, and is
compared with the unmodified (dense, exact softmax) model. With route fractions,
token routing (untrained: see golden_model.minilm) runs too, alone (every key
of each routed query) and with the configuration's mass gate on the routed
queries' keys; given a fitted router (`hpu fit-minilm-router`), each routed
setting runs by its scores as well, next to the untrained ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from golden_model.minilm import LinearRouter, MiniLM, load_router
from golden_model.texts import TEXTS
from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import output_folder, staged, write_json, write_text

# The report's files; quality.json, written last, is the record that the report is whole.
REPORT = {"txt": "quality.txt", "png": "quality.png", "json": "quality.json"}
OUTPUTS = tuple(REPORT.values())


@dataclass(frozen=True)
class QualityRow:
    path: str                  # "float" or "fixed"
    mode: str
    permeability: float
    mass_target: float
    route_fraction: float      # routed queries per layer and text (1.0: every query)
    kept_fraction: float       # kept keys / admissible keys over every attention row of every text
                               # (an unrouted row keeps none)
    embedding_cos_mean: float  # sentence embedding vs the dense model
    embedding_cos_min: float
    layer_out_cos_mean: float  # per-layer attention outputs vs the dense model's, mean over layers, heads, rows
    router: str = "-"          # what routed: "norm" (untrained), "fitted" (a LinearRouter); "-" unrouted


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def settings(cfg: HPUConfig, permeabilities, mass_targets, route_fractions=()) -> list[tuple[HPUConfig, float]]:
    """(gate setting, route fraction) pairs: dense, the gate sweep, then each route fraction alone and
    with the configuration's own gate. Each value is checked as the configuration field it sets, so a
    bad one is refused before any model loads."""
    dense = cfg.replace(mode="dense", permeability=1.0, mass_target=1.0)
    swept = [(dense, 1.0)]
    swept += [(cfg.replace(permeability=p, mass_target=t), 1.0) for p in permeabilities for t in mass_targets]
    routes = [cfg.replace(route_fraction=r).route_fraction for r in route_fractions]
    swept += [(setting, r) for r in routes for setting in (dense, cfg)]
    return swept


def fitted_router(path: str | Path | None, swept: list[tuple[HPUConfig, float]]) -> LinearRouter | None:
    """The router file `evaluate` is to run beside the norm router, checked before anything runs.

    Raises
    ------
    InputError
        A bad file (`minilm.LinearRouter.load`), or no routed setting for it to route."""
    if path is None:
        return None
    if all(route == 1.0 for _, route in swept):
        raise InputError(f"--router {path}: no setting routes (every route fraction is 1): give --route-fraction "
                         "below 1 for it to route")
    return load_router(path)


def evaluate(cfg: HPUConfig, swept: list[tuple[HPUConfig, float]], texts=TEXTS,
             progress: bool = True, router: LinearRouter | None = None) -> list[QualityRow]:
    """Every text through each of `settings`' (gate setting, route fraction) pairs, float and fixed;
    a routed pair by the untrained router and, given a fitted `router` (`fitted_router`), by it too."""
    model = MiniLM()
    runs = [(setting, route, chosen)
            for setting, route in swept for chosen in ((None,) if route == 1.0 or router is None else (None, router))]
    too_long = [model.token_count(t) for t in texts if model.token_count(t) > cfg.max_keys]
    if too_long:
        raise InputError(f"{len(too_long)} text(s) are longer than max_keys = {cfg.max_keys} tokens "
                         f"(longest {max(too_long)}); use a configuration with a larger max_keys "
                         "(configs/minilm.toml)")
    dense = [model.run(t, trace=True) for t in texts]
    rows = []
    bar = tqdm(total=len(runs) * 2 * len(texts), desc="quality", unit="text", disable=not progress)
    for setting, route, chosen in runs:
        for path in ("float", "fixed"):
            emb_cos, layer_cos, kept, admissible = [], [], 0, 0
            for text, reference in zip(texts, dense):
                run = model.run(text, setting, path, trace=True, route_fraction=None if route == 1.0 else route,
                                router=chosen)
                emb_cos.append(float(torch.dot(run.embedding.double(), reference.embedding.double())))
                for gated, exact in zip(run.layers, reference.layers):
                    layer_cos.append(_cosine(gated.out, exact.out).flatten())
                    kept += int(gated.kept.sum())
                    admissible += int(gated.admissible.sum())
                bar.update()
            rows.append(QualityRow(
                path=path, mode=setting.mode, permeability=setting.permeability,
                mass_target=setting.mass_target, route_fraction=route, kept_fraction=kept / admissible,
                embedding_cos_mean=sum(emb_cos) / len(emb_cos), embedding_cos_min=min(emb_cos),
                layer_out_cos_mean=float(torch.cat(layer_cos).mean()),
                router="-" if route == 1.0 else "norm" if chosen is None else "fitted"))
    bar.close()
    return rows


def format_table(rows: list[QualityRow]) -> str:
    head = (f"{'path':5} {'mode':5} {'perm':>5} {'mass':>5} {'route':>5} {'router':6} {'kept':>6} "
            f"{'emb cos mean':>12} {'emb cos min':>11} {'layer cos':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.path:5} {r.mode:5} {r.permeability:5.2f} {r.mass_target:5.2f} {r.route_fraction:5.2f} "
                     f"{r.router:6} {r.kept_fraction:6.3f} "
                     f"{r.embedding_cos_mean:12.6f} {r.embedding_cos_min:11.6f} {r.layer_out_cos_mean:9.6f}")
    return "\n".join(lines)


def plot(rows: list[QualityRow], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for kind, marker in (("float", "o"), ("fixed", "s")):
        for router, color in (("-", "#2c7fb8"), ("norm", "#d95f0e"), ("fitted", "#31a354")):
            chosen = sorted((r for r in rows if r.path == kind and r.router == router), key=lambda r: r.kept_fraction)
            if not chosen:
                continue
            what = kind + {"-": "", "norm": ", routed by the norm", "fitted": ", routed by the fitted router"}[router]
            ax.plot([r.kept_fraction for r in chosen], [r.embedding_cos_mean for r in chosen], marker=marker,
                    color=color, linestyle="", label=f"{what}: mean embedding cosine")
            ax.plot([r.kept_fraction for r in chosen], [r.embedding_cos_min for r in chosen], marker=marker,
                    color=color, linestyle="", alpha=0.35, label=f"{what}: min embedding cosine")
    ax.set_xlabel("kept fraction of attention keys (unrouted queries keep none)")
    ax.set_ylabel("cosine similarity to the dense model")
    ax.set_title("all-MiniLM-L6-v2 with the mass gate and token routing in every layer")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(rows: list[QualityRow], cfg: HPUConfig, out_dir: Path, router: str | Path | None = None
                 ) -> dict[str, Path]:
    """quality.txt and the plot, then quality.json last (the record that the report is whole), naming
    the fitted `router` file if one ran, with its SHA-256."""
    out_dir = output_folder(out_dir, "report folder")
    paths = {key: out_dir / name for key, name in REPORT.items()}
    write_text(paths["txt"], format_table(rows) + "\n")
    with staged(paths["png"]) as temp:
        plot(rows, temp)
    fitted = None if router is None else {"file": str(router),
                                          "sha256": hashlib.sha256(Path(router).read_bytes()).hexdigest()}
    write_json(paths["json"], {"config": cfg.to_dict(), "texts": len(TEXTS), "router": fitted,
                               "rows": [asdict(r) for r in rows]})
    return paths
