"""The reference toggle count: vcdvcd parses, plain Python counts one value at a time.

It is slow and simple on purpose, so `power.vcd` (vectorized) can be proven equal to it. vcdvcd is
a line parser: it wants each value change on its own line, mistakes a `$version` text line that
starts with r or b for a value change, and silently drops string values and scalars in VHDL states
(u, w, l, h, -). `normalize` therefore lays the same tokens out one definition or one change per
line, strings as r values and such scalars as one-bit vectors, before vcdvcd reads them; `stream_counts` reads a file directly
(the project's own dumps are already laid out that way) and is the baseline of the speed benchmark.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import vcdvcd

from power.vcd import ONE, X, ZERO, Z, Counts, read_header

_STATE = {**{c: ZERO for c in "0lL"}, **{c: ONE for c in "1hH"}, **{c: X for c in "xXuUwW-"}, **{c: Z for c in "zZ"}}


def bits_of(value: str, width: int) -> list[int]:
    """States of a value's bits, LSB first, extended to `width` by the IEEE 1364 rule."""
    if len(value) >= 3 and value[:2] == "0b":
        value = value[2:]
    if len(value) > width:
        value = value[len(value) - width:]
    states = [_STATE[c] for c in reversed(value)]
    pad = states[-1] if states[-1] in (X, Z) else ZERO
    return states + [pad] * (width - len(states))


def normalize(path: Path | str) -> str:
    """The dump's tokens, one definition, one comment or one value change per line."""
    words = Path(path).read_bytes().decode("latin-1").split()
    lines: list[str] = []
    i = 0
    body = False
    while i < len(words):
        word = words[i]
        if word.startswith("$") and word != "$end" and (not body or word == "$comment"):
            j = words.index("$end", i + 1)
            lines.append(" ".join(words[i:j + 1]))
            body = body or word == "$enddefinitions"
            i = j + 1
        elif body and word[0] in "sS":
            lines.append(f"r{word[1:]} {words[i + 1]}")
            i += 2
        elif body and word[0] in "bBrR":
            lines.append(f"{word} {words[i + 1]}")
            i += 2
        elif body and word[0] not in "01xXzZ#$":
            lines.append(f"b{word[0]} {word[1:]}")
            i += 1
        else:
            lines.append(word)
            i += 1
    return "\n".join(lines) + "\n"


class _Counter(vcdvcd.StreamParserCallbacks):
    def __init__(self, widths: dict[str, int], real: set[str]):
        self.widths, self.real = widths, real
        self.state = {code: [X] * w for code, w in widths.items()}
        self.rise = {code: [0] * w for code, w in widths.items()}
        self.fall = {code: [0] * w for code, w in widths.items()}
        self.xz = {code: [0] * w for code, w in widths.items()}
        self.t = {code: [[0] * w for _ in range(3)] for code, w in widths.items()}
        self.changes: dict[str, int] = defaultdict(int)
        self.since: dict[str, int] = {}
        self.begin: int | None = None
        self.seen_time = False
        self.now = 0

    def time(self, vcd, time, cur_sig_vals):
        # A time that goes back is held at the latest time so far, as power.vcd does.
        self.seen_time = True
        self.now = max(self.now, time)

    def value(self, vcd, time, value, identifier_code, cur_sig_vals):
        if self.begin is None:
            self.begin = vcd.begintime if self.seen_time else 0
        code = identifier_code
        time = self.now = max(self.now, time)
        self.changes[code] += 1
        if code in self.real:
            return
        old, new = self.state[code], bits_of(value, self.widths[code])
        span = time - self.since.get(code, self.begin)
        for j, (o, n) in enumerate(zip(old, new)):
            self.t[code][min(o, 2)][j] += span
            if o == ZERO and n == ONE:
                self.rise[code][j] += 1
            elif o == ONE and n == ZERO:
                self.fall[code][j] += 1
            elif o != n and (o > ONE or n > ONE):
                self.xz[code][j] += 1
        self.state[code] = new
        self.since[code] = time


def _run(path: Path | str, text: str | None) -> Counts:
    header = read_header(path)
    codes = [c.decode("latin-1") for c in header.codes]
    widths = dict(zip(codes, header.widths))
    real = {c for c, r in zip(codes, header.real) if r}
    counter = _Counter(widths, real)
    if text is None:
        parsed = vcdvcd.VCDVCD(str(path), store_tvs=False, callbacks=counter)
    else:
        parsed = vcdvcd.VCDVCD(vcd_string=text, store_tvs=False, callbacks=counter)
    begin = counter.begin if counter.begin is not None else parsed.begintime
    end = max(parsed.endtime, counter.now)
    for code in codes:
        span = end - counter.since.get(code, begin)
        for j, o in enumerate(counter.state[code]):
            counter.t[code][min(o, 2)][j] += span

    def flat(table) -> np.ndarray:
        return np.array([v for code in codes for v in table[code]], np.int64)

    return Counts(header, flat(counter.rise), flat(counter.fall), flat(counter.xz),
                  flat({c: counter.t[c][0] for c in codes}), flat({c: counter.t[c][1] for c in codes}),
                  flat({c: counter.t[c][2] for c in codes}),
                  np.array([counter.changes.get(c, 0) for c in codes], np.int64),
                  begin, end, Path(path).stat().st_size, [])


def reference_counts(path: Path | str) -> Counts:
    """Counts of any dump, through vcdvcd on the normalized text."""
    return _run(path, normalize(path))


def stream_counts(path: Path | str) -> Counts:
    """Counts of a dump that vcdvcd can read as it is, streamed from the file."""
    return _run(path, None)
