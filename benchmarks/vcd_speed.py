"""VCD reading speed: power.vcd against honest anchors, every reader on the same file in one run.

    python -m benchmarks.vcd_speed [--vcd FILE --manifest FILE [--fst FILE]] [--rows R] [--min-mb 60] [-o JSON]

Without --vcd it writes an HPU dump of at least --min-mb MB (default configuration, random full rows,
gate held open so every lane works) under Icarus, and the same run again as FST. Then, with the page
cache warm, it times:

- ``power.vcd``: our per-bit rises, falls, x/z changes and time at 0/1/x (`scan`), and the whole
  per-cycle activity per instance on top (`activity.measure`, needs the HPU manifest);
- the same counting of the run's FST (GTKWave's FST library writing VCD text into the same pass);
- vcdvcd parsing alone (a callback that does nothing);
- vcdvcd plus a plain Python per-bit toggle counter (a dozen lines, the obvious thing to write);
- pywellen (Rust) loading the header and every signal's changes;
- Python iterating over the file's lines: the I/O bound of any line-based reader;
- the slow vcdvcd-based reference (`power/reference.py`), whose counts ours must equal exactly.

MB/s are VCD megabytes (10**6 bytes of the VCD, for the FST too) per second of the best of --repeat
runs, by wall time and by the process's own CPU time (all its threads), taken in rounds (each round
times every reader once) so that they share the machine's conditions.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import pywellen
import vcdvcd

from benchmarks.common import write
from golden_model.stimulus import random_rows
from hpu.config import HPUConfig
from power import activity, design
from power.reference import stream_counts
from power.vcd import scan
from sim.job import Options
from sim.runner import make_job, run

FIELDS = ("rise", "fall", "xz", "t0", "t1", "tx", "value_changes")


class _PlainToggleCounter(vcdvcd.StreamParserCallbacks):
    """What one writes first: the last value per code, and a per-bit 0<->1 count."""

    def __init__(self):
        self.last: dict[str, str] = {}
        self.toggles: dict[str, list[int]] = {}

    def value(self, vcd, time, value, identifier_code, cur_sig_vals):
        old = self.last.get(identifier_code)
        self.last[identifier_code] = value
        if old is None:
            return
        width = max(len(old), len(value))
        counts = self.toggles.setdefault(identifier_code, [0] * width)
        for bit, (a, b) in enumerate(zip(old.rjust(width, "0"), value.rjust(width, "0"))):
            if a != b and a in "01" and b in "01" and bit < len(counts):
                counts[bit] += 1


def _pywellen_load(vcd: Path) -> int:
    wave = pywellen.Waveform(str(vcd))
    return sum(len(var.signal) for var in wave.all_vars())


def _lines(vcd: Path) -> int:
    with open(vcd, "rb") as f:
        return sum(1 for _ in f)


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def hpu_dump(cfg: HPUConfig, rows: int, build: Path, min_mb: float) -> tuple[Path, Path, Path]:
    """The VCD and the FST of one run, and its manifest."""
    stimulus = random_rows(cfg, rows, random.Random(11), n=cfg.max_keys, spread=4.0)
    dumps = []
    for suffix in ("vcd", "fst"):
        dump = build / f"vcd_speed.{suffix}"
        outcome = run(make_job(cfg, stimulus, "random", Options(gate_open=True, vcd=str(dump))), "icarus",
                      build_root=str(build), work_dir=str(build / f"run-{suffix}"))
        print(f"dump: {dump}, {dump.stat().st_size / 1e6:.1f} MB, {outcome.hpu_cycles} HPU cycles, "
              f"{outcome.mismatches} mismatches")
        dumps.append(dump)
    megabytes = dumps[0].stat().st_size / 1e6
    if megabytes < min_mb:
        raise SystemExit(f"the dump is {megabytes:.1f} MB, under {min_mb} MB: raise --rows")
    return dumps[0], dumps[1], next(build.glob("rtl-*/manifest.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml", help="HPU configuration of the dump it writes")
    parser.add_argument("--rows", type=int, default=8, help="rows of the dump it writes (about 12 MB each)")
    parser.add_argument("--min-mb", type=float, default=60.0, help="refuse a written dump smaller than this")
    parser.add_argument("--vcd", type=Path, help="time this dump instead of writing one")
    parser.add_argument("--manifest", type=Path, help="the dump's HPU manifest, for the per-cycle activity timing")
    parser.add_argument("--fst", type=Path, help="the same run as FST, for the FST timing")
    parser.add_argument("--repeat", type=int, default=3, help="runs per fast reader; the best counts")
    parser.add_argument("--build", type=Path, default=Path("build/bench"))
    parser.add_argument("-o", "--output", default="benchmarks/results/vcd_speed.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    vcd, fst, manifest = (args.vcd, args.fst, args.manifest) if args.vcd else hpu_dump(cfg, args.rows, args.build,
                                                                                        args.min_mb)
    megabytes = vcd.stat().st_size / 1e6
    _lines(vcd)  # warm the page cache
    scan(vcd, chunk_bytes=1 << 16)  # and load the compiled pass

    readers = {
        "power_vcd_scan": (args.repeat, lambda: scan(vcd)),
        "vcdvcd_parse_only": (1, lambda: vcdvcd.VCDVCD(str(vcd), store_tvs=False,
                                                       callbacks=vcdvcd.StreamParserCallbacks())),
        "vcdvcd_plain_counter": (1, lambda: vcdvcd.VCDVCD(str(vcd), store_tvs=False, callbacks=_PlainToggleCounter())),
        "pywellen_load": (args.repeat, lambda: _pywellen_load(vcd)),
        "python_line_iteration": (args.repeat, lambda: _lines(vcd)),
        "vcdvcd_reference_counts": (1, lambda: stream_counts(vcd)),
    }
    if manifest is not None:
        readers["power_full_analysis"] = (args.repeat, lambda: activity.measure(design.load(vcd, manifest)))
    if fst is not None:
        readers["power_fst_scan"] = (args.repeat, lambda: scan(fst))
    # Round after round, every reader once per round (the repeated ones in every round, the others in
    # the first only), so that a machine whose speed drifts during the run treats them all alike.
    results, outputs, best = {}, {}, {}
    for round_ in range(max(repeat for repeat, _ in readers.values())):
        for name, (repeat, fn) in readers.items():
            if round_ < repeat:
                seconds, cpu, outputs[name] = timed(fn)
                old = best.get(name, (seconds, cpu))
                best[name] = (min(seconds, old[0]), min(cpu, old[1]))
    for name, (seconds, cpu) in best.items():
        results[name] = {"seconds": seconds, "cpu_seconds": cpu, "mb_per_s": megabytes / seconds,
                         "cpu_mb_per_s": megabytes / cpu}
        print(f"{name:26} {megabytes / seconds:8.1f} MB/s wall {megabytes / cpu:8.1f} MB/s own CPU  ({seconds:.2f} s)",
              flush=True)
    ours, reference = outputs["power_vcd_scan"], outputs["vcdvcd_reference_counts"]
    identical = all(np.array_equal(getattr(ours, f), getattr(reference, f)) for f in FIELDS)
    speed = results["power_vcd_scan"]
    ratios = {"vs_vcdvcd_parse_only": speed["mb_per_s"] / results["vcdvcd_parse_only"]["mb_per_s"],
              "vs_pywellen_load": speed["mb_per_s"] / results["pywellen_load"]["mb_per_s"],
              "vs_python_line_iteration_cpu": speed["cpu_mb_per_s"] / results["python_line_iteration"]["cpu_mb_per_s"]}
    if "power_full_analysis" in results:
        ratios["activity_overhead"] = results["power_full_analysis"]["seconds"] / speed["seconds"] - 1
    if "power_fst_scan" in results:
        ratios["fst_vs_vcd"] = speed["seconds"] / results["power_fst_scan"]["seconds"]
        fst_counts = outputs["power_fst_scan"]
        identical = identical and _per_variable(fst_counts) == _per_variable(ours)
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
          + f"; counts identical to the reference (and the FST's to the VCD's): {identical}")
    write(args.output, {"benchmark": "vcd_speed", "vcd": str(vcd), "vcd_mb": megabytes,
                        "fst": str(fst) if fst else None, "fst_mb": fst.stat().st_size / 1e6 if fst else None,
                        "cpus": os.cpu_count(), "readers": results, "ratios": ratios, "identical_counts": identical,
                        "versions": {p: _version(p) for p in ("pywellen", "vcdvcd", "numpy", "numba", "pylibfst")},
                        "target": {"vs_pywellen_load": 1.5, "activity_overhead": 0.25,
                                   "vs_python_line_iteration_cpu": 0.3, "fst_vs_vcd": 1.0}})
    if not identical:
        raise SystemExit("the counts differ from the vcdvcd-based reference")


def _per_variable(counts) -> dict:
    return {var.reference: tuple(int(getattr(counts, f)[counts.bits(var.code)].sum()) for f in FIELDS[:-1])
            + (int(counts.value_changes[var.code]),) for var in counts.header.vars}


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


if __name__ == "__main__":
    main()
