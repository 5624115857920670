"""One MAC lane at gate level against the RTL activity model, on the same cycles: the first data
point of the activity model's calibration (uncalibrated: the RTL table is Horowitz's 45 nm, the
gates are OSU 0.18 um at 1.8 V, so the ratio is the coefficient a calibration would fit, not an error).

    python -m benchmarks.gate_lane [--work build/dark_silicon] [--instance hpu.mac.lane0] [-o JSON]

Takes the dumps and power reports `python -m benchmarks.dark_silicon` wrote (run it first), maps the
instance to the OSU 0.18 um cells (`make` fetches them), writes its SDF delays with OpenSTA, and
replays the instance's inputs from each RTL dump (gated and dense) under Icarus, without delays and
with SDF delays (glitches). Checks that the replay takes the same accumulator states as the RTL,
and reports gate-level energy by kind, flip-flop clock pins apart, beside the RTL model's figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import write
from power import gatesim, liberty

CELLS = Path("build/cells/osu018")
PERIOD_PS = 10000   # the harness's clock


def _distinct(values: np.ndarray) -> np.ndarray:
    keep = np.concatenate(([True], (values[1:] != values[:-1]).any(axis=1)))
    return values[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/dark_silicon"), help="benchmarks.dark_silicon's folder")
    parser.add_argument("--workload", default="minilm")
    parser.add_argument("--instance", default="hpu.mac.lane0")
    parser.add_argument("-o", "--output", default="benchmarks/results/gate_lane.json")
    args = parser.parse_args()
    runs = args.work / args.workload
    power = json.loads((runs / "power" / "power.json").read_text())
    lib = liberty.load(CELLS / "osu018_stdcells.lib")
    mapped = gatesim.map_to_cells(args.work / "rtl" / "hpu.v", args.instance, CELLS / "osu018_stdcells.lib",
                                  args.work / "gate" / args.instance)
    sdf = gatesim.write_sdf(mapped, PERIOD_PS)
    scope = ("hpu_harness", "dut") + tuple(args.instance.split(".")[1:])
    accs = {name: width for name, width in _outputs_as_registers(mapped).items()}
    results = {}
    for run, dump in (("gated", runs / "gated.vcd"), ("dense", runs / "gated_dense.vcd")):
        stim = gatesim.stimulus(dump, scope, gatesim.data_inputs(mapped))
        rtl_states = _distinct(gatesim.stimulus(dump, scope, accs))[:-1]   # the dump ends in $dumpoff
        rtl = power["runs"][run]["instances"][args.instance]
        results[run] = {"cycles": len(stim), "rtl_model_fJ": rtl["energy_fJ_subtree"]}
        for label, delays in (("zero_delay", None), ("sdf", sdf)):
            gate_dump = gatesim.replay(mapped, CELLS / "osu018_stdcells.v", stim, PERIOD_PS, name=f"{run}_{label}",
                                       sdf=delays)
            energy, counts = gatesim.energy(mapped, lib, gate_dump)
            same = np.array_equal(rtl_states, _distinct(gatesim.stimulus(gate_dump, ("replay", "dut"), accs)))
            if not same:
                raise SystemExit(f"{run} {label}: the gate-level replay did not take the RTL's accumulator states")
            results[run][label] = {
                "toggles": int((counts.rise + counts.fall).sum()),
                "internal_fJ": energy.internal.sum() * 1e15, "switching_fJ": energy.switching.sum() * 1e15,
                "leakage_fJ": energy.leakage.sum() * 1e15, "clock_pins_fJ": energy.clock_pins.sum() * 1e15,
                "total_fJ": energy.total.sum() * 1e15, "accumulator_states_equal_rtl": same,
                "gate_over_rtl_model": energy.total.sum() * 1e15 / rtl["energy_fJ_subtree"],
            }
            r = results[run][label]
            print(f"{run:6} {label:10} toggles {r['toggles']:7d}  gate {r['total_fJ'] / 1e6:7.3f} nJ (clock pins "
                  f"{r['clock_pins_fJ'] / 1e6:6.3f})  RTL model {rtl['energy_fJ_subtree'] / 1e6:6.3f} nJ  "
                  f"ratio {r['gate_over_rtl_model']:6.2f}", flush=True)
    for label in ("zero_delay", "sdf"):
        g, d = results["gated"][label]["total_fJ"], results["dense"][label]["total_fJ"]
        results[f"saving_{label}"] = 1 - g / d
        # This flow has no clock gating (the library has no gating cell): every flip-flop's clock pin
        # toggles every cycle, gated or not. Without that term, the data-dependent part.
        cg, cd = results["gated"][label]["clock_pins_fJ"], results["dense"][label]["clock_pins_fJ"]
        results[f"saving_without_clock_pins_{label}"] = 1 - (g - cg) / (d - cd)
    results["saving_rtl_model"] = 1 - results["gated"]["rtl_model_fJ"] / results["dense"]["rtl_model_fJ"]
    results["glitch_factor"] = {run: results[run]["sdf"]["total_fJ"] / results[run]["zero_delay"]["total_fJ"]
                                for run in ("gated", "dense")}
    print(f"saving of the instance, gated vs dense: RTL model {results['saving_rtl_model']:.3f}, gate level "
          f"zero-delay {results['saving_zero_delay']:.3f}, with SDF {results['saving_sdf']:.3f}; without the "
          f"ungated clock pins: zero-delay {results['saving_without_clock_pins_zero_delay']:.3f}, with SDF "
          f"{results['saving_without_clock_pins_sdf']:.3f}")
    write(args.output, {"benchmark": "gate_lane", "instance": args.instance, "workload": args.workload,
                        "library": f"{lib.name} ({lib.voltage} V), Debian qflow-tech-osu018",
                        "area_library_units": mapped.area, "clock_period_ps": PERIOD_PS, "results": results})


def _outputs_as_registers(mapped: gatesim.Mapped) -> dict[str, int]:
    """The instance's registers that hold its state (acc0, acc1, ...), as named nets of the netlist."""
    names = mapped.netlist["modules"][mapped.top]["netnames"]
    return {name: len(info["bits"]) for name, info in sorted(names.items())
            if name.startswith("acc") and name[3:].isdigit()}


if __name__ == "__main__":
    main()
