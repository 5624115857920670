"""Checks that generated Verilog parses in Icarus Verilog and lints clean (no errors) in Verilator."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from hpu.errors import HPUError
from rtl_gen.tools import iverilog, verilator_env


class LintError(HPUError):
    """A tool rejected the generated Verilog."""


def check_icarus(verilog: str | Path, top: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([iverilog(), "-g2012", "-s", top, "-o", f"{tmp}/parse.vvp", str(verilog)],
                              capture_output=True, text=True)
    if done.returncode:
        raise LintError(f"Icarus Verilog rejected {verilog}:\n{done.stderr[-4000:]}")


def check_verilator(verilog: str | Path, top: str) -> int:
    """Runs ``verilator --lint-only -Wall``; errors fail, warnings are counted and returned."""
    exe, env = verilator_env()
    done = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-fatal", "--top-module", top, str(verilog)],
                          capture_output=True, text=True, env=env)
    errors = [line for line in done.stderr.splitlines() if line.startswith("%Error")]
    if done.returncode or errors:
        raise LintError(f"Verilator lint failed on {verilog}:\n" + "\n".join(errors or [done.stderr[-4000:]]))
    return sum(1 for line in done.stderr.splitlines() if line.startswith("%Warning"))
