"""HPU cycles per row in Amaranth's simulator, against the ideal MAC cycles of each schedule.

    python -m benchmarks.hpu_cycles [--config FILE ...] [--rows R] [-o JSON]

For each configuration, mode (dense, topk, mass) and schedule (lockstep,
compact): R back-to-back full rows (n = max_keys) give the steady-state cycles
per row (interval between results once the pipeline is full); one row alone
gives the latency. Ideal: lockstep n * head_dim / lanes; compact
kept * head_dim / lanes with kept from the golden model. Every result is also
checked bit-exact against the golden model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from benchmarks.common import write
from golden_model.stimulus import expected, random_rows
from hpu.config import HPUConfig
from hpu.testbench import simulate_rows

SPREAD = 4.0   # score standard deviation of about one unit of q.k/sqrt(d), like trained attention logits


def measure(cfg: HPUConfig, rows_count: int, seed: int) -> dict:
    rows = random_rows(cfg, rows_count, random.Random(seed), n=cfg.max_keys, spread=SPREAD)
    start = time.perf_counter()
    run = simulate_rows(cfg, rows)
    wall = time.perf_counter() - start
    want = expected(cfg, rows)
    mismatches = sum(1 for got, ref in zip(run.results, want) if got != ref)
    kept = statistics.mean(r.kept for r in want)
    steady = run.steady_cycles_per_row()
    lone = simulate_rows(cfg, rows[:1])
    ideal = cfg.ideal_mac_cycles(cfg.max_keys, kept)
    return {"mode": cfg.mode, "schedule": cfg.schedule, "n": cfg.max_keys, "rows": rows_count,
            "kept_mean": kept, "cycles_per_row": steady, "ideal_cycles_per_row": ideal,
            "overhead_vs_ideal": steady / ideal, "latency_one_row": lone.result_cycle[0],
            "mismatches": mismatches, "sim_cycles_per_s": run.cycles / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["configs/default.toml", "configs/small.toml"])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--output", default="benchmarks/results/hpu_cycles.json")
    args = parser.parse_args()
    report = []
    for path in args.config:
        base = HPUConfig.load(path)
        lockstep = {}
        for mode in ("dense", "topk", "mass"):
            for schedule in ("lockstep", "compact"):
                cfg = base.replace(mode=mode, schedule=schedule)
                row = {"config": path, **measure(cfg, args.rows, args.seed)}
                if schedule == "lockstep":
                    lockstep[mode] = row["cycles_per_row"]
                row["vs_lockstep"] = row["cycles_per_row"] / lockstep[mode]
                report.append(row)
                print(f"{path:22} {mode:5} {schedule:8} kept {row['kept_mean']:6.1f} "
                      f"cycles/row {row['cycles_per_row']:7.1f} ideal {row['ideal_cycles_per_row']:7.1f} "
                      f"x{row['overhead_vs_ideal']:.3f} vs lockstep {row['vs_lockstep']:.3f} "
                      f"latency {row['latency_one_row']} mismatches {row['mismatches']}", flush=True)
    write(args.output, {"benchmark": "hpu_cycles", "simulator": "amaranth pysim", "score_spread": SPREAD,
                        "targets": {"lockstep_overhead_max": 1.25, "compact_vs_lockstep_at_permeability_0.5": 0.6},
                        "results": report})


if __name__ == "__main__":
    main()
