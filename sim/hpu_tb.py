"""cocotb testbench: streams a job's rows through the generated HPU and checks every result bit-exact.

Run through sim.runner (never directly): it needs HPU_SIM_JOB (the job file)
and HPU_SIM_OUTCOME (where to write the outcome).

The harness (hdl/hpu_harness.v) owns the clock and the key and result rings, so
this code runs only when a ring needs refilling or draining: a few times per
hundred rows, not once per cycle.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cocotb
from cocotb.triggers import First, ReadOnly, RisingEdge, SimTimeoutError, Timer, with_timeout

from hpu.top import slowest_stage_cycles
from sim.job import Job, Outcome
from sim.packing import key_ring_depth, logit_ring_depth, pack_logits, pack_scores, pack_values, unpack_result, \
    unpack_routed

CLOCK_NS = 10
ROW_DEPTH = 64


class Scoreboard:
    """Compares each observed row with the golden model's, keeping the first mismatch in full."""

    def __init__(self, job: Job):
        self.job = job
        self.checked = 0
        self.mismatches = 0
        self.first: dict | None = None
        self.observed: list[dict] = []

    def check(self, index: int, observed) -> None:
        expected = self.job.expected[index]
        self.checked += 1
        self.observed.append(dict(observed.__dict__))
        if observed == expected:
            return
        self.mismatches += 1
        if self.first is None:
            row = self.job.rows[index]
            fields = [name for name in ("acc", "out", "z_kept", "kept")
                      if getattr(observed, name) != getattr(expected, name)]
            self.first = {"row": index, "fields": fields, "n": row.n, "scores": list(row.scores),
                          "values": [list(v) for v in row.values],
                          "expected": expected.__dict__, "observed": observed.__dict__}


def cycle_bound(job: Job, rows: int) -> int:
    """Generous upper bound on cycles for `rows` more rows (4x the slowest stage, plus the pipeline)."""
    slow = 1.0 / ((1 - job.options.gaps) * (1 - job.options.backpressure))
    return int(4 * slow * slowest_stage_cycles(job.cfg) * (rows + 4))


@cocotb.test()
async def run_job(dut):
    job = Job.load(Path(os.environ["HPU_SIM_JOB"]), check=False)
    outcome_path = Path(os.environ["HPU_SIM_OUTCOME"])
    opts = job.options
    board = Scoreboard(job)
    result_cycles: list[int] = []
    show_progress = sys.stderr.isatty() or os.environ.get("HPU_SIM_PROGRESS") == "1"

    dut.gap_per_256.value = opts.per_step("gaps")
    dut.stall_per_256.value = opts.per_step("backpressure")
    dut.gap_seed.value = (opts.seed * 2654435761 + 1) & 0xFFFFFFFF
    dut.stall_seed.value = (opts.seed * 40503 + 7) & 0xFFFFFFFF
    dut.gate_open.value = int(opts.gate_open)
    await Timer(1, "ns")
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    scores = [bits for row in job.rows for bits in pack_scores(job.cfg, row)]
    values = [bits for row in job.rows for bits in pack_values(job.cfg, row)]
    logits = [bits for block in job.blocks for bits in pack_logits(job.cfg, block)]
    depth = key_ring_depth(job.cfg)
    logit_depth = logit_ring_depth(job.cfg)
    loaded = 0
    read = 0
    logits_loaded = 0
    routed_read = 0
    routed: list[list[int]] = [[]]

    def refill():
        """Load keys up to half a ring ahead of the row being requested: the other half still holds
        the values of requests taken but not yet answered."""
        nonlocal loaded
        base = int(dut.row_base.value)
        while loaded < len(scores) and loaded - base < depth // 2:
            dut.keys[loaded % depth].value = scores[loaded]
            dut.values[loaded % depth].value = values[loaded]
            loaded += 1
        dut.keys_loaded.value = loaded

    def refill_logits():
        nonlocal logits_loaded
        sent = int(dut.logits_sent.value)
        while logits_loaded < len(logits) and logits_loaded - sent < logit_depth:
            dut.logits[logits_loaded % logit_depth].value = logits[logits_loaded]
            logits_loaded += 1
        dut.logits_loaded.value = logits_loaded

    def drain_routed():
        nonlocal routed_read
        seen = int(dut.routed_seen.value)
        while routed_read < seen:
            position, last = unpack_routed(job.cfg, int(dut.routed[routed_read % logit_depth].value))
            routed[-1].append(position)
            if last:
                routed.append([])
            routed_read += 1
        dut.routed_read.value = routed_read

    def drain():
        nonlocal read
        seen = int(dut.rows_seen.value)
        while read < seen:
            slot = read % ROW_DEPTH
            board.check(read, unpack_result(job.cfg, int(dut.results[slot].value)))
            result_cycles.append(int(dut.result_cycle[slot].value))
            read += 1
        dut.rows_read.value = read

    start_wall = time.perf_counter()
    start_cycle = None
    dut.rows_expected.value = len(job.expected)
    dut.blocks_expected.value = len(job.blocks)
    if opts.vcd:
        dut.dump.value = 1
    refill()
    refill_logits()
    stalled = None
    last_report = 0
    while read < len(job.expected) or len(routed) <= len(job.blocks):
        await ReadOnly()
        if start_cycle is None:
            start_cycle = int(dut.cycles.value)
        waiting = [RisingEdge(dut.results_waiting), RisingEdge(dut.done)]
        if loaded < len(scores):
            waiting.append(RisingEdge(dut.need_keys))
        if logits_loaded < len(logits):
            waiting.append(RisingEdge(dut.need_logits))
        busy_levels = (int(dut.results_waiting.value) or int(dut.done.value)
                       or (loaded < len(scores) and int(dut.need_keys.value))
                       or (logits_loaded < len(logits) and int(dut.need_logits.value)))
        if not busy_levels:
            try:
                await with_timeout(First(*waiting), cycle_bound(job, len(job.expected) - read) * CLOCK_NS, "ns")
            except SimTimeoutError:
                drain()
                drain_routed()
                stalled = (f"no result within {cycle_bound(job, len(job.expected) - read)} cycles: "
                           f"{read} of {len(job.expected)} rows done, {int(dut.keys_sent.value)} of {len(scores)} keys taken")
                break
        await RisingEdge(dut.clk)
        drain()
        drain_routed()
        refill()
        refill_logits()
        if show_progress and read - last_report >= max(1, len(job.expected) // 20):
            last_report = read
            print(f"\r  rows {read}/{len(job.expected)}  mismatches {board.mismatches}", end="", file=sys.stderr, flush=True)
    dut.dump.value = 0
    await RisingEdge(dut.clk)
    end_cycle = int(dut.cycles.value)
    wall = time.perf_counter() - start_wall
    if show_progress:
        print(file=sys.stderr)
    routed.pop()   # the list opened after the last block's final position
    routing_mismatches = sum(got != want for got, want in zip(routed, job.routed)) + abs(len(routed) - len(job.routed))
    Outcome(rows_checked=board.checked, mismatches=board.mismatches, routed=routed,
            routing_mismatches=routing_mismatches,
            hpu_cycles=end_cycle - (start_cycle or 0), wall_s=wall, first_mismatch=board.first,
            values_fetched=int(dut.values_sent.value),
            stalled=stalled, result_cycles=result_cycles, observed=board.observed).save(outcome_path)
    assert stalled is None, stalled
    assert board.mismatches == 0, f"{board.mismatches} of {board.checked} rows differ from the golden model"
    assert routing_mismatches == 0, f"{routing_mismatches} of {len(job.blocks)} blocks routed unlike the golden model"
