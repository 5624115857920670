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


class Feed:
    """Words the testbench writes into harness arrays ahead of the HPU: word i at i mod depth of each
    array, at most `ahead` words past where the harness's `consumed` counter says it has read."""

    def __init__(self, arrays: list, words: list[list[int]], depth: int, ahead: int, consumed, loaded):
        self.arrays, self.words, self.depth, self.ahead = arrays, words, depth, ahead
        self.consumed, self.loaded_signal = consumed, loaded
        self.loaded = 0

    @property
    def pending(self) -> bool:
        return self.loaded < len(self.words[0])

    def refill(self) -> None:
        start = int(self.consumed.value)
        while self.pending and self.loaded - start < self.ahead:
            for array, words in zip(self.arrays, self.words):
                array[self.loaded % self.depth].value = words[self.loaded]
            self.loaded += 1
        self.loaded_signal.value = self.loaded


class Collect:
    """Words the harness keeps in a ring for the testbench: each new one (and its slot) goes to `take`,
    and the `read` counter tells the harness the slots are free again."""

    def __init__(self, array, depth: int, seen, read, take):
        self.array, self.depth, self.seen_signal, self.read_signal, self.take = array, depth, seen, read, take
        self.read = 0

    def drain(self) -> None:
        seen = int(self.seen_signal.value)
        while self.read < seen:
            self.take(self.read % self.depth, int(self.array[self.read % self.depth].value))
            self.read += 1
        self.read_signal.value = self.read


def cycle_bound(job: Job, rows: int) -> int:
    """Cycles to wait for `rows` more rows before calling the HPU stalled (the native bench's rule too)."""
    return job.stall_cycles_per_row * (rows + 4)


@cocotb.test()
async def run_job(dut):
    job = Job.load(Path(os.environ["HPU_SIM_JOB"]), check=False)
    outcome_path = Path(os.environ["HPU_SIM_OUTCOME"])
    opts = job.options
    board = Scoreboard(job)
    result_cycles: list[int] = []
    show_progress = sys.stderr.isatty() or os.environ.get("HPU_SIM_PROGRESS") == "1"

    for name, value in opts.host().items():
        getattr(dut, name).value = value
    dut.gate_open.value = int(opts.gate_open)
    await Timer(1, "ns")
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    scores = [bits for row in job.rows for bits in pack_scores(job.cfg, row)]
    logits = [bits for block in job.blocks for bits in pack_logits(job.cfg, block)]
    # Keys go at most half a ring ahead of the row being requested: the other half still holds the
    # values of requests taken but not yet answered.
    depth = key_ring_depth(job.cfg)
    keys = Feed([dut.keys, dut.values], [scores, [bits for row in job.rows for bits in pack_values(job.cfg, row)]],
                depth, depth // 2, dut.row_base, dut.keys_loaded)
    logit_depth = logit_ring_depth(job.cfg)
    blocks = Feed([dut.logits], [logits], logit_depth, logit_depth, dut.logits_sent, dut.logits_loaded)
    routed: list[list[int]] = [[]]

    def result(slot: int, bits: int) -> None:
        board.check(len(result_cycles), unpack_result(job.cfg, bits))
        result_cycles.append(int(dut.result_cycle[slot].value))

    def position(slot: int, bits: int) -> None:
        at, last = unpack_routed(job.cfg, bits)
        routed[-1].append(at)
        if last:
            routed.append([])

    results = Collect(dut.results, ROW_DEPTH, dut.rows_seen, dut.rows_read, result)
    positions = Collect(dut.routed, logit_depth, dut.routed_seen, dut.routed_read, position)

    start_wall = time.perf_counter()
    start_cycle = None
    dut.rows_expected.value = len(job.expected)
    dut.blocks_expected.value = len(job.blocks)
    if opts.vcd:
        dut.dump.value = 1
    keys.refill()
    blocks.refill()
    stalled = None
    last_report = 0
    while results.read < len(job.expected) or len(routed) <= len(job.blocks):
        await ReadOnly()
        if start_cycle is None:
            start_cycle = int(dut.cycles.value)
        waiting = [RisingEdge(dut.results_waiting), RisingEdge(dut.done)]
        for feed, need in ((keys, dut.need_keys), (blocks, dut.need_logits)):
            if feed.pending:
                waiting.append(RisingEdge(need))
        busy_levels = (int(dut.results_waiting.value) or int(dut.done.value)
                       or (keys.pending and int(dut.need_keys.value))
                       or (blocks.pending and int(dut.need_logits.value)))
        if not busy_levels:
            try:
                await with_timeout(First(*waiting), cycle_bound(job, len(job.expected) - results.read) * CLOCK_NS, "ns")
            except SimTimeoutError:
                results.drain()
                positions.drain()
                stalled = (f"no result within {cycle_bound(job, len(job.expected) - results.read)} cycles: "
                           f"{results.read} of {len(job.expected)} rows done, {int(dut.keys_sent.value)} of "
                           f"{len(scores)} keys taken, {len(routed) - 1} of {len(job.blocks)} blocks routed")
                break
        await RisingEdge(dut.clk)
        results.drain()
        positions.drain()
        keys.refill()
        blocks.refill()
        if show_progress and results.read - last_report >= max(1, len(job.expected) // 20):
            last_report = results.read
            print(f"\r  rows {results.read}/{len(job.expected)}  mismatches {board.mismatches}", end="",
                  file=sys.stderr, flush=True)
    dut.dump.value = 0
    await RisingEdge(dut.clk)
    wall = time.perf_counter() - start_wall
    if show_progress:
        print(file=sys.stderr)
    routed.pop()   # the list opened after the last block's final position
    routing_mismatches = sum(got != want for got, want in zip(routed, job.routed)) + abs(len(routed) - len(job.routed))
    Outcome(rows_checked=board.checked, mismatches=board.mismatches, routed=routed,
            routing_mismatches=routing_mismatches,
            hpu_cycles=int(dut.done_cycle.value) - (start_cycle or 0), wall_s=wall, first_mismatch=board.first,
            values_fetched=int(dut.values_sent.value),
            stalled=stalled, result_cycles=result_cycles, observed=board.observed).save(outcome_path)
    assert stalled is None, stalled
    assert board.mismatches == 0, f"{board.mismatches} of {board.checked} rows differ from the golden model"
    assert routing_mismatches == 0, f"{routing_mismatches} of {len(job.blocks)} blocks routed unlike the golden model"
