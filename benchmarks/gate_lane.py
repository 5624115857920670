"""One MAC lane at gate level against the RTL activity model, on the same cycles, and the lane's
calibration: per-class coefficients of the activity model fitted to the gate level, with
leave-one-workload-out errors.

    python -m benchmarks.gate_lane [--work build/dark_silicon] [--instance hpu.mac.lane0] [-o JSON]

Takes the dumps and power reports `python -m benchmarks.dark_silicon` wrote for its three workloads
(run it first) and simulates two more classes (adversarial rows, MiniLM rows with idle stretches), maps the instance to the OSU 0.18 um cells (`make` fetches them), writes its SDF
delays with OpenSTA, and replays the instance's inputs from each RTL dump (gated and dense) under
Icarus, without delays and with SDF delays (glitches), checking that the replay takes the RTL's
accumulator states. An idle replay (inputs held) measures the per-cycle cost of doing nothing. The
uncalibrated RTL table is Horowitz's 45 nm and the gates are OSU 0.18 um at 1.8 V: their ratio is
what the fit absorbs, not an error; the error is the fitted model's, on workloads it did not see.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import write
from benchmarks.dark_silicon import run_workload
from hpu.config import HPUConfig
from power import calibrate, gatesim, liberty
from power.energy import EnergyTable
from sim.job import Options

WORKLOADS = ("minilm", "minilm-long", "random")
# Classes beyond benchmarks.dark_silicon's, simulated here when missing: adversarial rows, and the
# demo's MiniLM rows with a host that idles half the cycles (idle stretches inside rows).
EXTRA = {"adversarial": ("adversarial", 16, Options(seed=1)), "minilm-idle": ("minilm", 24, Options(seed=1, gaps=0.5))}
RUNS = {"gated": "gated.vcd", "dense": "gated_dense.vcd"}
IDLE_CYCLES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/dark_silicon"), help="benchmarks.dark_silicon's folder")
    parser.add_argument("--instance", default="hpu.mac.lane0")
    parser.add_argument("--config", default="configs/default.toml", help="the configuration dark_silicon ran")
    parser.add_argument("-o", "--output", default="benchmarks/results/gate_lane.json")
    args = parser.parse_args()
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    cells_v = gatesim.CELLS_VERILOG
    mapped = gatesim.map_to_cells(args.work / "rtl" / "hpu.v", args.instance, gatesim.CELLS_LIBERTY,
                                  args.work / "gate" / args.instance)
    scope = ("hpu_harness", "dut") + tuple(args.instance.split(".")[1:])
    accs = _outputs_as_registers(mapped)
    clock_fJ = EnergyTable.load().clock_fj
    cfg = HPUConfig.load(args.config)
    for name, (source, count, options) in EXTRA.items():
        if not (args.work / name / "power" / "power.json").exists():
            run_workload(cfg, name, source, count, options, args.work, args.work / "rtl")
    workloads = (*WORKLOADS, *EXTRA)
    stims = {(w, run): gatesim.stimulus(args.work / w / dump, scope, gatesim.data_inputs(mapped))
             for w in workloads for run, dump in RUNS.items()}
    period_ps = stims[(workloads[0], "gated")].period_ps
    delays = {"zero_delay": None, "sdf": gatesim.write_sdf(mapped, period_ps)}
    runs, features = {}, {}
    for (workload, run), stim in stims.items():
        dump = args.work / workload / RUNS[run]
        rtl_states = gatesim.distinct_states(gatesim.stimulus(dump, scope, accs).values)[:-1]   # ends in $dumpoff
        reports = json.loads((args.work / workload / "power" / "power.json").read_text())["runs"][run]["instances"]
        subtree = [u for name, u in reports.items() if name == args.instance or name.startswith(args.instance + ".")]
        features[(workload, run)] = calibrate.features(subtree, clock_fJ)
        entry = runs[f"{workload}/{run}"] = {"cycles": len(stim.values),
                                             "rtl_model_fJ": reports[args.instance]["energy_fJ_subtree"],
                                             "rtl_features": dict(zip(calibrate.FEATURES, features[(workload, run)].tolist()))}
        for label, sdf_file in delays.items():
            gate_dump = gatesim.replay(mapped, cells_v, stim, name=f"{workload}_{run}_{label}", sdf=sdf_file)
            energy, counts = gatesim.energy(mapped, lib, gate_dump)
            gate_states = gatesim.distinct_states(gatesim.stimulus(gate_dump, ("replay", "dut"), accs).values)
            if not np.array_equal(rtl_states, gate_states):
                raise SystemExit(f"{workload} {run} {label}: the replay did not take the RTL's accumulator states")
            entry[label] = {"toggles": int((counts.rise + counts.fall).sum()),
                            "internal_fJ": energy.internal.sum() * 1e15, "switching_fJ": energy.switching.sum() * 1e15,
                            "leakage_fJ": energy.leakage.sum() * 1e15, "clock_pins_fJ": energy.clock_pins.sum() * 1e15,
                            "total_fJ": energy.total.sum() * 1e15}
        print(f"{workload:12} {run:6} cycles {len(stim.values):6d}  RTL model {entry['rtl_model_fJ'] / 1e6:7.3f} nJ  gate "
              f"zero-delay {entry['zero_delay']['total_fJ'] / 1e6:8.3f} nJ  SDF {entry['sdf']['total_fJ'] / 1e6:8.3f} nJ "
              f"(clock pins {entry['sdf']['clock_pins_fJ'] / 1e6:7.3f})", flush=True)
    # Idle: every input held at 0 after the reset, measured on its own.
    held = gatesim.Stimulus(np.zeros((IDLE_CYCLES, len(gatesim.data_inputs(mapped))), np.int64), period_ps)
    idle = {label: calibrate.replay_energy(mapped, lib, cells_v, held, f"idle_{label}", sdf_file) / IDLE_CYCLES
            for label, sdf_file in delays.items()}
    keys = list(stims)
    x = np.array([features[k] for k in keys])
    cycles = np.array([len(stims[k].values) for k in keys], float)
    calibration = {}
    for label in ("sdf", "zero_delay"):
        y = np.array([runs[f"{w}/{run}"][label]["total_fJ"] for w, run in keys])
        coefficients = calibrate.fit(x, y, cycles, idle[label])
        errors = calibrate.leave_one_workload_out([w for w, _ in keys], x, y, cycles, idle[label])
        worst = max(abs(e) for errs in errors.values() for e in errs)
        calibration[label] = {"idle_fJ_per_cycle": idle[label],
                              "fJ_per": dict(zip(("register toggle", "datapath toggle", "control toggle",
                                                  "enabled register bit-cycle"), coefficients.tolist())),
                              "held_out_relative_error": errors, "held_out_worst_abs_error": worst}
        print(f"fit ({label}): idle {idle[label]:.1f} fJ/cycle, fJ per register/datapath/control toggle and enabled "
              f"bit-cycle {', '.join(f'{c:.1f}' for c in coefficients)}; held-out error by workload "
              f"{ {w: [round(e, 3) for e in v] for w, v in errors.items()} }, worst {worst:.3f}", flush=True)
    saving = {label: {w: 1 - runs[f"{w}/gated"][label]["total_fJ"] / runs[f"{w}/dense"][label]["total_fJ"]
                      for w in workloads} for label in delays}
    saving["rtl_model"] = {w: 1 - runs[f"{w}/gated"]["rtl_model_fJ"] / runs[f"{w}/dense"]["rtl_model_fJ"]
                           for w in workloads}
    print("saving of the instance, gated vs dense:", json.dumps({k: {w: round(v, 3) for w, v in d.items()}
                                                                for k, d in saving.items()}))
    result = {"benchmark": "gate_lane", "instance": args.instance,
              "library": f"{lib.name} ({lib.voltage} V), Debian qflow-tech-osu018",
              "area_library_units": mapped.area, "clock_period_ps": period_ps, "runs": runs,
              "saving": saving, "calibration": calibration}
    write(args.output, result)
    plot(result, Path(args.output).with_suffix(".png"))


def plot(result: dict, path: Path, band: float = 0.15) -> None:
    """Gate-level energy of each run against the calibrated RTL model's held-out prediction for it
    (fitted without that run's workload), with the +-15% band of the target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, label in zip(axes, ("sdf", "zero_delay")):
        errors = result["calibration"][label]["held_out_relative_error"]
        names, gate, predicted = [], [], []
        for workload, errs in errors.items():
            for run, err in zip(("gated", "dense"), errs):
                y = result["runs"][f"{workload}/{run}"][label]["total_fJ"] / 1e6
                names.append(f"{workload}\n{run}")
                gate.append(y)
                predicted.append(y * (1 + err))
        x = np.arange(len(names))
        ax.bar(x, gate, color="#9db4c0", label="gate level")
        ax.errorbar(x, gate, yerr=[band * g for g in gate], fmt="none", ecolor="#555", capsize=4,
                    label=f"+-{band:.0%} of gate level")
        ax.scatter(x, predicted, color="#c0392b", zorder=3, label="calibrated RTL model, held out")
        ax.set_xticks(x, [n.replace("\n", " ") for n in names], fontsize=7, rotation=40, ha="right")
        ax.set_ylabel("energy of the lane (nJ)")
        worst = result["calibration"][label]["held_out_worst_abs_error"]
        ax.set_title(f"{result['instance']}, {'SDF delays' if label == 'sdf' else 'zero delay'}: worst held-out "
                     f"error {worst:.1%}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    partial = path.with_name(path.stem + ".partial.png")
    fig.savefig(partial, dpi=120)
    plt.close(fig)
    partial.rename(path)
    print(f"wrote {path}")


def _outputs_as_registers(mapped: gatesim.Mapped) -> dict[str, int]:
    """The instance's registers that hold its state (acc0, acc1, ...), as named nets of the netlist."""
    names = mapped.netlist["modules"][mapped.top]["netnames"]
    return {name: len(info["bits"]) for name, info in sorted(names.items())
            if name.startswith("acc") and name[3:].isdigit()}


if __name__ == "__main__":
    main()
