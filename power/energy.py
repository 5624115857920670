"""Activity-based energy: toggles times a per-bit energy for the net's class, plus clock energy.

E(instance) = sum over its owned bits of (0->1 + 1->0 toggles) x toggle_fJ[class]
            + sum over its registers of width x enabled cycles x clock_fJ.per_enabled_bit
A register with an enable is clocked in the cycles its enable is high (clock gating as a synthesis
tool would insert it); one without is clocked every cycle. x/z changes carry no energy.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from power.activity import Activity

DEFAULT_TABLE = Path(__file__).with_name("energy_45nm.toml")
TOGGLE_CLASSES = ("register", "datapath", "memory", "control")


@dataclass(frozen=True)
class EnergyTable:
    toggle_fj: dict[str, float]
    clock_fj: float
    source: str
    path: str

    @classmethod
    def load(cls, path: Path | str | None = None) -> "EnergyTable":
        path = Path(path) if path else DEFAULT_TABLE
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InputError(f"energy table {path}: {e}") from None
        toggle = data.get("toggle_fJ", {})
        missing = [c for c in TOGGLE_CLASSES if c not in toggle]
        if missing or "per_enabled_bit" not in data.get("clock_fJ", {}):
            raise InputError(f"energy table {path} needs [toggle_fJ] {', '.join(TOGGLE_CLASSES)} and "
                             f"[clock_fJ] per_enabled_bit (missing: {', '.join(missing) or 'per_enabled_bit'})")
        values = {c: float(toggle[c]) for c in TOGGLE_CLASSES}
        clock = float(data["clock_fJ"]["per_enabled_bit"])
        if any(v < 0 for v in values.values()) or clock < 0:
            raise InputError(f"energy table {path}: energies must not be negative")
        return cls(values, clock, str(data.get("source", "unstated")), str(path))


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
