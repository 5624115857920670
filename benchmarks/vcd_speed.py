"""VCD toggle analysis speed: power.vcd against the vcdvcd-based streaming count, same file, same run.

    python -m benchmarks.vcd_speed [--rows R] [--min-mb 80] [-o JSON]

Writes an HPU dump of at least --min-mb MB (default configuration, random full rows, gate held
open so every lane works) under Icarus, then counts its toggles per bit with both readers, checks
the counts are identical, and reports MB/s. Also times the whole `hpu power` analysis (activity per
cycle and instance on top of the counts).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write
from golden_model.stimulus import random_rows
from hpu.config import HPUConfig
from power import activity, design
from power.reference import stream_counts
from power.vcd import scan
from sim.job import Options
from sim.runner import make_job, run

FIELDS = ("rise", "fall", "xz", "t0", "t1", "tx", "value_changes")


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--min-mb", type=float, default=80.0)
    parser.add_argument("--build", default="build/bench")
    parser.add_argument("-o", "--output", default="benchmarks/results/vcd_speed.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    vcd = Path(args.build) / "vcd_speed.vcd"
    rows = random_rows(cfg, args.rows, random.Random(11), n=cfg.max_keys, spread=4.0)
    outcome = run(make_job(cfg, rows, "random", Options(gate_open=True, vcd=str(vcd))), "icarus",
                  build_root=args.build, work_dir=f"{args.build}/run-vcd")
    megabytes = vcd.stat().st_size / 1e6
    print(f"dump: {vcd}, {megabytes:.1f} MB, {outcome.hpu_cycles} HPU cycles, {outcome.mismatches} mismatches")
    if megabytes < args.min_mb:
        raise SystemExit(f"the dump is {megabytes:.1f} MB, under {args.min_mb} MB: raise --rows")
    ours_s, ours = best_of(3, lambda: scan(vcd))
    reference_s, reference = best_of(1, lambda: stream_counts(vcd))
    identical = all(np.array_equal(getattr(ours, f), getattr(reference, f)) for f in FIELDS)
    manifest = next(Path(args.build).glob("rtl-*/manifest.json"))
    analysis_s, _ = best_of(2, lambda: activity.measure(design.load(vcd, manifest)))
    results = {
        "vcd_mb": megabytes, "hpu_cycles": outcome.hpu_cycles, "identical_counts": identical,
        "power_vcd": {"seconds": ours_s, "mb_per_s": megabytes / ours_s},
        "vcdvcd_stream": {"seconds": reference_s, "mb_per_s": megabytes / reference_s},
        "speedup": reference_s / ours_s,
        "full_analysis": {"seconds": analysis_s, "mb_per_s": megabytes / analysis_s,
                          "speedup": reference_s / analysis_s},
    }
    print(f"power.vcd {megabytes / ours_s:.1f} MB/s, vcdvcd {megabytes / reference_s:.1f} MB/s: "
          f"{results['speedup']:.1f}x, counts identical: {identical}; with activity per cycle "
          f"{megabytes / analysis_s:.1f} MB/s ({results['full_analysis']['speedup']:.1f}x)")
    write(args.output, {"benchmark": "vcd_speed", "config": cfg.to_dict(), "results": results,
                        "target": {"speedup": 10}})
    if not identical:
        raise SystemExit("the counts differ from the vcdvcd-based reference")


if __name__ == "__main__":
    main()
