"""Activity-based energy: toggles times a per-bit energy for the net's class, plus clock energy.

E(instance) = sum over its owned bits of (0->1 + 1->0 toggles) x toggle_fJ[class]
            + sum over its registers of width x enabled cycles x clock_fJ.per_enabled_bit
A register with an enable is clocked in the cycles its enable is high (clock gating as a synthesis
tool would insert it); one without is clocked every cycle. x/z changes carry no energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from hpu.files import read_toml
from power.activity import Activity

DEFAULT_TABLE = Path(__file__).with_name("energy_45nm.toml")
TOGGLE_CLASSES = ("register", "datapath", "memory", "control")


@dataclass(frozen=True)
class EnergyTable:
    toggle_fj: dict[str, float]
    clock_fj: float
    source: str
    path: str
    dram_pj_per_byte: float | None = None   # off-chip value traffic; None when the table has none

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
        entries = {**{f"toggle_fJ.{c}": toggle[c] for c in TOGGLE_CLASSES},
                   "clock_fJ.per_enabled_bit": clock_table["per_enabled_bit"]}
        for name, value in entries.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InputError(f"energy table {path}: {name} = {value!r}: must be a number of femtojoules >= 0")
        values = {c: float(toggle[c]) for c in TOGGLE_CLASSES}
        clock = float(clock_table["per_enabled_bit"])
        offchip = data.get("offchip_pJ", {})
        dram = offchip.get("dram_per_byte") if isinstance(offchip, dict) else None
        if dram is not None and (isinstance(dram, bool) or not isinstance(dram, (int, float)) or not dram >= 0):
            raise InputError(f"energy table {path}: offchip_pJ.dram_per_byte = {dram!r}: must be a number of "
                             "picojoules >= 0")
        return cls(values, clock, str(data.get("source", "unstated")), str(path),
                   None if dram is None else float(dram))


@dataclass
class Energy:
    """Femtojoules per instance (own nets only) by class, plus clock."""

    by_class: np.ndarray  # (units, len(TOGGLE_CLASSES) + 1): toggle classes then "clock"
    toggles: np.ndarray   # (units, len(TOGGLE_CLASSES))

    @property
    def total(self) -> np.ndarray:
        return self.by_class.sum(axis=1)


def estimate(activity: Activity, table: EnergyTable) -> Energy:
    design, counts = activity.design, activity.counts
    toggles_per_bit = counts.rise + counts.fall
    by_class = np.zeros((len(design.units), len(TOGGLE_CLASSES) + 1))
    toggles = np.zeros((len(design.units), len(TOGGLE_CLASSES)), np.int64)
    for i, unit in enumerate(design.units):
        for k, cls in enumerate(TOGGLE_CLASSES):
            if cls in unit.bits:
                toggles[i, k] = int(toggles_per_bit[unit.bits[cls]].sum())
                by_class[i, k] = toggles[i, k] * table.toggle_fj[cls]
        clocked = 0
        for width, enable in unit.registers:
            if enable is None:
                clocked += width * activity.cycles
            elif enable is not False:
                clocked += width * activity.enabled_cycles[enable]
        by_class[i, -1] = clocked * table.clock_fj
    return Energy(by_class, toggles)
