"""Gate-level energy of a mapped netlist from its nets' simulated activity and a Liberty library.

The rules are current OpenSTA's (power/Power.cc and power/VcdReader.cc of
The-OpenROAD-Project/OpenSTA, as of d1b2b39, 2026-08-19), applied to the activity a simulation
gives every net: its transitions and its duty (the fraction of the time it is 1). Per instance,
over a run of `duration` seconds:

- switching (Power::findSwitchingPower): 1/2 C V^2 per transition of each output, C the load of its
  net: the input pin capacitances it drives, the larger of their rise and fall sums as OpenSTA's
  load at MinMax::max, plus `wire_cap` per driven pin;
- internal, on outputs (Power::findOutputInternalPower): per transition of an output, the energy of
  its internal-power groups, one per related input. A group's energy is the mean of its rise_power
  and fall_power tables at the output's load, each looked up at the transition time of the related
  input's edge that causes that output edge: the same edge for a positive-unate or non-unate input,
  the opposite one for a negative-unate input. The groups are weighted by their related input's
  transitions times the duty of the output function's Boolean difference with respect to that
  input (Power::findInputDuty, Power::evalDiffDuty: the probability that the output is sensitive to
  it, the other inputs independent at their duties), normalized over the groups. A group whose
  related input never moves, or is tied to a constant, weighs nothing, and an output none of whose
  groups weighs anything draws no internal energy, as in OpenSTA;
- internal, on inputs (Power::findInputInternalPower): per transition of an input with internal-power
  groups of its own (a flip-flop's clock and data pins), the mean of each group's rise and fall
  energy at that input's own rise and fall transition times (`when` conditions are not read: the
  OSU 0.18 um library has them only on DFFSR, which a design with synchronous resets does not map to);
- leakage: `cell_leakage_power` x duration.

Activity, as OpenSTA reads a dump (VcdCount::incrCounts, Power::findActivity):
- a change to or from x or z counts as half a transition;
- the pins on the clock net take the clock's activity, 2 transitions per period and duty 1/2, not
  the dump's (Power::seedActivities leaves clock pins out: "clock activities are baked in").

Transition times come from the library's transition tables, propagated from the primary inputs
(`input_slew`, the ideal clock's too) through the combinational cells in topological order (a
flip-flop's outputs from its clock): each output edge takes the largest of its arcs' transitions at
its load and the transition time of the input edge that causes it (both of a non-unate input's
edges: the larger).

Unateness and Boolean differences are read from each output's `function`, as its truth table over
the cell's input pins (the Liberty reader does not keep the arcs' `timing_sense`; for the library's
combinational cells the two agree). A function of the cell's internal state (a flip-flop's Q) makes
its arcs non-unate and its inputs' duty 1/2, as in findInputDuty when the function does not hold the
related port.

The netlist is Yosys's JSON (`write_json`) of one flat module mapped to the library's cells; nets
are its bit numbers, and `activity` gives (transitions, duty) per bit.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from hpu.errors import InputError
from power.liberty import Arc, Cell, Library, Pin

# Liberty variable names of the tables' two axes.
_LOAD, _SLEWS = "total_output_net_capacitance", ("input_net_transition", "input_transition_time")


@dataclass
class Instance:
    name: str
    cell: Cell
    pins: dict[str, int]        # pin -> net bit
    constants: dict[str, int] = field(default_factory=dict)   # pin -> the constant 0 or 1 it is tied to


@dataclass
class Netlist:
    module: str
    instances: list[Instance]
    inputs: list[int]
    outputs: list[int]
    names: dict[int, str]       # a readable name per bit, for reports

    @classmethod
    def from_yosys(cls, netlist: dict, library: Library, top: str | None = None) -> "Netlist":
        modules = netlist.get("modules", {})
        mapped = {name: m for name, m in modules.items() if name not in library.cells}
        if top is None:
            # Yosys marks the top module with the attribute top = 1 (written as a binary string).
            tops = [n for n, m in mapped.items() if str(m.get("attributes", {}).get("top", "0")).strip("0")]
            top = tops[0] if len(tops) == 1 else (next(iter(mapped)) if len(mapped) == 1 else None)
        if top not in mapped:
            raise InputError(f"the netlist holds modules {sorted(mapped)}: name the top one")
        m = mapped[top]
        instances = []
        for name, cell in m.get("cells", {}).items():
            lib_cell = library.cells.get(cell["type"])
            if lib_cell is None:
                raise InputError(f"{top}: instance {name} is a {cell['type']}, which library {library.name} does not "
                                 "have: map the design to the library first (Yosys dfflibmap and abc -liberty)")
            connections = {pin: bits[0] for pin, bits in cell["connections"].items() if bits}
            instances.append(Instance(name, lib_cell, {p: b for p, b in connections.items() if isinstance(b, int)},
                                      {p: int(b) for p, b in connections.items() if b in ("0", "1")}))
        inputs = [b for p in m.get("ports", {}).values() if p["direction"] == "input" for b in p["bits"]
                  if isinstance(b, int)]
        outputs = [b for p in m.get("ports", {}).values() if p["direction"] == "output" for b in p["bits"]
                   if isinstance(b, int)]
        names = {}
        for net, info in sorted(m.get("netnames", {}).items(), key=lambda kv: (kv[1].get("hide_name", 0), kv[0])):
            for i, b in enumerate(info["bits"]):
                if isinstance(b, int) and b not in names:
                    names[b] = net if len(info["bits"]) == 1 else f"{net}[{i}]"
        return cls(top, instances, inputs, outputs, names)


@dataclass
class Energy:
    """Joules per instance (in Netlist.instances order), by kind."""

    instances: list[str]
    cells: list[str]
    internal: np.ndarray
    switching: np.ndarray
    leakage: np.ndarray
    clock_pins: np.ndarray      # the part of `internal` drawn by clock pins (a flip-flop's CLK)
    slews: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def total(self) -> np.ndarray:
        return self.internal + self.switching + self.leakage


def _slew_at(table, load: float, slew: float) -> float:
    point = {_LOAD: load}
    for name in _SLEWS:
        point[name] = slew
    return table.at(**{v: point[v] for v in table.variables})


def _mean_energy(arc: Arc, load: float, rise_slew: float, fall_slew: float) -> float:
    """A group's energy per transition: the mean of its rise and fall tables (a missing one counts 0)."""
    return sum(_slew_at(t, load, s) for t, s in ((arc.rise, rise_slew), (arc.fall, fall_slew)) if t is not None) / 2


_TOKENS = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_\[\]]*|[01!'^&*|+()])")


class _NotOfInputs(Exception):
    """A function that reads a name other than the cell's input pins (a flip-flop's internal state)."""


@functools.cache
def _logic(function: str | None, inputs: tuple[str, ...]) -> tuple[np.ndarray, dict[str, str]] | None:
    """The truth table of a Liberty `function` over `inputs` (row r gives input k bit k of r) and each
    input's unateness ("positive", "negative" or "non"); None for no function or one of the cell's
    internal state. Liberty's precedence, loosest first: + and |; & and * and juxtaposition; ^; ! and '."""
    if not function:
        return None
    rows = np.arange(1 << len(inputs))
    value = {name: (rows >> k) & 1 == 1 for k, name in enumerate(inputs)}
    tokens, pos = [], 0
    while pos < len(function.rstrip()):
        m = _TOKENS.match(function, pos)
        if m is None:
            raise InputError(f"Liberty function {function!r}: cannot read it from {function[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise InputError(f"Liberty function {function!r} ends where an operand was expected")
        pos += 1
        return tokens[pos - 1]

    def disjunction():
        v = conjunction()
        while peek() in ("+", "|"):
            take()
            v = v | conjunction()
        return v

    def conjunction():
        v = exclusive()
        while peek() is not None and peek() not in ("+", "|", "^", ")", "'"):
            if peek() in ("&", "*"):
                take()
            v = v & exclusive()
        return v

    def exclusive():
        v = negation()
        while peek() == "^":
            take()
            v = v ^ negation()
        return v

    def negation():
        if peek() == "!":
            take()
            return ~negation()
        v = operand()
        while peek() == "'":
            take()
            v = ~v
        return v

    def operand():
        word = take()
        if word == "(":
            v = disjunction()
            if peek() != ")":
                raise InputError(f"Liberty function {function!r}: a parenthesis does not close")
            take()
            return v
        if word in ("0", "1"):
            return np.full(len(rows), word == "1")
        if word not in value:
            if word[0].isalpha() or word[0] == "_":
                raise _NotOfInputs
            raise InputError(f"Liberty function {function!r}: {word!r} where an operand was expected")
        return value[word]

    try:
        table = disjunction()
    except _NotOfInputs:
        return None
    if pos != len(tokens):
        raise InputError(f"Liberty function {function!r}: cannot read it from {tokens[pos]!r}")
    senses = {}
    for k, name in enumerate(inputs):
        low = rows[(rows >> k) & 1 == 0]
        off, on = table[low], table[low | (1 << k)]
        senses[name] = "positive" if (off <= on).all() else "negative" if (off >= on).all() else "non"
    return table, senses


def _sensitivity(table: np.ndarray, k: int, duties: np.ndarray) -> float:
    """The duty of the function's Boolean difference with respect to input k: the probability that
    flipping input k flips the output, the other inputs independent and 1 with their `duties`."""
    rows = np.arange(len(table))
    low = rows[(rows >> k) & 1 == 0]
    flips = table[low] != table[low | (1 << k)]
    bits = (low[:, None] >> np.arange(len(duties))) & 1
    chance = np.where(bits == 1, duties, 1 - duties)
    chance[:, k] = 1.0
    return float(chance.prod(axis=1)[flips].sum())


def _inputs(cell: Cell) -> tuple[str, ...]:
    return tuple(name for name, pin in cell.pins.items() if pin.direction == "input")


def _causing(sense: str, rise: float, fall: float) -> tuple[float, float]:
    """The transition times of the input edges that cause an output rise and fall, for internal power."""
    return (fall, rise) if sense == "negative" else (rise, fall)


def estimate(netlist: Netlist, library: Library, activity: dict[int, tuple[float, float]], duration: float,
             clock: int | None = None, period: float | None = None, input_slew: float = 0.0,
             wire_cap: float = 0.0) -> Energy:
    """Energy per instance of `netlist` (see the module docstring); `activity[bit] = (transitions, duty)`,
    x/z changes counted as halves; a bit absent from it never moved and is 0. With `clock`, the
    clock net's bit, its pins take 2 transitions per `period` (seconds) and duty 1/2."""
    if clock is not None:
        activity = {**activity, clock: (2 * duration / period, 0.5)}
    v2 = library.voltage ** 2
    driver: dict[int, tuple[Instance, str]] = {}
    loads: dict[int, list[tuple[Instance, str]]] = defaultdict(list)
    for inst in netlist.instances:
        for pin, net in inst.pins.items():
            direction = inst.cell.pins[pin].direction if pin in inst.cell.pins else ""
            if direction == "output":
                driver[net] = (inst, pin)
            elif direction == "input":
                loads[net].append((inst, pin))
    cap = {net: (sum(i.cell.pins[p].rise_cap + wire_cap for i, p in pins),
                 sum(i.cell.pins[p].fall_cap + wire_cap for i, p in pins)) for net, pins in loads.items()}
    slews = _propagate(netlist, driver, loads, cap, input_slew)

    def moves(net: int) -> float:
        return activity.get(net, (0.0, 0.0))[0]

    def duty(inst: Instance, pin: str) -> float:
        if pin in inst.constants:
            return float(inst.constants[pin])
        return activity.get(inst.pins[pin], (0.0, 0.0))[1] if pin in inst.pins else 0.0

    def output_energy(inst: Instance, pin: Pin, load: float) -> float:
        """Energy per transition of output `pin`: its groups weighted as the module docstring says."""
        inputs = _inputs(inst.cell)
        logic = _logic(pin.function, inputs)
        duties = np.array([duty(inst, p) for p in inputs]) if logic is not None else None
        weights, energies = [], []
        for arc in pin.power:
            net = inst.pins.get(arc.related)
            if net is None:
                continue
            if logic is not None and arc.related in inputs:
                sensitive, sense = _sensitivity(logic[0], inputs.index(arc.related), duties), logic[1][arc.related]
            else:
                sensitive, sense = 0.5, "non"
            weights.append(moves(net) * sensitive)
            energies.append(_mean_energy(arc, load, *_causing(sense, *slews.get(net, (input_slew, input_slew)))))
        total = sum(weights)
        return sum(w * e for w, e in zip(weights, energies)) / total if total else 0.0

    n = len(netlist.instances)
    internal, switching, clock_pins = np.zeros(n), np.zeros(n), np.zeros(n)
    for k, inst in enumerate(netlist.instances):
        for pin_name, net in inst.pins.items():
            pin = inst.cell.pins.get(pin_name)
            moved = moves(net)
            if pin is None or not moved:
                continue
            if pin.direction == "output":
                load = max(cap.get(net, (0.0, 0.0)))
                switching[k] += 0.5 * v2 * load * moved
                internal[k] += moved * output_energy(inst, pin, load)
            elif pin.direction == "input":
                drawn = moved * sum(_mean_energy(arc, 0.0, *slews.get(net, (input_slew, input_slew)))
                                    for arc in pin.power)
                internal[k] += drawn
                if pin.clock:
                    clock_pins[k] += drawn
    leakage = np.array([inst.cell.leakage * duration for inst in netlist.instances])
    return Energy([i.name for i in netlist.instances], [i.cell.name for i in netlist.instances],
                  internal, switching, leakage, clock_pins, slews)


def _propagate(netlist: Netlist, driver, loads, cap, input_slew: float) -> dict[int, tuple[float, float]]:
    """(rise, fall) transition time of every driven net, in topological order of the combinational
    cells; sequential cells' outputs depend only on their clock, so they break every loop."""
    slews: dict[int, tuple[float, float]] = {net: (input_slew, input_slew) for net in netlist.inputs}
    waiting = {}
    users = defaultdict(list)
    ready = deque()
    for inst in netlist.instances:
        needs = {net for pin, net in inst.pins.items()
                 if inst.cell.pins.get(pin) is not None and inst.cell.pins[pin].direction == "input"
                 and net in driver and (not inst.cell.sequential or inst.cell.pins[pin].clock)}
        waiting[inst.name] = [inst, len(needs)]
        for net in needs:
            users[net].append(inst)
        if not needs:
            ready.append(inst)
    done = 0
    while ready:
        inst = ready.popleft()
        done += 1
        for pin_name, net in inst.pins.items():
            pin = inst.cell.pins.get(pin_name)
            if pin is None or pin.direction != "output":
                continue
            c_rise, c_fall = cap.get(net, (0.0, 0.0))
            logic = _logic(pin.function, _inputs(inst.cell))
            rise = fall = 0.0
            for arc in pin.transitions:
                related = inst.pins.get(arc.related)
                r, f = slews.get(related, (input_slew, input_slew)) if related is not None else (input_slew, input_slew)
                sense = logic[1].get(arc.related, "non") if logic is not None else "non"
                # A non-unate input's rise and fall both cause each output edge.
                r, f = (max(r, f), max(r, f)) if sense == "non" else _causing(sense, r, f)
                if arc.rise is not None:
                    rise = max(rise, _slew_at(arc.rise, c_rise, r))
                if arc.fall is not None:
                    fall = max(fall, _slew_at(arc.fall, c_fall, f))
            slews[net] = (rise, fall)
            for user in users.get(net, []):
                entry = waiting[user.name]
                entry[1] -= 1
                if entry[1] == 0:
                    ready.append(user)
    if done < len(netlist.instances):
        stuck = [name for name, (_, left) in waiting.items() if left > 0][:4]
        raise InputError(f"{netlist.module}: a combinational loop through {', '.join(stuck)}: transition times "
                         "need a loop-free netlist")
    return slews
