"""A Liberty (.lib) reader for gate-level power: cells, pins, capacitances, transition and internal
power tables, leakage.

Liberty is the standard cell library format (Synopsys, open since 2000): nested groups
`name (args) { ... }`, simple attributes `name : value ;` and complex attributes `name (v, ...) ;`.
This reader keeps what an activity-based power engine needs and converts every figure to SI
units (seconds, farads, joules, watts) from the library's own unit attributes, so nothing
downstream guesses a unit.

Tables (`lu_table_template` / `power_lut_template`) are looked up by their template's variable
names, whatever their order, and interpolated bilinearly, extrapolated linearly beyond the
indices, as STA tools do.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from hpu.files import not_text

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}();:,]|[^\s{}();:,"]+')
_UNIT = re.compile(r"\s*([0-9.eE+-]*)\s*([a-zA-Z]+)\s*")
_SCALE = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3}


class LibertyError(InputError):
    """A Liberty file this reader cannot take: names the file, the line and what is wrong."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


@dataclass
class Group:
    kind: str
    args: list[str]
    attrs: dict[str, object] = field(default_factory=dict)
    groups: list["Group"] = field(default_factory=list)
    line: int = 0

    def all(self, kind: str) -> list["Group"]:
        return [g for g in self.groups if g.kind == kind]


def parse(text: str, path: Path | str = "<liberty>") -> Group:
    """The file's top `library` group as nested Groups (comments and line continuations removed)."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    text = text.replace("\\\n", " \n")
    newlines = [m.start() for m in re.finditer("\n", text)]
    tokens = [(m.group(), bisect.bisect(newlines, m.start()) + 1) for m in _TOKEN.finditer(text)]
    pos = 0

    def fail(message: str):
        line = tokens[min(pos, len(tokens) - 1)][1] if tokens else None
        raise LibertyError(path, line, message)

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            fail(f"the file ends where {expected or 'more'} was expected: truncated?")
        word = tokens[pos][0]
        if expected is not None and word != expected:
            fail(f"expected {expected!r}, found {word[:40]!r}")
        pos += 1
        return word

    def peek() -> str:
        if pos >= len(tokens):
            fail("the file ends inside a statement: truncated?")
        return tokens[pos][0]

    def value(word: str) -> str:
        return word[1:-1] if word.startswith('"') else word

    def body(group: Group) -> Group:
        while True:
            if pos >= len(tokens):
                fail(f"group {group.kind} ({', '.join(group.args)}) never closes: expected '}}'")
            if tokens[pos][0] == "}":
                take("}")
                return group
            name, line = take(), tokens[pos - 1][1]
            if peek() == ":":
                take(":")
                words = []
                while peek() not in (";", "}") and tokens[pos][1] == line:
                    words.append(value(take()))
                if peek() == ";":
                    take(";")
                group.attrs[name] = " ".join(words)
            elif peek() == "(":
                take("(")
                args = []
                while peek() != ")":
                    word = take()
                    if word != ",":
                        args.append(value(word))
                take(")")
                if pos < len(tokens) and tokens[pos][0] == "{":
                    take("{")
                    group.groups.append(body(Group(name, args, line=line)))
                else:
                    if pos < len(tokens) and tokens[pos][0] == ";":
                        take(";")
                    group.attrs[name] = args
            else:
                fail(f"expected ':' or '(' after {name[:40]!r}")

    if not tokens:
        raise LibertyError(path, None, "empty file: expected `library (name) { ... }`")
    name = take()
    if name != "library":
        fail(f"expected `library`, found {name[:40]!r}")
    take("(")
    args = []
    while peek() != ")":
        args.append(value(take()))
    take(")")
    take("{")
    return body(Group("library", args, line=1))


@dataclass
class Table:
    """A lookup table over one or two named variables (e.g. total_output_net_capacitance and
    input_net_transition), in SI units; values in SI units too."""

    variables: tuple[str, ...]
    indices: tuple[np.ndarray, ...]
    values: np.ndarray

    def at(self, **point: float) -> float:
        coords = [point[v] for v in self.variables]
        if len(self.variables) == 1:
            return float(_interp1(self.indices[0], self.values, coords[0]))
        rows = np.array([_interp1(self.indices[1], self.values[i], coords[1]) for i in range(len(self.indices[0]))])
        return float(_interp1(self.indices[0], rows, coords[0]))


def _interp1(index: np.ndarray, values: np.ndarray, x: float) -> float:
    """Linear between the two nearest indices, extended linearly beyond the ends."""
    if len(index) == 1:
        return float(values[0])
    k = int(np.clip(np.searchsorted(index, x) - 1, 0, len(index) - 2))
    x0, x1 = index[k], index[k + 1]
    return float(values[k] + (values[k + 1] - values[k]) * (x - x0) / (x1 - x0))


@dataclass
class Arc:
    related: str
    rise: Table | None
    fall: Table | None


@dataclass
class Pin:
    name: str
    direction: str
    rise_cap: float
    fall_cap: float
    function: str | None = None
    clock: bool = False
    transitions: list[Arc] = field(default_factory=list)   # output slew per related input
    power: list[Arc] = field(default_factory=list)         # internal energy per transition

    @property
    def cap(self) -> float:
        return (self.rise_cap + self.fall_cap) / 2


@dataclass
class Cell:
    name: str
    area: float
    leakage: float          # W
    pins: dict[str, Pin]
    sequential: bool


@dataclass
class Library:
    name: str
    voltage: float
    cells: dict[str, Cell]
    source: str

    def cell(self, name: str) -> Cell:
        if name not in self.cells:
            raise InputError(f"cell {name} is not in the library {self.name} ({self.source})")
        return self.cells[name]


_VARIABLE_UNIT = {"total_output_net_capacitance": "cap", "input_net_transition": "time",
                  "input_transition_time": "time", "related_pin_transition": "time",
                  "constrained_pin_transition": "time"}


def _number(path, group: Group, what: str, raw) -> float:
    """One finite number of the library, or a LibertyError naming where and what."""
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise LibertyError(path, group.line, f"{what} {raw!r} is not a number") from None
    if not math.isfinite(number):
        raise LibertyError(path, group.line, f"{what} {raw!r} is not a finite number")
    return number


def _numbers(path, group: Group, what: str, raw) -> list[float]:
    """The numbers of a complex attribute: ("0.1, 0.2", "0.3") -> [0.1, 0.2, 0.3]."""
    if not isinstance(raw, list):
        raise LibertyError(path, group.line, f"{what} must be a list (\"n, n, ...\")")
    return [_number(path, group, what, x) for x in ",".join(raw).split(",") if x.strip()]


def _unit(path, group: Group, name: str, default: str) -> float:
    raw = group.attrs.get(name, default)
    if isinstance(raw, list):   # capacitive_load_unit (1, pf)
        if len(raw) != 2:
            raise LibertyError(path, group.line, f"{name} {raw!r} is not (number, unit)")
        number, unit = _number(path, group, name, raw[0]), raw[1]
    else:
        m = _UNIT.fullmatch(str(raw))
        if not m:
            raise LibertyError(path, group.line, f"{name} {raw!r} is not a number and a unit")
        number, unit = _number(path, group, name, m.group(1) or 1), m.group(2)
    unit = unit.lower()
    # A prefix and one of the base units: s(econd), f(arad), w(att), v(olt), a(mpere).
    if not unit or unit[-1] not in "sfwva" or unit[:-1] not in _SCALE:
        raise LibertyError(path, group.line, f"{name} {raw!r}: unknown unit {unit!r}")
    return number * _SCALE[unit[:-1]]


def load(path: Path | str) -> Library:
    """Reads a Liberty file (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LibertyError(path, None, f"cannot read it: {error.strerror}") from None
    if problem := not_text(data[:64], "Liberty"):
        raise LibertyError(path, None, problem)
    lib = parse(data.decode(errors="replace"), path)
    units = {"time": _unit(path, lib, "time_unit", "1ns"), "cap": _unit(path, lib, "capacitive_load_unit", "1pf"),
             "leakage": _unit(path, lib, "leakage_power_unit", "1nW")}
    voltage = _number(path, lib, "nom_voltage", lib.attrs.get("nom_voltage") or 0)
    if voltage <= 0:
        raise LibertyError(path, lib.line, "no nom_voltage: the switching energy 1/2 C V^2 needs the supply voltage")
    # Internal power tables hold energy in capacitance x voltage^2 units (pF x V^2 = pJ).
    units["energy"] = units["cap"] * _unit(path, lib, "voltage_unit", "1V") ** 2
    templates = {g.args[0]: g for g in lib.groups if g.kind in ("lu_table_template", "power_lut_template") and g.args}

    def table(g: Group | None, scale: float) -> Table | None:
        if g is None:
            return None
        template = templates.get(g.args[0]) if g.args else None
        names = [template.attrs.get(f"variable_{k}") for k in (1, 2)] if template is not None else []
        names = [n for n in names if n]
        indices = []
        for k, var in enumerate(names, 1):
            raw = g.attrs.get(f"index_{k}") or (template.attrs.get(f"index_{k}") if template is not None else None)
            if not raw or var not in _VARIABLE_UNIT:
                raise LibertyError(path, g.line, f"table {g.kind} has no index_{k} or an unknown variable {var!r}")
            index = np.array(_numbers(path, g, f"index_{k}", raw))
            if not (np.diff(index) > 0).all():
                raise LibertyError(path, g.line, f"table {g.kind}: index_{k} must increase")
            indices.append(index * units[_VARIABLE_UNIT[var]])
        values = g.attrs.get("values", [])
        if not isinstance(values, list):
            raise LibertyError(path, g.line, f"table {g.kind}: values must be a list (\"n, n, ...\", ...)")
        rows = [_numbers(path, g, "values", [row]) for row in values]
        shape = tuple(len(i) for i in indices)
        size = sum(len(row) for row in rows)
        if size != math.prod(shape) or not names or (len(shape) == 2 and {len(row) for row in rows} != {shape[1]}):
            raise LibertyError(path, g.line, f"table {g.kind} has values in rows of {[len(row) for row in rows]} "
                                             f"for indices of sizes {shape}")
        return Table(tuple(names), tuple(indices), np.array([x for row in rows for x in row]).reshape(shape) * scale)

    def first(g: Group, kind: str) -> Group | None:
        found = g.all(kind)
        return found[0] if found else None

    def number(g: Group, name: str, default: float = 0.0) -> float:
        return _number(path, g, f"{g.kind} {name}", g.attrs.get(name, default) or default)

    def named(g: Group) -> str:
        if not g.args:
            raise LibertyError(path, g.line, f"a {g.kind} group without a name")
        return g.args[0]

    cells = {}
    for c in lib.all("cell"):
        pins = {}
        for p in c.all("pin"):
            cap = number(p, "capacitance")
            pin = Pin(named(p), str(p.attrs.get("direction", "")),
                      number(p, "rise_capacitance", cap) * units["cap"],
                      number(p, "fall_capacitance", cap) * units["cap"],
                      p.attrs.get("function"), str(p.attrs.get("clock", "false")) == "true")
            for t in p.all("timing"):
                pin.transitions.append(Arc(str(t.attrs.get("related_pin", "")),
                                           table(first(t, "rise_transition"), units["time"]),
                                           table(first(t, "fall_transition"), units["time"])))
            for w in p.all("internal_power"):
                pin.power.append(Arc(str(w.attrs.get("related_pin", "")),
                                     table(first(w, "rise_power"), units["energy"]),
                                     table(first(w, "fall_power"), units["energy"])))
            pins[pin.name] = pin
        cells[named(c)] = Cell(named(c), number(c, "area"), number(c, "cell_leakage_power") * units["leakage"], pins,
                               bool(c.all("ff") or c.all("latch")))
    if not cells:
        raise LibertyError(path, lib.line, "no cells")
    return Library(lib.args[0] if lib.args else path.stem, voltage, cells, str(path))
