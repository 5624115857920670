"""A sweep's outputs: one row per (point, workload) in CSV and Parquet, the Pareto front, plots, and
one HTML page to open first. Each file is written whole or not at all."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from hpu.files import staged, write_json, write_text
from sweep.spec import Spec

# Objectives of the Pareto front: lower is better for each, except what the gate keeps. Quality (MiniLM's
# embeddings through the gate) where measured; else the kept fraction stands for it, or the hardest gate
# would always win: the fewest keys cost the least energy and cycles.
OBJECTIVES = {"energy_pj_per_row_gated": "min", "quality_embedding_cos_mean": "max", "kept_fraction": "max",
              "area_nand2": "min", "cycles_per_row": "min"}
FIDELITY = ("quality_embedding_cos_mean", "kept_fraction")
# What names a workload: rows are compared (the Pareto front) only with rows of the same workload.
WORKLOAD = ("workload", "workload_rows", "workload_route_window")
FILES = {"csv": "sweep.csv", "parquet": "sweep.parquet", "pareto": "pareto.json", "energy_png": "energy.png",
         "sensitivity_png": "sensitivity.png", "html": "index.html"}


def columns(rows: list[dict], fields: list[str]) -> list[str]:
    """The fields first, then every figure in the order it first appears; per-module areas last."""
    flat = [_flat(r) for r in rows]
    names = ["point", *fields, *WORKLOAD, "status"]
    for r in flat:
        names += [k for k in r if k not in names]
    return names


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for name, area in row.get("area_nand2_by_module", {}).items():
        out[f"area_nand2__{name}"] = area
    return out


def objectives(rows: list[dict]) -> dict[str, str]:
    """The objectives the measured rows have figures for, the first of `FIDELITY` among them only."""
    ok = [r for r in rows if r.get("status") == "ok"]
    have = [o for o in OBJECTIVES if any(r.get(o) is not None for r in ok)]
    fidelity = next((o for o in FIDELITY if o in have), None)
    return {o: OBJECTIVES[o] for o in have if o not in FIDELITY or o == fidelity}


def pareto(rows: list[dict]) -> list[int]:
    """Indices of the rows no other row of the same workload beats on every one of `objectives`."""
    ok = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
    goals = objectives(rows)

    def score(r: dict) -> list[float]:
        return [(-1 if sense == "max" else 1) * float(r[o]) if r.get(o) is not None else float("inf")
                for o, sense in goals.items()]

    front = []
    for i in ok:
        si = score(rows[i])
        beaten = any(_workload(rows[j]) == _workload(rows[i]) and all(a <= b for a, b in zip(score(rows[j]), si))
                     and score(rows[j]) != si for j in ok if j != i)
        if not beaten:
            front.append(i)
    return front


def _workload(row: dict) -> tuple:
    return tuple(row.get(k) for k in WORKLOAD)


def write(rows: list[dict], spec: Spec, out: Path) -> dict[str, Path]:
    fields = sorted(spec.fields)
    names = columns(rows, fields)
    flat = [_flat(r) for r in rows]
    paths = {k: out / v for k, v in FILES.items()}
    with staged(paths["csv"]) as temp, open(temp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(flat)
    _parquet(flat, names, paths["parquet"])
    front, goals = pareto(rows), objectives(rows)
    write_json(paths["pareto"], {"objectives": goals, "points": [rows[i] for i in front]})
    _plots(rows, fields, front, paths, goals)
    write_text(paths["html"], _page(rows, names, front, spec, paths))
    return paths


def _parquet(flat: list[dict], names: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # A column holds one type: the text of any value that is not a number (e.g. a refusal's message).
    columns = {}
    for name in names:
        values = [r.get(name) for r in flat]
        numeric = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
        columns[name] = values if numeric else [None if v is None else str(v) for v in values]
    with staged(path) as temp:
        pq.write_table(pa.table(columns), temp)


def _plots(rows: list[dict], fields: list[str], front: list[int], paths: dict[str, Path],
           goals: dict[str, str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    quality = next((o for o in goals if o in FIDELITY), "kept_fraction")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown = [r for r in ok if r.get("energy_pj_per_row_gated") is not None and r.get(quality) is not None]
    if shown:
        dots = ax.scatter([r[quality] for r in shown], [r["energy_pj_per_row_gated"] for r in shown],
                          c=[r.get("area_nand2") or 0 for r in shown], cmap="viridis")
        fig.colorbar(dots, ax=ax, label="area (NAND2 equivalents)")
        best = [rows[i] for i in front if rows[i] in shown]
        ax.scatter([r[quality] for r in best], [r["energy_pj_per_row_gated"] for r in best], facecolors="none",
                   edgecolors="red", s=120, label="Pareto front")
        ax.legend()
    ax.set_xlabel("embedding cosine to dense (MiniLM, bit-accurate)" if quality != "kept_fraction"
                  else "kept fraction (no quality metric in this sweep)")
    ax.set_ylabel("energy per row, gated (pJ)")
    ax.set_title("Energy against quality")
    fig.tight_layout()
    with staged(paths["energy_png"]) as temp:
        fig.savefig(temp, dpi=110, format="png")
    plt.close(fig)

    metrics = [m for m in ("energy_pj_per_row_gated", "area_nand2", "cycles_per_row", quality)
               if any(r.get(m) is not None for r in ok)]
    fig, axes = plt.subplots(len(metrics) or 1, len(fields), figsize=(3.2 * len(fields), 2.6 * max(len(metrics), 1)),
                             squeeze=False)
    for row_axes, metric in zip(axes, metrics):
        for ax, name in zip(row_axes, fields):
            pairs = [(r[name], r[metric]) for r in ok if r.get(metric) is not None]
            if pairs and all(isinstance(x, (int, float)) for x, _ in pairs):
                ax.scatter(*zip(*pairs), s=14)
            elif pairs:
                labels = sorted({str(x) for x, _ in pairs})
                ax.scatter([labels.index(str(x)) for x, _ in pairs], [y for _, y in pairs], s=14)
                ax.set_xticks(range(len(labels)), labels)
            ax.set_xlabel(name)
            ax.set_ylabel(metric, fontsize=7)
    fig.suptitle("Sensitivity per field")
    fig.tight_layout()
    with staged(paths["sensitivity_png"]) as temp:
        fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)


def _page(rows: list[dict], names: list[str], front: list[int], spec: Spec, paths: dict[str, Path]) -> str:
    shown = [n for n in names if not n.startswith("area_nand2__") and n not in ("key", "message")]
    ok = sum(r.get("status") == "ok" for r in rows)
    refused = [r for r in rows if r.get("status") == "refused"]
    failed = [r for r in rows if r.get("status") == "failed"]

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(n)}</th>" for n in shown)
    body = "\n".join("<tr{}>{}</tr>".format(' class="front"' if i in front else "",
                                            "".join(f"<td>{cell(r.get(n))}</td>" for n in shown))
                     for i, r in enumerate(rows))
    notes = "".join(f"<li>point {r['point']}: {html.escape(r['message'])}</li>" for r in refused + failed)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>HPU sweep {html.escape(spec.path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}tr.front{{background:#fde8e8}}</style></head><body>
<h1>HPU sweep: {html.escape(spec.path.name)}</h1>
<p>{len(rows)} measurements ({ok} measured, {len(refused)} refused, {len(failed)} failed); base configuration and
fields: <code>{html.escape(json.dumps(spec.fields))}</code>; metrics {", ".join(spec.metrics)}; seed {spec.seed};
simulator {html.escape(spec.simulator)}.
Rows on the Pareto front (energy per row, quality or else the kept fraction, area, cycles per row; per workload) are shaded.
Files: {", ".join(f'<a href="{p.name}">{p.name}</a>' for p in paths.values() if p.name != "index.html")}.</p>
<img src="{paths['energy_png'].name}"> <img src="{paths['sensitivity_png'].name}">
<table><tr>{head}</tr>
{body}</table>
{f"<h2>Refused and failed</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
