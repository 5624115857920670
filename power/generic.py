"""Activity of any design's dump, with no manifest: what `hpu power` reports for every VCD.

Without the HPU's manifest nothing is known of the design but its dump, so every scope is an
instance, every bit of a variable belongs to the first scope that declares it, and every toggle is
charged one per-bit energy (the energy table's datapath bit): a plainly uncalibrated estimate. The
clock is the one named with ``--clock`` (a leaf name or a dotted reference) or else the 1-bit
variable with a clock's name (clk, clock, *_clk, clk_*, ...) and the most rising edges; without one,
toggles are reported and silent ratios are not.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from hpu.files import staged, write_json
from power import saif
from power.design import reach_index
from power.energy import EnergyTable
from power.vcd import Counts, Cycles, Header, Track, VcdError, scan

CLOCK_NAME = re.compile(r"(?i)^(clk|clock|sysclk|[a-z]?clk\d*|.*_clk|clk_.*|.*_clock|clock_.*)(\[0\])?$")
UNCALIBRATED_CLASS = "datapath"


@dataclass
class Generic:
    """Per-scope toggles (and activity when a clock was found) of one dump."""

    vcd: Path
    counts: Counts
    scopes: list[str]
    owned: list[np.ndarray]                  # per scope, the bits it declares first
    toggles: np.ndarray                      # per scope, its own bits and its sub-scopes'
    clock: str | None
    window: int
    activity: Cycles | None                  # per-cycle activity per scope, when there is a clock

    def silent_ratio(self, scope: int) -> float:
        return 1.0 - self.activity.active[scope] / self.activity.cycles


def find_clock(header: Header, counts: Counts, name: str | None) -> int | None:
    """The clock's identifier code: the one named, or the best-named 1-bit variable with most rises."""
    rises = {var.code: int(counts.rise[counts.bits(var.code)].sum()) for var in header.vars
             if header.widths[var.code] == 1 and not header.real[var.code]}
    if name:
        named = [var for var in header.vars if name in (var.reference, var.name) and var.code in rises]
        if not named:
            raise InputError(f"no 1-bit variable {name!r} in the dump to use as the clock "
                             "(--clock takes a name or a dotted reference)")
        return max(named, key=lambda v: (rises[v.code], -len(v.scope))).code
    candidates = [var for var in header.vars if var.code in rises and CLOCK_NAME.match(var.name) and rises[var.code] >= 2]
    if not candidates:
        return None
    return max(candidates, key=lambda v: (rises[v.code], -len(v.scope))).code


def measure(vcd: Path, clock: str | None = None, window: int = 64) -> Generic:
    if window < 1:
        raise InputError(f"--window {window}: a window must be at least 1 cycle")
    counts = scan(vcd)
    header = counts.header
    code = find_clock(header, counts, clock)
    scopes = sorted(header.scopes, key=lambda s: (len(s), s))
    index = {scope: i for i, scope in enumerate(scopes)}
    per_bit = counts.rise + counts.fall
    offsets = header.bit_offsets
    toggles = np.zeros(len(scopes), np.int64)
    owned: list[list[int]] = [[] for _ in scopes]
    reach: dict[int, set[int]] = {}
    counted, first = set(), set()
    for var in header.vars:
        if header.real[var.code] or var.code == code or (var.code, var.scope) in counted:
            continue
        bits = range(int(offsets[var.code]), int(offsets[var.code + 1]))
        if var.code not in first and var.scope in index:
            first.add(var.code)
            owned[index[var.scope]].extend(bits)
        counted.add((var.code, var.scope))
        # Every scope above the variable's (its own included) sees its toggles and is active with it.
        above = [index[var.scope[:k]] for k in range(len(var.scope) + 1) if var.scope[:k] in index]
        toggles[above] += int(per_bit[bits.start:bits.stop].sum())
        reach.setdefault(var.code, set()).update(above)
    cycles = None
    if code is not None:
        ptr, idx = reach_index(reach, len(header.codes))
        try:
            cycles = scan(vcd, Track(code, ptr, idx, len(scopes), window)).cycles
        except VcdError as exc:
            # A valid dump whose cycles cannot be told apart (time going back): toggles only.
            counts.warnings.append(f"no activity per cycle: {exc}")
        if cycles is not None and cycles.cycles < 2:
            counts.warnings.append(f"no activity per cycle: the clock has {cycles.cycles} rising edges")
            cycles = None
    return Generic(Path(vcd), counts, [".".join(s) for s in scopes], [np.asarray(o, np.int64) for o in owned], toggles,
                   None if code is None else next(v.reference for v in header.vars if v.code == code), window, cycles)


def write(g: Generic, table: EnergyTable, out_dir: Path, name: str = "activity") -> dict[str, Path]:
    """activity.json, bits.csv, scopes.csv (toggles per window), activity.png, activity.saif."""
    counts = g.counts
    fj = table.toggle_fj[UNCALIBRATED_CLASS]
    a = g.activity
    per_bit = counts.rise + counts.fall
    scopes = {}
    for i, path in enumerate(g.scopes):
        scopes[path or "(root)"] = {
            "toggles": int(g.toggles[i]),
            "energy_fJ_uncalibrated": float(g.toggles[i]) * fj,
            "own_toggles": int(per_bit[g.owned[i]].sum()) if a else None,
            "active_cycles": int(a.active[i]) if a else None,
            "silent_ratio": g.silent_ratio(i) if a else None,
        }
    paths = {"json": out_dir / f"{name}.json", "bits": out_dir / f"{name}_bits.csv",
             "windows": out_dir / f"{name}_windows.csv", "png": out_dir / f"{name}.png",
             "saif": out_dir / f"{name}.saif"}
    write_bits(counts, paths["bits"])
    with staged(paths["windows"]) as temp, open(temp, "w", newline="") as f:
        w = csv.writer(f)
        windows = a.window_toggles.shape[1] if a else 0
        w.writerow(["scope", *(f"cycles_{k * g.window}_{(k + 1) * g.window - 1}" for k in range(windows))] if a
                   else ["scope", "(no clock: no windows)"])
        for i, path in enumerate(g.scopes):
            w.writerow([path or "(root)", *(a.window_toggles[i].tolist() if a else [])])
    _plot(g, paths["png"])
    saif.write(counts, paths["saif"], design=g.scopes[1].split(".")[0] if len(g.scopes) > 1 else "top")
    write_json(paths["json"], {
        "vcd": str(g.vcd), "bytes": counts.bytes_read, "clock": g.clock, "cycles": a.cycles if a else None,
        "note": ("energy is an uncalibrated estimate: no manifest names the design's nets, so every toggle is "
                 f"charged one {UNCALIBRATED_CLASS} bit ({fj} fJ, {table.source})"),
        "toggles": int(per_bit.sum()), "xz_changes": int(counts.xz.sum()),
        "window_cycles": g.window if a else None, "scopes": scopes, "warnings": counts.warnings,
    })
    return paths


def write_bits(counts: Counts, path: Path) -> Path:
    """Every bit of every variable (aliases once): rises, falls, x/z changes, time at 0, 1 and x/z."""
    header = counts.header
    with staged(path) as temp, open(temp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["signal", "bit", "rises", "falls", "xz_changes", "t0", "t1", "tx"])
        done = set()
        for var in header.vars:
            if header.real[var.code] or var.code in done:
                continue
            done.add(var.code)
            base = int(header.bit_offsets[var.code])
            for bit in range(header.widths[var.code]):
                k = base + bit
                w.writerow([var.reference, bit, int(counts.rise[k]), int(counts.fall[k]), int(counts.xz[k]),
                            int(counts.t0[k]), int(counts.t1[k]), int(counts.tx[k])])
    return path


def _plot(g: Generic, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6))
    a = g.activity
    if a is not None and a.window_toggles.size:
        depth = min(len(s.split(".")) for s in g.scopes if s) if any(g.scopes) else 0
        shown = [i for i, s in enumerate(g.scopes) if s and len(s.split(".")) <= depth + 1][:12]
        x = np.arange(a.window_toggles.shape[1]) * g.window
        for i in shown:
            # Scope names may hold `$` (VCS writes `unnamed$$_vcs_0`): matplotlib would read math there.
            ax.plot(x, a.window_toggles[i] / g.window, label=g.scopes[i].replace("$", r"\$"), linewidth=1)
        ax.set_xlabel(f"clock cycle ({g.clock})")
        ax.set_ylabel("toggles per cycle")
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no clock found: name one with --clock for activity over time", ha="center",
                transform=ax.transAxes)
    ax.set_title("Activity over time per scope")
    fig.tight_layout()
    with staged(path) as temp:
        fig.savefig(temp, dpi=110, format="png")
    plt.close(fig)
