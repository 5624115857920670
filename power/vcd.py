"""A streaming, vectorized VCD reader that counts toggles per bit.

The file is read in chunks of a few MB; each chunk is tokenized with numpy (no Python loop per value
change), and the changes are grouped by identifier code and width so the per-bit work is array
arithmetic. Memory is bounded by the chunk size plus one state row per variable: the reader never
holds the dump or its list of changes.

Counting rules (IEEE 1364 section 18 for the format, the brief for the counts):
- a toggle is a 0->1 (rise) or 1->0 (fall) change of one bit; a change to or from x or z (or any
  other non-0/1 state such as VHDL's u, w, -) is counted apart as an x/z change;
- every bit starts as x, so a dump's first values are x/z changes, not toggles;
- a vector written with fewer bits than its width is extended on the left with 0, or with x or z
  when its leftmost written bit is x or z;
- real and string values are counted as changes of the variable, not as bit toggles;
- variables sharing one identifier code (aliases) share one set of counts.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import scipy.sparse

from hpu.errors import InputError

CHUNK_BYTES = 1 << 22
# A body this large is read in parts by several processes at once (see scan).
PARALLEL_MIN_BYTES = 1 << 25
MAX_WORKERS = 4
# The largest part one process reads while a consumer takes the batches: bounds the batches held at once.
PART_BYTES = 1 << 24
# Counts take about 50 bytes per bit of every variable: these bounds keep a hostile or corrupt header
# from asking for more memory than a workstation has, with a message instead of a MemoryError.
MAX_VAR_BITS = 1 << 20
MAX_TOTAL_BITS = 1 << 24
MAX_TIME = (1 << 63) - 1
# The longest time step held whole in memory (see _chunk_end); a longer one is read in pieces.
MAX_STEP_BYTES = 1 << 28

# Bit states: 0, 1, unknown (x and its VHDL relatives), high impedance.
ZERO, ONE, X, Z = 0, 1, 2, 3
_STATE = np.full(256, 255, np.uint8)
for _chars, _state in (("0lL", ZERO), ("1hH", ONE), ("xXuUwW-", X), ("zZ", Z)):
    for _c in _chars:
        _STATE[ord(_c)] = _state
_IS_VALUE_PREFIX = np.zeros(256, bool)
_IS_VALUE_PREFIX[[ord(c) for c in "bBrRsS"]] = True
_IS_SCALAR = _STATE != 255
_TRANSITIONS = np.arange(16)
_IS_TOGGLE = np.isin(_TRANSITIONS, (ZERO * 4 + ONE, ONE * 4 + ZERO)).astype(np.uint8)
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)
# Times are summed in float64 (sparse products) where every sum stays an exact integer.
_EXACT_FLOAT = 1 << 52

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}
_REAL_TYPES = {"real", "realtime", "shortreal"}
_BODY_KEYWORDS = {b"$dumpvars", b"$dumpoff", b"$dumpon", b"$dumpall", b"$end"}


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
class Batch:
    """The bit changes of one chunk, grouped by code (in time order within a code).

    `toggles` and `xz` count the bits of each change that toggled or went to/from x/z;
    `watched` maps a watched code to (times, states of the watched bits) of its changes."""

    code: np.ndarray
    time: np.ndarray
    toggles: np.ndarray
    xz: np.ndarray
    watched: dict[int, tuple[np.ndarray, np.ndarray]]


@dataclass
class Counts:
    """Per-bit totals of a whole dump, indexed by `Header.bit_offsets[code] + bit` (bit 0 = LSB).

    Times at 0, 1 and x/z are in dump time units, from the first timestamp to the last."""

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

    @property
    def closed(self) -> bool:
        """Whether the dump ends in a `$dumpoff` (as `hpu sim` closes every dump): one cut short does not."""
        return self.last_dumpoff is not None and self.last_dumpoff == self.end_time

    def bits(self, code: int) -> slice:
        offsets = self.header.bit_offsets
        return slice(int(offsets[code]), int(offsets[code + 1]))


class Reducer(Protocol):
    """Turns each Batch into what its consumer needs where the batch is read, so that a dump read in
    parts by several processes sends back that (small) summary instead of every change.

    `part(from_start)` gives the function that reduces one reader's batches in order (a part that does
    not start at the dump's beginning starts from all-x); `fix_first(reduced, toggles)` adds, for each
    code whose first change in such a part the reduced batch holds, the toggles that change really
    made (`toggles[code]`, counted from the state the part started in): from x it counted none."""

    def part(self, from_start: bool) -> Callable[[Batch], Any]: ...

    def fix_first(self, reduced: Any, toggles: np.ndarray) -> None: ...


def rising(states: np.ndarray, before: int) -> np.ndarray:
    """Which of a 1-bit signal's successive states are Verilog posedges (into 1 from 0, x or z),
    `before` being its state ahead of the first."""
    previous = np.concatenate(([before], states[:-1]))
    return (previous != ONE) & (states == ONE)


def _header_tokens(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    for m in re.finditer(rb"\S+", data):
        yield m.group(), m.start(), m.end()


# GTKWave's FST (fstapi.h) opens with a header block: type FST_BL_HDR (0), then its section length,
# FST_HDRSIZE (329), as a big-endian 64-bit integer.
_FST_HEADER = b"\x00" + (329).to_bytes(8, "big")


def _not_vcd(head: bytes) -> str | None:
    """What a file is, from its first bytes, when it is certainly not VCD text; None otherwise."""
    if head.startswith(b"\x1f\x8b"):
        return "the file is gzip-compressed: gunzip it first"
    if head.startswith(_FST_HEADER):
        return ("the file is an FST file, not VCD: name it .fst and convert it with GTKWave's fst2vcd "
                "(fst2vcd X.fst -o X.vcd), or have the simulator dump VCD")
    if b"\x00" in head:
        return "the file is binary, not VCD text"
    return None


def read_header(path: Path | str) -> Header:
    """Parse the definitions up to `$enddefinitions $end`."""
    path = Path(path)
    data = b""
    with open(path, "rb") as f:
        if problem := _not_vcd(f.read(64)):
            raise VcdError(path, None, problem)
        f.seek(0)
        while b"$enddefinitions" not in data:
            more = f.read(CHUNK_BYTES)
            if not more:
                raise VcdError(path, data.count(b"\n") + 1, "no `$enddefinitions $end`: the file is truncated or not a VCD")
            data += more
        tail = f.read(64)
    data += tail
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


def _timescale(path: Path, line: int, words: list[bytes]) -> float:
    text = b" ".join(words).decode(errors="replace").strip()
    # The standard allows 1, 10 or 100; real writers use any whole number (a Game Boy trace: 244 ns).
    m = re.fullmatch(r"(\d+)?\s*(s|ms|us|ns|ps|fs)", text)
    if not m or int(m.group(1) or 1) == 0:
        raise VcdError(path, line, f"timescale {text!r} is not a whole number followed by s, ms, us, ns, ps or fs")
    return int(m.group(1) or 1) * _UNITS[m.group(2)]


class _Scanner:
    """The body reader: turns chunks into Batches and keeps the per-bit totals."""

    def __init__(self, path: Path, header: Header, watch: dict[int, np.ndarray], track_first: bool = False):
        self.path, self.header = path, header
        self.widths = np.asarray(header.widths, np.int64)
        self.offsets = header.bit_offsets
        total = int(self.offsets[-1])
        self.state = np.full(total, X, np.uint8)
        self.since = np.zeros(len(header.codes), np.int64)
        self.rise = np.zeros(total, np.int64)
        self.fall = np.zeros(total, np.int64)
        self.xz = np.zeros(total, np.int64)
        self.t = np.zeros((3, total), np.int64)
        self.changes = np.zeros(len(header.codes), np.int64)
        self.watch = watch
        self.watch_codes = np.fromiter(watch, np.int64, len(watch))
        # A part of a dump read in parallel (see _read_parallel) starts with every bit x; its first
        # change of each code is recorded so that the merge can count it from the true state.
        self.first_time = np.full(len(header.codes), -1, np.int64) if track_first else None
        self.first_state = np.full(total, X, np.uint8) if track_first else None
        self.closed_at: int | None = None
        # Whether each Batch needs its per-change toggle counts (someone consumes the batches).
        self.per_change = True
        self.time: int | None = None
        self.last_dumpoff: int | None = None
        self.warnings: list[str] = []
        self.begin: int | None = None
        self.line = header.body_line
        short = [(i, c) for i, c in enumerate(header.codes) if len(c) <= 8]
        self.long_codes = {c: i for i, c in enumerate(header.codes) if len(c) > 8}
        keys = np.array([int.from_bytes(c, "little") for _, c in short], np.uint64)
        order = np.argsort(keys)
        self.keys = keys[order]
        self.key_code = np.array([i for i, _ in short], np.int64)[order]
        self.rank = np.empty(len(header.codes), np.uint16 if len(header.codes) <= 1 << 16 else np.int64)
        self.rank[np.argsort(self.widths, kind="stable")] = np.arange(len(header.codes))

    def fail(self, buf: bytes, pos: int, message: str) -> None:
        raise VcdError(self.path, self.line + buf.count(b"\n", 0, pos), message)

    def chunk(self, buf: bytes, final: bool, close: bool = True) -> tuple[Batch | None, int]:
        """Process `buf`; returns the batch and how many bytes were consumed (the rest is carried)."""
        a = np.frombuffer(buf, np.uint8)
        self.margin = int(self.widths.max(initial=1))
        self.states = np.zeros(self.margin + len(a), np.uint8)
        np.take(_STATE, a, out=self.states[self.margin:])
        self.tail_padded = np.concatenate((a, np.zeros(8, np.uint8)))
        # Bytes up to the space are whitespace (or control characters, which no VCD token holds).
        solid = a > 32
        starts = np.flatnonzero(solid[1:] & ~solid[:-1]) + 1
        ends = np.flatnonzero(solid[:-1] & ~solid[1:]) + 1
        if len(a) and solid[0]:
            starts = np.concatenate(([0], starts))
        if len(a) and solid[-1]:
            ends = np.concatenate((ends, [len(a)]))
        consumed = len(buf)
        keep = np.ones(len(starts), bool)
        first = a[starts] if len(starts) else np.zeros(0, np.uint8)
        comments = np.flatnonzero((first == ord("$")) & (ends - starts == 8))
        for i in comments:
            if buf[starts[i]:ends[i]] != b"$comment":
                continue
            closing = np.flatnonzero((first[i + 1:] == ord("$")) & (ends[i + 1:] - starts[i + 1:] == 4))
            closing = [j for j in closing + i + 1 if buf[starts[j]:ends[j]] == b"$end"]
            if not closing:
                if final:
                    self.fail(buf, starts[i], "a `$comment` never ends: expected `$end`")
                keep[i:] = False
                consumed = int(starts[i])
                break
            keep[i:closing[0] + 1] = False
        starts, ends, first = starts[keep], ends[keep], first[keep]
        is_value, is_id = _pair_values(first)
        if len(starts) and is_value[-1]:
            if final:
                self.fail(buf, starts[-1], "a value has no identifier code after it: the file is truncated")
            consumed = min(consumed, int(starts[-1]))
            starts, ends, first, is_value, is_id = starts[:-1], ends[:-1], first[:-1], is_value[:-1], is_id[:-1]
        free = ~is_id
        is_time = free & (first == ord("#"))
        is_keyword = free & (first == ord("$"))
        is_scalar = free & ~is_value & _IS_SCALAR[first]
        bad = free & ~(is_time | is_keyword | is_scalar | is_value)
        dumpoffs = []
        for i in np.flatnonzero(bad | is_keyword):
            word = buf[starts[i]:ends[i]]
            if word == b"$dumpoff":
                dumpoffs.append(i)
            if bad[i]:
                self.fail(buf, starts[i], f"expected a timestamp, a value change or a `$` keyword, found "
                                          f"{word[:40].decode(errors='replace')!r}")
            if word not in _BODY_KEYWORDS:
                self.fail(buf, starts[i], f"unexpected {word[:40].decode(errors='replace')} after the definitions")

        time_index = np.flatnonzero(is_time)
        times = np.empty(len(time_index) + 1, np.int64)
        times[0] = self.time if self.time is not None else 0
        for k, i in enumerate(time_index):
            digits = buf[starts[i] + 1:ends[i]]
            if not digits.isdigit():
                self.fail(buf, starts[i], f"timestamp {buf[starts[i]:ends[i]][:40].decode(errors='replace')!r} is not `#` and a whole number")
            if len(digits) > 18 and int(digits) > MAX_TIME:
                self.fail(buf, starts[i], f"timestamp #{digits[:40].decode()} is beyond 2**63 - 1 time units")
            times[k + 1] = int(digits)
        if len(time_index):
            seen = times if self.time is not None else times[1:]
            back = np.flatnonzero(np.diff(seen) < 0)
            for k in back + (0 if self.time is not None else 1):
                line = self.line + buf.count(b"\n", 0, int(starts[time_index[k]]))
                self.warnings.append(f"line {line}: time goes back to {times[k + 1]} after {times[k]}; "
                                     "the changes that follow are taken at the latest time so far")
            seen[:] = np.maximum.accumulate(seen)
            if self.begin is None:
                change_first = np.flatnonzero(is_scalar | is_value)
                early = len(change_first) and change_first[0] < time_index[0]
                self._begin(0 if early else int(seen[0]))
            self.time = int(times[-1])
        elif self.begin is None and (is_scalar.any() or is_value.any()):
            self._begin(0)
        if dumpoffs:
            self.last_dumpoff = int(times[np.cumsum(is_time)[dumpoffs[-1]]])

        # Every change: where its value and its identifier code lie in buf.
        scalar = np.flatnonzero(is_scalar)
        vector = np.flatnonzero(is_value)
        n_changes = len(scalar) + len(vector)
        value_start = np.concatenate((starts[scalar], starts[vector] + 1))
        value_len = np.concatenate((np.ones(len(scalar), np.int64), ends[vector] - starts[vector] - 1))
        # PyMTL3 writes Python's bin() text after the b: `b0b101` means `b101`.
        python_bin = np.flatnonzero((value_len >= 3) & (a[np.minimum(value_start + 1, len(a) - 1)] == ord("b"))
                                    & (a[value_start] == ord("0")))
        value_start[python_bin] += 2
        value_len[python_bin] -= 2
        id_start = np.concatenate((starts[scalar] + 1, starts[vector + 1]))
        id_end = np.concatenate((ends[scalar], ends[vector + 1]))
        token = np.concatenate((scalar, vector))
        kind = np.concatenate((np.zeros(len(scalar), np.uint8), a[starts[vector]] | 0x20))
        change_time = times[np.cumsum(is_time)[token]] if n_changes else np.zeros(0, np.int64)
        code = self._codes(buf, a, id_start, id_end)
        batch = self._count(buf, a, code, kind, value_start, value_len, change_time, token)
        if final and close:
            self.close()
        return batch, consumed

    def _codes(self, buf: bytes, a: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        length = end - start
        if (length < 1).any():
            self.fail(buf, int(start[np.flatnonzero(length < 1)[0]]), "a value change has no identifier code")
        short = length <= 8
        # The code's first 8 bytes as one little-endian integer, the bytes beyond its length masked off.
        key = np.lib.stride_tricks.sliding_window_view(self.tail_padded, 8)[start].copy().view("<u8").reshape(-1)
        key &= _LOW_BYTES[np.minimum(length, 8)]
        slot = np.searchsorted(self.keys, key)
        slot = np.minimum(slot, max(len(self.keys) - 1, 0))
        code = np.full(len(start), -1, np.int64)
        if len(self.keys):
            found = short & (self.keys[slot] == key)
            code[found] = self.key_code[slot[found]]
        for i in np.flatnonzero(~short):
            code[i] = self.long_codes.get(buf[start[i]:end[i]], -1)
        if (code < 0).any():
            i = int(np.flatnonzero(code < 0)[0])
            self.fail(buf, int(start[i]), f"identifier code {buf[start[i]:end[i]][:40].decode(errors='replace')!r} "
                                          "was never declared with `$var`")
        return code

    def _count(self, buf, a, code, kind, value_start, value_len, change_time, token) -> Batch:
        real_var = np.asarray(self.header.real, bool)[code] if len(code) else np.zeros(0, bool)
        textual = (kind == ord("r")) | (kind == ord("s")) | real_var
        np.add.at(self.changes, code[textual], 1)
        bits = np.flatnonzero(~textual)
        # Rows grouped by width, then by code, then in file order: file order first (the scalar and the
        # vector changes are two sorted runs, which a stable sort merges in one pass), then a stable
        # sort by rank (a radix sort while the ranks fit 16 bits).
        bits = bits[np.argsort(token[bits], kind="stable")]
        order = bits[np.argsort(self.rank[code[bits]], kind="stable")]
        code, change_time = code[order], change_time[order]
        value_start, value_len = value_start[order], value_len[order]
        toggles = np.zeros(len(order), np.int64)
        xz = np.zeros(len(order), np.int64)
        watched: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        np.add.at(self.changes, code, 1)
        widths = self.widths[code]
        bounds = np.concatenate(([0], np.flatnonzero(widths[1:] != widths[:-1]) + 1, [len(code)])) if len(code) else []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = slice(int(lo), int(hi))
            self._count_width(buf, int(widths[lo]), rows, code[rows], change_time[rows], value_start[rows],
                              value_len[rows], toggles, xz, watched)
        return Batch(code, change_time, toggles, xz, watched)

    def _count_width(self, buf, w, rows, code, when, vstart, vlen, toggles, xz, watched) -> None:
        for i in np.flatnonzero(vlen > w):
            # Leading zeros beyond the width still fit (PyMTL3 writes them); anything else does not.
            excess = int(vlen[i]) - w
            if buf[vstart[i]:vstart[i] + excess].strip(b"0"):
                self.fail(buf, int(vstart[i]), f"value of {int(vlen[i])} bits for a {w}-bit variable "
                                               f"({self.header.codes[code[i]].decode(errors='replace')!r})")
            vstart[i] += excess
            vlen[i] = w
        # Columns run MSB first, as the file writes them: each row is the w bytes that end where its
        # value ends (one contiguous copy per row), with the columns left of a short value padded.
        bit = np.arange(w)[::-1]
        lead = self.states[vstart + self.margin]
        new = np.lib.stride_tricks.sliding_window_view(self.states, w)[vstart + vlen - w + self.margin]
        if (vlen < w).any():
            pad = np.where(lead == ONE, ZERO, lead)
            np.copyto(new, pad[:, None], where=np.arange(w)[None, :] < (w - vlen)[:, None])
        top = int(new.max(initial=ZERO))
        if top == 255:
            r = int(np.flatnonzero((new == 255).any(axis=1))[0])
            self.fail(buf, int(vstart[r]), f"value {buf[vstart[r]:vstart[r] + vlen[r]][:40].decode(errors='replace')!r} "
                                           "has a character that is not 0, 1, x, z (or u, w, l, h, -)")
        head = np.ones(len(code), bool)
        head[1:] = code[1:] != code[:-1]
        heads = np.flatnonzero(head)
        tails = np.concatenate((heads[1:], [len(code)])) - 1
        base = self.offsets[code]
        index = (base[heads][:, None] + bit[None, :]).reshape(-1)
        old_heads = self.state[index].reshape(len(heads), w)
        since = self.since[code[heads]]
        if top <= ONE and int(when[-1]) - int(since.min()) < _EXACT_FLOAT:
            self._count_two_state(w, rows, new, heads, tails, when, old_heads, since, index, toggles, xz)
        else:
            self._count_any_state(w, rows, code, new, head, heads, tails, when, old_heads, since, index, toggles, xz)
        if self.first_time is not None:
            fresh = self.first_time[code[heads]] < 0
            self.first_time[code[heads[fresh]]] = when[heads[fresh]]
            self.first_state[index.reshape(len(heads), w)[fresh]] = new[heads[fresh]]
        self.state[index] = new[tails].reshape(-1)
        self.since[code[tails]] = when[tails]
        # A code's changes are one run of rows (heads[k] .. tails[k]).
        for k in np.flatnonzero(np.isin(code[heads], self.watch_codes)):
            c, run = int(code[heads[k]]), slice(int(heads[k]), int(tails[k]) + 1)
            watched[c] = (when[run], new[run][:, w - 1 - self.watch[c]])

    def _count_two_state(self, w, rows, new, heads, tails, when, old_heads, since, index, toggles, xz) -> None:
        """Every bit of the group is 0 or 1 after each change (before the first, it may be anything):
        the common case, counted as sums over each code's rows, with no per-changed-bit index lists.

        A bit's rises and falls alternate, so with T changes between 0 and 1 and first and last
        states a and b, rises = (T + b - a) / 2 and falls = (T - b + a) / 2; its time at 1 is the sum
        over the rows of the row's new state times how long it held (to the code's next change), plus
        the old state held from `since` to the first change. An old x or z makes the first change an
        x/z change and its held time x/z time."""
        n = len(new)
        known = old_heads <= ONE
        changed = np.empty((n, w), bool)
        np.not_equal(new[1:], new[:-1], out=changed[1:])
        changed[heads] = (new[heads] != old_heads) & known
        if self.per_change:
            toggles[rows] = np.count_nonzero(changed, axis=1)
            xz[rows.start + heads] = w - np.count_nonzero(known, axis=1)
        held = np.zeros(n, np.float64)
        held[:-1] = when[1:] - when[:-1]
        held[tails] = 0
        flips = (_segment_sums(heads, np.ones(n)) @ changed.view(np.uint8)).astype(np.int64)
        ones = (_segment_sums(heads, held) @ new).astype(np.int64)
        before = (when[heads] - since)[:, None]
        ones += (old_heads == ONE) * before
        unknown = ~known * before
        span = (when[tails] - since)[:, None]
        net = new[tails].astype(np.int64) - np.where(known, old_heads, new[heads])
        self.rise[index] += ((flips + net) // 2).reshape(-1)
        self.fall[index] += ((flips - net) // 2).reshape(-1)
        self.xz[index] += (~known).reshape(-1)
        self.t[1][index] += ones.reshape(-1)
        self.t[2][index] += unknown.reshape(-1)
        self.t[0][index] += (span - ones - unknown).reshape(-1)

    def _count_any_state(self, w, rows, code, new, head, heads, tails, when, old_heads, since, index, toggles,
                         xz) -> None:
        """Any states (x, z and VHDL's included): counted per changed bit."""
        old = np.empty_like(new)
        old[1:] = new[:-1]
        old[heads] = old_heads
        # Only the bits that changed carry counts: from here on the work is on those alone.
        changed = np.flatnonzero((old != new).reshape(-1))
        row, column = np.divmod(changed, w)
        was, now = old.reshape(-1)[changed], new.reshape(-1)[changed]
        transition = was * 4 + now
        toggled = _IS_TOGGLE[transition]
        toggles[rows] = np.bincount(row, weights=toggled, minlength=len(code))
        xz[rows] = np.bincount(row, minlength=len(code)) - toggles[rows]
        segment = np.cumsum(head) - 1
        cell = segment[row] * w + column
        n = len(heads) * w
        self.rise[index] += np.bincount(cell[transition == ZERO * 4 + ONE], minlength=n)
        self.fall[index] += np.bincount(cell[transition == ONE * 4 + ZERO], minlength=n)
        self.xz[index] += np.bincount(cell[~toggled.astype(bool)], minlength=n)
        # Times held at 0, 1 and x/z telescope within a segment: a bit leaving a state at time t
        # adds t to it, entering one subtracts t; the segment's first row enters its old states
        # at `since`, and its last row's new states are held up to its time (the next chunk, or
        # the end of the dump, goes on from there).
        held = np.zeros(n * 4, np.int64)
        moment = when[row]
        np.add.at(held, cell * 4 + was, moment)
        np.add.at(held, cell * 4 + now, -moment)
        every = np.arange(n)
        np.add.at(held, every * 4 + old_heads.reshape(-1), -np.repeat(since, w))
        np.add.at(held, every * 4 + new[tails].reshape(-1), np.repeat(when[tails], w))
        held = held.reshape(n, 4)
        self.t[0][index] += held[:, ZERO]
        self.t[1][index] += held[:, ONE]
        self.t[2][index] += held[:, X] + held[:, Z]

    def _begin(self, time: int) -> None:
        """Every bit is x from the first timestamp on."""
        self.begin = time
        self.since[:] = time

    def close(self) -> None:
        end = self.time if self.time is not None else 0
        span = end - np.repeat(self.since, self.widths)
        self.t[np.minimum(self.state, 2), np.arange(len(self.state))] += span
        self.since[:] = end
        self.closed_at = end


def _segment_sums(heads: np.ndarray, weights: np.ndarray) -> scipy.sparse.csr_matrix:
    """The (segments x rows) matrix whose product sums each segment's rows (heads[s] .. heads[s + 1] - 1),
    row k weighted by weights[k]."""
    n = len(weights)
    indptr = np.concatenate((heads, [n]))
    return scipy.sparse.csr_matrix((weights, np.arange(n), indptr), shape=(len(heads), n))


def _pair_values(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which tokens are value prefixes (b..., r..., s...) and which are the codes that follow them.

    A code may itself begin with b, r or s, so in a run of such tokens they alternate: value, code,
    value, code, ..."""
    prefix = _IS_VALUE_PREFIX[first]
    n = len(first)
    if not n:
        return prefix, prefix
    run_start = prefix & np.concatenate(([True], ~prefix[:-1]))
    index = np.arange(n)
    start_of_run = np.maximum.accumulate(np.where(run_start, index, 0))
    is_value = prefix & ((index - start_of_run) % 2 == 0)
    is_id = np.zeros(n, bool)
    is_id[1:] = is_value[:-1]
    return is_value, is_id


def _chunk_end(buf: bytes) -> int:
    """Where to end a chunk: before the buffer's last timestamp, so that every change of one time step
    reaches the activity tracker in the same batch as that step's clock edge (a step split across two
    batches put its early changes in the cycle before the edge). A buffer holding no timestamp is
    carried on whole, up to MAX_STEP_BYTES, and then cut at its last whitespace. -1: no place to cut yet."""
    pos = len(buf)
    while (pos := buf.rfind(b"#", 0, pos)) > 0:
        if buf[pos - 1] in b" \t\r\n" and buf[pos + 1:pos + 2].isdigit():
            return pos
    if len(buf) < MAX_STEP_BYTES:
        return -1
    return max(buf.rfind(b"\n"), buf.rfind(b" ")) + 1 or -1


def scan(path: Path | str, on_batch: Callable[[Any], None] | None = None,
         watch: dict[int, list[int]] | None = None, chunk_bytes: int = CHUNK_BYTES, workers: int | None = None,
         parallel_min_bytes: int = PARALLEL_MIN_BYTES, reducer: Reducer | None = None) -> Counts:
    """Read a whole dump, handing each chunk's Batch (or what `reducer` makes of it) to `on_batch` in
    order; returns the per-bit totals.

    `watch` maps codes to bit indices whose states each Batch reports (for clocks and enables).
    A body of at least `parallel_min_bytes` is read in parts by `workers` processes at once
    (default: one per CPU, at most MAX_WORKERS); the counts and batches are one reader's."""
    path = Path(path)
    header = read_header(path)
    size = path.stat().st_size
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    watch_bits = {c: np.asarray(b, np.int64) for c, b in (watch or {}).items()}
    scanner, start = None, header.body_offset
    if workers > 1 and size - header.body_offset >= parallel_min_bytes:
        scanner, start = _read_parallel(path, header, size, workers, chunk_bytes, on_batch, watch_bits, reducer)
    if scanner is None:
        scanner = _Scanner(path, header, watch_bits)
        scanner.per_change = on_batch is not None
    if start is not None:
        # One reader from here on: from the dump's beginning, or from where the parts left off (the
        # state so far is the true one, so its batches need no fixing).
        _read_range(scanner, path, start, size, chunk_bytes, _reducing(on_batch, reducer, True), close=True)
    return _counts(scanner, header, size)


def _read_range(scanner: _Scanner, path: Path, start: int, end: int, chunk_bytes: int,
                on_batch: Callable[[Batch], None] | None, close: bool) -> None:
    """Feed the bytes start..end of the dump to `scanner`, chunk by chunk."""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        carry = b""
        while True:
            more = f.read(min(chunk_bytes, left))
            left -= len(more)
            final = not more
            buf = carry + more
            if not final:
                cut = _chunk_end(buf)
                if cut < 0:
                    carry = buf
                    continue
                buf, rest = buf[:cut], buf[cut:]
            else:
                rest = b""
            batch, consumed = scanner.chunk(buf, final, close)
            scanner.line += buf.count(b"\n", 0, consumed)
            if batch is not None and on_batch is not None and len(batch.code):
                on_batch(batch)
            carry = buf[consumed:] + rest
            if final:
                break


def _counts(scanner: _Scanner, header: Header, size: int) -> Counts:
    begin = scanner.begin if scanner.begin is not None else 0
    return Counts(header, scanner.rise, scanner.fall, scanner.xz, scanner.t[0], scanner.t[1], scanner.t[2],
                  scanner.changes, begin, scanner.time if scanner.time is not None else 0, size, scanner.warnings,
                  scanner.last_dumpoff)


def _split_points(path: Path, header: Header, size: int, parts: int) -> list[int]:
    """Offsets that cut the body into about equal parts, each cut just before a timestamp at the start
    of a line (a cut that falls inside a `$comment` makes a part fail, and the dump is read whole)."""
    points = [header.body_offset]
    with open(path, "rb") as f:
        for k in range(1, parts):
            target = header.body_offset + (size - header.body_offset) * k // parts
            f.seek(target)
            window = f.read(1 << 20)
            found = re.search(rb"\n#\d", window)
            if found and target + found.start() + 1 > points[-1]:
                points.append(target + found.start() + 1)
    return points + [size]


def _reducing(sink: Callable[[Any], None] | None, reducer: Reducer | None, from_start: bool):
    """`sink`, fed each Batch as `reducer` reduces it for one reader (or as it is, without one)."""
    if sink is None or reducer is None:
        return sink
    reduce = reducer.part(from_start)
    return lambda batch: sink(reduce(batch))


# What the workers, forked when a parallel read starts, inherit instead of receiving it pickled.
_FORKED: tuple[Header, Reducer | None] | None = None


def _read_part(path: Path, start: int, end: int, chunk_bytes: int, last: bool, watch: dict[int, np.ndarray],
               per_change: bool) -> tuple[_Scanner | None, list, str | None]:
    """One process's part: the scanner after reading start..end from all-x (the first part from the
    dump's beginning, as one reader would) and the part's batches (reduced, with a reducer); a
    failure comes back as its message. Line numbers count from the part's start: the parent re-reads
    a later part that warns."""
    header, reducer = _FORKED if _FORKED is not None else (read_header(path), None)
    from_start = start == header.body_offset
    scanner = _Scanner(path, header, watch, track_first=not from_start)
    scanner.per_change = per_change
    batches: list = []
    try:
        _read_range(scanner, path, start, end, chunk_bytes,
                    _reducing(batches.append, reducer, from_start) if per_change else None, close=last)
    except VcdError as error:
        return None, [], str(error)
    scanner.states = scanner.tail_padded = None
    return scanner, batches, None


def _read_parallel(path: Path, header: Header, size: int, workers: int, chunk_bytes: int,
                   on_batch: Callable[[Any], None] | None, watch: dict[int, np.ndarray],
                   reducer: Reducer | None) -> tuple[_Scanner | None, int | None]:
    """Read the dump in parts, at most `workers` + 1 of them in flight (memory stays bounded), folding
    each into the dump so far in order and handing its batches on. Returns the reader of the dump so
    far and where one reader must go on (None: the dump is read whole), at the first part that fails
    alone (e.g. a cut inside a `$comment`: the error comes from one reader), warns, or finds time
    going back across its cut."""
    # Plain counting holds nothing per part, so one part per process loses least to cuts; batches
    # for a consumer are held until folded, so their parts stay small.
    parts = workers if on_batch is None else max(workers, -(-(size - header.body_offset) // PART_BYTES))
    points = _split_points(path, header, size, parts)
    if len(points) < 3:
        return None, header.body_offset
    spans = list(zip(points[:-1], points[1:]))
    merged = None
    global _FORKED
    _FORKED = (header, reducer if on_batch is not None else None)
    try:
        pool = ProcessPoolExecutor(min(workers, len(spans)), mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()
    finally:
        _FORKED = None
    try:
        pending: deque = deque()
        queued = iter(spans)

        def submit() -> None:
            span = next(queued, None)
            if span is not None:
                pending.append(pool.submit(_read_part, path, span[0], span[1], chunk_bytes, span == spans[-1], watch,
                                           on_batch is not None))

        for _ in range(workers + 1):
            submit()
        for index in range(len(spans)):
            part, batches, error = pending.popleft().result()
            submit()
            if error is not None or (merged is not None and not _mergeable(merged, part)):
                return merged, spans[index][0]
            if merged is None:
                merged = part
            else:
                _fix_first_changes(merged, part, batches, header, reducer)
                _merge(merged, part, header)
            for batch in (batches if on_batch is not None else ()):
                on_batch(batch)
    finally:
        pool.shutdown(cancel_futures=True)
    return merged, None


def _mergeable(a: _Scanner, b: _Scanner) -> bool:
    """Whether part `b` folds into `a` exactly: not when the dump's beginning lies in b (a holds
    nothing), time goes back across the cut, or b warned (its line numbers count from the cut)."""
    return b.begin is None or (a.begin is not None and (a.time is None or b.begin >= a.time) and not b.warnings)


def _fix_first_changes(a: _Scanner, b: _Scanner, batches: list, header: Header, reducer: Reducer | None) -> None:
    """Part b's batches counted each code's first change from x: count it from a's state instead."""
    code_of_bit = np.repeat(np.arange(len(header.codes)), header.widths)
    transition = a.state.astype(np.int64) * 4 + b.first_state
    toggled = _IS_TOGGLE[transition]
    codes = len(header.codes)
    toggles = np.bincount(code_of_bit, weights=toggled, minlength=codes).astype(np.int64)
    if reducer is not None:
        for reduced in batches:
            reducer.fix_first(reduced, toggles)
        return
    xz = np.bincount(code_of_bit, weights=(a.state != b.first_state) & (toggled == 0), minlength=codes).astype(np.int64)
    done = np.zeros(codes, bool)
    for batch in batches:
        code, row = np.unique(batch.code, return_index=True)
        fresh = ~done[code]
        batch.toggles[row[fresh]] = toggles[code[fresh]]
        batch.xz[row[fresh]] = xz[code[fresh]]
        done[code] = True


def _merge(a: _Scanner, b: _Scanner, header: Header) -> None:
    """Fold part `b` (read from all-x, starting at its first timestamp) into `a` (the dump up to it).

    Part b counted its first change of each code as a change from x, and x held from its beginning to
    that change (to its end for a code it never changed, if it is the dump's last part); the fold takes
    those out and counts the change and the held time from a's state instead."""
    a.line += b.line - header.body_line
    if b.begin is None:
        if b.closed_at is not None:
            a.close()
        return
    code_of_bit = np.repeat(np.arange(len(header.codes)), header.widths)
    seen = b.first_time >= 0
    changed = seen[code_of_bit]
    old, new = a.state, b.first_state
    end = b.closed_at
    # b's count of its first changes, from x
    b.xz -= changed & (new != X)
    transition = old.astype(np.int64) * 4 + new
    b.rise += changed & (transition == ZERO * 4 + ONE)
    b.fall += changed & (transition == ONE * 4 + ZERO)
    b.xz += changed & (old != new) & (_IS_TOGGLE[transition] == 0)
    until = np.where(changed, b.first_time[code_of_bit], end if end is not None else 0)
    counted = changed | (end is not None)
    b.t[2] -= np.where(counted, until - b.begin, 0)
    held = np.where(counted, until - a.since[code_of_bit], 0)
    b.t[np.minimum(old, 2), np.arange(len(old))] += held
    for name in ("rise", "fall", "xz", "t", "changes"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    a.state = np.where(changed, b.state, a.state)
    a.since = np.where(seen, b.since, a.since) if end is None else np.full_like(a.since, end)
    a.time = b.time if b.time is not None else a.time
    a.last_dumpoff = b.last_dumpoff if b.last_dumpoff is not None else a.last_dumpoff
