"""The power report: every figure in JSON and CSV, a Markdown summary, one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.files import output_folder, staged, write_json, write_text
from power import saif
from power.activity import Activity
from power.energy import TOGGLE_CLASSES, Energy, EnergyTable

DEFINITIONS = [
    "toggle: a 0->1 or 1->0 change of one bit; changes to or from x/z are counted apart (x/z changes) "
    "and carry no energy.",
    "silent ratio of an instance over a window: the fraction of clock cycles in which none of its bits "
    "(its own nets and its sub-instances', clocks excluded) toggled. Compute phase: the cycles in which "
    "the HPU's busy output is high.",
    "energy: toggles x per-bit energy of the net's class (register, datapath, control) plus clock "
    "energy per enabled register bit per cycle; memories per access (width x accesses x per-bit energy "
    "for the memory's capacity: a port's enabled cycles, or an asynchronous read port's address changes); "
    "each physical bit is charged once, to the instance that drives it.",
    "dark-silicon saving = 1 - E(gated) / E(dense), same inputs and configuration with the gate held open.",
    "paths: score (the top level's row buffers and status, ingest, exp_gate), value (the fetch sequencer: "
    "e reads, request and slot FIFOs; the MAC array: issue logic and lanes), normalizer, and router where "
    "the HPU has one; each instance's "
    "energy with its sub-instances'.",
    "off-chip value traffic: the value-vector bytes the HPU fetched, counted by the simulation's host "
    "(`hpu sim` summary), times the table's DRAM energy per byte; reported apart from on-chip energy.",
    "row-level dark silicon (token routing): the rows of unrouted tokens never enter the chip, so the attention "
    "datapath (the score, value and normalizer paths) spends nothing on them, or with a window (`hpu sim "
    "--route-window W`) only what their last W keys cost as rows of their own; the router's own energy is "
    "charged to the routed run, and the kept fraction counts kept keys over every token's keys.",
    "energy proportionality = saving / (1 - kept fraction): 1.0 means every joule the dropped keys "
    "would have cost was saved.",
    "This is an activity-based estimate from a functional simulation, not sign-off power: no wire "
    "loads, glitches or leakage.",
]


FILES = {"json": "power.json", "csv": "power.csv", "signals": "signals.csv", "markdown": "power.md",
         "html": "power.html"}
RUNS = ("gated", "dense")   # the names `hpu power` gives its dumps' runs
# Every file `hpu power` may write in its report folder: this report, each run's SAIF and toggles per
# bit, and without a manifest power.generic's activity files instead (`<prefix>.json` and so on).
OUTPUTS = (*FILES.values(), *(f"{run}{ext}" for run in RUNS for ext in (".saif", "_bits.csv")),
           *(f"{prefix}{ext}" for prefix in ("activity", "dense_activity")
             for ext in (".json", "_bits.csv", "_windows.csv", ".png", ".saif")))


@dataclass
class Run:
    name: str
    activity: Activity
    energy: Energy
    kept_fraction: float | None = None
    value_bytes: int | None = None   # value-vector bytes fetched, counted by the simulation's host
    tokens: int | None = None        # tokens whose rows the run stands for (routed or not), from the summary
    window_rows: int = 0             # of its rows, the unrouted tokens' windows (`hpu sim --route-window`)


def summarize(run: Run, table: EnergyTable) -> dict:
    a, e, d = run.activity, run.energy, run.activity.design
    top = d.manifest["top"]
    instances = {}
    for i, unit in enumerate(d.units):
        tree = d.subtree(unit.path)
        instances[unit.path] = {
            "silent_ratio_run": a.silent_ratio(i), "silent_ratio_compute": a.silent_ratio(i, phase=True),
            "active_cycles": int(a.active[i]),
            "toggles_own": {c: int(e.toggles[i, k]) for k, c in enumerate(TOGGLE_CLASSES)},
            "clocked_bit_cycles_own": int(e.clocked_bits[i]),
            "energy_fJ_own": {c: float(e.by_class[i, k]) for k, c in enumerate(TOGGLE_CLASSES + ("clock",))},
            "energy_fJ_subtree": float(e.total[tree].sum()),
        }
    counts = a.counts
    paths = {name: float(sum(e.total[i] for unit in units for i in
                             ([d.index(unit)] if unit == top else d.subtree(unit))))
             for name, units in d.manifest.get("paths", {}).items()}
    offchip = (run.value_bytes * table.dram_pj_per_byte * 1e3
               if run.value_bytes is not None and table.dram_pj_per_byte is not None else None)
    return {
        "vcd": str(d.vcd), "bytes": counts.bytes_read, "top_scope": ".".join(d.top_scope),
        "cycles": a.cycles, "compute_cycles": a.phase_cycles, "window_cycles": a.window,
        "rows_delivered": a.rows_delivered, "tokens": run.tokens, "window_rows": run.window_rows,
        "clock_period": a.clock_period * a.timescale, "kept_fraction": run.kept_fraction,
        "toggles": int((counts.rise + counts.fall).sum()), "xz_changes": int(counts.xz.sum()),
        "energy_fJ": float(e.total.sum()),
        "energy_fJ_by_path": paths,
        "value_bytes_fetched": run.value_bytes,
        "offchip_energy_fJ": offchip,
        "energy_fJ_with_offchip": None if offchip is None else float(e.total.sum()) + offchip,
        "energy_fJ_by_class": {c: float(e.by_class[:, k].sum()) for k, c in enumerate(TOGGLE_CLASSES + ("clock",))},
        "mac_array": {"silent_ratio_run": a.silent_ratio(d.index(f"{top}.mac")),
                      "silent_ratio_compute": a.silent_ratio(d.index(f"{top}.mac"), phase=True),
                      "energy_fJ": float(e.total[d.subtree(f"{top}.mac")].sum())},
        "hpu": {"silent_ratio_run": a.silent_ratio(d.index(top)),
                "silent_ratio_compute": a.silent_ratio(d.index(top), phase=True)},
        "lanes_mean_silent_ratio_compute": float(np.mean([a.silent_ratio(d.index(l), phase=True) for l in d.lanes])),
        "lanes": {lane: {"silent_ratio_run": a.silent_ratio(d.index(lane)),
                         "silent_ratio_compute": a.silent_ratio(d.index(lane), phase=True),
                         "energy_fJ": float(e.total[d.subtree(lane)].sum())} for lane in d.lanes},
        "instances": instances,
        "nets_not_in_dump": d.missing_nets,
        "warnings": counts.warnings,
    }


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(runs: list[Run], table: EnergyTable) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    gated = runs[0]
    d = gated.activity.design
    lanes = [d.index(lane) for lane in d.lanes]
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.2 + 2.2 * len(runs)), squeeze=False)
    top_rate = max(float((r.activity.window_toggles[lanes] / r.activity.window).max(initial=0)) for r in runs) or 1.0
    for ax, run in zip(axes[:, 0], runs):
        ra = run.activity
        per_cycle = ra.window_toggles[lanes] / ra.window
        im = ax.imshow(per_cycle, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=top_rate,
                       extent=(0, ra.window_toggles.shape[1] * ra.window, len(lanes) - 0.5, -0.5))
        ax.set_yticks(range(len(lanes)), [l.split(".")[-1] for l in d.lanes], fontsize=7)
        ax.set_xlabel("clock cycle")
        ax.set_title(f"MAC lane activity, {run.name} run (toggles per cycle, {ra.window}-cycle windows)")
        fig.colorbar(im, ax=ax, label="toggles / cycle")
    fig.tight_layout()
    out["lane_heatmap"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    x = np.arange(len(lanes))
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        ratios = [run.activity.silent_ratio(run.activity.design.index(l), phase=True) for l in d.lanes]
        ax.bar(x + k * width, ratios, width, label=run.name)
    ax.set_xticks(x + width * (len(runs) - 1) / 2, [l.split(".")[-1] for l in d.lanes], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("silent ratio (compute phase)")
    ax.set_title("Silent ratio per MAC lane: fraction of compute-phase cycles with no toggle")
    ax.legend()
    out["lane_silence"] = _figure_png(fig)
    plt.close(fig)

    top = d.manifest["top"]
    modules = [u.path for u in d.units if u.path.count(".") == 1]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(runs))
    for m in modules:
        values = [run.energy.total[run.activity.design.subtree(m)].sum() / 1e6 for run in runs]
        ax.bar([r.name for r in runs], values, bottom=bottom, label=m.split(".", 1)[1])
        bottom += values
    own_top = [run.energy.total[run.activity.design.index(top)] / 1e6 for run in runs]
    ax.bar([r.name for r in runs], own_top, bottom=bottom, label=f"{top} (own nets)")
    ax.set_ylabel("energy (nJ)")
    ax.set_title(f"Energy per module ({table.source})")
    ax.legend(fontsize=8)
    out["energy_modules"] = _figure_png(fig)
    plt.close(fig)

    if len(runs) == 2 and gated.kept_fraction is not None:
        dense = runs[1]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        kept = gated.kept_fraction
        for label, idx_g, idx_d in (("MAC array", d.subtree(f"{top}.mac"), dense.activity.design.subtree(f"{top}.mac")),
                                    ("HPU", d.subtree(top), dense.activity.design.subtree(top))):
            saving = _saving(float(gated.energy.total[idx_g].sum()), float(dense.energy.total[idx_d].sum()))
            if saving is not None:
                ax.scatter([kept], [saving], s=60, label=f"{label}: saving {saving:.3f}", zorder=3)
        ax.plot([0, 1], [1, 0], "--", color="grey", label="ideal MAC array: saving = 1 - kept")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("kept fraction (keys the gate let through)")
        ax.set_ylabel("energy saving 1 - E(gated)/E(dense)")
        ax.set_title("Kept fraction vs dark-silicon energy saving")
        ax.legend(fontsize=8)
        out["kept_vs_saving"] = _figure_png(fig)
        plt.close(fig)
    return out


def write(runs: list[Run], table: EnergyTable, out_dir: Path | str) -> dict[str, Path]:
    """Every report file, each under a temporary name until whole; power.json, the record that the
    report is complete, is written last."""
    out_dir = output_folder(out_dir, "report folder")
    (out_dir / FILES["json"]).unlink(missing_ok=True)
    summaries = {run.name: summarize(run, table) for run in runs}
    result = {"definitions": DEFINITIONS, "energy_table": table_statement(table),
              "runs": summaries}
    if len(runs) == 2:
        g, dn = summaries[runs[0].name], summaries[runs[1].name]
        kept = g["kept_fraction"]
        savings = {"mac_array": _saving(g["mac_array"]["energy_fJ"], dn["mac_array"]["energy_fJ"]),
                   "hpu": _saving(g["energy_fJ"], dn["energy_fJ"]),
                   "total": _saving(g["energy_fJ_with_offchip"], dn["energy_fJ_with_offchip"])}
        result["comparison"] = {
            "energy_saving_hpu": savings["hpu"],
            "energy_saving_mac_array": savings["mac_array"],
            "energy_saving_total": savings["total"],
            "kept_fraction": kept,
            "energy_proportionality": {k: (None if v is None or kept is None or kept >= 1 else v / (1 - kept))
                                       for k, v in savings.items()},
            # The dense baseline routes nothing, so the router's path has no saving to state.
            "energy_saving_by_path": {k: _saving(g["energy_fJ_by_path"][k], dn["energy_fJ_by_path"][k])
                                      for k in g["energy_fJ_by_path"] if k != "router"},
            "mac_silent_ratio_compute": {runs[0].name: g["mac_array"]["silent_ratio_compute"],
                                         runs[1].name: dn["mac_array"]["silent_ratio_compute"]},
            "lane_silent_ratio_compute": {runs[0].name: g["lanes_mean_silent_ratio_compute"],
                                          runs[1].name: dn["lanes_mean_silent_ratio_compute"]},
            "same_cycles": g["cycles"] == dn["cycles"],
        }
        if g["tokens"] and g["rows_delivered"] is not None and g["rows_delivered"] - g["window_rows"] < g["tokens"]:
            result["comparison"]["routing"] = _routing(g, dn, runs[0].name, runs[1].name)
    paths = {key: out_dir / name for key, name in FILES.items()}
    with staged(paths["csv"]) as temp, open(temp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "instance", "active_cycles", "silent_ratio_run", "silent_ratio_compute",
                    *(f"toggles_{c}" for c in TOGGLE_CLASSES),
                    *(f"energy_fJ_{c}" for c in TOGGLE_CLASSES + ("clock",)), "energy_fJ_subtree"])
        for name, s in summaries.items():
            for path, inst in s["instances"].items():
                w.writerow([name, path, inst["active_cycles"], f"{inst['silent_ratio_run']:.6f}",
                            f"{inst['silent_ratio_compute']:.6f}", *inst["toggles_own"].values(),
                            *(f"{v:.3f}" for v in inst["energy_fJ_own"].values()), f"{inst['energy_fJ_subtree']:.3f}"])
    _signals_csv(runs, paths["signals"])
    md = _markdown(result, runs)
    write_text(paths["markdown"], md)
    images = plots(runs, table)
    write_text(paths["html"], _html(md, images))
    for run in runs:
        saif.write(run.activity.counts, out_dir / f"{run.name}.saif", design=run.activity.design.manifest["top"])
    write_json(paths["json"], result)
    return paths


DATAPATH = ("score", "value", "normalizer")


def _saving(gated: float | None, dense: float | None) -> float | None:
    """1 - gated / dense; none where a figure is missing or the dense run spent nothing (a table of zeros)."""
    return None if gated is None or not dense else 1 - gated / dense


def _routing(g: dict, dn: dict, gated: str, dense: str) -> dict:
    """Row-level dark silicon: rows computed of the tokens, and what the attention datapath spent per
    computed row, against the dense run that computed every token's row."""
    def datapath(s):
        return sum(s["energy_fJ_by_path"][p] for p in DATAPATH)

    return {
        "tokens": g["tokens"],
        "rows_computed": {gated: g["rows_delivered"], dense: dn["rows_delivered"]},
        "window_rows": g["window_rows"],
        "unrouted_fraction": 1 - (g["rows_delivered"] - g["window_rows"]) / g["tokens"],
        "datapath_energy_fJ": {gated: datapath(g), dense: datapath(dn)},
        "datapath_energy_fJ_per_row": {gated: datapath(g) / g["rows_delivered"],
                                       dense: datapath(dn) / dn["rows_delivered"]},
        "datapath_saving": _saving(datapath(g), datapath(dn)),
        "router_energy_fJ": g["energy_fJ_by_path"].get("router", 0.0),
        "router_share_of_hpu": (g["energy_fJ_by_path"].get("router", 0.0) / g["energy_fJ"]) if g["energy_fJ"] else None,
    }


def _signals_csv(runs: list[Run], path: Path) -> None:
    """Every variable of each dump: totals and toggles per window of cycles (aliases listed together)."""
    with staged(path) as temp, open(temp, "w", newline="") as f:
        w = csv.writer(f)
        windows = max(run.activity.signal_window_toggles.shape[1] for run in runs)
        window = runs[0].activity.window
        w.writerow(["run", "signal", "width", "toggles", "xz_changes", "toggles_per_cycle",
                    *(f"cycles_{i * window}_{(i + 1) * window - 1}" for i in range(windows))])
        for run in runs:
            a = run.activity
            header, counts = a.counts.header, a.counts
            offsets = header.bit_offsets
            names: dict[int, list[str]] = {}
            for var in header.vars:
                names.setdefault(var.code, []).append(var.reference)
            for code, refs in names.items():
                bits = slice(int(offsets[code]), int(offsets[code + 1]))
                toggles = int(counts.rise[bits].sum() + counts.fall[bits].sum())
                row = a.signal_window_toggles[code].tolist()
                w.writerow([run.name, " = ".join(refs), header.widths[code], toggles, int(counts.xz[bits].sum()),
                            f"{toggles / a.cycles:.4f}", *row, *([""] * (windows - len(row)))])


def table_statement(table: EnergyTable) -> dict:
    """What the report says of its energy table: the cited default, or a calibrated table with its
    cell library, date and held-out error per unit."""
    return {"path": table.path, "source": table.source, "toggle_fJ": table.toggle_fj,
            "clock_fJ_per_enabled_bit": table.clock_fj, "dram_pJ_per_byte": table.dram_pj_per_byte,
            "memories": ("per access, by capacity" if table.memory_points else "per toggling port bit"),
            "calibration": table.calibration,
            "units": {u.pattern: {"toggle_fJ": u.toggle_fj, "clock_fJ_per_enabled_bit": u.clock_fj,
                                  "idle_fJ_per_cycle": u.idle_fj_per_cycle,
                                  "held_out_error": u.held_out_error} for u in table.units}}


def _table_lines(t: dict) -> list[str]:
    lines = [f"Energy table: `{t['path']}` ({t['source']}): toggle fJ/bit "
             + ", ".join(f"{k} {v}" for k, v in t["toggle_fJ"].items())
             + f"; clock {t['clock_fJ_per_enabled_bit']} fJ per enabled register bit per cycle; memories "
             + t["memories"] + "."]
    c = t["calibration"]
    if not c:
        return lines + ["", "The table is cited, not calibrated against a cell library: `hpu calibrate` fits one."]
    lines += ["", f"Calibrated against {c.get('library', '?')} at gate level ({c.get('delays', '?')}) on "
                  f"{c.get('date', '?')}, configuration {c.get('config', '?')}. {c.get('memories', '')}", "",
              "| unit | fJ per register / datapath / control toggle | fJ per enabled bit-cycle | idle fJ/cycle | "
              "worst held-out error |", "|---|---|---|---|---|"]
    for pattern, u in t["units"].items():
        err = "-" if u["held_out_error"] is None else f"{u['held_out_error']:.1%}"
        lines.append(f"| {pattern} | {' / '.join(f'{v:.2f}' for v in u['toggle_fJ'].values())} | "
                     f"{u['clock_fJ_per_enabled_bit']:.2f} | {u['idle_fJ_per_cycle']:.1f} | {err} |")
    return lines


def _markdown(result: dict, runs: list[Run]) -> str:
    lines = ["# HPU power report", "", "Activity-based estimate, not sign-off power.", "", "## Definitions", ""]
    lines += [f"- {d}" for d in result["definitions"]]
    lines += ["", *_table_lines(result["energy_table"]), "",
              "## Runs", "", "| run | cycles | compute cycles | kept fraction | toggles | x/z changes | "
              "MAC silent (compute) | MAC silent (run) | HPU silent (compute) | energy (nJ) | MAC array energy (nJ) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["runs"].items():
        kept = f"{s['kept_fraction']:.4f}" if s["kept_fraction"] is not None else "-"
        lines.append(f"| {name} | {s['cycles']} | {s['compute_cycles']} | {kept} | {s['toggles']} | {s['xz_changes']} | "
                     f"{s['mac_array']['silent_ratio_compute']:.4f} | {s['mac_array']['silent_ratio_run']:.4f} | "
                     f"{s['hpu']['silent_ratio_compute']:.4f} | {s['energy_fJ'] / 1e6:.4f} | "
                     f"{s['mac_array']['energy_fJ'] / 1e6:.4f} |")
    if "comparison" in result:
        c = result["comparison"]
        def fmt(value):
            return "-" if value is None else f"{value:.4f}"

        p = c["energy_proportionality"]
        lines += ["", "## Gated against dense", "",
                  f"Kept fraction {fmt(c['kept_fraction'])}: the ideal saving is {fmt(None if c['kept_fraction'] is None else 1 - c['kept_fraction'])}.", "",
                  "| scope | dark-silicon saving | energy proportionality |", "|---|---|---|",
                  f"| MAC array | **{fmt(c['energy_saving_mac_array'])}** | {fmt(p['mac_array'])} |",
                  f"| whole HPU, on chip | **{fmt(c['energy_saving_hpu'])}** | {fmt(p['hpu'])} |",
                  f"| on chip + off-chip value traffic | **{fmt(c['energy_saving_total'])}** | {fmt(p['total'])} |",
                  "", "- saving by path: " + ", ".join(f"{k} {fmt(v)}" for k, v in c["energy_saving_by_path"].items()),
                  "- MAC array (hpu.mac: issue logic and lanes) silent ratio over the compute phase: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in c["mac_silent_ratio_compute"].items()),
                  "- MAC lanes, mean silent ratio over the compute phase: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in c["lane_silent_ratio_compute"].items()),
                  f"- same number of cycles in both runs: {c['same_cycles']}"]
        if "routing" in c:
            r = c["routing"]
            names = list(r["rows_computed"])
            lines += ["", "## Token routing: row-level dark silicon", "",
                      f"{r['tokens']} tokens; rows computed: " + ", ".join(f"{k} {v}" for k, v in r["rows_computed"].items())
                      + f". Unrouted: {r['unrouted_fraction']:.4f} of the tokens, "
                      + (f"of whose rows only their windows entered the chip ({r['window_rows']} rows)." if r["window_rows"]
                         else "whose rows never entered the chip."), "",
                      "| | " + " | ".join(names) + " |", "|---|---|---|",
                      "| attention datapath (score, value, normalizer paths), nJ | "
                      + " | ".join(f"{r['datapath_energy_fJ'][k] / 1e6:.4f}" for k in names) + " |",
                      "| per computed row, pJ | " + " | ".join(f"{r['datapath_energy_fJ_per_row'][k] / 1e3:.2f}" for k in names) + " |",
                      "", f"- attention-datapath saving: **{fmt(r['datapath_saving'])}**; the router spent "
                      f"{r['router_energy_fJ'] / 1e6:.4f} nJ, {fmt(r['router_share_of_hpu'])} of the routed run's on-chip energy "
                      "(counted in the whole-HPU saving above)."]
    lines += ["", "## Energy by path (nJ)", "", "| path | " + " | ".join(result["runs"]) + " |",
              "|---|" + "---|" * len(result["runs"])]
    first = next(iter(result["runs"].values()))
    for path in first["energy_fJ_by_path"]:
        lines.append(f"| {path} | " + " | ".join(f"{s['energy_fJ_by_path'][path] / 1e6:.4f}"
                                                for s in result["runs"].values()) + " |")
    lines.append("| **on chip** | " + " | ".join(f"{s['energy_fJ'] / 1e6:.4f}" for s in result["runs"].values()) + " |")
    lines.append("| off-chip value traffic (bytes) | " + " | ".join(
        "-" if s["value_bytes_fetched"] is None else str(s["value_bytes_fetched"]) for s in result["runs"].values()) + " |")
    lines.append("| off-chip value traffic | " + " | ".join(
        "-" if s["offchip_energy_fJ"] is None else f"{s['offchip_energy_fJ'] / 1e6:.4f}"
        for s in result["runs"].values()) + " |")
    lines += ["", "## Energy per module (nJ, own nets and sub-instances)", "",
              "| module | " + " | ".join(result["runs"]) + " |", "|---|" + "---|" * len(result["runs"])]
    first = next(iter(result["runs"].values()))
    for path in first["instances"]:
        if path.count(".") <= 1:
            lines.append(f"| {path} | " + " | ".join(f"{s['instances'][path]['energy_fJ_subtree'] / 1e6:.4f}"
                                                      for s in result["runs"].values()) + " |")
    lines += ["", "## MAC lanes (silent ratio over the compute phase)", "",
              "| lane | " + " | ".join(result["runs"]) + " |", "|---|" + "---|" * len(result["runs"])]
    for lane in first["lanes"]:
        lines.append(f"| {lane} | " + " | ".join(f"{s['lanes'][lane]['silent_ratio_compute']:.4f}"
                                                 for s in result["runs"].values()) + " |")
    warnings = [w for s in result["runs"].values() for w in s["warnings"]]
    missing = {n: s["nets_not_in_dump"] for n, s in result["runs"].items()}
    lines += ["", f"Nets of the design not found in the dump (not charged): {missing}."]
    lines += [f"- warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _html(markdown: str, images: dict[str, str]) -> str:
    import html

    body = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()).replace("**", "") for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line:
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if in_table:
        body.append("</table>")
    titles = {"lane_heatmap": "MAC lane activity over time", "lane_silence": "Silent ratio per lane",
              "energy_modules": "Energy per module", "kept_vs_saving": "Kept fraction vs energy saving"}
    body.append("<h2>Plots</h2>")
    for key, data in images.items():
        body.append(f'<h3>{titles[key]}</h3><img alt="{titles[key]}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HPU power report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
