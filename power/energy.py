"""Activity-based energy: toggles times a per-bit energy for the net's class, plus clock energy.

E(instance) = sum over its owned bits of (0->1 + 1->0 toggles) x toggle_fJ[class]
            + sum over its registers of width x enabled cycles x clock_fJ.per_enabled_bit
            + sum over its memories' ports of width x accesses x fJ per bit for the memory's capacity
Memory port nets carry no toggle energy when the table has [memory_access] (an SRAM access costs about
the same whichever bits change); without it they are charged per toggling bit at toggle_fJ.memory.
A register with an enable is clocked in the cycles its enable is high (clock gating as a synthesis
tool would insert it); one without is clocked every cycle. x/z changes carry no energy.

A calibrated table (`hpu calibrate` writes one) adds [units."PATTERN"] entries: the coefficients fitted
for one unit against a cell library at gate level. An entry applies to the instances its pattern
matches and to everything below them (the deepest match wins); it charges toggles per logic class and
enabled register bit-cycles at its own figures, and adds its idle energy per cycle (what the gate
level draws doing nothing: ungated flip-flop clocks, leakage) to the clock class of the instance it
matches, once per cycle of the run. Memories stay at the table's figures: the cell library has no
SRAM macros to calibrate them against.
"""

from __future__ import annotations

import bisect
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from hpu.files import read_toml
from power.activity import Activity

DEFAULT_TABLE = Path(__file__).with_name("energy_45nm.toml")
TOGGLE_CLASSES = ("register", "datapath", "memory", "control")
# The classes a calibrated unit entry charges per toggle (memories keep the table's figures).
FITTED_CLASSES = ("register", "datapath", "control")
# Upper bounds of a table's values: far beyond any real cell, memory or DRAM, and low enough that
# energy times any dump's counts stays a finite number.
MAX_FJ_PER_BIT = 1e6          # per toggle, per enabled bit-cycle, per memory bit accessed
MAX_FJ_PER_CYCLE = 1e9        # a unit's idle energy
MAX_PJ_PER_BYTE = 1e6         # off-chip traffic
MAX_ERROR = 1e3               # a held-out error, as a fraction
MAX_MEMORY_BYTES = 2.0 ** 50


@dataclass(frozen=True)
class UnitEntry:
    """One unit's calibrated coefficients (see the module docstring)."""

    pattern: str                            # instances it applies to (fnmatch per dotted level): hpu.mac.lane*
    toggle_fj: dict[str, float]             # per toggle of a register, datapath or control bit
    clock_fj: float                         # per enabled register bit-cycle
    idle_fj_per_cycle: float
    held_out_error: float | None            # worst leave-one-workload-out relative error at calibration


@dataclass(frozen=True)
class EnergyTable:
    toggle_fj: dict[str, float]
    clock_fj: float
    source: str
    path: str
    dram_pj_per_byte: float | None = None   # off-chip value traffic; None when the table has none
    # Memory access energy per bit against capacity (bytes, fJ per bit), ascending; empty: memories
    # are charged per toggling port bit at toggle_fJ.memory instead.
    memory_points: tuple[tuple[float, float], ...] = ()
    units: tuple[UnitEntry, ...] = ()
    calibration: dict | None = None         # a calibrated table's [calibration]: library, date, errors

    def entry_for(self, path: str) -> tuple[UnitEntry | None, bool]:
        """The unit entry that covers instance `path` (the deepest of its ancestors, itself included,
        that an entry matches), and whether it matches `path` itself (where its idle energy goes)."""
        parts = path.split(".")
        for depth in range(len(parts), 0, -1):
            ancestor = ".".join(parts[:depth])
            for entry in self.units:
                if matches(ancestor, entry.pattern):
                    return entry, depth == len(parts)
        return None, False

    def memory_fj_per_bit(self, capacity_bits: int) -> float:
        """Per-bit access energy of a memory of this capacity: log-log interpolation between the
        table's points, extended beyond them with the nearest segment's slope."""
        points = self.memory_points
        if len(points) == 1:
            return points[0][1]
        size = math.log(max(capacity_bits / 8, 1e-9))
        xs = [math.log(b) for b, _ in points]
        ys = [math.log(e) for _, e in points]
        k = max(0, min(len(xs) - 2, bisect.bisect_right(xs, size) - 1))
        slope = (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
        log_energy = ys[k] + slope * (size - xs[k])
        if log_energy > math.log(MAX_FJ_PER_BIT):
            raise InputError(f"energy table {self.path}: [memory_access] extrapolates to more than "
                             f"{MAX_FJ_PER_BIT:g} fJ per bit for a memory of {capacity_bits / 8:g} bytes: add a "
                             "point near that capacity")
        return math.exp(log_energy)

    @classmethod
    def load(cls, path: Path | str | None = None) -> "EnergyTable":
        path = Path(path) if path else DEFAULT_TABLE
        data = read_toml(path, "energy table", f"see {DEFAULT_TABLE.name} for the layout")
        toggle, clock_table = data.get("toggle_fJ", {}), data.get("clock_fJ", {})
        if not isinstance(toggle, dict) or not isinstance(clock_table, dict):
            raise InputError(f"energy table {path}: [toggle_fJ] and [clock_fJ] must be tables")
        missing = [c for c in TOGGLE_CLASSES if c not in toggle]
        if missing or "per_enabled_bit" not in clock_table:
            raise InputError(f"energy table {path} needs [toggle_fJ] {', '.join(TOGGLE_CLASSES)} and "
                             f"[clock_fJ] per_enabled_bit (missing: {', '.join(missing) or 'per_enabled_bit'})")
        values = {c: _number(toggle[c], f"toggle_fJ.{c}", path) for c in TOGGLE_CLASSES}
        clock = _number(clock_table["per_enabled_bit"], "clock_fJ.per_enabled_bit", path)
        offchip = data.get("offchip_pJ", {})
        dram = offchip.get("dram_per_byte") if isinstance(offchip, dict) else None
        if dram is not None:
            dram = _number(dram, "offchip_pJ.dram_per_byte", path, "picojoules", MAX_PJ_PER_BYTE)
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, dict):
            raise InputError(f"energy table {path}: [calibration] must be a table")
        return cls(values, clock, str(data.get("source", "unstated")), str(path),
                   dram, _memory_points(data.get("memory_access"), path),
                   _unit_entries(data.get("units", {}), path), calibration)


def matches(path: str, pattern: str) -> bool:
    """fnmatch per dotted level: `hpu.mac.lane*` is each lane, not what lies below a lane."""
    names, patterns = path.split("."), pattern.split(".")
    return len(names) == len(patterns) and all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, patterns))


def _number(value, name: str, path, unit: str = "femtojoules", top: float = MAX_FJ_PER_BIT,
            positive: bool = False) -> float:
    """A table value within its range (a NaN, an infinity or an overflowing one is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value if positive else 0 <= value) \
            or not value <= top:
        raise InputError(f"energy table {path}: {name} = {value!r}: must be a number of {unit} "
                         f"{'> 0' if positive else '>= 0'} and at most {top:g}")
    return float(value)


def _unit_entries(units, path) -> tuple[UnitEntry, ...]:
    if not isinstance(units, dict):
        raise InputError(f"energy table {path}: [units] must map instance patterns to tables")
    entries = []
    for pattern, e in units.items():
        where = f'units."{pattern}"'
        toggle = e.get("toggle_fJ") if isinstance(e, dict) else None
        if not isinstance(toggle, dict) or any(c not in toggle for c in FITTED_CLASSES) \
                or "clock_fJ_per_enabled_bit" not in e or "idle_fJ_per_cycle" not in e:
            raise InputError(f"energy table {path}: {where} needs toggle_fJ = {{ {', '.join(FITTED_CLASSES)} }}, "
                             "clock_fJ_per_enabled_bit and idle_fJ_per_cycle")
        error = e.get("held_out_error")
        entries.append(UnitEntry(
            pattern, {c: _number(toggle[c], f"{where}.toggle_fJ.{c}", path) for c in FITTED_CLASSES},
            _number(e["clock_fJ_per_enabled_bit"], f"{where}.clock_fJ_per_enabled_bit", path),
            _number(e["idle_fJ_per_cycle"], f"{where}.idle_fJ_per_cycle", path, top=MAX_FJ_PER_CYCLE),
            None if error is None else _number(error, f"{where}.held_out_error", path, "fraction", MAX_ERROR)))
    return tuple(entries)


def _memory_points(table, path) -> tuple[tuple[float, float], ...]:
    if table is None:
        return ()
    sizes, energies = (table.get("bytes"), table.get("fJ_per_bit")) if isinstance(table, dict) else (None, None)
    if not (isinstance(sizes, list) and isinstance(energies, list) and len(sizes) == len(energies) >= 1):
        raise InputError(f"energy table {path}: [memory_access] needs `bytes` (ascending capacities) and "
                         "`fJ_per_bit` (one energy per capacity), all positive numbers")
    sizes = [_number(v, f"memory_access.bytes[{i}]", path, "bytes", MAX_MEMORY_BYTES, positive=True)
             for i, v in enumerate(sizes)]
    energies = [_number(v, f"memory_access.fJ_per_bit[{i}]", path, positive=True) for i, v in enumerate(energies)]
    if sizes != sorted(set(sizes)):
        raise InputError(f"energy table {path}: memory_access.bytes = {sizes}: capacities must ascend, each once")
    return tuple(zip(sizes, energies))


@dataclass
class Energy:
    """Femtojoules per instance (own nets only) by class, plus clock, and the events charged (which
    `hpu calibrate` fits against the gate level)."""

    by_class: np.ndarray      # (units, len(TOGGLE_CLASSES) + 1): toggle classes then "clock"
    toggles: np.ndarray       # (units, len(TOGGLE_CLASSES))
    clocked_bits: np.ndarray  # (units,): enabled register bit-cycles

    @property
    def total(self) -> np.ndarray:
        return self.by_class.sum(axis=1)


def estimate(activity: Activity, table: EnergyTable) -> Energy:
    design, counts = activity.design, activity.counts
    toggles_per_bit = counts.rise + counts.fall
    n = len(design.units)
    by_class = np.zeros((n, len(TOGGLE_CLASSES) + 1))
    toggles = np.zeros((n, len(TOGGLE_CLASSES)), np.int64)
    clocked_bits = np.zeros(n, np.int64)
    per_access = bool(table.memory_points)
    memory = TOGGLE_CLASSES.index("memory")
    for i, unit in enumerate(design.units):
        entry, root = table.entry_for(unit.path)
        for k, cls in enumerate(TOGGLE_CLASSES):
            if cls in unit.bits:
                toggles[i, k] = int(toggles_per_bit[unit.bits[cls]].sum())
                by_class[i, k] = toggles[i, k] * (entry.toggle_fj if entry and cls in entry.toggle_fj
                                                  else table.toggle_fj)[cls]
        if per_access:
            # An SRAM access costs about the same whichever bits change: charge accesses, not toggles.
            by_class[i, memory] = sum(width * accesses(activity, how) * table.memory_fj_per_bit(capacity)
                                      for width, capacity, how in unit.memory_ports)
        for width, enable in unit.registers:
            if enable is None:
                clocked_bits[i] += width * activity.cycles
            elif enable is not False:
                clocked_bits[i] += width * activity.enabled_cycles[enable]
        by_class[i, -1] = clocked_bits[i] * (entry.clock_fj if entry else table.clock_fj)
        if entry is not None and root:
            by_class[i, -1] += entry.idle_fj_per_cycle * activity.cycles
    return Energy(by_class, toggles, clocked_bits)


def accesses(activity: Activity, how) -> int:
    """Accesses of one memory port over the dump (see Unit.memory_ports)."""
    if how is None:
        return activity.cycles
    if how is False:
        return 0
    if how[0] == "address":
        return int(activity.counts.value_changes[how[1]])
    return activity.enabled_cycles[how]
