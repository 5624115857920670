"""The generated design as a VCD shows it: which variables belong to which module instance and class.

`hpu gen` writes the manifest (instances, MAC lanes, ports) and nets.json (each net's class, its
owned bits, each register's enable). This module finds the HPU's scope in a dump and ties every
instance, net and enable to the dump's identifier codes, so that activity and energy are read by
the design's own names and never guessed from a single run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpu.errors import InputError
from power.vcd import Header, Var, VcdError, read_header
from rtl_gen.manifest import load_manifest, load_nets

_NOT_HARDWARE = {"function", "task", "begin", "fork"}
ROWS_PORT = "rows"


@dataclass
class Unit:
    """One module instance: its VCD scope and, per net class, the dump bits it owns."""

    path: str
    scope: tuple[str, ...]
    bits: dict[str, np.ndarray]
    registers: list[tuple[int, tuple[int, int] | None | bool]]
    # (width, capacity in bits, how its accesses are counted): an enable key (cycles it is high),
    # None (every cycle), False (never), or ("address", code): each change of an asynchronous read
    # port's address is one read.
    memory_ports: list[tuple[int, int, object]] = field(default_factory=list)


@dataclass
class Design:
    vcd: Path
    manifest: dict
    header: Header
    top_scope: tuple[str, ...]
    units: list[Unit]
    clock: int
    clock_name: str
    phase: int | None
    enables: list[tuple[int, int]]
    unit_ptr: np.ndarray
    unit_idx: np.ndarray
    missing_nets: int
    rows_code: int | None = None  # the HPU's `rows` status (rows delivered), read for its last value

    def index(self, path: str) -> int:
        return [u.path for u in self.units].index(path)

    @property
    def lanes(self) -> list[str]:
        return self.manifest["mac_lanes"]

    def subtree(self, path: str) -> list[int]:
        return [i for i, u in enumerate(self.units) if u.path == path or u.path.startswith(path + ".")]


def find_top(header: Header, manifest: dict, vcd: Path) -> tuple[str, ...]:
    top = manifest["top"]
    children = sorted({p.split(".")[1] for p in manifest["instances"] if p.count(".") == 1})
    found = [s for s in header.scopes if all(s + (c,) in header.scopes for c in children)]
    if len(found) != 1:
        raise VcdError(vcd, None, f"expected one scope holding the {top} instances {children}, found "
                                  f"{['.'.join(s) for s in found] or 'none'}: pass --top-scope")
    return found[0]


def reach_index(reach: dict[int, set[int]], codes: int) -> tuple[np.ndarray, np.ndarray]:
    """{code: instances it makes active} as compressed rows: instances of code c are idx[ptr[c]:ptr[c+1]]."""
    ptr = np.zeros(codes + 1, np.int64)
    for code, targets in reach.items():
        ptr[code + 1] = len(targets)
    ptr = np.cumsum(ptr)
    idx = np.zeros(int(ptr[-1]), np.int64)
    for code, targets in reach.items():
        idx[ptr[code]:ptr[code + 1]] = sorted(targets)
    return ptr, idx


def _check_same_design(vcd: Path, header: Header, top: tuple[str, ...], manifest: dict, manifest_path) -> None:
    """A dump of another configuration shares most instance names with the manifest (lanes 0-1 of
    a 2-lane manifest exist in a 4-lane dump): every module instance the dump holds must be known."""
    known = {top + tuple(p.split(".")[1:]) for p in manifest["instances"]}
    extra = sorted(".".join((manifest["top"],) + s[len(top):]) for s, kind in header.scopes.items()
                   if len(s) > len(top) and s[:len(top)] == top and kind == "module" and s not in known)
    if extra:
        raise InputError(f"{vcd} holds instances that manifest {manifest_path} does not know "
                         f"({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}): the dump is of another "
                         "design or configuration; pass the manifest of the Verilog that was simulated")


def load(vcd: Path | str, manifest_path: Path | str, top_scope: str | None = None,
         clock: str = "clk", phase: str | None = "busy") -> Design:
    vcd = Path(vcd)
    manifest = load_manifest(manifest_path)
    modules = load_nets(manifest_path, manifest)
    header = read_header(vcd)
    top = tuple(top_scope.split(".")) if top_scope else find_top(header, manifest, vcd)
    if top not in header.scopes:
        raise VcdError(vcd, None, f"scope {'.'.join(top)} is not in the dump")
    _check_same_design(vcd, header, top, manifest, manifest_path)
    offsets = header.bit_offsets
    # Yosys names internal nets with escaped identifiers (`\$1`): Icarus's dumps keep the escaping
    # backslash, Verilator's write the identifier itself; both name the same net.
    by_scope: dict[tuple[str, ...], dict[str, Var]] = {}
    for var in header.vars:
        by_scope.setdefault(var.scope, {})[var.name.removeprefix("\\")] = var

    def var_of(scope: tuple[str, ...], name: str) -> Var | None:
        return by_scope.get(scope, {}).get(name.removeprefix("\\"))

    def code_of(scope: tuple[str, ...], name: str) -> int | None:
        var = var_of(scope, name)
        return var.code if var else None

    units, enables, missing = [], [], 0
    for path in sorted(manifest["instances"], key=lambda p: (p.count("."), p)):
        scope = top + tuple(path.split(".")[1:])
        if scope not in header.scopes:
            raise VcdError(vcd, None, f"instance {path} (scope {'.'.join(scope)}) is not in the dump: "
                                      "was it written from this design's Verilog?")
        module = modules[path]
        bits: dict[str, list[int]] = {}
        for name, net in module["nets"].items():
            if not net["owned"] or net["class"] == "clock":
                continue
            code = code_of(scope, name)
            if code is None:
                missing += 1
                continue
            if var_of(scope, name).width != net["width"]:
                raise InputError(f"{vcd}: {path}.{name} is {var_of(scope, name).width} bits wide in the dump but "
                                 f"{net['width']} in the manifest's design: the dump is of another configuration; "
                                 "pass the manifest of the Verilog that was simulated")
            bits.setdefault(net["class"], []).extend(int(offsets[code]) + b for b in net["owned"])
        def follow(enable, what: str):
            """An enable as the activity tracker follows it: a watched (code, bit), None (always), False."""
            nonlocal missing
            if enable is None:
                return None
            if enable.get("never"):
                return False
            code = code_of(scope, enable["net"])
            if code is None:
                missing += 1
                return None
            if enable["polarity"] == 0:
                raise InputError(f"{path}: {what} has an active-low enable; not modelled yet")
            key = (code, enable["bit"])
            if key not in enables:
                enables.append(key)
            return key

        registers = [(reg["width"], follow(reg["enable"], f"register {reg['cell']}")) for reg in module["registers"]]
        memory_ports = []
        for memory in module.get("memories", []):
            for port in memory["ports"]:
                if port.get("address") is not None:
                    code = code_of(scope, port["address"])
                    how = ("address", code) if code is not None else None
                    missing += code is None
                else:
                    how = follow(port["enable"], f"memory {memory['name']}")
                memory_ports.append((memory["width"], memory["width"] * memory["depth"], how))
        units.append(Unit(path, scope, {k: np.asarray(v, np.int64) for k, v in bits.items()}, registers,
                          memory_ports))

    clock_code = code_of(top, clock)
    if clock_code is None:
        raise VcdError(vcd, None, f"no clock {clock!r} in scope {'.'.join(top)}: name it with --clock")
    phase_code = code_of(top, phase) if phase else None
    if phase and phase_code is None:
        raise VcdError(vcd, None, f"no {phase!r} signal in scope {'.'.join(top)} to mark the compute phase")

    rows_code = code_of(top, ROWS_PORT)

    # Which instances each code makes active: the instance whose scope declares it and every
    # instance above it. Clock variables and simulator-local scopes (functions, tasks) are left out.
    clock_names = {clock}
    reach: dict[int, set[int]] = {}
    unit_of_scope = {u.scope: i for i, u in enumerate(units)}
    for var in header.vars:
        if var.code == clock_code or var.name in clock_names:
            continue
        scope = var.scope
        if any(header.scopes.get(scope[:k]) in _NOT_HARDWARE for k in range(len(top) + 1, len(scope) + 1)):
            continue
        while len(scope) >= len(top):
            if scope in unit_of_scope:
                reach.setdefault(var.code, set()).add(unit_of_scope[scope])
            scope = scope[:-1]
    ptr, idx = reach_index(reach, len(header.codes))
    return Design(vcd, manifest, header, top, units, clock_code, clock, phase_code, enables, ptr, idx, missing,
                  rows_code)
