"""`hpu calibrate`: the RTL activity model's coefficients fitted per unit against a cell library at gate
level, with the error stated on workloads the fit did not see.

For a configuration, every workload class is simulated at RTL gated and dense (`run_workload`), and
each unit asked for is mapped to the cells (Yosys), its delays written (OpenSTA SDF) and its netlist
replayed under Icarus on the inputs it saw in each RTL run, without delays and with them (glitches);
the replay starts from the RTL's initial values, must hold no x or z after its reset, and must
reproduce the unit's outputs cycle for cycle (an input the RTL leaves x, such as a read port before
its first read, is driven 0 and counted in the results). A replay with its inputs held measures
on its own what the unit costs per cycle doing nothing: at gate level every flip-flop's clock pin
draws energy every cycle unless a clock-gating cell stops it, which the RTL model cannot see. Then

    E_gate = idle x cycles + fJ per toggle x RTL toggles of the unit's logic   (MODEL)

is fitted with non-negative least squares, and beside it one coefficient per net class and per
enabled register bit-cycle (MODELS). The error is stated leave-one-workload-out: fitted without a
workload's runs, measured on them. Before calibration is the cited table scaled by one factor,
fitted the same way, so that the comparison is of the model's shape, not of 45 nm against 0.18 um.

Memories are left out on both sides: the library has no SRAM macros, so Yosys maps a memory to
flip-flops, whose cells are not counted (`gatesim.memory_cells`); the RTL features hold no memory
class, and the table charges memories per access from its cited figures. The flip-flop memories'
read multiplexers and write decoders stay in the logic.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import io
import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.optimize

from golden_model.sources import LONG_MIN_TOKENS
from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import claim, staged, write_json, write_text
from power import gatesim, liberty
from power.calibration_plan import UNITS, WORKLOADS
from power.energy import DEFAULT_TABLE, FITTED_CLASSES, matches
from power.flow import run_workload
from power.vcd import scan
from rtl_gen.generate import TOP_NAME, generate
from rtl_gen.manifest import load_manifest, load_nets
from sim.options import Options

FEATURES = (*(f"{c} toggle" for c in FITTED_CLASSES), "enabled register bit-cycle")
# Models fitted to the gate level, as (the columns of FEATURES they take, their names). The table is
# MODEL's: one energy per toggle of the unit's logic. Per-class coefficients (4 of them on 6 to 8
# training runs) fit in sample better and predict a held-out workload class worse (adversarial
# rows, whose register-to-datapath mix the others do not have, by 18% for a lane); and without a
# clock-gating cell in the library every flip-flop is clocked every cycle, which the idle term
# holds, so enabled bit-cycles have nothing left to stand for. Both are reported.
MODELS = {
    "per_toggle": (lambda x: x[:, :len(FITTED_CLASSES)].sum(axis=1, keepdims=True), ("logic toggle",)),
    "per_class": (lambda x: x, FEATURES),
}
MODEL = "per_toggle"
RUNS = {"gated": "gated.vcd", "dense": "gated_dense.vcd"}
# What a calibration writes into its output folder.
OUTPUTS = {"table": "energy.toml", "json": "calibration.json", "plot": "calibration.png", "summary": "calibration.md"}
IDLE_CYCLES = 500
HARNESS = ("hpu_harness", "dut")


def default_workloads(cfg: HPUConfig) -> dict:
    """Every class whose rows the configuration holds (long MiniLM rows need max_keys >= 128)."""
    return {k: v for k, v in WORKLOADS.items() if v[0] != "minilm-long" or cfg.max_keys >= LONG_MIN_TOKENS}


def _within(path: str, instance: str) -> bool:
    """`path` is `instance` or an instance below it."""
    return path == instance or path.startswith(instance + ".")


def features(instances: dict, instance: str) -> np.ndarray:
    """RTL activity of `instance` and everything below it, from power.json's instance entries: toggles
    per logic class and enabled register bit-cycles."""
    tree = [u for name, u in instances.items() if _within(name, instance)]
    return np.array([*(sum(u["toggles_own"][c] for u in tree) for c in FITTED_CLASSES),
                      sum(u["clocked_bit_cycles_own"] for u in tree)], float)


def logic_energy(instances: dict, instance: str) -> float:
    """The RTL model's energy of `instance`'s subtree without its memories (fJ)."""
    return sum(sum(v for c, v in u["energy_fJ_own"].items() if c != "memory")
               for name, u in instances.items() if _within(name, instance))


def fit(x: np.ndarray, y: np.ndarray, cycles: np.ndarray, idle_per_cycle: float) -> np.ndarray:
    """Non-negative coefficients (fJ per unit of each feature) of y - idle x cycles."""
    coefficients, _ = scipy.optimize.nnls(x, y - idle_per_cycle * cycles)
    return coefficients


def leave_one_workload_out(workloads: list[str], x: np.ndarray, y: np.ndarray, cycles: np.ndarray,
                           idle_per_cycle: float) -> dict[str, np.ndarray]:
    """Per held-out workload: the prediction for each of its runs, fitted on the other workloads."""
    out = {}
    for held in dict.fromkeys(workloads):
        train = np.array([w != held for w in workloads])
        coefficients = fit(x[train], y[train], cycles[train], idle_per_cycle)
        out[held] = idle_per_cycle * cycles[~train] + x[~train] @ coefficients
    return out


def scaled_out(workloads: list[str], model: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per held-out workload: the uncalibrated model times the one factor that fits the others best."""
    out = {}
    for held in dict.fromkeys(workloads):
        train = np.array([w != held for w in workloads])
        factor = float(model[train] @ y[train] / (model[train] @ model[train]))
        out[held] = factor * model[~train]
    return out


@dataclass
class Bench:
    """The RTL side that every unit shares: the Verilog, and each workload's runs with their reports."""

    work: Path
    verilog: Path
    reports: dict[tuple[str, str], dict]    # (workload, run) -> power.json's instance entries
    dumps: dict[tuple[str, str], Path]
    nets: dict                              # nets.json's modules: each module's memories


def simulate(cfg: HPUConfig, workloads: dict, rows: int, work: Path, log=print) -> Bench:
    """Every workload class simulated at RTL gated and dense, its dumps read with the cited table; the
    classes run side by side, one per CPU (each run is mostly simulator start-up)."""
    rtl = work / "rtl"
    generated = generate(cfg, rtl)
    reports, dumps = {}, {}
    with _pool(len(workloads)) as pool:
        futures = {name: pool.submit(_rtl_runs, cfg, name, source, rows, options, work, rtl)
                   for name, (source, options) in workloads.items()}
        for name, future in futures.items():
            power = future.result()
            for run, dump in RUNS.items():
                reports[(name, run)] = power["runs"][run]["instances"]
                dumps[(name, run)] = work / name / dump
            log(f"RTL {name}: {rows} rows, {power['runs']['gated']['cycles']} cycles gated, "
                f"{power['runs']['dense']['cycles']} dense", flush=True)
    return Bench(work, generated.verilog, reports, dumps, load_nets(generated.manifest, load_manifest(generated.manifest)))


@contextlib.contextmanager
def _pool(jobs: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Workers, one per CPU, started from a fresh server process: a worker forked from this one would
    inherit locks its other threads hold (a test runner's, torch's) and could wait on them forever.

    A block that ends in an exception (Ctrl-C, a unit that fails) drops the queued work and ends the
    running work instead of waiting for it: a worker survives its own task's KeyboardInterrupt and
    takes the next one, and a pool's shutdown waits for every queued task, so that a second Ctrl-C
    there would leave the exit waiting on them."""
    pool = concurrent.futures.ProcessPoolExecutor(min(jobs, os.cpu_count() or 1),
                                                  mp_context=multiprocessing.get_context("forkserver"))
    workers = set(multiprocessing.active_children())
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        # This process's children started since the pool was made are its workers.
        for worker in set(multiprocessing.active_children()) - workers:
            worker.terminate()
        raise
    pool.shutdown()


def _rtl_runs(cfg: HPUConfig, name: str, source: str, rows: int, options: Options, work: Path, rtl: Path) -> dict:
    # The simulator's and the model loader's progress would interleave across the classes.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary, power = run_workload(cfg, name, source, rows, options, work, rtl, energy=DEFAULT_TABLE)
    mismatches = sum(r["mismatches"] for r in summary["runs"].values())
    if mismatches:
        raise InputError(f"workload {name}: {mismatches} rows differ from the golden model at RTL: "
                         "the design is wrong, there is nothing to calibrate")
    return power


def memories_of(nets: dict, instance: str) -> set[str]:
    """The memories in `instance` and below it, named as in its flattened netlist (`fetch.asks.storage`
    for the HPU, `asks.storage` for hpu.fetch), from `hpu gen`'s nets.json modules."""
    names = set()
    for path, module in nets.items():
        if _within(path, instance):
            prefix = path[len(instance) + 1:]
            names |= {f"{prefix}.{m['name']}" if prefix else m["name"] for m in module.get("memories", [])}
    return names


def _differing_outputs(rtl: gatesim.Stimulus, gate: gatesim.Stimulus) -> list[str]:
    """The outputs whose replay (settled values, one cycle fewer) differs from the RTL in any cycle. A
    replayed x or z differs from everything; an RTL x or z (an unknown value, driven 0 where it enters
    the unit) takes any replayed 0 or 1."""
    cycles = len(gate.values)
    differs = (((rtl.values[:cycles] ^ gate.values) & ~rtl.unknown[:cycles]) | gate.unknown).any(axis=0)
    return list(dict.fromkeys(name for name, bad in zip(gatesim.column_signals(rtl.widths), differs) if bad))


def _gate_run(mapped: gatesim.Mapped, stim: gatesim.Stimulus, name: str, sdf: Path | None,
              left_out: set[str], outs: dict[str, int]) -> tuple[float, gatesim.Stimulus]:
    """One replay: its energy without the memory cells (fJ), and its outputs, settled, per cycle."""
    dump = gatesim.replay(mapped, gatesim.CELLS_VERILOG, stim, name=name, sdf=sdf)
    counts = scan(dump)
    gatesim.check_known(mapped, counts, name)
    energy = gatesim.energy(mapped, _library(), counts, stim.period_ps)
    counted = np.array([cell not in left_out for cell in energy.instances])
    return float(energy.total[counted].sum()) * 1e15, gatesim.stimulus(dump, ("replay", "dut"), outs, settled=True)


@functools.cache
def _library() -> liberty.Library:
    return liberty.load(gatesim.CELLS_LIBERTY)


def calibrate_unit(bench: Bench, unit: str, log=print) -> dict:
    """One unit at gate level on every run of `bench`, and its fit; see the module docstring."""
    instance, pattern = UNITS[unit]
    mapped = gatesim.map_to_cells(bench.verilog, instance, gatesim.CELLS_LIBERTY, bench.work / "gate" / instance)
    left_out = gatesim.memory_cells(mapped, _library(), memories_of(bench.nets, instance))
    scope = HARNESS + tuple(instance.split(".")[1:])
    keys = list(bench.dumps)
    stims = {k: gatesim.stimulus(bench.dumps[k], scope, gatesim.data_inputs(mapped)) for k in keys}
    first = stims[keys[0]]
    timing = gatesim.write_sdf(mapped, first.period_ps)
    delays = {"sdf": timing.sdf, "zero_delay": None}
    outs = gatesim.outputs(mapped)
    still = np.zeros((IDLE_CYCLES, first.values.shape[1]), np.int64)
    held = gatesim.Stimulus(still, still, first.period_ps, first.widths)
    # Every replay at the period the worst path needs: the gate level's energy per cycle does not
    # depend on it (but for leakage), and a shorter one would replay other states. Replays run side
    # by side, one per CPU.
    jobs = {(*k, label): (stims[k], f"{k[0]}_{k[1]}_{label}", sdf) for k in keys for label, sdf in delays.items()}
    jobs.update({("idle", "", label): (held, f"idle_{label}", sdf) for label, sdf in delays.items()})
    with _pool(len(jobs)) as pool:
        futures = {key: pool.submit(_gate_run, mapped, replace(stim, period_ps=timing.min_period_ps), name, sdf,
                                    left_out, outs) for key, (stim, name, sdf) in jobs.items()}
        done = {key: future.result() for key, future in futures.items()}
    runs = {}
    for workload, run in keys:
        reports = bench.reports[(workload, run)]
        rtl_outputs = gatesim.stimulus(bench.dumps[(workload, run)], scope, outs)
        entry = runs[f"{workload}/{run}"] = {
            "workload": workload, "run": run, "cycles": len(stims[(workload, run)].values),
            "rtl_x_input_cycles": gatesim.unknown_cycles(stims[(workload, run)]),
            "rtl_features": features(reports, instance).tolist(),
            "rtl_cited_fJ": logic_energy(reports, instance)}
        for label in delays:
            entry[f"gate_{label}_fJ"], replayed = done[(workload, run, label)]
            wrong = _differing_outputs(rtl_outputs, replayed)
            if wrong:
                raise InputError(f"{instance} {workload} {run} ({label}): the gate-level replay did not reproduce "
                                 f"the RTL's {', '.join(wrong)}: the mapping or the replay is wrong")
        log(f"{unit:10} {workload:12} {run:6} {entry['cycles']:6d} cycles  gate {entry['gate_sdf_fJ'] / 1e6:8.3f} nJ "
            f"(zero-delay {entry['gate_zero_delay_fJ'] / 1e6:8.3f})", flush=True)
    idle = {label: done[("idle", "", label)][0] / IDLE_CYCLES for label in delays}

    workloads = [runs[f"{w}/{r}"]["workload"] for w, r in keys]
    x = np.array([runs[f"{w}/{r}"]["rtl_features"] for w, r in keys])
    cycles = np.array([runs[f"{w}/{r}"]["cycles"] for w, r in keys], float)
    cited = np.array([runs[f"{w}/{r}"]["rtl_cited_fJ"] for w, r in keys])
    fits = {}
    for label in delays:
        y = np.array([runs[f"{w}/{r}"][f"gate_{label}_fJ"] for w, r in keys])
        held_out = {kind: leave_one_workload_out(workloads, columns(x), y, cycles, idle[label])
                    for kind, (columns, _) in MODELS.items()}
        held_out["cited_scaled"] = scaled_out(workloads, cited, y)
        worst = {}
        for kind, predictions in held_out.items():
            for workload, predicted in predictions.items():
                for (w, r), p in zip([k for k in keys if k[0] == workload], predicted):
                    runs[f"{w}/{r}"][f"{kind}_held_out_fJ_{label}"] = float(p)
            worst[kind] = max(abs(runs[f"{w}/{r}"][f"{kind}_held_out_fJ_{label}"] / runs[f"{w}/{r}"][f"gate_{label}_fJ"]
                                  - 1) for w, r in keys)
        fits[label] = {"idle_fJ_per_cycle": idle[label], "cited_scaled_held_out_worst_error": worst["cited_scaled"],
                       **{kind: {"fJ_per": dict(zip(names, fit(columns(x), y, cycles, idle[label]).tolist())),
                                 "held_out_worst_error": worst[kind]} for kind, (columns, names) in MODELS.items()}}
    result = {"unit": unit, "instance": instance, "applies_to": pattern, "area_um2": mapped.area,
              "cells": len(mapped.netlist["modules"][mapped.top]["cells"]), "memory_cells_left_out": len(left_out),
              "flip_flops_x_in_rtl": len(mapped.x_initial),
              "replay_period_ps": timing.min_period_ps, "rtl_period_ps": first.period_ps,
              "runs": runs, "fit": fits, "saving": _savings(runs)}
    f = fits["sdf"]
    log(f"{unit:10} idle {f['idle_fJ_per_cycle']:.1f} fJ/cycle, {f[MODEL]['fJ_per']['logic toggle']:.1f} fJ per "
        f"toggle; worst held-out error {f[MODEL]['held_out_worst_error']:.1%} (per class: "
        f"{f['per_class']['held_out_worst_error']:.1%}, cited table scaled: {f['cited_scaled_held_out_worst_error']:.1%}"
        f"), zero-delay {fits['zero_delay'][MODEL]['held_out_worst_error']:.1%}", flush=True)
    return result


def _savings(runs: dict) -> dict[str, dict[str, float]]:
    """Gated-vs-dense saving per workload: gate level (SDF, zero-delay), the calibrated model held out,
    and the cited table."""
    out = {}
    for workload in dict.fromkeys(r["workload"] for r in runs.values()):
        g, d = runs[f"{workload}/gated"], runs[f"{workload}/dense"]
        out[workload] = {key: 1 - g[key] / d[key] for key in
                         ("gate_sdf_fJ", "gate_zero_delay_fJ", f"{MODEL}_held_out_fJ_sdf", "rtl_cited_fJ")}
    return out


def table_text(results: list[dict], instances: list[str], cfg_name: str, lib: liberty.Library, date: str) -> str:
    """The calibrated energy table: one [units] entry per unit, and the cited table's figures for
    memories, off-chip traffic and any instance no entry covers.

    With the whole HPU calibrated too, its entry covers what no unit does (the top level's own
    logic, the MAC array's issue logic) at its coefficients, and its idle energy is the whole HPU's
    less that of the units' instances (`instances`: the design's), so no cycle is charged twice."""
    cited = DEFAULT_TABLE.read_text()
    body = cited[cited.index("[toggle_fJ]"):]
    worst = max(r["fit"]["sdf"][MODEL]["held_out_worst_error"] for r in results)
    lines = [
        "# Energy table calibrated by `hpu calibrate` against gate level. Memories, off-chip traffic and",
        "# instances no [units] entry covers keep the cited figures below.",
        "",
        f'source = "calibrated: {lib.name} at gate level with SDF delays, {date}; elsewhere '
        f'Horowitz, ISSCC 2014, 45 nm, 0.9 V"',
        "",
        "[calibration]",
        f'library = "{lib.name} ({lib.voltage} V), Debian qflow-tech-osu018"',
        'delays = "SDF from OpenSTA, inertial, Icarus Verilog"',
        f'date = "{date}"',
        f'config = "{cfg_name}"',
        f"held_out_worst_error = {worst:.4f}",
        'memories = "Memories come from the cited per-access table (Horowitz, ISSCC 2014, 45 nm): the cell '
        'library has no SRAM macros to calibrate them against."',
        "",
    ]
    units_idle = sum(r["fit"]["sdf"]["idle_fJ_per_cycle"] * sum(matches(i, r["applies_to"]) for i in instances)
                     for r in results if r["instance"] != TOP_NAME)
    for r in results:
        f = r["fit"]["sdf"]
        per_toggle = f[MODEL]["fJ_per"]["logic toggle"]
        idle = f["idle_fJ_per_cycle"]
        note = ""
        if r["instance"] == TOP_NAME and len(results) > 1:
            idle = max(0.0, idle - units_idle)
            note = f" (idle: the whole HPU's {f['idle_fJ_per_cycle']:.1f} less the units' {units_idle:.1f})"
        lines += [f'[units."{r["applies_to"]}"]',
                  f"# {r['instance']}: {r['cells']} cells, worst held-out error {f[MODEL]['held_out_worst_error']:.1%} "
                  f"(cited table scaled: {f['cited_scaled_held_out_worst_error']:.1%}){note}; its flip-flops' clock "
                  "pins are in the idle energy",
                  "toggle_fJ = { " + ", ".join(f"{k} = {per_toggle:.4f}" for k in FITTED_CLASSES) + " }",
                  "clock_fJ_per_enabled_bit = 0.0",
                  f"idle_fJ_per_cycle = {idle:.4f}",
                  f"held_out_error = {f[MODEL]['held_out_worst_error']:.4f}", ""]
    return "\n".join(lines) + "\n" + body


def calibrate(cfg: HPUConfig, cfg_name: str, units: list[str], rows: int, work: Path, out: Path,
              workloads: dict | None = None, log=print) -> dict[str, Path]:
    """Calibrate `units` (names of UNITS) of `cfg` on `rows` rows of each workload class; writes into
    `out` the energy table (energy.toml), the results (calibration.json), a plot and a summary."""
    workloads = default_workloads(cfg) if workloads is None else workloads
    unknown = [u for u in units if u not in UNITS]
    if unknown or not units:
        raise InputError(f"unknown unit(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(UNITS)}")
    if len(workloads) < 3:
        raise InputError(f"{len(workloads)} workload classes: leave-one-workload-out needs at least 3")
    if not gatesim.CELLS_LIBERTY.exists():
        raise InputError(f"no cell library at {gatesim.CELLS_LIBERTY}: run `make setup` (it fetches the OSU 0.18 um "
                         "cells from Debian's qflow-tech-osu018)")
    lib = _library()
    date = datetime.date.today().isoformat()
    start = time.perf_counter()

    def timed(*args, **kwargs):
        log(f"[{time.perf_counter() - start:6.1f} s]", *args, **kwargs)

    # The whole work folder is this run's from the start: a second calibration there is refused at
    # once, not minutes in at its first shared subfolder.
    with contextlib.ExitStack() as held:
        shared = out.resolve() == work.resolve()
        held.enter_context(claim(work, "calibration work folder", OUTPUTS.values() if shared else ()))
        if not shared:
            held.enter_context(claim(out, "calibration folder", OUTPUTS.values()))
        bench = simulate(cfg, workloads, rows, work, timed)
        results = [calibrate_unit(bench, unit, timed) for unit in units]
        result = {"config": cfg.to_dict(), "config_name": cfg_name, "rows_per_workload": rows,
                  "library": f"{lib.name} ({lib.voltage} V)", "date": date, "features": FEATURES,
                  "workloads": {k: v[0] for k, v in workloads.items()}, "units": results}
        paths = {key: out / name for key, name in OUTPUTS.items()}
        write_text(paths["table"], table_text(results, list(next(iter(bench.reports.values()))), cfg_name, lib, date))
        write_json(paths["json"], result)
        plot(results, paths["plot"])
        write_text(paths["summary"], summary(result))
    return paths


def summary(result: dict) -> str:
    lines = [f"# Calibration against {result['library']} ({result['date']}, {result['config_name']}, "
             f"{result['rows_per_workload']} rows per workload)", "",
             "Worst held-out error: each workload class predicted by a fit without it, against the gate level "
             "with SDF delays. Calibrated: idle per cycle + one energy per logic toggle (the table's). Per class: "
             "one coefficient per net class and per enabled bit-cycle. Cited: the 45 nm table times one factor. "
             "Savings: gated against dense, memories left out.",
             "", "| unit | cells | idle fJ/cycle | fJ/toggle | calibrated | per class | cited, scaled | zero-delay, "
             "calibrated |", "|---|---|---|---|---|---|---|---|"]
    for r in result["units"]:
        f, z = r["fit"]["sdf"], r["fit"]["zero_delay"]
        lines.append(f"| {r['instance']} | {r['cells']} | {f['idle_fJ_per_cycle']:.1f} | "
                     f"{f[MODEL]['fJ_per']['logic toggle']:.1f} | {f[MODEL]['held_out_worst_error']:.1%} | "
                     f"{f['per_class']['held_out_worst_error']:.1%} | {f['cited_scaled_held_out_worst_error']:.1%} | "
                     f"{z[MODEL]['held_out_worst_error']:.1%} |")
    lines += ["", "| unit | workload | saving: gate SDF | gate zero-delay | calibrated RTL (held out) | cited RTL |",
              "|---|---|---|---|---|---|"]
    for r in result["units"]:
        for workload, s in r["saving"].items():
            lines.append(f"| {r['instance']} | {workload} | {s['gate_sdf_fJ']:.3f} | {s['gate_zero_delay_fJ']:.3f} | "
                         f"{s[f'{MODEL}_held_out_fJ_sdf']:.3f} | {s['rtl_cited_fJ']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, band: float = 0.15) -> None:
    """Per unit: each run's gate-level energy (SDF) against the calibrated RTL model's held-out
    prediction and the cited table's (scaled), with the +-15% band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        names = list(r["runs"])
        gate = np.array([r["runs"][n]["gate_sdf_fJ"] for n in names]) / 1e6
        x = np.arange(len(names))
        ax.bar(x, gate, color="#9db4c0", label="gate level, SDF")
        ax.errorbar(x, gate, yerr=band * gate, fmt="none", ecolor="#555", capsize=4, label=f"+-{band:.0%} of gate level")
        ax.scatter(x, [r["runs"][n][f"{MODEL}_held_out_fJ_sdf"] / 1e6 for n in names], color="#c0392b", zorder=3,
                   label="calibrated RTL model, held out")
        ax.scatter(x, [r["runs"][n]["cited_scaled_held_out_fJ_sdf"] / 1e6 for n in names], color="#7f8c8d",
                   marker="x", zorder=3, label="cited table, one scale factor, held out")
        ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("energy (nJ)")
        f = r["fit"]["sdf"]
        ax.set_title(f"{r['instance']}: worst held-out error {f[MODEL]['held_out_worst_error']:.1%} calibrated, "
                     f"{f['cited_scaled_held_out_worst_error']:.1%} cited", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with staged(path) as partial:
        fig.savefig(partial, dpi=110, format="png")
    plt.close(fig)
