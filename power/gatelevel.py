"""Gate-level energy of a mapped netlist from its nets' rises and falls and a Liberty library.

Per instance, over a run of `duration` seconds:

- switching: 1/2 C V^2 per transition of each net the instance drives, C the net's load (the input
  pin capacitances it drives, rise or fall capacitance by the transition, plus `wire_cap` per
  driven pin);
- internal, on outputs: per rising (falling) transition of an output, the `rise_power`
  (`fall_power`) energy of the output's internal-power groups, each looked up at the output's load
  and its related input's transition time. Several groups (one per related input) are weighted as
  current OpenSTA weights them: by the related input's transition count, normalized over the groups
  (equal weights when none of those inputs moved, e.g. a flip-flop output that only its clock moves);
- internal, on inputs: per transition of an input that has internal-power groups of its own (a
  flip-flop's clock and data pins), its energy at that input's transition time;
- leakage: `cell_leakage_power` x duration.

Transition times come from the library's transition tables, propagated from the primary inputs
(`input_slew`) through the combinational cells in topological order (a flip-flop's outputs from its
clock): each output takes the largest of its arcs' rise (fall) transitions at its load and the
related input's transition time.

The netlist is Yosys's JSON (`write_json`) of one flat module mapped to the library's cells; nets
are its bit numbers, and `activity` gives (rises, falls) per bit.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from hpu.errors import InputError
from power.liberty import Cell, Library

# Liberty variable names of the tables' two axes.
_LOAD, _SLEWS = "total_output_net_capacitance", ("input_net_transition", "input_transition_time")


@dataclass
class Instance:
    name: str
    cell: Cell
    pins: dict[str, int]        # pin -> net bit (constants left out)


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
            pins = {pin: bits[0] for pin, bits in cell["connections"].items() if bits and isinstance(bits[0], int)}
            instances.append(Instance(name, lib_cell, pins))
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


def estimate(netlist: Netlist, library: Library, activity: dict[int, tuple[int, int]], duration: float,
             input_slew: float = 0.0, wire_cap: float = 0.0) -> Energy:
    """Energy per instance of `netlist` (see the module docstring); `activity[bit] = (rises, falls)`,
    a bit absent from it never moved."""
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

    def moves(net: int | None) -> tuple[int, int]:
        return activity.get(net, (0, 0)) if net is not None else (0, 0)

    n = len(netlist.instances)
    internal, switching, clock_pins = np.zeros(n), np.zeros(n), np.zeros(n)
    for k, inst in enumerate(netlist.instances):
        for pin_name, net in inst.pins.items():
            pin = inst.cell.pins.get(pin_name)
            if pin is None:
                continue
            rises, falls = moves(net)
            if not rises + falls:
                continue
            if pin.direction == "output":
                c_rise, c_fall = cap.get(net, (0.0, 0.0))
                switching[k] += 0.5 * v2 * (rises * c_rise + falls * c_fall)
                arcs = [a for a in pin.power if a.related in inst.pins]
                weights = np.array([sum(moves(inst.pins[a.related])) for a in arcs], float)
                weights = weights / weights.sum() if weights.sum() else np.full(len(arcs), 1 / max(len(arcs), 1))
                for w, arc in zip(weights, arcs):
                    s_rise, s_fall = slews.get(inst.pins[arc.related], (input_slew, input_slew))
                    slew = max(s_rise, s_fall)
                    if arc.rise is not None:
                        internal[k] += w * rises * _slew_at(arc.rise, c_rise, slew)
                    if arc.fall is not None:
                        internal[k] += w * falls * _slew_at(arc.fall, c_fall, slew)
            elif pin.direction == "input":
                s_rise, s_fall = slews.get(net, (input_slew, input_slew))
                drawn = 0.0
                for arc in pin.power:
                    if arc.related:
                        continue
                    if arc.rise is not None:
                        drawn += rises * _slew_at(arc.rise, 0.0, s_rise)
                    if arc.fall is not None:
                        drawn += falls * _slew_at(arc.fall, 0.0, s_fall)
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
            rise = fall = 0.0
            for arc in pin.transitions:
                related = inst.pins.get(arc.related)
                s = max(slews.get(related, (input_slew, input_slew))) if related is not None else input_slew
                if arc.rise is not None:
                    rise = max(rise, _slew_at(arc.rise, c_rise, s))
                if arc.fall is not None:
                    fall = max(fall, _slew_at(arc.fall, c_fall, s))
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
