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
import scipy.sparse

from hpu.errors import InputError
from power.design import Design
from power.vcd import CHUNK_BYTES, ONE, PARALLEL_MIN_BYTES, X, Batch, Counts, VcdError, rising, scan


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


@dataclass
class CycleBatch:
    """One Batch reduced to clock cycles where it is read (in a worker process, for a dump read in
    parts), counted from the batch's own rising edges: column 0 is the time before its first edge
    (cycle -1: the cycle still open from the batch before), column k the cycle its k-th edge starts."""

    rises: np.ndarray                  # times of the rising clock edges
    clock_after: int | None            # the clock's state after the batch (None: it did not change)
    assumed_first_rise: bool           # the first edge rose from a state the reader did not know (a part's start)
    first_time: int | None
    last_time: int | None
    unit_toggles: np.ndarray           # (instances, edges + 1) toggles (active: any)
    code: np.ndarray                   # the toggling changes: identifier code, cycle (-1 ..), toggles
    cycle: np.ndarray
    toggles: np.ndarray
    watched: dict[int, tuple[np.ndarray, np.ndarray]]
    first_code: np.ndarray             # a part's first change of each code in this batch, and its cycle
    first_cycle: np.ndarray


class CycleReducer:
    """Reduces Batches to CycleBatches (see power.vcd.Reducer): per instance and cycle of the batch,
    toggles and activity; per toggling change, its code and cycle."""

    def __init__(self, design: Design):
        self.design = design
        # (codes x instances): code c reaches the instances unit_idx[unit_ptr[c]:unit_ptr[c + 1]].
        codes = len(design.header.codes)
        self.reach = scipy.sparse.csr_matrix(
            (np.ones(len(design.unit_idx), np.int64), design.unit_idx, design.unit_ptr),
            shape=(codes, len(design.units)))

    def part(self, from_start: bool):
        d = self.design
        codes = len(d.header.codes)
        clock_state = [X]   # unknown until the part's first clock change
        seen = None if from_start else np.zeros(codes, bool)

        def reduce(b: Batch) -> CycleBatch:
            rises, assumed, after = np.zeros(0, np.int64), False, None
            if d.clock in b.watched:
                times, states = b.watched[d.clock]
                states = states[:, 0]
                edge = rising(states, clock_state[0])
                rises = times[edge]
                assumed = bool(clock_state[0] == X and edge[0])
                clock_state[0] = after = int(states[-1])
            cycle = np.searchsorted(rises, b.time, side="right") - 1
            toggled = np.flatnonzero(b.toggles > 0)
            code = b.code[toggled].astype(np.int32)
            cyc = cycle[toggled].astype(np.int32)
            tog = b.toggles[toggled].astype(np.int32)
            unit_toggles = self._spread(code, cyc, tog, len(rises) + 1)
            first_code = first_cycle = np.zeros(0, np.int64)
            if seen is not None and len(b.code):
                present, row = np.unique(b.code, return_index=True)
                fresh = ~seen[present]
                first_code, first_cycle = present[fresh], cycle[row[fresh]]
                seen[present] = True
            return CycleBatch(rises, after, assumed, int(b.time.min()) if len(b.time) else None,
                              int(b.time.max()) if len(b.time) else None, unit_toggles,
                              code, cyc, tog, {c: w for c, w in b.watched.items() if c != d.clock},
                              first_code, first_cycle)

        return reduce

    def fix_first(self, cb: CycleBatch, toggles: np.ndarray) -> None:
        moved = toggles[cb.first_code] > 0
        code, cyc = cb.first_code[moved], cb.first_cycle[moved]
        tog = toggles[code]
        cb.unit_toggles += self._spread(code, cyc, tog, cb.unit_toggles.shape[1])
        cb.code, cb.cycle, cb.toggles = (np.concatenate((cb.code, code.astype(np.int32))),
                                         np.concatenate((cb.cycle, cyc.astype(np.int32))),
                                         np.concatenate((cb.toggles, tog.astype(np.int32))))

    def _spread(self, code: np.ndarray, cycle: np.ndarray, toggles: np.ndarray, columns: int) -> np.ndarray:
        """(instances, columns): each change's toggles added, in column cycle + 1, to every instance its
        code reaches."""
        per_code = scipy.sparse.csr_matrix((toggles.astype(np.int64), (cycle + 1, code)),
                                           shape=(columns, self.reach.shape[0]))
        return np.asarray((per_code @ self.reach).T.todense())


class _Tracker:
    """Folds the CycleBatches of a dump, in order, into per-instance counts over absolute cycles."""

    def __init__(self, design: Design, window: int):
        self.design = design
        self.window = window
        self.n_cycles = 0
        self.clock_state = X
        units = len(design.units)
        self.active = np.zeros(units, np.int64)
        self.active_in_phase = np.zeros(units, np.int64)
        self.window_toggles = np.zeros((units, 16), np.int64)
        self.signal_window_toggles = np.zeros((len(design.header.codes), 16), np.int64)
        self.window_active = np.zeros((units, 16), np.int64)
        self.open = np.zeros(units, bool)  # the instances active so far in the last cycle, still open
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

    def batch(self, b: CycleBatch) -> None:
        d = self.design
        if b.first_time is not None and self.last_time is not None and b.first_time < self.last_time:
            raise VcdError(d.vcd, None, "time goes backwards in the dump: activity per clock cycle needs ordered time")
        if b.last_time is not None:
            self.last_time = b.last_time
        rises, unit_toggles, cycle = b.rises, b.unit_toggles, b.cycle
        if b.assumed_first_rise and self.clock_state == ONE:
            # The reader of this part did not know the clock was already high: its first "edge" is none.
            rises = rises[1:]
            unit_toggles = np.concatenate((unit_toggles[:, :2].sum(axis=1, keepdims=True), unit_toggles[:, 2:]), axis=1)
            cycle = np.maximum(cycle - 1, -1)
        unit_active = unit_toggles > 0
        if b.clock_after is not None:
            self.clock_state = b.clock_after
        if len(rises):
            self.first_rise = rises[0] if self.first_rise is None else self.first_rise
            self.last_rise = rises[-1]
        base = self.n_cycles
        edges = len(rises)

        def cycle_of(times: np.ndarray) -> np.ndarray:
            return base + np.searchsorted(rises, times, side="right") - 1

        self.n_cycles += edges
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

        # Column k is absolute cycle base - 1 + k; before the dump's first edge there is no cycle.
        absolute = base - 1 + np.arange(edges + 1)
        inside = absolute >= 0
        keep = cycle + base >= 0
        _add_windows(self.signal_window_toggles, b.code[keep], (cycle[keep] + base) // self.window, b.toggles[keep])
        _add_columns(self.window_toggles, unit_toggles[:, inside], absolute[inside] // self.window)
        if inside[0]:
            self.open |= unit_active[:, 0]
        if edges:
            # The open cycle and every cycle this batch starts, but its last, are complete.
            if inside[0]:
                self._settle(np.concatenate((self.open[:, None], unit_active[:, 1:edges]), axis=1), base - 1)
            else:
                self._settle(unit_active[:, 1:edges], base)
            self.open = unit_active[:, edges].copy()

    def _settle(self, done: np.ndarray, first: int) -> None:
        """Counts the instances active in cycles first .. first + done.shape[1] - 1."""
        if not done.shape[1]:
            return
        cycles = first + np.arange(done.shape[1])
        in_phase = self.phase.at(cycles, 0 if self.design.phase is not None else 1)
        self.active += done.sum(axis=1)
        self.active_in_phase += done.astype(np.int64) @ in_phase
        _add_columns(self.window_active, done.astype(np.int64), cycles // self.window)

    def finish(self) -> None:
        if self.n_cycles:
            self._settle(self.open[:, None], self.n_cycles - 1)
        self.open[:] = False
        self.phase.close(self.n_cycles)
        for intervals in self.enables.values():
            intervals.close(self.n_cycles)


def _add_columns(table: np.ndarray, columns: np.ndarray, windows: np.ndarray) -> None:
    """table[:, windows[k]] += columns[:, k] (windows ascending)."""
    if not columns.shape[1]:
        return
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(windows)) + 1))
    table[:, windows[bounds]] += np.add.reduceat(columns, bounds, axis=1)


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
                  parallel_min_bytes=parallel_min_bytes, reducer=CycleReducer(design))
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
