"""The project's one VCD reader: a single compiled pass over the dump counts toggles per bit and, on
request, activity per clock cycle.

The body is read in chunks into one buffer; a numba loop (`_scan`) walks its bytes once, looks every
identifier code up in a hash table, and updates the per-bit counts, the per-cycle tables and the
watched signals' changes in place. Memory is the buffer plus those tables: the reader never holds the
dump or its list of changes. FST files are read through GTKWave's FST library (`pylibfst`), which
writes their changes as VCD text into a pipe that the same loop reads.

The first call compiles the loop (about 14 s); numba caches it (`cache=True`) in `__pycache__` next to
this file, or in the user's cache folder when that is not writable, so later processes load it in
about a second.

Counting rules (IEEE 1364 section 18 for the format, the brief for the counts):
- a toggle is a 0->1 (rise) or 1->0 (fall) change of one bit; a change to or from x or z (or any
  other non-0/1 state such as VHDL's u, w, -) is counted apart as an x/z change;
- every bit starts as x, so a dump's first values are x/z changes, not toggles;
- a vector written with fewer bits than its width is extended on the left with 0, or with x or z
  when its leftmost written bit is x or z;
- real and string values are counted as changes of the variable, not as bit toggles;
- variables sharing one identifier code (aliases) share one set of counts;
- a time that goes back is reported and held at the latest time so far.

Activity per cycle (see `Track`): cycle c runs from the c-th rising clock edge up to the next one; a
change at the very time of an edge belongs to the cycle that edge starts (registers update at the
edge), wherever the file writes it within the time step. An instance is active in a cycle when a bit
that reaches it toggles in that cycle; x/z changes never count as activity.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from numba import njit

from hpu.errors import InputError
from hpu.files import not_text

CHUNK_BYTES = 1 << 22
# Counts take about 60 bytes per bit of every variable: these bounds keep a hostile or corrupt header
# from asking for more memory than a workstation has, with a message instead of a MemoryError.
MAX_VAR_BITS = 1 << 20
MAX_TOTAL_BITS = 1 << 24
# Warnings kept whole; further ones are only counted.
MAX_WARNINGS = 20

# Bit states: 0, 1, unknown (x and its VHDL relatives), high impedance.
ZERO, ONE, X, Z = 0, 1, 2, 3
_STATE = np.full(256, 255, np.uint8)
for _chars, _state in (("0lL", ZERO), ("1hH", ONE), ("xXuUwW-", X), ("zZ", Z)):
    for _c in _chars:
        _STATE[ord(_c)] = _state
# 1: a vector or real value (b..., r..., s...) whose identifier code is the next token.
_VALUE_PREFIX = np.zeros(256, np.uint8)
_VALUE_PREFIX[[ord(c) for c in "bB"]] = 1
_VALUE_PREFIX[[ord(c) for c in "rRsS"]] = 2

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}
_REAL_TYPES = {"real", "realtime", "shortreal"}
# GTKWave's FST (fstapi.h) opens with a header block: type FST_BL_HDR (0), then its section length,
# FST_HDRSIZE (329), as a big-endian 64-bit integer.
_FST_HEADER = b"\x00" + (329).to_bytes(8, "big")


class VcdError(InputError):
    """A malformed or truncated VCD: the message names the file, the line and what was expected."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Var:
    """One `$var`: its scope path, name, type and width, and the identifier code it shares."""

    code: int
    scope: tuple[str, ...]
    name: str
    type: str
    width: int
    range: str = ""

    @property
    def reference(self) -> str:
        return ".".join(self.scope + (self.name,))


@dataclass
class Header:
    """Definitions of a dump: timescale in seconds, scopes (path -> kind), variables, codes."""

    timescale: float = 1.0
    scopes: dict[tuple[str, ...], str] = field(default_factory=dict)
    vars: list[Var] = field(default_factory=list)
    codes: list[bytes] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    real: list[bool] = field(default_factory=list)
    body_offset: int = 0
    body_line: int = 1

    @property
    def bit_offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.widths, dtype=np.int64)))


@dataclass
class Track:
    """What to follow per clock cycle: the clock (bit 0 of its code), the instances each code reaches
    (code c reaches instances reach_idx[reach_ptr[c]:reach_ptr[c + 1]]), the phase signal (bit 0; -1:
    every cycle is in the phase), enables (code, bit) whose cycles high are counted, a counter whose
    last known value is kept (-1: none), and the window of the per-window tables, in cycles."""

    clock: int
    reach_ptr: np.ndarray
    reach_idx: np.ndarray
    units: int
    window: int
    phase: int = -1
    enables: list[tuple[int, int]] = field(default_factory=list)
    counter: int = -1


@dataclass
class Cycles:
    """Per-cycle results of a dump read with a Track (instances in the Track's order)."""

    cycles: int
    first_rise: int | None
    last_rise: int | None
    active: np.ndarray                 # cycles in which each instance toggled
    active_in_phase: np.ndarray        # of those, the cycles in the phase
    phase_cycles: int
    window_toggles: np.ndarray         # (instances, windows)
    window_active: np.ndarray          # (instances, windows)
    signal_window_toggles: np.ndarray  # (codes, windows): every variable of the dump
    enabled_cycles: dict[tuple[int, int], int]
    counter: int | None                # the counter's last value with every bit 0 or 1


@dataclass
class Counts:
    """Per-bit totals of a whole dump, indexed by `Header.bit_offsets[code] + bit` (bit 0 = LSB).

    Times at 0, 1 and x/z are in dump time units, from the first timestamp to the last. `changes`
    holds each watched code's changes as (times, states with bit 0 first)."""

    header: Header
    rise: np.ndarray
    fall: np.ndarray
    xz: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    tx: np.ndarray
    value_changes: np.ndarray
    begin_time: int
    end_time: int
    bytes_read: int
    warnings: list[str]
    last_dumpoff: int | None = None  # time of the last `$dumpoff`: a dump closed by one ends there
    cycles: Cycles | None = None
    changes: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        """Whether the dump ends in a `$dumpoff` (as `hpu sim` closes every dump): one cut short does not."""
        return self.last_dumpoff is not None and self.last_dumpoff == self.end_time

    def bits(self, code: int) -> slice:
        offsets = self.header.bit_offsets
        return slice(int(offsets[code]), int(offsets[code + 1]))


def rising(states: np.ndarray, before: int) -> np.ndarray:
    """Which of a 1-bit signal's successive states are Verilog posedges (into 1 from 0, x or z),
    `before` being its state ahead of the first."""
    previous = np.concatenate(([before], states[:-1]))
    return (previous != ONE) & (states == ONE)


# ---- the compiled pass ------------------------------------------------------------------------------
# Scalar state of a read, kept between chunks in one int64 array.
_NOW, _RAW, _STARTED, _BEGIN, _DUMPOFF, _HAVE_TIME = 0, 1, 2, 3, 4, 5
_CYCLES, _STEP_RISES, _FIRST_RISE, _LAST_RISE, _PENDING, _OPEN, _DIRTY, _COUNTER = 6, 7, 8, 9, 10, 11, 12, 13
_WARN, _WARN_LOST, _LOG, _LOG_BITS, _PHASE_VALUE, _PHASE_SINCE, _PHASE_HIGH = 14, 15, 16, 17, 18, 19, 20
_STATE_SIZE = 21
# The Track as integers: clock, phase and counter codes (-1: none), window, whether to track at all.
_CLOCK, _PHASE, _COUNTER_CODE, _WINDOW, _TRACKING = 0, 1, 2, 3, 4
# Per-bit tallies: rises, falls, x/z changes, time at 0, at 1, at x/z.
_RISE, _FALL, _XZ, _T0 = 0, 1, 2, 3
# Per-code roles: its changes are logged; it is a phase or enable signal, read at each step's end.
_LOGGED, _WATCHED = 1, 2

# What a call of _scan ends with. Below _FAILED: resumable at the returned position.
_DONE, _MORE, _GROW_WINDOWS, _GROW_PENDING, _LOG_FULL = 0, 1, 2, 3, 4
_FAILED = 10
(_BAD_TIME, _HUGE_TIME, _NO_CODE, _UNDECLARED, _BAD_CHAR, _TOO_WIDE, _BAD_KEYWORD, _BAD_TOKEN,
 _OPEN_COMMENT, _NO_CODE_AFTER_VALUE, _TIME_BACK) = range(10, 21)

_MAX_TIME = (1 << 63) - 1
_COMMENT_WORD = np.frombuffer(b"$comment", np.uint8)
_END_WORD = np.frombuffer(b"$end", np.uint8)
_DUMPOFF_WORD = np.frombuffer(b"$dumpoff", np.uint8)
_BODY_WORDS = [np.frombuffer(w, np.uint8) for w in (b"$dumpvars", b"$dumpon", b"$dumpall")]
_DUMPVARS_WORD, _DUMPON_WORD, _DUMPALL_WORD = _BODY_WORDS


@njit(cache=True, inline="always")
def _word_is(buf, start, end, word):
    if end - start != len(word):
        return False
    for i in range(len(word)):
        if buf[start + i] != word[i]:
            return False
    return True


@njit(cache=True, inline="always")
def _token_end(buf, pos, n):
    while pos < n and buf[pos] > 32:
        pos += 1
    return pos


@njit(cache=True, inline="always")
def _hash(buf, start, end):
    h = 0
    for i in range(start, end):
        h = (h * 131 + buf[i]) & 0xFFFFFFFFFF
    return h ^ (h >> 17)


@njit(cache=True)
def _build_table(code_bytes, code_start, size):
    table = np.full(size, -1, np.int64)
    for c in range(len(code_start) - 1):
        slot = _hash(code_bytes, code_start[c], code_start[c + 1]) & (size - 1)
        while table[slot] >= 0:
            slot = (slot + 1) & (size - 1)
        table[slot] = c
    return table


@njit(cache=True, inline="always")
def _lookup(buf, start, end, code_bytes, code_start, table):
    mask = len(table) - 1
    slot = _hash(buf, start, end) & mask
    length = end - start
    while True:
        c = table[slot]
        if c < 0:
            return -1
        at = code_start[c]
        if code_start[c + 1] - at == length:
            same = True
            for i in range(length):
                if code_bytes[at + i] != buf[start + i]:
                    same = False
                    break
            if same:
                return c
        slot = (slot + 1) & mask


@njit(cache=True)
def _interval(values, e, cycle, value):
    """An enable (or the phase) takes `value` from `cycle` on: count the cycles its old value held."""
    if cycle > values[1, e]:
        values[2, e] += (cycle - values[1, e]) * values[0, e]
        values[1, e] = cycle
    values[0, e] = value


@njit(cache=True, inline="always")
def _phase(s):
    """The phase's value, since and cycles high, laid out as one enable's column for `_interval`."""
    return s[_PHASE_VALUE:_PHASE_HIGH + 1].reshape(3, 1)


@njit(cache=True)
def _settle(s, cfg, trk, cycle):
    """Cycle `cycle` is over: count the instances that toggled in it."""
    active, active_in_phase, window_active, open_units = trk[7], trk[8], trk[10], trk[6]
    column = cycle // cfg[_WINDOW]
    in_phase = s[_PHASE_VALUE] if cfg[_PHASE] >= 0 else 1
    for k in range(s[_OPEN]):
        u = open_units[k]
        active[u] += 1
        active_in_phase[u] += in_phase
        window_active[column, u] += 1
    s[_OPEN] = 0


@njit(cache=True)
def _end_step(s, cfg, state, offset, trk):
    """The time step is over: its rising edges start cycles, and its changes, wherever the file wrote
    them in the step, belong to the last cycle it started (or the one still open)."""
    (reach_ptr, reach_idx, enable_ptr, enable_bit, enables, mark, open_units, active, active_in_phase,
     window_toggles, window_active, signal_window_toggles, pending, dirty) = trk
    for _ in range(s[_STEP_RISES]):
        if s[_CYCLES] > 0:
            _settle(s, cfg, trk, s[_CYCLES] - 1)
        s[_CYCLES] += 1
    s[_STEP_RISES] = 0
    cycle = s[_CYCLES] - 1
    if cycle >= 0:
        column = cycle // cfg[_WINDOW]
        for k in range(s[_PENDING]):
            code, toggles = pending[0, k], pending[1, k]
            signal_window_toggles[column, code] += toggles
            for r in range(reach_ptr[code], reach_ptr[code + 1]):
                u = reach_idx[r]
                window_toggles[column, u] += toggles
                if mark[u] != cycle:
                    mark[u] = cycle
                    open_units[s[_OPEN]] = u
                    s[_OPEN] += 1
    s[_PENDING] = 0
    # A value set before the first edge holds from cycle 0.
    at = max(cycle, 0)
    for k in range(s[_DIRTY]):
        code = dirty[0, k]
        dirty[1, code] = 0
        if code == cfg[_PHASE]:
            _interval(_phase(s), 0, at, 1 if state[offset[code]] == ONE else 0)
        for e in range(enable_ptr[code], enable_ptr[code + 1]):
            _interval(enables, e, at, 1 if state[offset[code] + enable_bit[e]] == ONE else 0)
    s[_DIRTY] = 0


@njit(cache=True)
def _finish(s, cfg, bits, codes, trk):
    """The dump is over: the last step and cycle close, and every bit's time runs to the end."""
    state, since, tally = bits
    offset = codes[1]
    if cfg[_TRACKING]:
        _end_step(s, cfg, state, offset, trk)
        n = s[_CYCLES]
        if n > 0:
            _settle(s, cfg, trk, n - 1)
        enables = trk[4]
        for e in range(enables.shape[1]):
            _interval(enables, e, n, enables[0, e])
        _interval(_phase(s), 0, n, s[_PHASE_VALUE])
    end = s[_NOW]
    for k in range(len(state)):
        tally[_T0 + min(state[k], 2), k] += end - since[k]
        since[k] = end


@njit(cache=True)
def _start(s, since, time):
    """Every bit is x from the dump's first timestamp (or from 0, if a change comes first)."""
    s[_STARTED] = 1
    s[_BEGIN] = time
    since[:] = time


@njit(cache=True, inline="always")
def _flip(k, new, now, state, since, tally):
    """Bit k changes to `new`: count the change and the time its old state held; 1 if it toggled."""
    old = state[k]
    toggled = (old | new) <= ONE
    if toggled:
        tally[_FALL - new, k] += 1
    else:
        tally[_XZ, k] += 1
    tally[_T0 + min(old, 2), k] += now - since[k]
    since[k] = now
    state[k] = new
    return 1 if toggled else 0


@njit(cache=True, inline="always")
def _change(buf, vstart, vlen, code, s, cfg, state, since, tally, width, offset, role, pending, dirty, log_code,
            log_time, log_bits):
    """Apply one value change (its text at buf[vstart:vstart + vlen], MSB first). Returns the status."""
    w = width[code]
    base = offset[code]
    if vlen > w:
        # Leading zeros beyond the width still fit (PyMTL3 writes them); anything else does not.
        for i in range(vstart, vstart + vlen - w):
            if buf[i] != 48:
                return _TOO_WIDE
        vstart += vlen - w
        vlen = w
    lead = _STATE[buf[vstart]]
    if lead == 255:
        return _BAD_CHAR
    pad = ZERO if lead == ONE else lead
    now = s[_NOW]
    clock_before = state[base]
    toggles = 0
    last = vstart + vlen - 1
    # The bits the text writes (LSB first), then the left extension.
    for j in range(vlen):
        k = base + j
        new = _STATE[buf[last - j]]
        if state[k] != new:
            if new == 255:
                return _BAD_CHAR
            toggles += _flip(k, new, now, state, since, tally)
    for k in range(base + vlen, base + w):
        if state[k] != pad:
            toggles += _flip(k, pad, now, state, since, tally)
    if role[code] & _LOGGED:
        n = s[_LOG]
        log_code[n] = code
        log_time[n] = now
        log_bits[s[_LOG_BITS]:s[_LOG_BITS] + w] = state[base:base + w]
        s[_LOG] = n + 1
        s[_LOG_BITS] += w
    if cfg[_TRACKING]:
        if toggles:
            pending[0, s[_PENDING]] = code
            pending[1, s[_PENDING]] = toggles
            s[_PENDING] += 1
        if code == cfg[_CLOCK] and state[base] == ONE and clock_before != ONE:
            s[_STEP_RISES] += 1
            if s[_FIRST_RISE] < 0:
                s[_FIRST_RISE] = now
            s[_LAST_RISE] = now
        if role[code] & _WATCHED and not dirty[1, code]:
            dirty[1, code] = 1
            dirty[0, s[_DIRTY]] = code
            s[_DIRTY] += 1
        if code == cfg[_COUNTER_CODE] and w < 63:
            value = 0
            for j in range(w - 1, -1, -1):
                if state[base + j] > ONE:
                    return _DONE
                value = value * 2 + state[base + j]
            s[_COUNTER] = value
    return _DONE


@njit(cache=True)
def _scan(buf, n, final, pos, s, cfg, bits, codes, trk, log, warn):
    """Read buf[pos:n] record by record. Returns (status, position, detail): where to resume (a record
    cut by the end of a chunk is left whole for the next call), or the failure, where and its detail."""
    # Unpacked once: taking arrays out of the tuples per change costs reference counting each time.
    state, since, tally = bits
    width, offset, real, changes, role, code_bytes, code_start, table = codes
    pending, dirty = trk[12], trk[13]
    log_code, log_time, log_bits = log
    tracking = cfg[_TRACKING]
    while True:
        while pos < n and buf[pos] <= 32:
            pos += 1
        if pos >= n:
            return _DONE, n, 0
        record = pos
        c = buf[pos]
        end = _token_end(buf, pos, n)
        if end == n and not final:
            return _MORE, record, 0
        if c == 35:  # '#'
            if tracking and (s[_CYCLES] + s[_STEP_RISES]) // cfg[_WINDOW] + 1 >= trk[9].shape[0]:
                return _GROW_WINDOWS, record, 0
            if end == pos + 1:
                return _BAD_TIME, record, end - record
            t = 0
            for i in range(pos + 1, end):
                d = buf[i] - 48
                if d < 0 or d > 9:
                    return _BAD_TIME, record, end - record
                if t > (_MAX_TIME - d) // 10:
                    return _HUGE_TIME, record, end - record
                t = t * 10 + d
            if not s[_STARTED]:
                _start(s, since, t)
            if s[_HAVE_TIME] and t < s[_RAW]:
                if tracking:
                    return _TIME_BACK, record, 0
                if s[_WARN] < len(warn):
                    warn[s[_WARN], 0], warn[s[_WARN], 1], warn[s[_WARN], 2] = record, t, s[_RAW]
                    s[_WARN] += 1
                else:
                    s[_WARN_LOST] += 1
            s[_RAW] = t
            if t > s[_NOW]:
                if tracking:
                    _end_step(s, cfg, state, offset, trk)
                s[_NOW] = t
            s[_HAVE_TIME] = 1
            pos = end
            continue
        if c == 36:  # '$'
            if _word_is(buf, pos, end, _COMMENT_WORD):
                pos = end
                while True:
                    while pos < n and buf[pos] <= 32:
                        pos += 1
                    if pos >= n:
                        return (_OPEN_COMMENT if final else _MORE), record, 0
                    word_end = _token_end(buf, pos, n)
                    if word_end == n and not final:
                        return _MORE, record, 0
                    done = _word_is(buf, pos, word_end, _END_WORD)
                    pos = word_end
                    if done:
                        break
                continue
            if _word_is(buf, pos, end, _DUMPOFF_WORD):
                s[_DUMPOFF] = s[_NOW]
            elif not (_word_is(buf, pos, end, _END_WORD) or _word_is(buf, pos, end, _DUMPVARS_WORD)
                      or _word_is(buf, pos, end, _DUMPON_WORD) or _word_is(buf, pos, end, _DUMPALL_WORD)):
                return _BAD_KEYWORD, record, end - record
            pos = end
            continue
        prefix = _VALUE_PREFIX[c]
        if prefix:
            # A vector or real value, then its identifier code as the next token.
            code_start_at = end
            while code_start_at < n and buf[code_start_at] <= 32:
                code_start_at += 1
            if code_start_at >= n:
                return (_NO_CODE_AFTER_VALUE if final else _MORE), record, 0
            code_end = _token_end(buf, code_start_at, n)
            if code_end == n and not final:
                return _MORE, record, 0
            vstart, vlen = pos + 1, end - pos - 1
            # PyMTL3 writes Python's bin() text after the b: `b0b101` means `b101`.
            if vlen >= 3 and buf[vstart] == 48 and buf[vstart + 1] == 98:
                vstart += 2
                vlen -= 2
        elif _STATE[c] != 255:
            code_start_at, code_end = pos + 1, end
            if code_end == code_start_at:
                return _NO_CODE, code_start_at, 0
            vstart, vlen = pos, 1
        else:
            return _BAD_TOKEN, record, end - record
        code = _lookup(buf, code_start_at, code_end, code_bytes, code_start, table)
        if code < 0:
            return _UNDECLARED, code_start_at, code_end - code_start_at
        if tracking and s[_PENDING] == pending.shape[1]:
            return _GROW_PENDING, record, 0
        if role[code] & _LOGGED and (s[_LOG] == len(log_code) or s[_LOG_BITS] + width[code] > len(log_bits)):
            return _LOG_FULL, record, 0
        if not s[_STARTED]:
            _start(s, since, 0)
        changes[code] += 1
        if not (prefix == 2 or real[code]):
            if vlen < 1:
                return _BAD_CHAR, record, code
            status = _change(buf, vstart, vlen, code, s, cfg, state, since, tally, width, offset, role, pending, dirty,
                             log_code, log_time, log_bits)
            if status != _DONE:
                return status, record, code
        pos = code_end


def _header_tokens(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    for m in re.finditer(rb"\S+", data):
        yield m.group(), m.start(), m.end()


def read_header(path: Path | str) -> Header:
    """Parse the definitions up to `$enddefinitions $end` (of a VCD, or of the VCD an FST file reads as)."""
    with _text(Path(path)) as stream:
        return _definitions(stream, Path(path))[0]


def _definitions(stream: BinaryIO, path: Path) -> tuple[Header, bytes]:
    """The header, and the bytes read beyond it (the body's beginning)."""
    data = stream.read(64)
    if problem := not_text(data, "VCD"):
        raise VcdError(path, None, problem)
    # Up to the `$end` after `$enddefinitions` (a pipe hands the text over in pieces of any size).
    while (at := data.find(b"$enddefinitions")) < 0 or data.find(b"$end", at + 15) < 0:
        more = stream.read(CHUNK_BYTES)
        if not more:
            if at >= 0:
                break
            raise VcdError(path, data.count(b"\n") + 1, "no `$enddefinitions $end`: the file is truncated or not a VCD")
        data += more
    header = _parse_definitions(data, path)
    return header, data[header.body_offset:]


def _parse_definitions(data: bytes, path: Path) -> Header:
    header = Header()
    stack: list[str] = []
    code_index: dict[bytes, int] = {}
    tokens = _header_tokens(data)

    def line_of(pos: int) -> int:
        return data.count(b"\n", 0, pos) + 1

    def until_end(start: int) -> list[bytes]:
        words = []
        for word, pos, _ in tokens:
            if word == b"$end":
                return words
            if word in (b"$var", b"$scope", b"$upscope", b"$enddefinitions"):
                raise VcdError(path, line_of(pos), f"expected `$end` before {word.decode()}")
            words.append(word)
        raise VcdError(path, line_of(start), "a definition never ends: expected `$end`")

    for word, pos, end in tokens:
        if word == b"$enddefinitions":
            rest = until_end(pos)
            if rest:
                raise VcdError(path, line_of(pos), "expected `$end` right after `$enddefinitions`")
            body = data.index(b"$end", end) + len(b"$end")
            header.body_offset = body
            header.body_line = line_of(body)
            if stack:
                raise VcdError(path, line_of(pos), f"scope {'.'.join(stack)} is never closed with `$upscope`")
            if sum(header.widths) > MAX_TOTAL_BITS:
                raise VcdError(path, line_of(pos), f"the variables hold {sum(header.widths)} bits in all, beyond the "
                                                   f"{MAX_TOTAL_BITS} this reader counts in memory")
            _fold_array_scopes(header)
            return header
        if word == b"$scope":
            words = until_end(pos)
            if not words:
                raise VcdError(path, line_of(pos), "`$scope` needs a kind and a name")
            name = words[-1].decode(errors="replace")
            stack.append(name)
            header.scopes[tuple(stack)] = words[0].decode(errors="replace") if len(words) > 1 else "module"
        elif word == b"$upscope":
            until_end(pos)
            if not stack:
                raise VcdError(path, line_of(pos), "`$upscope` without an open `$scope`")
            stack.pop()
        elif word == b"$var":
            words = until_end(pos)
            if len(words) < 4:
                raise VcdError(path, line_of(pos), "expected `$var TYPE SIZE CODE NAME $end`")
            kind, size, code = words[0].decode(errors="replace"), words[1], words[2]
            try:
                width = int(size)
            except ValueError:
                raise VcdError(path, line_of(pos), f"variable size {size.decode(errors='replace')!r} is not an integer") from None
            real = kind in _REAL_TYPES or kind == "string"
            if width < 1 and not real:
                raise VcdError(path, line_of(pos), f"variable size {width} must be at least 1")
            if width > MAX_VAR_BITS and not real:
                raise VcdError(path, line_of(pos), f"variable size {width} is beyond the {MAX_VAR_BITS} bits "
                                                   "this reader takes for one variable")
            name = words[3].decode(errors="replace")
            bit_range = "".join(w.decode(errors="replace") for w in words[4:])
            if code not in code_index:
                code_index[code] = len(header.codes)
                header.codes.append(code)
                header.widths.append(0 if real else width)
                header.real.append(real)
            index = code_index[code]
            if not real and header.widths[index] != width:
                # Some writers alias a vector and one of its bits; the widest view holds the counts.
                header.widths[index] = max(header.widths[index], width)
            header.vars.append(Var(index, tuple(stack), name, kind, width, bit_range))
        elif word == b"$timescale":
            header.timescale = _timescale(path, line_of(pos), until_end(pos))
        elif word.startswith(b"$"):
            until_end(pos)
        else:
            raise VcdError(path, line_of(pos), f"expected a `$` keyword in the definitions, found {word[:40].decode(errors='replace')!r}")
    raise VcdError(path, line_of(len(data)), "truncated definitions")


def _fold_array_scopes(header: Header) -> None:
    """Verilator's FST writer puts an array's elements (`mem[0]`, `mem[1]`, ...) under a scope named as the
    array; its VCD writer, like every other, declares them in the scope that holds the array. Such a
    scope (no sub-scopes, only elements of its own name) is folded into its parent, so that both dumps
    name the design alike."""
    parents = {scope[:-1] for scope in header.scopes}
    inside: dict[tuple[str, ...], list[Var]] = {}
    for var in header.vars:
        inside.setdefault(var.scope, []).append(var)
    folded = {scope for scope, members in inside.items()
              if scope and scope not in parents and all(v.name.startswith(scope[-1] + "[") for v in members)}
    if folded:
        header.vars = [replace(v, scope=v.scope[:-1]) if v.scope in folded else v for v in header.vars]
        for scope in folded:
            del header.scopes[scope]


def _timescale(path: Path, line: int, words: list[bytes]) -> float:
    text = b" ".join(words).decode(errors="replace").strip()
    # The standard allows 1, 10 or 100; real writers use any whole number (a Game Boy trace: 244 ns).
    m = re.fullmatch(r"(\d+)?\s*(s|ms|us|ns|ps|fs)", text)
    if not m or int(m.group(1) or 1) == 0:
        raise VcdError(path, line, f"timescale {text!r} is not a whole number followed by s, ms, us, ns, ps or fs")
    return int(m.group(1) or 1) * _UNITS[m.group(2)]




@contextlib.contextmanager
def _text(path: Path) -> Iterator[BinaryIO]:
    """The dump as VCD text: the file itself, or for an FST file the VCD that GTKWave's FST library
    writes from it into a pipe, from a thread (the library's calls release the GIL), as it reads."""
    with open(path, "rb") as f:
        fst = f.read(len(_FST_HEADER)) == _FST_HEADER
        if not fst:
            f.seek(0)
            yield f
            return
    import pylibfst
    from cffi import FFI

    libc_ffi = FFI()
    libc_ffi.cdef("void *fdopen(int fd, const char *mode); int fclose(void *stream);")
    libc = libc_ffi.dlopen(None)
    ffi, lib = pylibfst.ffi, pylibfst.lib
    context = lib.fstReaderOpen(str(path).encode())
    if context == ffi.NULL:
        raise VcdError(path, None, "GTKWave's FST library cannot open this FST file: it is truncated or corrupt")
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):
        # Linux: room for the decoder to run 1 MB ahead of the pass (a pipe holds 64 KB by default).
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    handle = libc.fdopen(write_end, b"w")
    failed: list[BaseException] = []

    def write() -> None:
        try:
            out = ffi.cast("FILE *", int(libc_ffi.cast("uintptr_t", handle)))
            lib.fstReaderProcessHier(context, out)
            lib.fstReaderSetFacProcessMaskAll(context)
            lib.fstReaderIterBlocks(context, ffi.NULL, ffi.NULL, out)
        except BaseException as error:  # handed to the reading thread
            failed.append(error)
        finally:
            libc.fclose(handle)

    writer = threading.Thread(target=write, name=f"fst2vcd {path.name}", daemon=True)
    writer.start()
    try:
        # Unbuffered: a read returns what the pipe holds instead of waiting until the buffer is full.
        with open(read_end, "rb", buffering=0) as stream:
            yield stream
            # Drain what a reader that stopped early left, so that the writer can finish.
            while stream.read(CHUNK_BYTES):
                pass
    finally:
        writer.join()
        lib.fstReaderClose(context)
    if failed:
        raise failed[0]


class _Reader:
    """The arrays one read updates in place, laid out as `_scan` takes them."""

    def __init__(self, path: Path, header: Header, track: Track | None, watch: list[int], chunk_bytes: int):
        self.path, self.header, self.track = path, header, track
        codes = len(header.codes)
        offsets = header.bit_offsets
        total = int(offsets[-1])
        self.s = np.zeros(_STATE_SIZE, np.int64)
        self.s[[_DUMPOFF, _FIRST_RISE, _COUNTER]] = -1
        self.bits = (np.full(total, X, np.uint8), np.zeros(total, np.int64), np.zeros((6, total), np.int64))
        role = np.zeros(codes, np.uint8)
        role[list(watch)] = _LOGGED
        code_start = np.concatenate(([0], np.cumsum([len(c) for c in header.codes], dtype=np.int64)))
        code_bytes = np.frombuffer(b"".join(header.codes), np.uint8) if codes else np.zeros(0, np.uint8)
        size = 1 << max(1, (2 * codes).bit_length())
        self.codes = (np.asarray(header.widths, np.int64), offsets, np.asarray(header.real, np.uint8),
                      np.zeros(codes, np.int64), role, code_bytes, code_start, _build_table(code_bytes, code_start, size))
        empty = np.zeros(0, np.int64)
        if track is None:
            self.cfg = np.array([-1, -1, -1, 1, 0], np.int64)
            self.trk = (empty, empty, empty, empty, np.zeros((3, 0), np.int64), empty, empty, empty, empty,
                        np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64),
                        np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64))
        else:
            self.cfg = np.array([track.clock, track.phase, track.counter, track.window, 1], np.int64)
            enable_codes = np.array([c for c, _ in track.enables], np.int64)
            order = np.argsort(enable_codes, kind="stable")
            enable_ptr = np.searchsorted(enable_codes[order], np.arange(codes + 1)).astype(np.int64)
            watched = [c for c, _ in track.enables] + ([track.phase] if track.phase >= 0 else [])
            role[watched] |= _WATCHED
            units, windows = track.units, 16
            self.trk = (np.asarray(track.reach_ptr, np.int64), np.asarray(track.reach_idx, np.int64), enable_ptr,
                        np.array([track.enables[k][1] for k in order], np.int64),
                        np.zeros((3, len(track.enables)), np.int64), np.full(units, -1, np.int64),
                        np.zeros(units, np.int64), np.zeros(units, np.int64), np.zeros(units, np.int64),
                        np.zeros((windows, units), np.int64), np.zeros((windows, units), np.int64),
                        np.zeros((windows, codes), np.int64), np.zeros((2, 1024), np.int64),
                        np.zeros((2, codes), np.int64))
            self.enable_order = order
        self.log = (np.zeros(1 << 16, np.int64), np.zeros(1 << 16, np.int64), np.zeros(1 << 20, np.uint8))
        self.logged: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in watch}
        self.warn = np.zeros((MAX_WARNINGS, 3), np.int64)
        self.warnings: list[str] = []
        self.lost_warnings = 0
        self.line = header.body_line

    def feed(self, stream: BinaryIO, start: bytes, chunk_bytes: int) -> int:
        """Read the body to its end; returns the bytes read."""
        buf = bytearray(max(chunk_bytes, 2 * len(start)))
        buf[:len(start)] = start
        filled, final, total = len(start), False, len(start)
        while True:
            if not final:
                # One read, then the pass: from a pipe (an FST being decoded) that is a pipe's worth, so
                # the writer goes on decoding while this thread counts.
                got = stream.readinto(memoryview(buf)[filled:]) or 0
                final = not got
                filled += got
                total += got
            data = np.frombuffer(buf, np.uint8)
            status, pos = self._scan(data, filled, final)
            del data
            self.line += buf.count(b"\n", 0, pos)
            if final:
                return total
            rest = filled - pos
            buf[:rest] = buf[pos:filled]
            filled = rest
            if filled == len(buf):
                # One record (a long comment, a very wide value) is larger than the buffer.
                buf.extend(bytes(len(buf)))

    def _scan(self, data: np.ndarray, filled: int, final: bool) -> tuple[int, int]:
        pos = 0
        while True:
            status, at, detail = _scan(data, filled, final, pos, self.s, self.cfg, self.bits, self.codes, self.trk,
                                       self.log, self.warn)
            self._drain(data, at)
            if status >= _FAILED:
                self._fail(data, status, at, detail)
            if status == _GROW_WINDOWS:
                self._grow_windows()
            elif status == _GROW_PENDING:
                self.trk = self.trk[:12] + (np.concatenate((self.trk[12], np.zeros_like(self.trk[12])), axis=1),
                                            self.trk[13])
            elif status != _LOG_FULL:
                return status, at
            pos = at

    def _grow_windows(self) -> None:
        trk = list(self.trk)
        for k in (9, 10, 11):
            trk[k] = np.concatenate((trk[k], np.zeros_like(trk[k])))
        self.trk = tuple(trk)

    def _drain(self, data: np.ndarray, upto: int) -> None:
        """Take the warnings and the logged changes out of their fixed-size buffers."""
        s = self.s
        for pos, time, before in self.warn[:s[_WARN]]:
            self._warn(f"line {self._line(data, int(pos))}: time goes back to {time} after {before}; "
                       "the changes that follow are taken at the latest time so far")
        self.lost_warnings += int(s[_WARN_LOST])
        s[_WARN] = s[_WARN_LOST] = 0
        if s[_LOG]:
            log_code, log_time, log_bits = self.log
            n, widths = int(s[_LOG]), self.codes[0]
            code = log_code[:n]
            starts = np.concatenate(([0], np.cumsum(widths[code])))
            for c in np.unique(code):
                rows = np.flatnonzero(code == c)
                w = int(widths[c])
                states = np.stack([log_bits[starts[r]:starts[r] + w] for r in rows]) if w else np.zeros((len(rows), 0))
                self.logged[int(c)].append((log_time[rows].copy(), states.astype(np.uint8)))
            s[_LOG] = s[_LOG_BITS] = 0

    def _warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.lost_warnings += 1

    def _line(self, data: np.ndarray, pos: int) -> int:
        return self.line + int(np.count_nonzero(data[:pos] == 10))

    def _fail(self, data: np.ndarray, status: int, pos: int, detail: int) -> None:
        text = bytes(data[pos:_token_end(data, pos, len(data))])

        def shown(b: bytes) -> str:
            return repr(b[:40].decode(errors="replace"))

        value = text[1:]
        if len(value) >= 3 and value[:2] == b"0b":
            value = value[2:]
        if status == _TOO_WIDE:
            code = self.header.codes[detail].decode(errors="replace")
            raise VcdError(self.path, self._line(data, pos),
                           f"value of {len(value)} bits for a {self.header.widths[detail]}-bit variable ({code!r})")
        message = {
            _BAD_TIME: f"timestamp {shown(text)} is not `#` and a whole number",
            _HUGE_TIME: f"timestamp {text[:40].decode(errors='replace')} is beyond 2**63 - 1 time units",
            _NO_CODE: "a value change has no identifier code",
            _UNDECLARED: f"identifier code {shown(text)} was never declared with `$var`",
            _BAD_CHAR: f"value {shown(value)} has a character that is not 0, 1, x, z (or u, w, l, h, -)",
            _BAD_KEYWORD: f"unexpected {text[:40].decode(errors='replace')} after the definitions",
            _BAD_TOKEN: f"expected a timestamp, a value change or a `$` keyword, found {shown(text)}",
            _OPEN_COMMENT: "a `$comment` never ends: expected `$end`",
            _NO_CODE_AFTER_VALUE: "a value has no identifier code after it: the file is truncated",
            _TIME_BACK: "time goes back in the dump: activity per clock cycle needs ordered time",
        }[status]
        raise VcdError(self.path, self._line(data, pos), message)

    def finish(self, size: int) -> Counts:
        s, header = self.s, self.header
        if self.track is not None:
            while (s[_CYCLES] + s[_STEP_RISES]) // self.track.window + 1 >= self.trk[9].shape[0]:
                self._grow_windows()
        _finish(s, self.cfg, self.bits, self.codes, self.trk)
        if self.lost_warnings:
            self.warnings.append(f"and {self.lost_warnings} more warnings like these")
        tally = self.bits[2]
        changes = {c: (np.concatenate([t for t, _ in parts]) if parts else np.zeros(0, np.int64),
                       np.concatenate([b for _, b in parts]) if parts else np.zeros((0, header.widths[c]), np.uint8))
                   for c, parts in self.logged.items()}
        return Counts(header, tally[0], tally[1], tally[2], tally[3], tally[4], tally[5], self.codes[3],
                      int(s[_BEGIN]), int(s[_NOW]), size, self.warnings,
                      None if s[_DUMPOFF] < 0 else int(s[_DUMPOFF]), self._cycles(), changes)

    def _cycles(self) -> Cycles | None:
        track, s = self.track, self.s
        if track is None:
            return None
        n = int(s[_CYCLES])
        windows = (n - 1) // track.window + 1 if n else 0
        (_, _, _, _, enables, _, _, active, active_in_phase, window_toggles, window_active,
         signal_window_toggles, _, _) = self.trk
        enabled = {track.enables[k]: int(enables[2, i]) for i, k in enumerate(self.enable_order)}
        # The tables are kept a window per row, so that one cycle's additions fall close together.
        return Cycles(n, None if s[_FIRST_RISE] < 0 else int(s[_FIRST_RISE]), int(s[_LAST_RISE]), active,
                      active_in_phase, n if track.phase < 0 else int(s[_PHASE_HIGH]), window_toggles[:windows].T,
                      window_active[:windows].T, signal_window_toggles[:windows].T, enabled,
                      None if s[_COUNTER] < 0 else int(s[_COUNTER]))


def scan(path: Path | str, track: Track | None = None, watch: list[int] | tuple[int, ...] = (),
         chunk_bytes: int = CHUNK_BYTES) -> Counts:
    """Read a whole dump (VCD, or FST) once: per-bit counts, the changes of the `watch` codes, and with
    a `track` the activity per clock cycle."""
    path = Path(path)
    with _text(path) as stream:
        header, start = _definitions(stream, path)
        reader = _Reader(path, header, track, list(watch), chunk_bytes)
        body = reader.feed(stream, start, chunk_bytes)
    return reader.finish(header.body_offset + body)
