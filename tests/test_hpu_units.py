"""Each HPU unit alone in Amaranth's simulator, against the golden model's functions."""

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden_model.contract import normalize as contract_normalize
from golden_model.contract import run_contract
from golden_model.reciprocal import reciprocal, shift_of
from golden_model.stimulus import adversarial_blocks, adversarial_rows, expected_routed, random_blocks, random_rows
from hpu import layouts
from hpu.config import HPUConfig
from hpu.divider import Divider
from hpu.exp_gate import ExpGate
from hpu.ingest import Ingest
from hpu import mac_array
from hpu.fetch import FetchSequencer
from hpu.mac_array import MacArray
from hpu.mac_lane import MacLane
from hpu.normalizer import Normalizer
from hpu.reciprocal import Reciprocal

from conftest import REPO

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")


def run(dut, *testbenches, processes=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    for p in processes:
        sim.add_process(p)
    sim.run()


async def put(ctx, port, payload):
    ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def get(ctx, port, stall=0):
    for _ in range(stall):
        await ctx.tick()
    ctx.set(port.ready, 1)
    payload, = await ctx.tick().sample(port.payload).until(port.valid)
    ctx.set(port.ready, 0)
    return payload


def golden(cfg, row):
    r = run_contract(cfg, torch.tensor([row.scores]), torch.tensor(row.values))
    return {"e": r.e[0].tolist(), "keep": r.keep[0].tolist(), "kept": r.kept.item(), "z": r.z.item(),
            "z_kept": r.z_kept.item(), "acc": r.acc[0].tolist(), "out": r.out[0].tolist()}


def gate_fields(cfg, g, n):
    """Threshold and tie count that describe the golden kept set (what the gate must hand on)."""
    kept_e = [e for e, k in zip(g["e"], g["keep"]) if k]
    threshold = min(kept_e)
    ties = sum(1 for e, k in zip(g["e"], g["keep"]) if k and e == threshold)
    return threshold, ties


# -- divider ---------------------------------------------------------------------------------------

def test_divider_quotient_remainder_and_latency(seed):
    rng = random.Random(seed)
    dut = Divider(12, 5)
    cases = [(rng.randrange(4096), rng.randrange(1, 32)) for _ in range(40)] + [(4095, 1), (0, 7), (31, 31)]

    async def tb(ctx):
        for dividend, divisor in cases:
            await put(ctx, dut.request, {"dividend": dividend, "divisor": divisor})
            start = 0
            ctx.set(dut.response.ready, 1)
            while not ctx.get(dut.response.valid):
                await ctx.tick()
                start += 1
            assert start == 12   # put() returns in the cycle after acceptance: t + 1 + 12
            assert ctx.get(dut.response.payload.quotient) == dividend // divisor
            assert ctx.get(dut.response.payload.remainder) == dividend % divisor
            await ctx.tick()
            ctx.set(dut.response.ready, 0)
    run(dut, tb)


# -- MAC lane --------------------------------------------------------------------------------------

def test_mac_lane_accumulates_and_holds_when_not_valid(seed):
    rng = random.Random(seed)
    cfg = SMALL
    dut = MacLane(cfg)

    async def tb(ctx):
        want = [None] * cfg.chunks
        first_seen = [True] * cfg.chunks
        for _ in range(60):
            valid = rng.random() < 0.6
            chunk, e, v = rng.randrange(cfg.chunks), rng.randrange(cfg.e_max + 1), rng.randint(-32, 31)
            first = first_seen[chunk]
            ctx.set(dut.valid, valid)
            ctx.set(dut.chunk, chunk)
            ctx.set(dut.e, e)
            ctx.set(dut.v, v)
            ctx.set(dut.first, first)
            if valid:
                want[chunk] = e * v if first else want[chunk] + e * v
                first_seen[chunk] = False
            await ctx.tick()
            # Added at the end of the cycle that presented the operands.
            assert [ctx.get(dut.acc[c]) for c in range(cfg.chunks)] == [w or 0 for w in want]
        ctx.set(dut.valid, 0)
        await ctx.tick()
        got = [ctx.get(dut.acc[c]) for c in range(cfg.chunks)]
        assert got == [w if w is not None else 0 for w in want]
        # With valid low nothing moves, whatever the other inputs do.
        before = [ctx.get(dut.acc[c]) for c in range(cfg.chunks)]
        for _ in range(5):
            ctx.set(dut.e, rng.randrange(cfg.e_max + 1))
            ctx.set(dut.v, rng.randint(-32, 31))
            await ctx.tick()
        assert [ctx.get(dut.acc[c]) for c in range(cfg.chunks)] == before
    run(dut, tb)


# -- harness with row-buffer memories --------------------------------------------------------------

class WithBuffers(Elaboratable):
    """A unit and the row-buffer memories it reads or writes, preloaded where given."""

    def __init__(self, cfg, unit, scores=(), es=()):
        self.cfg, self.unit = cfg, unit
        self.scores = layouts.buffer_memory(cfg, "score", scores)
        self.es = layouts.buffer_memory(cfg, "e", es)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        m.submodules.scores, m.submodules.es = self.scores, self.es
        members = unit.signature.members
        if "score_write" in members:
            wiring.connect(m, unit.score_write, self.scores.write_port())
        if "score_read" in members:
            wiring.connect(m, unit.score_read, self.scores.read_port())
            wiring.connect(m, unit.e_write, self.es.write_port())
        if "e_read" in members:
            wiring.connect(m, unit.e_read, self.es.read_port())
        return m


def test_ingest_fills_score_banks_and_reports_maximum(seed):
    rng = random.Random(seed)
    cfg = SMALL
    rows = random_rows(cfg, 5, rng) + [random_rows(cfg, 1, rng, n=cfg.max_keys)[0]]
    harness = WithBuffers(cfg, Ingest(cfg))
    dut = harness.unit

    async def feed(ctx):
        for row in rows:
            for j in range(row.n):
                await put(ctx, dut.scores, {"score": row.scores[j], "last": j == row.n - 1})

    async def check(ctx):
        for index, row in enumerate(rows):
            desc = await get(ctx, dut.row, stall=rng.randrange(3))
            assert (desc.n, desc.m) == (row.n, max(row.scores))
            assert desc.score_bank == index % 2
            for j in range(row.n):
                assert ctx.get(harness.scores.data[desc.score_bank * cfg.max_keys + j]) == row.scores[j]
        assert not ctx.get(dut.overflow)
    run(harness, feed, check)


def test_ingest_ends_an_overlong_row_and_flags_it():
    cfg = SMALL
    harness = WithBuffers(cfg, Ingest(cfg))
    dut = harness.unit

    async def tb(ctx):
        ctx.set(dut.row.ready, 0)
        for j in range(cfg.max_keys):
            await put(ctx, dut.scores, {"score": j, "last": 0})
        assert ctx.get(dut.row.valid) and ctx.get(dut.row.payload.n) == cfg.max_keys
        assert ctx.get(dut.overflow)
    run(harness, tb)


# -- exp front end and gate ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mass", "topk", "dense"])
def test_exp_gate_finds_the_contract_kept_set(seed, mode):
    rng = random.Random(seed)
    cfg = SMALL.replace(mode=mode, permeability=rng.choice([0.2, 0.5, 0.8]), k_min=rng.randint(1, 3))
    rows = adversarial_rows(cfg, rng) + random_rows(cfg, 12, rng)
    for row in rows:
        scores = list(row.scores) + [0] * (2 * cfg.max_keys - row.n)
        harness = WithBuffers(cfg, ExpGate(cfg), scores=scores)
        dut = harness.unit
        g = golden(cfg, row)

        async def tb(ctx):
            await put(ctx, dut.row, {"n": row.n, "m": max(row.scores), "score_bank": 0})
            out = await get(ctx, dut.gate)
            assert [ctx.get(harness.es.data[j]) for j in range(row.n)] == g["e"]
            assert (out.kept, out.z_kept) == (g["kept"], g["z_kept"]), row
            if mode == "dense":
                assert out.keep_all
            else:
                assert (out.threshold, out.ties) == gate_fields(cfg, g, row.n)
            # The histogram is clear again: a second identical row gives the same answer.
            await put(ctx, dut.row, {"n": row.n, "m": max(row.scores), "score_bank": 0})
            again = await get(ctx, dut.gate)
            assert (again.kept, again.z_kept) == (g["kept"], g["z_kept"])
        run(harness, tb)


def test_exp_gate_held_open_keeps_everything():
    cfg = SMALL
    row = random_rows(cfg, 1, random.Random(3), n=cfg.max_keys, spread=16.0)[0]
    harness = WithBuffers(cfg, ExpGate(cfg), scores=list(row.scores))
    dut = harness.unit
    g = golden(cfg.replace(mode="dense"), row)

    async def tb(ctx):
        ctx.set(dut.gate_open, 1)
        await put(ctx, dut.row, {"n": row.n, "m": max(row.scores), "score_bank": 0})
        out = await get(ctx, dut.gate)
        assert out.keep_all and (out.kept, out.z_kept) == (row.n, g["z"])
    run(harness, tb)


# -- fetch sequencer and MAC array -----------------------------------------------------------------

def expected_slots(cfg, g, n):
    return [(g["e"][j], g["keep"][j]) for j in range(n) if cfg.schedule == "lockstep" or g["keep"][j]]


def taker(port, into, rng, stall):
    """A process that takes every beat offered on ``port`` into ``into``, refusing a beat with
    probability ``stall``."""
    async def take(ctx):
        async for _, _, valid, ready, payload in ctx.tick().sample(port.valid, port.ready, port.payload):
            if valid and ready:
                into.append(payload)
            ctx.set(port.ready, rng.random() >= stall)
    return take


@pytest.mark.parametrize("schedule", ["lockstep", "compact"])
def test_fetch_sequencer_asks_for_kept_values_and_queues_slots(seed, schedule):
    rng = random.Random(seed)
    cfg = SMALL.replace(schedule=schedule)
    for row in random_rows(cfg, 4, rng, n=cfg.max_keys) + adversarial_rows(cfg, rng)[:4]:
        g = golden(cfg, row)
        threshold, ties = gate_fields(cfg, g, row.n)
        harness = WithBuffers(cfg, FetchSequencer(cfg), es=g["e"])
        dut = harness.unit
        requests, slots, totals = [], [], []
        stall = rng.choice([0.0, 0.5])

        async def tb(ctx):
            ctx.set(dut.row.ready, 1)
            await put(ctx, dut.gate, {"n": row.n, "kept": g["kept"], "z_kept": g["z_kept"], "keep_all": 0,
                                      "threshold": threshold, "ties": ties, "e_bank": 0})
            totals.append(ctx.get(dut.row.payload))
            ctx.set(dut.row.ready, 0)
            for _ in range(4 * row.n + 20):
                await ctx.tick()
            assert not ctx.get(dut.busy)

        run(harness, tb, processes=[taker(dut.requests, requests, rng, stall), taker(dut.slots, slots, rng, stall)])
        assert [(r.index, r.last) for r in requests] == [(j, int(j == max(k for k in range(row.n) if g["keep"][k])))
                                                         for j in range(row.n) if g["keep"][j]]
        assert [(s.e, s.kept) for s in slots] == expected_slots(cfg, g, row.n)
        assert (totals[0].slots, totals[0].z_kept, totals[0].kept) == (len(expected_slots(cfg, g, row.n)),
                                                                        g["z_kept"], g["kept"])


@pytest.mark.parametrize("schedule", ["lockstep", "compact"])
def test_mac_array_accumulates_kept_slots_from_the_values_stream(seed, schedule):
    """Lane silence for gated keys is asserted on the Verilog's toggles (tests/test_power.py)."""
    rng = random.Random(seed)
    cfg = SMALL.replace(schedule=schedule)
    for row in random_rows(cfg, 6, rng, n=cfg.max_keys) + adversarial_rows(cfg, rng)[:4]:
        g = golden(cfg, row)
        dut = MacArray(cfg)
        slots = expected_slots(cfg, g, row.n)
        kept_values = [list(row.values[j]) for j in range(row.n) if g["keep"][j]]
        counts = {"cycles": 0}
        slow_host = rng.random() < 0.5

        async def tb(ctx):
            await put(ctx, dut.row, {"slots": len(slots), "z_kept": g["z_kept"], "kept": g["kept"]})
            ctx.set(dut.accumulated.ready, 1)
            while not ctx.get(dut.accumulated.valid):
                counts["cycles"] += 1
                await ctx.tick()
            assert list(ctx.get(dut.accumulated.payload.acc)) == g["acc"]
            assert (ctx.get(dut.accumulated.payload.kept), ctx.get(dut.accumulated.payload.z_kept)) == (g["kept"],
                                                                                                        g["z_kept"])

        async def sequencer(ctx):
            for e, kept in slots:
                await put(ctx, dut.slots, {"e": e, "kept": kept})

        async def host(ctx):
            """Offers the kept values in order, after a few idle cycles when slow."""
            pending = list(kept_values)
            async for _, _, valid, ready in ctx.tick().sample(dut.values.valid, dut.values.ready):
                if valid and ready:
                    pending.pop(0)
                offer = bool(pending) and not (slow_host and rng.random() < 0.5)
                ctx.set(dut.values.valid, offer)
                if offer:
                    ctx.set(dut.values.payload, pending[0])

        run(dut, tb, sequencer, processes=[host])
        # Lockstep's row time is its slots plus a fixed overhead whatever the gate kept.
        if schedule == "lockstep" and not slow_host:
            assert counts["cycles"] <= len(slots) * cfg.chunks + mac_array.VALUE_LEAD + 3


def test_reciprocal_of_every_kind_of_z_and_its_latency(seed):
    rng = random.Random(seed)
    cfg = SMALL
    dut = Reciprocal(cfg)
    z_max = cfg.max_keys * cfg.e_max
    zs = [1, 2, 3, 4, 5, 7, 8, 9, z_max, (1 << (cfg.z_bits - 1)) + 1] + [rng.randint(1, z_max) for _ in range(20)]

    async def tb(ctx):
        for z in zs:
            await put(ctx, dut.request, z)
            start = 0
            while not ctx.get(dut.response.valid):
                await ctx.tick()
                start += 1
            assert start == cfg.quotient_bits + 1   # answered Q + 2 cycles after the request cycle
            assert ctx.get(dut.response.payload.m) == reciprocal(z, cfg)
            assert ctx.get(dut.response.payload.shift) == shift_of(z)
            ctx.set(dut.response.ready, 1)
            await ctx.tick()
            ctx.set(dut.response.ready, 0)
    run(dut, tb)


def test_normalizer_matches_the_contract_and_saturates(seed):
    rng = random.Random(seed)
    cfg = SMALL.replace(out_bits=9)   # narrow outputs so saturation happens
    dut = Normalizer(cfg)
    low, high = -(1 << (cfg.acc_bits - 1)), (1 << (cfg.acc_bits - 1)) - 1
    z_max = cfg.max_keys * cfg.e_max
    cases = [([rng.randint(low, high) for _ in range(cfg.head_dim)], rng.randint(1, z_max)) for _ in range(12)]
    cases += [([low, high, 0, -1, 1, -7, 7, 100][:cfg.head_dim], z) for z in (1, 3, 64, 65, z_max)]
    # Around the saturation threshold of z = 5: acc * 2**out_frac / 5 = 255 and 256.
    edge = (5 * 256) >> cfg.out_frac
    cases.append(([edge - 1, edge, edge + 1, -edge - 1, -edge, -edge + 1, 0, 0][:cfg.head_dim], 5))
    cycles = []

    async def feed(ctx):
        for acc, z in cases:
            await put(ctx, dut.accumulated, {"acc": acc, "z_kept": z, "kept": 1})

    async def check(ctx):
        for acc, z in cases:
            start = 0
            ctx.set(dut.result.ready, 1)
            while True:
                *_, valid, out = await ctx.tick().sample(dut.result.valid, dut.result.payload)
                start += 1
                if valid:
                    break
            ctx.set(dut.result.ready, 0)
            want = contract_normalize(torch.tensor(acc), torch.tensor([z]), cfg).tolist()
            assert list(out.acc) == acc and list(out.out) == want and out.z_kept == z, (acc, z)
            cycles.append(start)
    run(dut, feed, check)
    # Back to back, a row takes exactly: 1 to take it, the reciprocal (Q + 2 cycles and 1 to take
    # it), head_dim multiplies, 1 to hand the result on.
    assert set(cycles[1:]) == {cfg.quotient_bits + cfg.head_dim + 5}


# -- router ----------------------------------------------------------------------------------------

def routed_by_router(cfg, blocks, stall=lambda: 0):
    """Blocks of logits through a Router back to back; each block's routed positions as it emitted them
    (the sink withholds ready for ``stall()`` cycles before each position)."""
    from hpu.router import Router

    dut = Router(cfg)
    got = []

    async def source(ctx):
        for block in blocks:
            for t, r in enumerate(block):
                await put(ctx, dut.logits, {"logit": r, "last": t == len(block) - 1})

    async def sink(ctx):
        for _ in blocks:
            positions = []
            while True:
                payload = await get(ctx, dut.routed, stall=stall())
                positions.append(payload.position)
                if payload.last:
                    break
            got.append(positions)

    run(dut, source, sink)
    return got


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_router_routes_the_contract_positions(seed, fraction):
    from hpu.router import passes

    cfg = SMALL.replace(route_block=24, route_bits=14, route_fraction=fraction)
    rng = random.Random(seed)
    blocks = adversarial_blocks(cfg, rng) + random_blocks(cfg, 8, rng)
    assert routed_by_router(cfg, blocks, stall=lambda: rng.randint(0, 2)) == expected_routed(cfg, blocks)
    assert passes(cfg) == 4


def test_router_cycles_per_block_within_the_documented_bound():
    from hpu.router import DIGIT_BITS, Router, block_cycles, passes

    cfg = SMALL.replace(route_block=32, route_bits=16, route_fraction=0.25)
    dut = Router(cfg)
    block = list(range(-16, 16))
    done = []

    async def tb(ctx):
        ctx.set(dut.routed.ready, 1)
        for t, r in enumerate(block):
            await put(ctx, dut.logits, {"logit": r, "last": t == len(block) - 1})
        cycles = 0
        while True:
            _, _, valid, payload = await ctx.tick().sample(dut.routed.valid, dut.routed.payload)
            cycles += 1
            if valid and payload.last:
                break
        done.append(cycles)

    run(dut, tb)
    n, p = len(block), passes(cfg)
    # After the logits are in: per pass at most 2**DIGIT_BITS + 1 walk cycles, n counting cycles for
    # every pass after the first, and the emit pass up to the last routed position (here the last token).
    assert done[0] <= p * ((1 << DIGIT_BITS) + 1) + (p - 1) * n + n
    assert done[0] + n <= block_cycles(cfg)


def test_router_ends_an_overlong_block_and_flags_it():
    from hpu.router import Router

    cfg = SMALL.replace(route_block=4, route_fraction=0.5)
    dut = Router(cfg)
    got = []

    async def tb(ctx):
        ctx.set(dut.routed.ready, 1)
        for r in (5, 9, 1, 9):
            await put(ctx, dut.logits, {"logit": r, "last": 0})
        assert ctx.get(dut.overflow) == 1
        while len(got) < 2:
            _, _, valid, payload = await ctx.tick().sample(dut.routed.valid, dut.routed.payload)
            if valid:
                got.append((payload.position, payload.last))

    run(dut, tb)
    assert got == [(1, 0), (3, 1)]


@given(st.lists(st.lists(st.integers(-8, 7), min_size=1, max_size=12), min_size=1, max_size=3),
       st.integers(1, 256))
def test_router_routes_any_blocks_like_the_contract(blocks, route_q):
    """Any blocks of 4-bit logits (so ties are everywhere) at any routed fraction, back to back."""
    cfg = SMALL.replace(route_block=12, route_bits=4, route_fraction=route_q / 256)
    assert routed_by_router(cfg, blocks) == expected_routed(cfg, blocks)
