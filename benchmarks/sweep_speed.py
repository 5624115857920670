"""Sweep throughput on Dask: the same sweep on one worker and on two, from an empty cache each time.

    python -m benchmarks.sweep_speed [--points 16] [--metrics cycles energy] [-o JSON]

The sweep is the small configuration over permeability x mass_target (legal points only), 2 random
rows per point, under the sweep's default simulator (native Verilator). Reported: wall seconds per run, the speed-up of two workers over one,
and the per-point overhead (scheduling, caching, result handling): the workers' time not spent
inside the points' own measurement, per point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks.common import write
from sweep import engine

SPEC = """[sweep]
base = "small"
metrics = {metrics}
seed = 5

[sweep.fields]
permeability = {permeabilities}
mass_target = [0.5, 0.7, 0.9, 1.0]

[[sweep.workload]]
source = "random"
rows = 2
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=16, help="points (a multiple of 4)")
    parser.add_argument("--metrics", nargs="+", default=["cycles", "energy"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work", type=Path, default=Path("build/sweep_speed"))
    parser.add_argument("-o", "--output", default="benchmarks/results/sweep_speed.json")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    permeabilities = [round(0.125 + 0.75 * k / max(args.points // 4 - 1, 1), 4) for k in range(args.points // 4)]
    spec_path = args.work / "spec.toml"
    spec_path.write_text(SPEC.format(metrics=repr(args.metrics).replace("'", '"'), permeabilities=permeabilities))
    runs = {}
    for workers in args.workers:
        out = args.work / f"workers-{workers}"
        start = time.perf_counter()
        engine.sweep(spec_path, out, workers=workers, log=lambda line: None)
        wall = time.perf_counter() - start
        rows = [r for r in _rows(out) if r.get("status") == "ok"]
        inside = sum(r["seconds"] for r in rows)
        runs[workers] = {"wall_s": wall, "points": len(rows), "point_seconds_sum": inside,
                         "overhead_s_per_point": (wall * workers - inside) / len(rows)}
        print(f"{workers} worker(s): {wall:.1f} s for {len(rows)} points, {runs[workers]['overhead_s_per_point']:.2f} s "
              f"overhead per point", flush=True)
    result = {"benchmark": "sweep_speed", "cpus": os.cpu_count(), "metrics": args.metrics, "runs": runs,
              "target": {"speedup_2_workers": 1.7, "overhead_s_per_point": 1.0}}
    if 1 in runs and 2 in runs:
        result["speedup_2_workers"] = runs[1]["wall_s"] / runs[2]["wall_s"]
        print(f"two workers: {result['speedup_2_workers']:.2f}x one")
    write(args.output, result)


def _rows(out: Path) -> list[dict]:
    import csv

    with open(out / "sweep.csv") as f:
        return [{k: (float(v) if k == "seconds" and v else v) for k, v in row.items()} for row in csv.DictReader(f)]


if __name__ == "__main__":
    main()
