"""Simulated HPU cycles per wall-clock second under cocotb, Icarus Verilog and Verilator.

    python -m benchmarks.sim_speed [--config FILE] [--rows R] [-o JSON]

The same random full rows (n = max_keys) run on both simulators; every row is
checked bit-exact against the golden model. Cycles are the HPU's own cycle
counter between the first and last result; wall time is the testbench's (build
time excluded).
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
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--build", default="build/bench")
    parser.add_argument("-o", "--output", default="benchmarks/results/sim_speed.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    rows = random_rows(cfg, args.rows, random.Random(7), n=cfg.max_keys, spread=4.0)
    results = {}
    for sim in SIMULATORS:
        outcome = run(make_job(cfg, rows, "random", Options()), sim, build_root=args.build,
                      work_dir=f"{args.build}/run-{sim}")
        results[sim] = {"rows": outcome.rows_checked, "mismatches": outcome.mismatches,
                        "hpu_cycles": outcome.hpu_cycles, "wall_s": outcome.wall_s,
                        "hpu_cycles_per_s": outcome.cycles_per_s}
        print(f"{sim:9} {outcome.hpu_cycles} cycles in {outcome.wall_s:.2f} s: "
              f"{outcome.cycles_per_s:,.0f} HPU cycles/s, {outcome.mismatches} mismatches", flush=True)
    ratio = results["verilator"]["hpu_cycles_per_s"] / results["icarus"]["hpu_cycles_per_s"]
    print(f"verilator / icarus: {ratio:.1f}x")
    write(args.output, {"benchmark": "sim_speed", "config": cfg.to_dict(), "results": results,
                        "verilator_over_icarus": ratio,
                        "targets": {"icarus_cycles_per_s": 20000, "verilator_over_icarus": 10}})


if __name__ == "__main__":
    main()
