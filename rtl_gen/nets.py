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


def describe(netlist: dict) -> dict:
    """{module: {"nets": {name: {"class", "width", "owned"}}, "registers": [...]}} for every module."""
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
                en = cell["connections"]["EN"][0]
                polarity = int(str(cell["parameters"].get("EN_POLARITY", "1")), 2)
                if isinstance(en, int):
                    names = [n for n in sorted(nets, key=lambda n: (len(nets[n]["bits"]), n)) if en in nets[n]["bits"]]
                    if names:
                        enable = {"net": names[0], "bit": nets[names[0]]["bits"].index(en), "polarity": polarity}
                elif en != str(polarity):
                    enable = {"never": True}
            q_owner = owner.get(q[0]) if isinstance(q[0], int) else None
            registers.append({"cell": cell_name, "q": q_owner[0] if q_owner else None, "width": len(q), "enable": enable})
        described[module_name] = {"nets": out_nets, "registers": registers}
    return described


def write_nets(netlist_path: Path, out_path: Path) -> None:
    netlist = json.loads(Path(netlist_path).read_text())
    out_path.write_text(json.dumps({"classes": list(CLASSES), "modules": describe(netlist)}, indent=1))
