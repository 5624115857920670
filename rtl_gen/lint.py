"""Checks that generated Verilog parses in Icarus Verilog and lints clean (no errors) in Verilator."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rtl_gen.tools import iverilog, run_tool, verilator_env


def check_icarus(verilog: str | Path, top: str) -> None:
    verilog = Path(verilog)
    with tempfile.TemporaryDirectory() as tmp:
        run_tool("Icarus Verilog (parse)", [iverilog(), "-g2012", "-s", top, "-o", f"{tmp}/parse.vvp", str(verilog)],
                 log=verilog.parent / "lint_icarus.log")


def check_verilator(verilog: str | Path, top: str) -> int:
    """Runs ``verilator --lint-only -Wall``; errors fail, warnings are counted and returned."""
    verilog = Path(verilog)
    exe, env = verilator_env()
    done = run_tool("verilator --lint-only", [exe, "--lint-only", "-Wall", "-Wno-fatal", "--top-module", top,
                                              str(verilog)], log=verilog.parent / "lint_verilator.log", env=env,
                    failed=lambda d: d.returncode != 0 or "%Error" in d.stderr)
    return sum(1 for line in done.stderr.splitlines() if line.startswith("%Warning"))
