"""Dark-silicon figures of the HPU against the energy-proportionality targets, on real workloads.

    python -m benchmarks.dark_silicon [--config FILE] [-o JSON]

Generates the Verilog (with generic-gate area), then for each workload simulates the same rows gated
and with the gate held open under cocotb and Icarus (every row checked bit-exact against the golden
model), and reads both dumps with `hpu power`: saving and energy proportionality for the MAC array,
the whole HPU on chip and on chip plus off-chip value traffic, energy by path, dense energy per row,
and lockstep cycles per row. Workloads: the demo's 24 MiniLM rows (`minilm`), 16 long MiniLM rows
(`minilm-long`, 128..max_keys keys) and 16 random rows (lengths 1..max_keys).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import write
from hpu.config import HPUConfig
from power.flow import run_workload
from rtl_gen.generate import TOP_NAME, generate
from rtl_gen.synth import synthesize
from sim.job import Options

WORKLOADS = {"minilm": 24, "minilm-long": 16, "random": 16}
TARGETS = {"hpu_saving_min": 0.40, "mac_proportionality_min": 0.95, "total_proportionality_min": 0.93,
           "lockstep_cycles_vs_before_max": 1.1, "area_nand2_max": 63982}


def measure(cfg: HPUConfig, source: str, rows: int, work: Path, rtl: Path) -> dict:
    summary, power = run_workload(cfg, source, source, rows, Options(seed=1), work, rtl)
    c, runs = power["comparison"], power["runs"]
    sims = summary["runs"]
    # Energy of the lanes per multiply-accumulate (one per kept key and chunk): the keys the gate
    # drops have the smallest e, so their products toggle fewer bits than a kept key's; this ratio
    # bounds the MAC array's energy proportionality below 1 whatever the control costs.
    lane_fJ = {name: sum(v["energy_fJ_subtree"] for k, v in runs[name]["instances"].items()
                         if k.startswith("hpu.mac.lane")) for name in ("gated", "dense")}
    kept = c["kept_fraction"]
    per_key = {name: lane_fJ[name] / sims[name]["kept_keys"] for name in ("gated", "dense")}
    ratio = per_key["gated"] / per_key["dense"]
    return {
        "rows": rows, "keys": sims["gated"]["keys"], "kept_fraction": c["kept_fraction"],
        "mismatches": sims["gated"]["mismatches"] + sims["dense"]["mismatches"],
        "saving": {"mac_array": c["energy_saving_mac_array"], "hpu": c["energy_saving_hpu"],
                   "total": c["energy_saving_total"]},
        "energy_proportionality": c["energy_proportionality"],
        "energy_fJ_by_path": {name: runs[name]["energy_fJ_by_path"] for name in ("gated", "dense")},
        "energy_fJ": {name: runs[name]["energy_fJ"] for name in ("gated", "dense")},
        "dense_energy_fJ_per_row": runs["dense"]["energy_fJ"] / rows,
        "value_bytes_fetched": {name: runs[name]["value_bytes_fetched"] for name in ("gated", "dense")},
        "hpu_cycles": {name: sims[name]["hpu_cycles"] for name in ("gated", "dense")},
        "cycles_per_row": sims["gated"]["hpu_cycles"] / rows,
        "lane_energy_fJ_per_key": per_key,
        "lane_proportionality_ceiling": (1 - ratio * kept) / (1 - kept),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--work", default="build/dark_silicon", help="folder for the Verilog, dumps and reports")
    parser.add_argument("-o", "--output", default="benchmarks/results/dark_silicon.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    work = Path(args.work)
    rtl = work / "rtl"
    verilog = generate(cfg, rtl).verilog
    area = synthesize(verilog, TOP_NAME, rtl / "area.json")["total"]["area_nand2_eq"]
    print(f"area {area:,.0f} NAND2 eq (target <= {TARGETS['area_nand2_max']:,})", flush=True)
    results = {}
    for source, rows in WORKLOADS.items():
        r = results[source] = measure(cfg, source, rows, work, rtl)
        p = r["energy_proportionality"]
        print(f"{source:12} kept {r['kept_fraction']:.3f}  saving MAC {r['saving']['mac_array']:.3f} "
              f"(x{p['mac_array']:.2f})  HPU {r['saving']['hpu']:.3f} (x{p['hpu']:.2f})  "
              f"+traffic {r['saving']['total']:.3f} (x{p['total']:.2f})  dense {r['dense_energy_fJ_per_row'] / 1e3:.1f} "
              f"pJ/row  {r['cycles_per_row']:.0f} cycles/row  mismatches {r['mismatches']}  lanes per kept key / per key "
              f"{r['lane_energy_fJ_per_key']['gated'] / r['lane_energy_fJ_per_key']['dense']:.3f} (ceiling "
              f"x{r['lane_proportionality_ceiling']:.3f})", flush=True)
    write(args.output, {"benchmark": "dark_silicon", "config": cfg.to_dict(), "area_nand2_eq": area,
                        "targets": TARGETS, "results": results})


if __name__ == "__main__":
    main()
