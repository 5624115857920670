"""Fetch sequencer: applies the gate to a row's e values, asks the host for the kept keys' value
vectors and hands the MAC array its slots."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig

SLOT_FIFO_DEPTH = 4
# Requests run ahead of the slots that consume their values, so a host answering within a few
# cycles never leaves a kept slot waiting.
REQUEST_FIFO_DEPTH = 4


class FetchSequencer(wiring.Component):
    """Reads e_j in index order, decides whether key j is kept (threshold and tie count from the
    gate), sends a kept key's index to the host (``requests``) and queues the key's slot for the
    MAC array (``slots``: every key in ``lockstep``, kept keys only in ``compact``).

    The sequencer and the MAC array start a row together: the gate's descriptor is taken in the
    cycle the MAC array takes the row's totals (``row``), so the sequencer never runs into the
    next row while the lanes still need this one's e bank, and the lockstep slots stay fixed.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    gate : In(stream.Signature(layouts.gated(cfg)))
    e_read : read port of the e buffer
    row : Out(stream.Signature(layouts.row_totals(cfg)))
        The row's slot count, z_kept and kept count, offered with the gate's descriptor.
    slots : Out(stream.Signature(layouts.slot(cfg)))
        One beat per slot, in index order.
    requests : Out(stream.Signature(layouts.request(cfg)))
        The kept keys' indices, in index order; ``last`` on the row's final one.
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to take the descriptor, then one e read per cycle while both
    FIFOs have room (a read in cycle t is decided in t + 1 and its request can leave in t + 2),
    n reads in all. Its counters are enabled only while it reads, so between rows it is silent.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "gate": In(stream.Signature(layouts.gated(cfg))),
            "e_read": In(layouts.read_port(cfg, "e")),
            "row": Out(stream.Signature(layouts.row_totals(cfg))),
            "slots": Out(stream.Signature(layouts.slot(cfg))),
            "requests": Out(stream.Signature(layouts.request(cfg))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        slot_layout, request_layout = layouts.slot(cfg), layouts.request(cfg)
        m.submodules.slots = slots = fifo.SyncFIFO(width=slot_layout.size, depth=SLOT_FIFO_DEPTH)
        m.submodules.asks = asks = fifo.SyncFIFO(width=request_layout.size, depth=REQUEST_FIFO_DEPTH)

        gate = self.gate.payload
        m.d.comb += [
            self.row.payload.slots.eq(gate.n if cfg.schedule == "lockstep" else gate.kept),
            self.row.payload.z_kept.eq(gate.z_kept),
            self.row.payload.kept.eq(gate.kept),
            self.row.valid.eq(self.gate.valid & ~self.busy),
            self.gate.ready.eq(self.row.ready & ~self.busy),
        ]
        start = self.gate.valid & self.gate.ready

        # Each counter is written only under its own enable (start, or the work that moves it), so
        # that synthesis gives it a clock enable and an idle sequencer draws no clock energy.
        row = Signal(layouts.gated(cfg))
        scan = Signal(range(cfg.max_keys + 1))
        s1_valid = Signal()
        s1_index = Signal(range(cfg.max_keys))
        ties_seen = Signal(range(cfg.max_keys + 1))
        requested = Signal(range(cfg.max_keys + 1))
        room = (slots.level + s1_valid < SLOT_FIFO_DEPTH) & (asks.level + s1_valid < REQUEST_FIFO_DEPTH)
        scanning = self.busy & (scan != row.n) & room
        e = self.e_read.data
        tie = ~row.keep_all & (e == row.threshold)
        kept = row.keep_all | (e > row.threshold) | (tie & (ties_seen < row.ties))
        counted_tie, counted_kept = s1_valid & tie, s1_valid & kept
        with m.If(start):
            m.d.sync += row.eq(gate)
        with m.If(start | scanning):
            m.d.sync += scan.eq(Mux(start, 0, scan + 1))
        with m.If(scanning):
            m.d.sync += s1_index.eq(scan)
        with m.If(scanning | s1_valid):
            m.d.sync += s1_valid.eq(scanning)
        with m.If(start | counted_tie):
            m.d.sync += ties_seen.eq(Mux(start, 0, ties_seen + 1))
        with m.If(start | counted_kept):
            m.d.sync += requested.eq(Mux(start, 0, requested + 1))
        with m.If(start):
            m.d.sync += self.busy.eq(1)
        with m.Elif(self.busy & (scan == row.n) & ~s1_valid):
            m.d.sync += self.busy.eq(0)

        slot_in = slot_layout(slots.w_data)
        ask_in = request_layout(asks.w_data)
        m.d.comb += [
            self.e_read.addr.eq(layouts.bank_address(cfg, row.e_bank, scan)),
            self.e_read.en.eq(scanning),
            slot_in.e.eq(e), slot_in.kept.eq(kept),
            slots.w_en.eq(s1_valid & (kept if cfg.schedule == "compact" else 1)),
            ask_in.index.eq(s1_index), ask_in.last.eq(requested + 1 == row.kept),
            asks.w_en.eq(counted_kept),
            self.slots.payload.eq(slots.r_data), self.slots.valid.eq(slots.r_rdy), slots.r_en.eq(self.slots.ready),
            self.requests.payload.eq(asks.r_data), self.requests.valid.eq(asks.r_rdy),
            asks.r_en.eq(self.requests.ready),
        ]
        return m
