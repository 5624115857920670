"""A sweep's specification: the base configuration, the fields that vary, the workloads, the metrics.

    [sweep]
    base = "small"                   # a configuration (a shipped name or a TOML file)
    sample = "grid"                  # or "random": `points` draws (seeded) from the same values
    points = 16                      # random sampling only
    seed = 1                         # the stimulus seed, and the sampler's
    metrics = ["area", "cycles", "energy"]   # and "quality" (the bit-accurate gate on MiniLM)
    energy = "out/cal/energy.toml"   # optional: a calibrated table (`hpu calibrate`)
    simulator = "verilator-native"   # default; or icarus, verilator (cocotb)

    [sweep.fields]                   # per field: a list, or a range {from, to, step}
    lanes = [2, 4]
    permeability = {from = 0.25, to = 0.75, step = 0.25}

    [[sweep.workload]]               # one or more; each point runs every workload
    source = "random"                # random, adversarial, minilm, minilm-long, or an attention file
    rows = 4
    route_window = 8                 # optional, routed designs: each unrouted token's last 8 keys as a
                                     # row of its own (`hpu sim --route-window`), as a model trained so

A point is one assignment of the fields on top of the base; the spec is data (TOML), never code.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

from golden_model.sources import SOURCES
from hpu.config import HPUConfig, resolve
from hpu.errors import InputError
from hpu.files import read_toml
from rtl_gen.tools import SIMULATORS
from sim.options import Options

METRICS = ("area", "cycles", "energy", "quality")
SAMPLES = ("grid", "random")


@dataclass(frozen=True)
class Workload:
    source: str
    rows: int
    route_window: int = 0


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: the base with `fields` set, on every workload of the spec."""

    index: int
    fields: tuple[tuple[str, object], ...]

    def assignment(self) -> dict:
        return dict(self.fields)


@dataclass
class Spec:
    path: Path
    base: dict
    fields: dict[str, list]
    workloads: list[Workload]
    metrics: tuple[str, ...] = ("area", "cycles", "energy")
    sample: str = "grid"
    points: int = 0
    seed: int = 1
    energy: Path | None = None
    simulator: str = "verilator-native"

    def enumerate(self) -> list[Point]:
        """Every point of the grid, or `points` distinct draws from it (seeded): the same spec and seed
        give the same points in the same order."""
        names = sorted(self.fields)
        grid = [tuple(zip(names, values)) for values in itertools.product(*(self.fields[n] for n in names))]
        if self.sample == "random":
            grid = random.Random(self.seed).sample(grid, min(self.points, len(grid)))
        return [Point(i, assignment) for i, assignment in enumerate(grid)]


def _values(name: str, raw, path: Path) -> list:
    if isinstance(raw, list):
        if not raw:
            raise InputError(f"{path}: sweep field {name} has no values: give a list or {{from, to, step}}")
        return raw
    if isinstance(raw, dict) and set(raw) == {"from", "to", "step"}:
        start, stop, step = raw["from"], raw["to"], raw["step"]
        if not all(isinstance(v, (int, float)) for v in (start, stop, step)) or step <= 0 or stop < start:
            raise InputError(f"{path}: sweep field {name}: a range needs numbers with from <= to and step > 0")
        # The steps that fit within `to`, a rounding error's worth of slack for float steps (0.1 ten times).
        count = math.floor((stop - start) / step + 1e-9) + 1
        values = [start + k * step for k in range(count)]
        return [round(v, 12) if isinstance(step, float) or isinstance(start, float) else v for v in values]
    raise InputError(f"{path}: sweep field {name} must be a list of values or {{from = A, to = B, step = S}}")


def load(path: str | Path) -> Spec:
    """Read and check a spec; every problem is one line naming the entry and what to write."""
    path = Path(path)
    data = read_toml(path, "sweep spec")
    sweep = data.get("sweep")
    if not isinstance(sweep, dict):
        raise InputError(f"{path}: a sweep spec is a [sweep] table (see `hpu sweep --help`)")
    unknown = sorted(set(sweep) - {"base", "sample", "points", "seed", "metrics", "energy", "simulator", "fields",
                                 "workload"})
    if unknown:
        raise InputError(f"{path}: unknown [sweep] entr{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}")
    base = HPUConfig.load(resolve(sweep.get("base", "default"))).to_dict()
    raw_fields = sweep.get("fields", {})
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise InputError(f"{path}: [sweep.fields] must name at least one configuration field to vary")
    for name in raw_fields:
        if name not in base:
            raise InputError(f"{path}: [sweep.fields] {name} is not a configuration field "
                             "(`hpu config --describe` lists them)")
    fields_ = {name: _values(name, raw, path) for name, raw in raw_fields.items()}
    workloads = []
    for entry in sweep.get("workload", []):
        source, rows = entry.get("source"), entry.get("rows")
        if not isinstance(source, str) or not (source in SOURCES or Path(source).is_file()):
            raise InputError(f"{path}: workload source {source!r} is none of {', '.join(SOURCES)} nor an attention file")
        if not isinstance(rows, int) or rows < 1:
            raise InputError(f"{path}: workload {source}: rows must be a whole number of at least 1")
        window = entry.get("route_window", 0)
        try:
            Options(route_window=window)   # the simulator's own rule for a window
        except InputError:
            raise InputError(f"{path}: workload {source}: route_window must be a whole number of keys, 0 for none") \
                from None
        if window and not base["route_block"] and not any(fields_.get("route_block", [])):
            raise InputError(f"{path}: workload {source}: route_window {window} sends unrouted tokens' windows, "
                             "which needs a router: set route_block in the base or in [sweep.fields]")
        unknown = sorted(set(entry) - {"source", "rows", "route_window"})
        if unknown:
            raise InputError(f"{path}: workload {source}: unknown entr{'ies' if len(unknown) > 1 else 'y'} "
                             f"{', '.join(unknown)} (source, rows, route_window)")
        workloads.append(Workload(source, rows, window))
    if not workloads:
        raise InputError(f"{path}: give at least one [[sweep.workload]] with a source and rows")
    metrics = tuple(sweep.get("metrics", ("area", "cycles", "energy")))
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"{path}: unknown metric(s) {', '.join(map(str, bad))}: choose from {', '.join(METRICS)}")
    sample = sweep.get("sample", "grid")
    if sample not in SAMPLES:
        raise InputError(f"{path}: sample {sample!r}: choose grid or random")
    points = sweep.get("points", 0)
    if sample == "random" and (not isinstance(points, int) or points < 1):
        raise InputError(f"{path}: random sampling needs points = N (at least 1)")
    seed = sweep.get("seed", 1)
    if not isinstance(seed, int):
        raise InputError(f"{path}: seed must be a whole number")
    energy = sweep.get("energy")
    if energy is not None and not Path(energy).is_file():
        raise InputError(f"{path}: energy table {energy} does not exist (write one with `hpu calibrate`)")
    simulator = sweep.get("simulator", "verilator-native")
    if simulator not in SIMULATORS:
        raise InputError(f"{path}: simulator {simulator!r}: choose one of {', '.join(SIMULATORS)}")
    return Spec(path, base, fields_, workloads, metrics, sample, points, seed, Path(energy) if energy else None,
                simulator)
