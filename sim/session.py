"""`hpu sim` as a library call: rows from a source, simulated gated (and dense), a summary written.

Outputs are claimed for the run (a second run naming the same folder is refused), the previous
run's summary and dumps are removed before anything starts (so an interrupted run cannot leave an old
summary beside new dumps), each dump appears only when its run is whole, and the summary last.
"""

from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from golden_model.quantize import clipping_note
from golden_model.sources import routed_tokens, rows_from
from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import claim, output_file
from sim import summary as sim_summary
from sim.job import Job, Options
from sim.runner import make_job, make_routed_job, run


@dataclass(frozen=True)
class Outputs:
    summary: Path | None = None
    vcd: Path | None = None   # the gated run's dump; the dense run's is `dense_vcd`
    waves: str = "vcd"        # the dump's format, which its suffix names: vcd or fst

    @property
    def dense_vcd(self) -> Path | None:
        return self.vcd.with_name(f"{self.vcd.stem}_dense{self.vcd.suffix}") if self.vcd else None

    def check(self) -> "Outputs":
        if self.summary:
            output_file(self.summary, "summary")
        if self.vcd:
            output_file(self.vcd, f"{self.waves.upper()} (--vcd with --waves {self.waves})", suffix=f".{self.waves}")
        return self

    def files(self, dense: bool) -> list[Path]:
        return [p for p in (self.summary, self.vcd, self.dense_vcd if dense else None) if p]


def simulate(cfg: HPUConfig, source: str, rows: int, options: Options, outputs: Outputs,
             dense_baseline: bool, sim: str, build: Path, progress: bool = True, log=print,
             verilog_dir: Path | None = None, note: Callable[[str], None] | None = None) -> dict:
    """Simulate `rows` rows of `source` (drawn with options.seed) gated (and dense); returns the
    summary, written if asked.

    With a router (route_block > 0) the rows are tokens' rows, in blocks of route_block tokens with
    their router logits (a routed model's own from an attention file that holds them, else random;
    `golden_model.sources.routed_tokens`): the gated run routes each block and sends the routed tokens' rows
    (and with options.route_window W each unrouted token's last W keys as a row of its own); the
    dense baseline sends every token's row with the gate held open (dense queries and dense keys).

    `note`, if given, is called with one line for the user when the score format clips rows of an
    attention file (`golden_model.quantize.clipping_note`), or a routed model's rows run past max_keys."""
    outputs.check()

    def clipped(share: float, peak: float) -> None:
        if share:
            note(clipping_note(source, share, peak, cfg))

    def cut(longest: int) -> None:
        note(f"{source}: its rows run to {longest} keys, past max_keys ({cfg.max_keys}), and each is cut to its "
             f"first {cfg.max_keys} keys (a later token loses its own and its nearest keys); --set max_keys={longest} "
             "runs them whole")

    report = clipped if note else None
    if options.route_window and not cfg.route_block:
        raise InputError(f"--route-window {options.route_window} gives unrouted tokens a window row: it needs a "
                         "router (set route_block above 0)")
    chosen, blocks, windows = routed_tokens(source, cfg, rows, options.seed, report, options.route_window,
                                             cut if note else None) \
        if cfg.route_block else (rows_from(source, cfg, rows, options.seed, report), [], None)
    files = outputs.files(dense_baseline)
    with contextlib.ExitStack() as stack:
        for folder in sorted({p.parent.resolve() for p in files}):
            # The user names these files: their names are matched literally, never as patterns.
            stack.enter_context(claim(folder, outputs=[glob.escape(p.name) for p in files
                                                       if p.parent.resolve() == folder]))
        gated = replace(options, vcd=_str(outputs.vcd))
        runs = [("gated", make_routed_job(cfg, chosen, source, gated, blocks, windows) if blocks
                 else make_job(cfg, chosen, source, gated))]
        if dense_baseline:
            runs.append(("dense", make_job(cfg, chosen, source,
                                           replace(options, gate_open=True, route_window=0, vcd=_str(outputs.dense_vcd)))))
        summary = sim_summary.build(sim, {name: _run_one(name, job, sim, build, progress, log, verilog_dir)
                                          for name, job in runs})
        if outputs.summary:
            sim_summary.write(outputs.summary, summary)
            log(f"summary: {outputs.summary}")
    return summary


def replay(path: Path, sim: str, build: Path, progress: bool = True, log=print) -> dict:
    job = Job.load(path)
    return {"runs": {"replay": _run_one("replay", job, sim, build, progress, log)}}


def _run_one(name: str, job: Job, sim: str, build: Path, progress: bool, log, verilog_dir: Path | None = None) -> dict:
    log(f"{name}: {len(job.rows)} {job.source} rows, mode {job.cfg.mode}, schedule {job.cfg.schedule}, {sim}",
        flush=True)
    outcome = run(job, sim, build_root=build, progress=progress, verilog_dir=verilog_dir)
    log(f"  rows checked {outcome.rows_checked}, mismatches {outcome.mismatches}, HPU cycles "
        f"{outcome.hpu_cycles}, {outcome.cycles_per_s:,.0f} simulated cycles/s"
        + (f", VCD {job.options.vcd}" if job.options.vcd else ""))
    return sim_summary.record(job, outcome)


def _str(path: Path | None) -> str | None:
    return str(path) if path else None
