"""Toggle activity of the HPU's module instances over clock cycles, streamed from a VCD.

Cycle c is the time from the c-th rising clock edge up to the next one; a change at the very time
of an edge belongs to the cycle that edge starts (registers update at the edge). An instance is
active in a cycle when any bit of its nets or of its sub-instances' nets toggles (0<->1) in it;
its silent ratio over a window is the fraction of the window's cycles in which it is not active
(the brief's definition; clock nets excluded, x/z changes never count as activity).
The compute phase is the set of cycles in which the HPU's `busy` output is high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpu.errors import InputError
from power.design import Design
from power.vcd import CHUNK_BYTES, Counts, Track, VcdError, scan


@dataclass
class Activity:
    """Per-instance cycle counts of one dump (instances in `Design.units` order)."""

    design: Design
    cycles: int
    phase_cycles: int
    window: int
    active: np.ndarray
    active_in_phase: np.ndarray
    window_toggles: np.ndarray
    signal_window_toggles: np.ndarray  # (codes, windows): every variable of the dump
    window_active: np.ndarray
    enabled_cycles: dict[tuple[int, int], int]
    counts: Counts
    timescale: float
    clock_period: float
    rows_delivered: int | None = None  # the HPU's `rows` status at the end of the dump

    def silent_ratio(self, unit: int, phase: bool = False) -> float:
        total = self.phase_cycles if phase else self.cycles
        active = self.active_in_phase[unit] if phase else self.active[unit]
        return 1.0 - active / total if total else float("nan")


def measure(design: Design, window: int = 64, chunk_bytes: int = CHUNK_BYTES) -> Activity:
    """Read `design.vcd` once: per-bit counts and per-instance activity per cycle."""
    if window < 1:
        raise InputError(f"--window {window}: a window must be at least 1 cycle")
    track = Track(design.clock, design.unit_ptr, design.unit_idx, len(design.units), window,
                  -1 if design.phase is None else design.phase, list(design.enables),
                  -1 if design.rows_code is None else design.rows_code)
    counts = scan(design.vcd, track, chunk_bytes=chunk_bytes)
    c = counts.cycles
    if c.cycles < 2:
        raise VcdError(design.vcd, None, f"the clock {design.clock_name} has {c.cycles} rising edges: no cycles to "
                                         "measure; name the clock with --clock if it is not the HPU's clk")
    period = float(c.last_rise - c.first_rise) / (c.cycles - 1)
    return Activity(design, c.cycles, c.phase_cycles, window, c.active, c.active_in_phase, c.window_toggles,
                    c.signal_window_toggles, c.window_active, c.enabled_cycles, counts, counts.header.timescale,
                    period, c.counter)
