"""Simulated HPU cycles per wall-clock second: cocotb on Icarus and Verilator, and the native Verilator bench.

    python -m benchmarks.sim_speed [--config FILE] [--rows R] [--native-rows R] [-o JSON]

Random full rows (n = max_keys) from one seed run on every simulator, every row checked bit-exact
against the golden model, no waveform. The native bench runs more of the same rows (its first
`--rows` are the others' rows), so that its wall time is not a few milliseconds. Cycles are the
HPU's own cycle counter over the run; wall time is the bench's loop (build and start-up excluded).
"""

from __future__ import annotations

import argparse
import random

from benchmarks.common import write
from golden_model.stimulus import random_rows
from hpu.config import HPUConfig
from rtl_gen.tools import SIMULATORS
from sim.job import Options
from sim.runner import make_job, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--rows", type=int, default=24, help="rows under cocotb")
    parser.add_argument("--native-rows", type=int, default=1024, help="rows under the native bench")
    parser.add_argument("--build", default="build/bench")
    parser.add_argument("-o", "--output", default="benchmarks/results/sim_speed.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    rows = random_rows(cfg, max(args.rows, args.native_rows), random.Random(7), n=cfg.max_keys, spread=4.0)
    results = {}
    for sim in SIMULATORS:
        count = args.native_rows if sim == "verilator-native" else args.rows
        outcome = run(make_job(cfg, rows[:count], "random", Options()), sim, build_root=args.build,
                      work_dir=f"{args.build}/run-{sim}")
        results[sim] = {"rows": outcome.rows_checked, "mismatches": outcome.mismatches,
                        "hpu_cycles": outcome.hpu_cycles, "wall_s": outcome.wall_s,
                        "hpu_cycles_per_s": outcome.cycles_per_s}
        print(f"{sim:16} {outcome.hpu_cycles} cycles in {outcome.wall_s:.2f} s: "
              f"{outcome.cycles_per_s:,.0f} HPU cycles/s, {outcome.mismatches} mismatches", flush=True)
    speed = {sim: r["hpu_cycles_per_s"] for sim, r in results.items()}
    ratios = {"verilator_over_icarus": speed["verilator"] / speed["icarus"],
              "native_over_verilator": speed["verilator-native"] / speed["verilator"]}
    print(", ".join(f"{name}: {value:.1f}x" for name, value in ratios.items()))
    write(args.output, {"benchmark": "sim_speed", "config": cfg.to_dict(), "results": results, **ratios,
                        "targets": {"icarus_cycles_per_s": 20000, "verilator_over_icarus": 10,
                                    "native_cycles_per_s": 1.5e6, "native_over_verilator": 20}})


if __name__ == "__main__":
    main()
