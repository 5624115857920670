"""Builds the generated Verilog with the harness and runs the cocotb testbench, under Icarus or Verilator."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from golden_model.stimulus import Row, expected, expected_routed, validate_blocks, validate_rows
from hpu.config import HPUConfig
from hpu.errors import HPUError, InputError
from hpu.files import shared_lock, staged
from rtl_gen.generate import Generated, generate
from rtl_gen.manifest import MANIFEST, config_difference, load_manifest, manifest_config
from rtl_gen.tools import SIMULATORS, iverilog, verilator_env
from sim import native
from sim.job import Job, Options, Outcome
from sim.packing import harness_parameters

HARNESS = Path(__file__).parent / "hdl" / "hpu_harness.v"


class SimulationError(HPUError):
    """The simulation could not run, stalled, or disagreed with the golden model."""


def _runner(sim: str, dump: Path | None):
    from cocotb_tools.runner import Icarus, get_runner

    if sim != "icarus" or dump is None:
        return get_runner(sim)
    # The dump's suffix names its format: vvp writes the harness's $dumpfile as VCD (-vcd) or FST (-fst).
    form = f"-{dump.suffix.lstrip('.')}"

    class IcarusDump(Icarus):
        """cocotb's Icarus runner passes vvp -none (no dump) unless it writes FST itself; the harness's
        $dumpfile holds only the HPU while rows are in flight, so ask vvp for that dump instead."""

        def _test_command(self):
            return [[arg for arg in cmd if arg != "-none"] + [form] for cmd in super()._test_command()]

    return IcarusDump()


def _check_simulator(sim: str) -> dict:
    """Environment for the simulator, or one clear message naming what to install."""
    if sim not in SIMULATORS:
        raise SimulationError(f"unknown simulator {sim!r}: choose one of {', '.join(SIMULATORS)}")
    if sim == "icarus":
        iverilog()
        return {}
    exe, env = verilator_env()
    if sim == "verilator-native":
        native.check_headers()
        return {}
    # The harness's clock is a timed `always #5`: Verilator's --timing needs C++20 coroutines,
    # which the PyPI package's own wrapper also asks for this way.
    return {"VERILATOR_ROOT": env["VERILATOR_ROOT"], "PATH": f"{Path(exe).parent}{os.pathsep}{os.environ['PATH']}",
            "CXXFLAGS": os.environ.get("CXXFLAGS", "--std=c++20"),
            # The PyPI build's verilated.mk leaves the precompiled-header include flag empty.
            "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include"}


def build(cfg: HPUConfig, sim: str = "icarus", build_root: str | Path = "build/sim",
          verilog_dir: str | Path | None = None, waves: str | None = None) -> Path:
    """Generate (or reuse) the Verilog for cfg and build it with the harness; returns the build folder.

    A ``verilog_dir`` from an earlier ``hpu gen`` is used as it is, after checking
    that its manifest was made for this very configuration. ``waves`` ("vcd" or "fst") asks Verilator
    for a build that can trace the harness's dump in that format (Icarus needs no build of its own).
    """
    env = _check_simulator(sim)
    build_root = Path(build_root)
    # Runs sharing a build folder share its cached Verilog and simulator builds: one builds, the
    # others wait and reuse it.
    with shared_lock(build_root):
        verilog = _verilog(cfg, build_root, verilog_dir)
        if sim == "verilator-native":
            return native.build(cfg, verilog, build_root, waves).parent
        return _build(verilog, cfg, sim, build_root, env, waves if sim == "verilator" else None)


def _verilog(cfg: HPUConfig, build_root: Path, verilog_dir: str | Path | None) -> Path:
    if verilog_dir is not None:
        manifest = load_manifest(Path(verilog_dir) / MANIFEST)
        if manifest_config(manifest) != cfg:
            raise SimulationError(f"the Verilog in {verilog_dir} was generated for another configuration "
                                  f"(generated/asked: {config_difference(manifest_config(manifest), cfg)}); "
                                  "run `hpu gen` for this one")
        verilog = Path(verilog_dir) / manifest["verilog"]
    else:
        verilog = generated_rtl(cfg, build_root).verilog
    return verilog


def generated_rtl(cfg: HPUConfig, build_root: Path) -> Generated:
    """`hpu gen`'s output for `cfg` in a folder of `build_root` named by the configuration. Always
    regenerated: a configuration's Verilog changes whenever the design does (simulator builds are
    cached by the Verilog's own hash)."""
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return generate(cfg, build_root / f"rtl-{key}")


def _build(verilog: Path, cfg: HPUConfig, sim: str, build_root: Path, env: dict, waves: str | None) -> Path:
    from cocotb_tools.runner import get_runner

    build_dir = None
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        runner = get_runner(sim)
        if sim == "verilator":
            build_args = ["--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--no-public-flat-rw"]
            # cocotb's waves build adds --trace (VCD) and turns tracing on (Verilated::traceEverOn), which
            # the harness's $dumpfile needs; --trace-fst after it makes the dump FST.
            build_args += ["--trace-fst"] if waves == "fst" else []
        else:
            # Yosys's Verilog starts each combinational block through a `reg ... = 0` initializer,
            # which triggers the block at time 0 only under Verilog-2005 semantics (under
            # SystemVerilog's, initializers run before any process and the blocks stay at x).
            build_args = ["-g2005"]
        digest = hashlib.sha256(verilog.read_bytes() + HARNESS.read_bytes()
                                + repr((build_args, waves)).encode()).hexdigest()
        build_dir = build_root / f"{sim}-{digest[:16]}"
        runner.build(sources=[verilog.resolve(), HARNESS], hdl_toplevel="hpu_harness", build_dir=build_dir,
                     parameters=harness_parameters(cfg),
                     build_args=build_args, timescale=("1ns", "1ps"), log_file=build_dir / "build.log",
                     waves=waves is not None)
    except Exception as exc:  # the runner raises plain exceptions; name the log
        raise SimulationError(f"building the HPU for {sim} failed: {exc} (see {build_dir / 'build.log'})") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return build_dir


def run(job: Job, sim: str = "icarus", build_root: str | Path = "build/sim", work_dir: str | Path | None = None,
        verilog_dir: str | Path | None = None, progress: bool = False, check: bool = True) -> Outcome:
    """Run one job; raises SimulationError on a stall, and (with `check`) on any row that differs from
    the golden model. Without `check` the outcome comes back with the observed rows for the caller to judge.

    Without a `work_dir` the run gets a fresh folder of its own under `build_root`, so runs at once
    never read each other's job and outcome files. The VCD (``job.options.vcd``) is written under a
    temporary name and appears under its own only when the whole run succeeded."""
    dump = Path(job.options.vcd) if job.options.vcd else None
    build_dir = build(job.cfg, sim, build_root, verilog_dir=verilog_dir,
                      waves=dump.suffix.lstrip(".") if dump else None)
    own = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="run-", dir=build_root) if own else work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if job.options.vcd:
        Path(job.options.vcd).parent.mkdir(parents=True, exist_ok=True)
    with staged(job.options.vcd) if job.options.vcd else contextlib.nullcontext() as vcd:
        outcome = _run(job, sim, build_dir, work_dir, vcd, progress, check)
    if own and not outcome.mismatches:
        # A clean run's job and logs are not worth keeping; a failing one's are (its replay lives there).
        shutil.rmtree(work_dir, ignore_errors=True)
    return outcome


def _run(job: Job, sim: str, build_dir: Path, work_dir: Path, vcd: Path | None, progress: bool,
         check: bool) -> Outcome:
    if sim == "verilator-native":
        outcome_path = native.run(job, build_dir / native.PROGRAM, work_dir, vcd, progress)
    else:
        outcome_path = _run_cocotb(job, sim, build_dir, work_dir, vcd, progress)
    outcome = Outcome.load(outcome_path)
    if outcome.stalled:
        raise SimulationError(f"HPU stalled under {sim}: {outcome.stalled}")
    if outcome.routing_mismatches and check:
        first = next(i for i, (got, want) in enumerate(zip(outcome.routed + [None] * len(job.routed), job.routed))
                     if got != want)
        raise SimulationError(
            f"{outcome.routing_mismatches} of {len(job.blocks)} blocks routed unlike the golden model under {sim}; "
            f"first: block {first} ({len(job.blocks[first])} tokens) expected {job.routed[first]}, "
            f"observed {outcome.routed[first] if first < len(outcome.routed) else 'nothing'}")
    if outcome.mismatches and check:
        replay = write_replay(job, outcome, work_dir)
        first = outcome.first_mismatch
        raise SimulationError(
            f"{outcome.mismatches} of {outcome.rows_checked} rows differ from the golden model under {sim}; "
            f"first: row {first['row']} (n = {first['n']}) differs in {', '.join(first['fields'])}\n"
            f"  expected {first['expected']}\n  observed {first['observed']}\n"
            f"  replay just that row: hpu sim --replay {replay}")
    return outcome


def _run_cocotb(job: Job, sim: str, build_dir: Path, work_dir: Path, vcd: Path | None, progress: bool) -> Path:
    job_path, outcome_path = (work_dir / "job.json").resolve(), (work_dir / "outcome.json").resolve()
    outcome_path.unlink(missing_ok=True)
    job.save(job_path)
    plusargs = [f"+vcd={vcd.resolve()}"] if vcd else []
    env = _check_simulator(sim)
    repo_root = str(Path(__file__).resolve().parent.parent)
    extra_env = {**env, "HPU_SIM_JOB": str(job_path), "HPU_SIM_OUTCOME": str(outcome_path),
                 "HPU_SIM_PROGRESS": "1" if progress else "0",
                 "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    runner = _runner(sim, Path(job.options.vcd) if job.options.vcd else None)
    # cocotb's runner exits on a failed test (under pytest, or with a non-zero simulator status);
    # the outcome file the testbench wrote says what failed, and is read below.
    with contextlib.suppress(SystemExit):
        runner.test(test_module="sim.hpu_tb", hdl_toplevel="hpu_harness", hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=work_dir, extra_env=extra_env, plusargs=plusargs,
                    results_xml=str((work_dir / "results.xml").resolve()), log_file=work_dir / "sim.log")
    if not outcome_path.exists():
        raise SimulationError(f"the {sim} simulation ended without an outcome; see {work_dir / 'sim.log'}")
    return outcome_path


def write_replay(job: Job, outcome: Outcome, work_dir: Path) -> Path:
    index = outcome.first_mismatch["row"]
    replay = Job(cfg=job.cfg, rows=[job.rows[index]], expected=[job.expected[index]],
                 options=Options(seed=job.options.seed), source=f"replay of {job.source} row {index}")
    path = work_dir / "replay_row.json"
    replay.save(path)
    return path


def make_routed_job(cfg: HPUConfig, tokens: list[Row], source: str, options: Options, blocks: list[list[int]],
                    windows: list[Row] | None = None) -> Job:
    """A job for token routing: the blocks of router logits, then the rows the host sends once the golden
    model has routed them, block by block: the routed tokens' rows, then, given `windows` (each token's
    window row: its last ``options.route_window`` keys, `golden_model.sources.routed_tokens`), the
    unrouted tokens' windows. Without windows the host sends rows for routed queries only. ``tokens``
    holds every token's row, block after block, and ``windows`` likewise."""
    if sum(map(len, blocks)) != len(tokens):
        raise InputError(f"{len(tokens)} token rows for blocks of {sum(map(len, blocks))} tokens: one row per token")
    if (windows is not None) != bool(options.route_window) or windows is not None and len(windows) != len(tokens):
        raise InputError(f"route_window {options.route_window} with {'no' if windows is None else len(windows)} "
                         f"window rows for {len(tokens)} tokens: one window row per token, and only with a window")
    validate_blocks(cfg, blocks)
    routed = expected_routed(cfg, blocks)
    starts = itertools.accumulate((len(b) for b in blocks[:-1]), initial=0)
    rows = []
    for start, block, positions in zip(starts, blocks, routed):
        rows += [tokens[start + t] for t in positions]
        if windows is not None:
            rows += [windows[start + t] for t in sorted(set(range(len(block))) - set(positions))]
    return _job(cfg, rows, source, options, blocks, routed, token_keys=sum(row.n for row in tokens))


def make_job(cfg: HPUConfig, rows: list[Row], source: str, options: Options | None = None,
             blocks: list[list[int]] = ()) -> Job:
    """A job whose expected results come from the golden model (with the gate held open if asked),
    and, with blocks of router logits, whose expected routed positions do too."""
    blocks = [list(b) for b in blocks]
    if blocks:
        validate_blocks(cfg, blocks)
    return _job(cfg, rows, source, options or Options(), blocks, expected_routed(cfg, blocks))


def _job(cfg: HPUConfig, rows: list[Row], source: str, options: Options, blocks: list[list[int]],
         routed: list[list[int]], token_keys: int | None = None) -> Job:
    validate_rows(cfg, rows)
    reference = cfg.replace(mode="dense") if options.gate_open else cfg
    return Job(cfg=cfg, rows=rows, expected=expected(reference, rows), options=options, source=source,
               blocks=blocks, routed=routed, token_keys=token_keys)
