"""Net classes of the generated design, read from the Yosys netlist the Verilog was written from.

The power model charges each toggle by what the net is: a register output, a memory port, a 1-bit
control net or a datapath net; clock nets are charged per enabled register bit instead. Every
physical bit is owned by exactly one (module, net, bit) so no toggle is charged twice: a module's
input ports belong to whoever drives them, nets driven by a submodule's outputs belong to the
submodule, and of several names for one bit the most readable owns it (a register's name first).
"""

from __future__ import annotations

import json
from pathlib import Path

CLASSES = ("register", "memory", "control", "datapath", "clock")
_MEMORY_CELLS = ("$memrd", "$memwr", "$mem_v2", "$mem")
_MEMORY_PORTS = ("ADDR", "DATA", "EN", "RD_ADDR", "RD_DATA", "RD_EN", "WR_ADDR", "WR_DATA", "WR_EN")


def _is_ff(cell: dict) -> bool:
    return cell["type"].startswith("$") and "dff" in cell["type"]


def _readability(name: str, registers: set[str]) -> tuple:
    return (name not in registers, name.startswith(("_", "\\$", "$")), len(name), name)


def _bit_ref(bit, nets: dict, polarity: int = 1):
    """A control bit as the power model follows it: {net, bit, polarity}, None (always on) or
    {"never": True} (tied off)."""
    if isinstance(bit, int):
        names = [n for n in sorted(nets, key=lambda n: (len(nets[n]["bits"]), n)) if bit in nets[n]["bits"]]
        return {"net": names[0], "bit": nets[names[0]]["bits"].index(bit), "polarity": polarity} if names else None
    return None if bit == str(polarity) else {"never": True}


def _net_of(bits: list, nets: dict) -> str | None:
    """The narrowest named net holding all of `bits` (a read port's address), if any."""
    wanted = [b for b in bits if isinstance(b, int)]
    names = [n for n in sorted(nets, key=lambda n: (len(nets[n]["bits"]), n)) if wanted and set(wanted) <= set(nets[n]["bits"])]
    return names[0] if names else None


def _memories(module: dict, nets: dict) -> list[dict]:
    """Each memory with its capacity and ports: a port is accessed in the cycles its enable is high
    (an asynchronous read port whenever its address changes)."""
    found = {}
    for name, memory in module.get("memories", {}).items():
        found[name.lstrip("\\")] = {"name": name.lstrip("\\"), "width": int(memory["width"]),
                                     "depth": int(memory["size"]), "ports": []}
    for cell in module.get("cells", {}).values():
        kind = {"$memrd_v2": "read", "$memrd": "read", "$memwr_v2": "write", "$memwr": "write"}.get(cell["type"])
        memid = str(cell["parameters"].get("MEMID", "")).lstrip("\\")
        if kind is None or memid not in found:
            continue
        connections = cell["connections"]
        synchronous = int(str(cell["parameters"].get("CLK_ENABLE", "1")), 2) & 1
        port = {"kind": kind, "enable": _bit_ref(connections.get("EN", ["1"])[0], nets)}
        if kind == "read" and not synchronous:
            port = {"kind": kind, "enable": None, "address": _net_of(connections.get("ADDR", []), nets)}
        found[memid]["ports"].append(port)
    return list(found.values())


def describe(netlist: dict) -> dict:
    """{module: {"nets": {name: {"class", "width", "owned"}}, "registers": [...], "memories": [...]}}
    for every module."""
    modules = netlist["modules"]
    described = {}
    for module_name, module in modules.items():
        cells = module.get("cells", {})
        inputs = {b for port in module.get("ports", {}).values() if port["direction"] == "input" for b in port["bits"]}
        from_children, clock, memory, q_bits = set(), set(), set(), set()
        for cell in cells.values():
            if cell["type"] in modules:
                child_ports = modules[cell["type"]].get("ports", {})
                for port, bits in cell["connections"].items():
                    if child_ports.get(port, {}).get("direction") == "output":
                        from_children.update(bits)
            elif _is_ff(cell):
                clock.update(cell["connections"].get("CLK", []))
                q_bits.update(cell["connections"]["Q"])
            elif cell["type"].startswith(_MEMORY_CELLS) and cell["type"] != "$meminit":
                for port in _MEMORY_PORTS:
                    memory.update(cell["connections"].get(port, []))
        nets = {name: net for name, net in module.get("netnames", {}).items() if not net.get("hide_name")}
        register_names = {name for name, net in nets.items() if net["bits"] and all(b in q_bits for b in net["bits"])}
        owner: dict[int, tuple[str, int]] = {}
        for name in sorted(nets, key=lambda n: _readability(n, register_names)):
            for offset, b in enumerate(nets[name]["bits"]):
                if isinstance(b, int) and b not in inputs and b not in from_children and b not in owner:
                    owner[b] = (name, offset)
        out_nets = {}
        for name, net in nets.items():
            bits = net["bits"]
            if any(b in clock for b in bits):
                kind = "clock"
            elif any(b in memory for b in bits):
                kind = "memory"
            elif name in register_names:
                kind = "register"
            elif len(bits) == 1:
                kind = "control"
            else:
                kind = "datapath"
            owned = [i for i, b in enumerate(bits) if owner.get(b) == (name, i)]
            out_nets[name] = {"class": kind, "width": len(bits), "owned": owned}
        registers = []
        for cell_name, cell in sorted(cells.items()):
            if not _is_ff(cell):
                continue
            q = cell["connections"]["Q"]
            enable = None
            if "EN" in cell["connections"]:
                polarity = int(str(cell["parameters"].get("EN_POLARITY", "1")), 2)
                enable = _bit_ref(cell["connections"]["EN"][0], nets, polarity)
            q_owner = owner.get(q[0]) if isinstance(q[0], int) else None
            registers.append({"cell": cell_name, "q": q_owner[0] if q_owner else None, "width": len(q), "enable": enable})
        described[module_name] = {"nets": out_nets, "registers": registers, "memories": _memories(module, nets)}
    return described


def write_nets(netlist_path: Path, out_path: Path) -> None:
    netlist = json.loads(Path(netlist_path).read_text())
    out_path.write_text(json.dumps({"classes": list(CLASSES), "modules": describe(netlist)}, indent=1))
