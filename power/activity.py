"""Toggle activity of the HPU's module instances over clock cycles, streamed from a VCD.

Cycle c is the time from the c-th rising clock edge up to the next one; a change at the very time
of an edge belongs to the cycle that edge starts (registers update at the edge). An instance is
active in a cycle when any bit of its nets or of its sub-instances' nets toggles (0<->1) in it;
its silent ratio over a window is the fraction of the window's cycles in which it is not active
(the brief's definition; clock nets excluded, x/z changes never count as activity).
The compute phase is the set of cycles in which the HPU's `busy` output is high.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hpu.errors import InputError
from power.design import Design
from power.vcd import CHUNK_BYTES, ONE, PARALLEL_MIN_BYTES, Batch, Counts, VcdError, scan


@dataclass
class Intervals:
    """A 1-bit signal per cycle: the value a change sets holds from its cycle to the next change."""

    value: int = 0
    since: int = 0
    cycles_high: int = 0
    starts: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def extend(self, cycles: np.ndarray, values: np.ndarray, keep: bool = False) -> None:
        if not len(cycles):
            return
        cycles = np.maximum(cycles, 0)
        # Each change moves `since` up to its cycle (never back) and counts the cycles it moved while
        # the previous value held.
        since = np.maximum.accumulate(np.concatenate(([self.since], cycles)))
        held = np.concatenate(([self.value], values[:-1]))
        self.cycles_high += int(np.dot(np.diff(since), held))
        self.since, self.value = int(since[-1]), int(values[-1])
        if keep:
            self.starts.extend(cycles.tolist())
            self.values.extend(values.tolist())

    def close(self, n_cycles: int) -> None:
        if n_cycles > self.since:
            self.cycles_high += (n_cycles - self.since) * self.value
            self.since = n_cycles

    def at(self, cycles: np.ndarray, initial: int) -> np.ndarray:
        """The value in each of `cycles`, from the changes kept so far."""
        if not self.starts:
            return np.full(len(cycles), initial, np.int64)
        starts = np.asarray(self.starts)
        index = np.searchsorted(starts, cycles, side="right") - 1
        values = np.asarray(self.values)
        return np.where(index >= 0, values[np.maximum(index, 0)], initial)


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


class _Tracker:
    def __init__(self, design: Design, window: int):
        self.design = design
        self.window = window
        self.n_cycles = 0
        self.clock_state = 2
        units = len(design.units)
        self.active = np.zeros(units, np.int64)
        self.active_in_phase = np.zeros(units, np.int64)
        self.window_toggles = np.zeros((units, 16), np.int64)
        self.signal_window_toggles = np.zeros((len(design.header.codes), 16), np.int64)
        self.window_active = np.zeros((units, 16), np.int64)
        self.carry = np.zeros(0, np.int64)
        self.phase = Intervals()
        self.enables = {key: Intervals() for key in design.enables}
        self.last_time = None
        self.first_rise = self.last_rise = None
        self.rows_delivered: int | None = None

    def _grow(self, cycles: int) -> None:
        need = cycles // self.window + 1
        if need > self.window_toggles.shape[1]:
            size = max(need, 2 * self.window_toggles.shape[1])
            for name in ("window_toggles", "window_active", "signal_window_toggles"):
                old = getattr(self, name)
                grown = np.zeros((old.shape[0], size), np.int64)
                grown[:, :old.shape[1]] = old
                setattr(self, name, grown)

    def batch(self, b: Batch) -> None:
        d = self.design
        if len(b.time) and self.last_time is not None and b.time.min() < self.last_time:
            raise VcdError(d.vcd, None, "time goes backwards in the dump: activity per clock cycle needs ordered time")
        if len(b.time):
            self.last_time = int(b.time.max())
        rises = np.zeros(0, np.int64)
        if d.clock in b.watched:
            times, states = b.watched[d.clock]
            states = states[:, 0]
            before = np.concatenate(([self.clock_state], states[:-1]))
            # Verilog's posedge: into 1 from 0, x or z.
            rises = times[(before != ONE) & (states == ONE)]
            self.clock_state = int(states[-1])
            if len(rises):
                self.first_rise = rises[0] if self.first_rise is None else self.first_rise
                self.last_rise = rises[-1]
        base = self.n_cycles

        def cycle_of(times: np.ndarray) -> np.ndarray:
            return base + np.searchsorted(rises, times, side="right") - 1

        cycle = cycle_of(b.time)
        self.n_cycles += len(rises)
        self._grow(self.n_cycles)
        if d.phase is not None and d.phase in b.watched:
            times, states = b.watched[d.phase]
            self.phase.extend(cycle_of(times), (states[:, 0] == ONE).astype(np.int64), keep=True)
        for key, intervals in self.enables.items():
            code, bit = key
            if code in b.watched:
                times, states = b.watched[code]
                column = d.watch[code].index(bit)
                intervals.extend(cycle_of(times), (states[:, column] == ONE).astype(np.int64))
        if d.rows_code is not None and d.rows_code in b.watched:
            # The last known value: a closing `$dumpoff` sets every bit to x.
            states = b.watched[d.rows_code][1]
            known = np.flatnonzero((states <= ONE).all(axis=1))
            if len(known):
                last = states[known[-1]].tolist()
                self.rows_delivered = sum(int(v) << bit for v, bit in zip(last, d.watch[d.rows_code]))
        toggled = np.flatnonzero((b.toggles > 0) & (cycle >= 0))
        code = b.code[toggled]
        _add_windows(self.signal_window_toggles, code, cycle[toggled] // self.window, b.toggles[toggled])
        lo, hi = d.unit_ptr[code], d.unit_ptr[code + 1]
        reach = hi - lo
        rows = np.repeat(np.arange(len(toggled)), reach)
        units = d.unit_idx[np.repeat(lo, reach) + (np.arange(len(rows)) - np.repeat(np.cumsum(reach) - reach, reach))]
        cycles = cycle[toggled][rows]
        _add_windows(self.window_toggles, units, cycles // self.window, b.toggles[toggled][rows])
        # Each (instance, cycle) with a toggle once: marked in a table over this batch's cycles (no
        # sort); the cycle still open at the batch's end is carried to the next batch.
        cycles = np.concatenate((self.carry % (1 << 40), cycles))
        units = np.concatenate((self.carry // (1 << 40), units))
        if len(cycles):
            first = int(cycles.min())
            span = int(cycles.max()) - first + 1
            seen = np.zeros(len(self.design.units) * span, bool)
            seen[units * span + (cycles - first)] = True
            cell = np.flatnonzero(seen)
            pairs = (cell // span) * (1 << 40) + first + cell % span
        else:
            pairs = self.carry
        open_cycle = self.n_cycles - 1
        done = pairs[(pairs % (1 << 40)) < open_cycle]
        self.carry = pairs[(pairs % (1 << 40)) >= open_cycle]
        self._settle(done)

    def _settle(self, pairs: np.ndarray) -> None:
        units, cycles = pairs // (1 << 40), pairs % (1 << 40)
        in_phase = self.phase.at(cycles, 0 if self.design.phase is not None else 1)
        np.add.at(self.active, units, 1)
        np.add.at(self.active_in_phase, units, in_phase)
        np.add.at(self.window_active, (units, cycles // self.window), 1)

    def finish(self) -> None:
        self._settle(self.carry)
        self.carry = np.zeros(0, np.int64)
        self.phase.close(self.n_cycles)
        for intervals in self.enables.values():
            intervals.close(self.n_cycles)


def _add_windows(table: np.ndarray, rows: np.ndarray, windows: np.ndarray, amounts: np.ndarray) -> None:
    """table[rows, windows] += amounts, summed by bincount over the windows this batch touches."""
    if not len(rows):
        return
    first = int(windows.min())
    span = int(windows.max()) - first + 1
    sums = np.bincount(rows * span + (windows - first), weights=amounts, minlength=table.shape[0] * span)
    table[:, first:first + span] += sums.reshape(table.shape[0], span).astype(np.int64)


def measure(design: Design, window: int = 64, chunk_bytes: int = CHUNK_BYTES, workers: int | None = None,
            parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> Activity:
    """Stream `design.vcd` once: per-bit counts and per-instance activity per cycle (`workers` and
    `parallel_min_bytes` as for `power.vcd.scan`)."""
    if window < 1:
        raise InputError(f"--window {window}: a window must be at least 1 cycle")
    tracker = _Tracker(design, window)
    counts = scan(design.vcd, tracker.batch, watch=design.watch, chunk_bytes=chunk_bytes, workers=workers,
                  parallel_min_bytes=parallel_min_bytes)
    tracker.finish()
    n = tracker.n_cycles
    if n < 2:
        raise VcdError(design.vcd, None, f"the clock {design.clock_name} has {n} rising edges: no cycles to measure; "
                                         "name the clock with --clock if it is not the HPU's clk")
    windows = (n - 1) // window + 1
    phase_cycles = n if design.phase is None else tracker.phase.cycles_high
    period = float(tracker.last_rise - tracker.first_rise) / (n - 1)
    return Activity(design, n, int(phase_cycles), window, tracker.active, tracker.active_in_phase,
                    tracker.window_toggles[:, :windows], tracker.signal_window_toggles[:, :windows],
                    tracker.window_active[:, :windows],
                    {key: iv.cycles_high for key, iv in tracker.enables.items()}, counts,
                    counts.header.timescale, period, tracker.rows_delivered)
