"""SAIF (Switching Activity Interchange Format, IEEE 1801 annex) export of a dump's activity.

Every bit of every variable gets T0, T1 and TX (time at 0, 1 and x/z, in the dump's time unit),
TC (0<->1 toggles) and IG (x/z changes, SAIF's glitch slot, which tools ignore or report). The
instance tree follows the dump's scopes, so a power tool can annotate the same Verilog.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from hpu.files import write_text
from power.vcd import Counts

_UNITS = [(1e-15, "fs"), (1e-12, "ps"), (1e-9, "ns"), (1e-6, "us"), (1e-3, "ms"), (1.0, "s")]


def _timescale(seconds: float) -> str:
    for unit, name in reversed(_UNITS):
        if seconds >= unit * 0.999:
            return f"{round(seconds / unit)} {name}"
    return "1 fs"


def _name(text: str) -> str:
    """SAIF names escape what is not a plain identifier character."""
    return re.sub(r"([^A-Za-z0-9_])", r"\\\1", text)


def write(counts: Counts, path: Path | str, design: str = "hpu") -> Path:
    header = counts.header
    offsets = header.bit_offsets
    duration = counts.end_time - counts.begin_time
    children: dict[tuple[str, ...], list] = {}
    for var in header.vars:
        if header.real[var.code]:
            continue
        children.setdefault(var.scope, []).append(var)
    lines = ["(SAIFILE", '(SAIFVERSION "2.0")', '(DIRECTION "backward")',
             f'(DESIGN "{design}")', f'(DATE "{datetime.now(timezone.utc).isoformat(timespec="seconds")}")',
             '(VENDOR "hpu-codesign")', '(PROGRAM_NAME "hpu power")', '(VERSION "1")', "(DIVIDER / )",
             f"(TIMESCALE {_timescale(header.timescale)})", f"(DURATION {duration})"]

    def emit(scope: tuple[str, ...], depth: int) -> None:
        pad = "  " * depth
        lines.append(f"{pad}(INSTANCE {_name(scope[-1])}")
        seen = set()
        nets = [v for v in children.get(scope, []) if not (v.name in seen or seen.add(v.name))]
        if nets:
            lines.append(f"{pad}  (NET")
            for var in nets:
                start = int(offsets[var.code])
                for bit in range(header.widths[var.code]):
                    i = start + bit
                    label = _name(var.name) + (f"\\[{bit}\\]" if header.widths[var.code] > 1 else "")
                    lines.append(f"{pad}    ({label} (T0 {counts.t0[i]}) (T1 {counts.t1[i]}) (TX {counts.tx[i]}) "
                                 f"(TC {counts.rise[i] + counts.fall[i]}) (IG {counts.xz[i]}))")
            lines.append(f"{pad}  )")
        for child in sorted(s for s in header.scopes if len(s) == len(scope) + 1 and s[:-1] == scope):
            emit(child, depth + 1)
        lines.append(f"{pad})")

    for root in sorted(s for s in header.scopes if len(s) == 1):
        emit(root, 0)
    lines.append(")")
    path = Path(path)
    write_text(path, "\n".join(lines) + "\n")
    return path


_NET = re.compile(r"\((\S+) \(T0 (\d+)\) \(T1 (\d+)\) \(TX (\d+)\) \(TC (\d+)\) \(IG (\d+)\)\)")


def read(path: Path | str) -> dict[str, tuple[int, int, int, int, int]]:
    """{instance/path/net[bit]: (T0, T1, TX, TC, IG)} from a SAIF file written by `write`.

    Parses the nesting with a stack of INSTANCE names, so a misplaced parenthesis shows up."""
    found: dict[str, tuple[int, int, int, int, int]] = {}
    stack: list[str] = []
    depth_of: list[int] = []
    depth = 0
    for line in Path(path).read_text().splitlines():
        text = line.strip()
        m = _NET.fullmatch(text)
        if m:
            found["/".join(stack + [m.group(1)])] = tuple(int(g) for g in m.groups()[1:])
            continue
        if text.startswith("(INSTANCE "):
            stack.append(text[len("(INSTANCE "):])
            depth_of.append(depth)
        depth += text.count("(") - text.count(")")
        if depth_of and depth == depth_of[-1]:
            stack.pop()
            depth_of.pop()
    if depth != 0:
        raise ValueError(f"{path}: unbalanced parentheses (depth {depth} at the end)")
    return found


def expected(counts: Counts) -> dict[str, tuple[int, int, int, int, int]]:
    """What `read` must return for a file written from `counts` (for checking an export)."""
    header, offsets = counts.header, counts.header.bit_offsets
    out = {}
    for var in header.vars:
        if header.real[var.code]:
            continue
        base = "/".join(_name(s) for s in var.scope) + "/" + _name(var.name)
        for bit in range(header.widths[var.code]):
            i = int(offsets[var.code]) + bit
            key = base + (f"\\[{bit}\\]" if header.widths[var.code] > 1 else "")
            out.setdefault(key, (int(counts.t0[i]), int(counts.t1[i]), int(counts.tx[i]),
                                 int(counts.rise[i] + counts.fall[i]), int(counts.xz[i])))
    return out
