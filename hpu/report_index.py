"""The index of a run's reports: one HTML page, and its JSON twin, linking every file the commands
wrote, with the headline figures read from each command's machine-readable record.

A record is the JSON a command writes last, when its folder is whole: `hpu gen`'s manifest.json,
`hpu sim`'s summary, power.json, crosscheck.json, quality.json. The index lists exactly the records
it is given (`make demo` passes the ones it has just written), so a report left in `out/` by an
earlier run is never presented as this run's.

    hpu index -o out out/rtl/manifest.json out/sim/summary.json ...
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from hpu.errors import InputError
from hpu.files import claim, read_json, write_json, write_text

INDEX_VERSION = 1


def _gen(record: dict, folder: Path) -> dict:
    cfg = record["config"]
    figures = {"top module": record["top"], "head_dim": cfg["head_dim"], "MAC lanes": cfg["lanes"],
               "max_keys": cfg["max_keys"], "gate mode": cfg["mode"]}
    if "area" in record:
        area = read_json(folder / record["area"], "area report", "run `hpu gen --synth` again")
        figures.update({"area (NAND2 equivalents, generic gates)": area["total"]["area_nand2_eq"],
                        "cells": area["total"]["cells"], "memory bits": area["total"]["memory_bits"]})
    return figures


def _sim(record: dict, folder: Path) -> dict:
    figures = {"simulator": record["simulator"]}
    for name, run in record["runs"].items():
        figures.update({f"{name}: rows checked bit-exact against the golden model": run["rows_checked"],
                        f"{name}: mismatches": run["mismatches"],
                        f"{name}: kept fraction": run["kept_fraction"],
                        f"{name}: HPU cycles": run["hpu_cycles"]})
    return figures


def _power(record: dict, folder: Path) -> dict:
    figures = {"energy table": record["energy_table"]["source"]}
    comparison = record.get("comparison")
    if comparison is None:  # a dump without its dense baseline: its activity only
        for name, run in record["runs"].items():
            figures[f"{name}: MAC array silent ratio (compute phase)"] = run["mac_array"]["silent_ratio_compute"]
        return figures
    for name, ratio in comparison["mac_silent_ratio_compute"].items():
        figures[f"{name}: MAC array silent ratio (compute phase)"] = ratio
        figures[f"{name}: MAC lane silent ratio, mean (compute phase)"] = comparison["lane_silent_ratio_compute"][name]
    figures.update({"kept fraction": comparison["kept_fraction"],
                    "energy saving, MAC array": comparison["energy_saving_mac_array"],
                    "energy saving, HPU on chip": comparison["energy_saving_hpu"],
                    "energy saving, on chip + value traffic": comparison["energy_saving_total"],
                    "energy proportionality, HPU": comparison["energy_proportionality"]["hpu"]})
    return figures


def _crosscheck(record: dict, folder: Path) -> dict:
    cells = record["cells"]
    return {"simulator": record["simulator"], "kernel device": record["kernel_device"],
            "rows checked (golden model = Verilog = exact kernel)": sum(c["rows"] for c in cells),
            "rows where all three agree": sum(c["agree"] for c in cells),
            "disagreements": sum(len(c["disagreements"]) for c in cells)}


def _quality(record: dict, folder: Path) -> dict:
    cfg = record["config"]
    settings = {(r["mode"], r["permeability"], r["mass_target"], r["route_fraction"]) for r in record["rows"]}
    figures = {"texts": record["texts"], "gate settings (each in float and fixed point)": len(settings)}
    own = [r for r in record["rows"] if r["path"] == "fixed" and r["route_fraction"] == 1.0 and r["mode"] == cfg["mode"]
           and r["permeability"] == cfg["permeability"] and r["mass_target"] == cfg["mass_target"]]
    if own:  # the configuration's own gate, in the HPU's fixed point
        gate = f"{cfg['mode']} gate, permeability {cfg['permeability']}, mass target {cfg['mass_target']}"
        figures.update({f"{gate}: kept fraction": own[0]["kept_fraction"],
                        f"{gate}: embedding cosine vs dense (mean)": own[0]["embedding_cos_mean"],
                        f"{gate}: embedding cosine vs dense (min)": own[0]["embedding_cos_min"]})
    return figures


# Each record is recognized by a key that only its command writes.
KINDS = (("hpu gen", "manifest_version", _gen), ("hpu sim", "summary_version", _sim),
         ("hpu power", "energy_table", _power), ("hpu crosscheck", "kernel_device", _crosscheck),
         ("hpu quality", "texts", _quality))
RECORDS = "hpu gen's manifest.json, hpu sim's summary, power.json, crosscheck.json or quality.json"


def _entry(path: Path, out_dir: Path) -> dict:
    record = read_json(path, "report record", f"pass {RECORDS}")
    kind = next((k for k in KINDS if k[1] in record), None)
    if kind is None:
        raise InputError(f"{path} is not a record the index knows: pass {RECORDS}")
    name, _, figures = kind
    try:
        values = figures(record, path.parent)
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{path} lacks the fields {name} writes: it is damaged or of another version; "
                         f"run `{name}` again") from None
    files = sorted(p for p in path.parent.iterdir() if p.is_file() and not p.name.startswith("."))
    return {"command": name, "record": os.path.relpath(path, out_dir), "figures": values,
            "files": [{"path": os.path.relpath(p, out_dir), "bytes": p.stat().st_size} for p in files]}


def _value(value) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def _html(index: dict) -> str:
    e = html.escape
    body = ["<h1>HPU co-design toolkit: reports</h1>"]
    for entry in index["reports"]:
        body.append(f"<h2>{e(entry['command'])}: <a href=\"{e(quote(entry['record']))}\">{e(entry['record'])}</a></h2>")
        body.append("<table>" + "".join(f"<tr><th>{e(label)}</th><td>{e(_value(value))}</td></tr>"
                                        for label, value in entry["figures"].items()) + "</table>")
        body.append("<ul>" + "".join(f"<li><a href=\"{e(quote(f['path']))}\">{e(f['path'])}</a> "
                                     f"({e(_value(f['bytes']))} bytes)</li>" for f in entry["files"]) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3;text-align:left;font-weight:normal}td{text-align:right}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HPU reports</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


OUTPUTS = {"html": "index.html", "json": "index.json"}


def write_index(records: list[Path], out_dir: Path) -> dict[str, Path]:
    """index.html and, last, its twin index.json in `out_dir`, for the given records."""
    paths = {kind: out_dir / name for kind, name in OUTPUTS.items()}
    with claim(out_dir, "index folder", OUTPUTS.values()):
        index = {"index_version": INDEX_VERSION, "reports": [_entry(Path(r), out_dir) for r in records]}
        write_text(paths["html"], _html(index))
        write_json(paths["json"], index)
    return paths
