"""`hpu power` as a library call: check that the dumps and their companions belong together, measure
each dump, and write the report."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import claim
from power import activity, design, generic, report
from power.energy import EnergyTable, estimate
from rtl_gen.manifest import config_difference, load_manifest, manifest_config
from sim import summary as sim_summary
from sim.job import Options
from sim.session import Outputs, simulate


@dataclass(frozen=True)
class Request:
    vcd: Path
    baseline: Path | None
    manifest: Path | None      # None: any design's dump, read without knowledge of its nets
    summary: Path | None = None
    energy: Path | None = None
    clock: str = "clk"
    phase: str | None = "busy"
    top_scope: str | None = None
    window: int = 64


def _runs_of_dumps(req: Request, dumps: dict[str, Path]) -> dict[str, dict]:
    """Each dump's run in the summary (by the dump's bytes), checked against the manifest and each other."""
    if req.summary is None:
        return {}
    summary = sim_summary.load(req.summary)
    runs = {name: sim_summary.run_of_dump(summary, req.summary, vcd)[1] for name, vcd in dumps.items()}
    built = manifest_config(load_manifest(req.manifest))
    for name, run in runs.items():
        simulated = HPUConfig.from_dict(run["config"])
        if simulated != built:
            raise InputError(f"the {name} dump was simulated with another configuration than manifest {req.manifest} "
                             f"describes (simulated/manifest: {config_difference(simulated, built)}); pass the "
                             "manifest of the Verilog that was simulated")
    if "dense" in runs:
        sim_summary.check_baseline(runs["gated"], runs["dense"])
    return runs


def analyze(req: Request, out_dir: Path, log=print) -> dict[str, Path]:
    """Measure the dump(s) and write the report into out_dir: for any design, toggles per bit, scope and
    window, silent ratio per scope, activity over time, SAIF and an uncalibrated energy estimate
    (`activity.*`, `<run>_activity.*` with a baseline); with the HPU's manifest also the HPU report
    (`power.*`: energy by class, module and path, gated against dense)."""
    dumps = {"gated": req.vcd, **({"dense": req.baseline} if req.baseline else {})}
    for vcd in dumps.values():
        if not vcd.is_file():
            raise InputError(f"VCD {vcd} {'is not a file' if vcd.exists() else 'does not exist'}: "
                             "write one with `hpu sim --vcd PATH.vcd`")
    table = EnergyTable.load(req.energy)
    if req.manifest is None:
        if req.summary is not None:
            raise InputError("--summary describes HPU runs: pass the HPU's --manifest with it")
        with claim(out_dir, "report folder", report.OUTPUTS):
            paths = {}
            for name, vcd in dumps.items():
                g = generic.measure(vcd, clock=req.clock, window=req.window)
                log(f"{name}: {vcd}: {g.counts.bytes_read / 1e6:.1f} MB, clock "
                    f"{g.clock or 'not found (name it with --clock)'}"
                    + (f", {g.activity.cycles} cycles" if g.activity else ""), flush=True)
                paths[name] = generic.write(g, table, out_dir, "activity" if name == "gated" else f"{name}_activity")
            return paths["gated"]
    runs = _runs_of_dumps(req, dumps)
    with claim(out_dir, "report folder", report.OUTPUTS):
        measured = []
        for name, vcd in dumps.items():
            d = design.load(vcd, req.manifest, top_scope=req.top_scope, clock=req.clock, phase=req.phase)
            a = activity.measure(d, window=req.window)
            if not a.counts.closed and req.summary is None:
                note = (f"{vcd} does not end in the `$dumpoff` with which `hpu sim` closes a dump: it may be cut "
                        "short; pass --summary to check it against its run")
                a.counts.warnings.append(note)
                log(f"hpu: warning: {note}", file=sys.stderr)
            run = runs.get(name, {})
            measured.append(report.Run(name, a, estimate(a, table), run.get("kept_fraction"),
                                       run.get("value_bytes_fetched"), run.get("tokens"), run.get("window_rows", 0)))
            log(f"{name}: {vcd}: {a.cycles} cycles, {a.counts.bytes_read / 1e6:.1f} MB", flush=True)
        if len(measured) == 2:
            rows = [run.activity.rows_delivered for run in measured]
            # A routed run computes its routed tokens' rows (and their windows, if any): only its summary
            # says how many, and which tokens the rows stand for.
            if not runs and measured[0].activity.design.manifest["config"].get("route_block"):
                raise InputError("the HPU of these dumps routes tokens: pass the --summary that `hpu sim` wrote "
                                 "with them, which says which tokens their rows stand for")
            want = [runs[name]["rows"] for name in dumps] if runs else [rows[1], rows[1]]
            if rows != want:
                raise InputError(f"the dumps are not of the runs' rows: the HPU delivered {rows[0]} rows in {req.vcd} "
                                 f"and {rows[1]} in {req.baseline}, where {want[0]} and {want[1]} were expected; make "
                                 "both with one `hpu sim --dense-baseline` (and pass its --summary for routed runs)")
        for run in measured:
            # Toggles per bit, as any dump gets them; per instance and window they are in power.csv
            # and signals.csv.
            generic.write_bits(run.activity.counts, out_dir / f"{run.name}_bits.csv")
        return report.write(measured, table, out_dir)


def run_workload(cfg: HPUConfig, name: str, source: str, rows: int, options: Options, work: Path,
                 rtl: Path, energy: Path | None = None, log=print, sim: str = "icarus") -> tuple[dict, dict]:
    """Simulates `rows` rows of `source` gated and dense under `sim` (dumps work/name/gated.vcd and
    gated_dense.vcd) from the Verilog of `rtl` (`hpu gen`'s folder), and reads both dumps with its
    manifest as `hpu power` does; returns the simulation summary and power.json."""
    out = work / name
    summary = simulate(cfg, source, rows, options, Outputs(out / "summary.json", out / "gated.vcd"),
                       True, sim, work / "build", progress=False, log=log, verilog_dir=rtl)
    analyze(Request(vcd=out / "gated.vcd", baseline=out / "gated_dense.vcd", manifest=rtl / "manifest.json",
                    summary=out / "summary.json", energy=energy), out / "power", log=lambda *a, **k: None)
    return summary, json.loads((out / "power" / "power.json").read_text())
