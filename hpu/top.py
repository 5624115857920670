"""The HPU: ingest -> exp front end and gate -> fetch sequencer and sparse MAC array -> normalizer, one row per stage."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.exp_gate import ExpGate
from hpu.fetch import FetchSequencer
from hpu.ingest import Ingest
from hpu.mac_array import MacArray
from hpu.normalizer import Normalizer
from hpu.router import Router, block_cycles

STATUS_BITS = 32
# The free-running cycle counter was the largest register clocked every cycle. Prescaled, only its
# low CYCLE_PRESCALE_BITS bits are; the rest are enabled once per 2**CYCLE_PRESCALE_BITS cycles.
CYCLE_PRESCALE_BITS = 4
# Which units carry which path of the data, for the power report's energy by path. The top level's
# own logic (the score and e row buffers, the status counters) serves the score path.
PATHS = {"score": ("", "ingest", "exp_gate"), "value": ("fetch", "mac"), "normalizer": ("normalizer",),
         "router": ("router",)}


def paths(cfg: HPUConfig) -> dict[str, tuple[str, ...]]:
    """The paths of this instance: the router's only where it has one."""
    return {name: units for name, units in PATHS.items() if name != "router" or cfg.route_block}


def slowest_stage_cycles(cfg: HPUConfig) -> int:
    """Upper bound on the cycles any one stage spends on a row of max_keys keys (docs/ARCHITECTURE.md,
    Throughput): the MAC array's slots, the exp/gate pass and walk, the normalizer's reciprocal and one cycle per element."""
    return max(cfg.max_keys * cfg.chunks, cfg.max_keys + (1 << cfg.prob_bits),
               cfg.quotient_bits + cfg.head_dim + 5, block_cycles(cfg)) + 16


class HPU(wiring.Component):
    """Mass-gated attention rows, bit-exact to golden_model.contract.

    The four stages work on four different rows at once; row buffers are banked
    so that a stage writes one row while the next stage reads another (see
    ``layouts.*_BANKS``). Stages hand rows on through stream descriptors, and a
    stage takes a new row only when it has finished the last one, which is what
    makes the bank counts sufficient.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    scores : In(stream.Signature(layouts.score(cfg)))
        One key's score per beat, ``last`` on the row's final key.
    requests : Out(stream.Signature(layouts.request(cfg)))
        The gate's answer: the kept keys' indices in index order (every index with
        the gate held open), ``last`` on the row's final request. In a system this
        is the request to the KV cache.
    values : In(stream.Signature(layouts.value_word(cfg)))
        Exactly the requested value vectors, in the order requested.
    results : Out(stream.Signature(layouts.result(cfg)))
        One beat per row, in row order: acc, out, z_kept, kept.
    logits : In(stream.Signature(layouts.logit(cfg)))
        Token routing: one router logit per beat, ``last`` on the block's final token.
    routed : Out(stream.Signature(layouts.routed(cfg)))
        The block's routed positions, ascending; the host then sends rows for those tokens only.
        Without a router (``route_block = 0``) ``logits`` is never ready and ``routed`` never valid.
    gate_open : In(1)
        Keep every key of every row (the dense baseline on the same hardware).
        Change it only while the HPU is idle.
    busy : Out(1)       a row is somewhere in the pipeline
    overflow : Out(1)   sticky: a row reached max_keys keys, or a block route_block tokens, without ``last``
    cycles : Out(32)    clock cycles since reset
    rows : Out(32)      rows delivered since reset
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "scores": In(stream.Signature(layouts.score(cfg))),
            "requests": Out(stream.Signature(layouts.request(cfg))),
            "values": In(stream.Signature(layouts.value_word(cfg))),
            "results": Out(stream.Signature(layouts.result(cfg))),
            "logits": In(stream.Signature(layouts.logit(cfg))),
            "routed": Out(stream.Signature(layouts.routed(cfg))),
            "gate_open": In(1),
            "busy": Out(1),
            "overflow": Out(1),
            "cycles": Out(STATUS_BITS),
            "rows": Out(STATUS_BITS),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.score_buffer = scores = layouts.buffer_memory(cfg, "score")
        m.submodules.e_buffer = es = layouts.buffer_memory(cfg, "e")

        m.submodules.ingest = ingest = Ingest(cfg)
        m.submodules.exp_gate = exp_gate = ExpGate(cfg)
        m.submodules.fetch = fetch = FetchSequencer(cfg)
        m.submodules.mac = mac = MacArray(cfg)
        m.submodules.normalizer = normalizer = Normalizer(cfg)

        wiring.connect(m, wiring.flipped(self.scores), ingest.scores)
        wiring.connect(m, fetch.requests, wiring.flipped(self.requests))
        wiring.connect(m, wiring.flipped(self.values), mac.values)
        wiring.connect(m, ingest.row, exp_gate.row)
        wiring.connect(m, exp_gate.gate, fetch.gate)
        wiring.connect(m, fetch.row, mac.row)
        wiring.connect(m, fetch.slots, mac.slots)
        wiring.connect(m, mac.accumulated, normalizer.accumulated)
        wiring.connect(m, normalizer.result, wiring.flipped(self.results))

        wiring.connect(m, ingest.score_write, scores.write_port())
        wiring.connect(m, exp_gate.score_read, scores.read_port())
        wiring.connect(m, exp_gate.e_write, es.write_port())
        wiring.connect(m, fetch.e_read, es.read_port())

        busy = ingest.busy | exp_gate.busy | fetch.busy | mac.busy | normalizer.busy | self.results.valid
        overflow = ingest.overflow
        if cfg.route_block:
            m.submodules.router = router = Router(cfg)
            wiring.connect(m, wiring.flipped(self.logits), router.logits)
            wiring.connect(m, router.routed, wiring.flipped(self.routed))
            busy, overflow = busy | router.busy, overflow | router.overflow
        m.d.comb += [exp_gate.gate_open.eq(self.gate_open), self.overflow.eq(overflow), self.busy.eq(busy)]
        low = Signal(CYCLE_PRESCALE_BITS)
        high = Signal(STATUS_BITS - CYCLE_PRESCALE_BITS)
        m.d.sync += low.eq(low + 1)
        with m.If(low.all()):
            m.d.sync += high.eq(high + 1)
        m.d.comb += self.cycles.eq(Cat(low, high))
        with m.If(self.results.valid & self.results.ready):
            m.d.sync += self.rows.eq(self.rows + 1)
        return m
