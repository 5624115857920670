"""Drives the HPU in Amaranth's simulator: scores in, requested values back, results out, with optional
gaps and back-pressure."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from amaranth.sim import Simulator

from golden_model.stimulus import Row, RowResult
from hpu.config import HPUConfig
from hpu.top import HPU, slowest_stage_cycles

CLOCK_PERIOD = 1e-8


@dataclass
class SimRun:
    results: list[RowResult]
    first_key_cycle: list[int] = field(default_factory=list)   # cycle each row's first score was taken
    result_cycle: list[int] = field(default_factory=list)      # cycle each row's result was taken
    cycles: int = 0
    requests: list[list[int]] = field(default_factory=list)    # each row's requested key indices

    def steady_cycles_per_row(self, skip: int = 2) -> float:
        """Cycles between successive results, ignoring the pipeline's filling rows."""
        done = self.result_cycle[skip:]
        if len(done) < 2:
            raise ValueError(f"need at least {skip + 2} rows for a steady-state figure")
        return (done[-1] - done[0]) / (len(done) - 1)


async def _until(ctx, signal) -> None:
    """``await ctx.tick().until(signal)`` without an inner async generator. A run that ends while a
    background testbench waits (a stall's TimeoutError, or the sink done first) leaves the wait
    pending; Amaranth 0.5's ``until`` then raises from its clean-up when the coroutine is collected."""
    while not (await ctx.tick().sample(signal))[-1]:
        pass


def simulate_rows(cfg: HPUConfig, rows: list[Row], *, gate_open: bool = False, gaps: float = 0.0,
                  backpressure: float = 0.0, seed: int = 0, vcd: str | None = None,
                  timeout_cycles: int | None = None) -> SimRun:
    """Run rows through the HPU back to back; ``gaps`` / ``backpressure`` are per-cycle probabilities
    of the sources (scores, values) withholding valid and the result sink withholding ready.

    The value source is the host's KV cache: it answers each request with that key's value vector
    of the row the request belongs to (rows are requested in order; ``last`` ends a row)."""
    dut = HPU(cfg)
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    rng_in, rng_out, rng_values = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    asked: deque[tuple[int, int]] = deque()
    run = SimRun(results=[])
    cycle = 0
    limit = timeout_cycles or 4 * slowest_stage_cycles(cfg) * (len(rows) + 4)

    async def clock(ctx):
        nonlocal cycle
        async for _ in ctx.tick():
            cycle += 1

    async def source(ctx):
        ctx.set(dut.gate_open, gate_open)
        for row in rows:
            for j, score in enumerate(row.scores):
                while gaps and rng_in.random() < gaps:
                    ctx.set(dut.scores.valid, 0)
                    await ctx.tick()
                ctx.set(dut.scores.payload, {"score": score, "last": j == row.n - 1})
                ctx.set(dut.scores.valid, 1)
                await _until(ctx, dut.scores.ready)
                if j == 0:
                    run.first_key_cycle.append(cycle)
            ctx.set(dut.scores.valid, 0)

    async def requests(ctx):
        row = 0
        run.requests.append([])
        ctx.set(dut.requests.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.requests.valid, dut.requests.payload):
            if valid:
                asked.append((row, payload.index))
                run.requests[-1].append(payload.index)
                if payload.last:
                    row += 1
                    run.requests.append([])

    async def values(ctx):
        while True:
            while not asked or (gaps and rng_values.random() < gaps):
                ctx.set(dut.values.valid, 0)
                await ctx.tick()
            row, index = asked.popleft()
            ctx.set(dut.values.payload, list(rows[row].values[index]))
            ctx.set(dut.values.valid, 1)
            await _until(ctx, dut.values.ready)

    async def sink(ctx):
        while len(run.results) < len(rows):
            ready = not (backpressure and rng_out.random() < backpressure)
            ctx.set(dut.results.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.results.valid, dut.results.payload)
            if cycle > limit:
                raise TimeoutError(f"HPU stalled: {len(run.results)} of {len(rows)} rows after {cycle} cycles")
            if ready and valid:
                run.results.append(RowResult(acc=tuple(payload.acc), out=tuple(payload.out),
                                             z_kept=payload.z_kept, kept=payload.kept))
                run.result_cycle.append(cycle)
        run.cycles = cycle
        run.requests.pop()   # the list opened after the last row's final request

    sim.add_process(clock)
    sim.add_testbench(source, background=True)
    sim.add_testbench(requests, background=True)
    sim.add_testbench(values, background=True)
    sim.add_testbench(sink)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return run
