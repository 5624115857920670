"""Calibration of the RTL activity model against gate level, one unit at a time.

For one instance of the HPU and a set of RTL runs (dumps with their power reports), the unit is
replayed at gate level (power.gatesim) on each run's cycles, and once idle (its inputs held) to
measure on its own what it costs per cycle to do nothing: at gate level the flip-flops' clock pins
draw energy every cycle unless a clock-gating cell stops them, which the RTL model cannot see. Then

    E_gate = idle x cycles + sum over classes of coefficient x RTL activity of the class

(activity: toggles of register, datapath and control nets, and enabled register bit-cycles) is fitted
with non-negative least squares. The error is stated leave-one-workload-out: the coefficients are
fitted without a workload's runs and the error is measured on them, never in sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.optimize

from power import gatesim, liberty

FEATURES = ("register", "datapath", "control", "clock")


def features(subtree: list[dict], clock_fJ: float) -> np.ndarray:
    """RTL activity of a unit from its instances' entries in power.json (the instance and those
    below it): toggles per class, and enabled register bit-cycles (its clock energy over the table's
    energy per enabled bit-cycle, `clock_fJ`)."""
    toggles = {c: sum(u["toggles_own"].get(c, 0) for u in subtree) for c in FEATURES[:3]}
    bit_cycles = sum(u["energy_fJ_own"].get("clock", 0.0) for u in subtree) / clock_fJ
    return np.array([toggles["register"], toggles["datapath"], toggles["control"], bit_cycles], float)


def replay_energy(mapped: gatesim.Mapped, lib: liberty.Library, cells_verilog: Path, stim: gatesim.Stimulus,
                  name: str, sdf: Path | None) -> float:
    dump = gatesim.replay(mapped, cells_verilog, stim, name=name, sdf=sdf)
    energy, _ = gatesim.energy(mapped, lib, dump)
    return float(energy.total.sum()) * 1e15


def fit(x: np.ndarray, y: np.ndarray, cycles: np.ndarray, idle_per_cycle: float) -> np.ndarray:
    """Non-negative coefficients (fJ per unit of each feature) of y - idle x cycles."""
    coefficients, _ = scipy.optimize.nnls(x, y - idle_per_cycle * cycles)
    return coefficients


def leave_one_workload_out(workloads: list[str], x: np.ndarray, y: np.ndarray, cycles: np.ndarray,
                           idle_per_cycle: float) -> dict[str, list[float]]:
    """Per held-out workload: the relative error of each of its runs, fitted on the others."""
    out = {}
    for held in sorted(set(workloads)):
        train = np.array([w != held for w in workloads])
        coefficients = fit(x[train], y[train], cycles[train], idle_per_cycle)
        predicted = idle_per_cycle * cycles[~train] + x[~train] @ coefficients
        out[held] = ((predicted - y[~train]) / y[~train]).tolist()
    return out
