"""Sparse MAC array: a scanner that applies the gate, and `lanes` MAC lanes that stay silent for gated keys."""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.mac_lane import MacLane

SLOT_FIFO_DEPTH = 4


class MacArray(wiring.Component):
    """Accumulates acc[d] = sum over kept j of e_j * v_j[d] for one row at a time.

    A scanner reads e_j in index order, decides whether key j is kept (threshold
    and tie count from the gate) and queues a slot: every key in the
    ``lockstep`` schedule, only kept keys in ``compact``. Each slot takes
    head_dim / lanes cycles; in cycle c of a kept slot lane l adds
    e_j * v_j[c * lanes + l] into its accumulator c. A gated slot reads no
    value word and presents nothing new to the lanes, so they stay silent.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    gate : In(stream.Signature(layouts.gated(cfg)))
    accumulated : Out(stream.Signature(layouts.accumulated(cfg)))
    e_read, value_read : read ports of the e buffer and the value buffer
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to accept the gate's descriptor, 2 until
    the first slot issues, then head_dim / lanes cycles per slot back to back
    (n slots in lockstep, kept slots in compact), 1 to hand the accumulators on.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "gate": In(stream.Signature(layouts.gated(cfg))),
            "accumulated": Out(stream.Signature(layouts.accumulated(cfg))),
            "e_read": In(layouts.read_port(cfg, "e")),
            "value_read": In(layouts.read_port(cfg, "value")),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        lanes = []
        for index in range(cfg.lanes):
            lane = MacLane(cfg)
            m.submodules[f"lane{index}"] = lane
            lanes.append(lane)

        slot_layout = data.StructLayout({"index": range(cfg.max_keys), "e": unsigned(cfg.prob_bits), "kept": 1})
        m.submodules.slots = slots = fifo.SyncFIFO(width=slot_layout.size, depth=SLOT_FIFO_DEPTH)

        row = Signal(layouts.gated(cfg))
        running = Signal()

        # Scanner: read e_j (issue) -> decide kept (s1) -> queue the slot.
        scan = Signal(range(cfg.max_keys + 1))
        s1_valid = Signal()
        s1_index = Signal(range(cfg.max_keys))
        ties_seen = Signal(range(cfg.max_keys + 1))
        room = slots.level + s1_valid < SLOT_FIFO_DEPTH
        scanning = running & (scan != row.n) & room
        e = self.e_read.data
        tie = ~row.keep_all & (e == row.threshold)
        kept = row.keep_all | (e > row.threshold) | (tie & (ties_seen < row.ties))
        slot_in = Signal(slot_layout)
        m.d.comb += [
            self.e_read.addr.eq(layouts.bank_address(cfg, row.e_bank, scan)),
            self.e_read.en.eq(scanning),
            slot_in.index.eq(s1_index), slot_in.e.eq(e), slot_in.kept.eq(kept),
            slots.w_data.eq(slot_in),
            slots.w_en.eq(s1_valid & (kept if cfg.schedule == "compact" else 1)),
        ]
        m.d.sync += [s1_valid.eq(scanning), s1_index.eq(scan)]
        with m.If(scanning):
            m.d.sync += scan.eq(scan + 1)
        with m.If(s1_valid & tie):
            m.d.sync += ties_seen.eq(ties_seen + 1)

        # Issue: one slot of head_dim / lanes cycles at a time. The chunk counter
        # moves only in kept slots and the gap counter only in gated ones, so that
        # the lanes' inputs stay still while a gated slot passes.
        active = Signal()
        active_kept = Signal()
        chunk = Signal(range(cfg.chunks))
        gap = Signal(range(cfg.chunks))
        e_operand = Signal(unsigned(cfg.prob_bits))
        first = Signal()
        slots_left = Signal(range(cfg.max_keys + 1))
        last_chunk = cfg.chunks - 1
        finishing = ~active | Mux(active_kept, chunk == last_chunk, gap == last_chunk)
        slot_out = slot_layout(slots.r_data)
        pop = finishing & slots.r_rdy & (slots_left != 0)
        m.d.comb += [
            slots.r_en.eq(pop),
            self.value_read.addr.eq(layouts.bank_address(cfg, row.value_bank, slot_out.index)),
            self.value_read.en.eq(pop & slot_out.kept),
        ]
        with m.If(active):
            with m.If(active_kept):
                m.d.sync += chunk.eq(Mux(chunk == last_chunk, 0, chunk + 1))
            with m.Else():
                m.d.sync += gap.eq(Mux(gap == last_chunk, 0, gap + 1))
        with m.If(active & active_kept & (chunk == last_chunk)):
            m.d.sync += first.eq(0)
        with m.If(finishing):
            m.d.sync += active.eq(pop)
        with m.If(pop):
            m.d.sync += [active_kept.eq(slot_out.kept), slots_left.eq(slots_left - 1)]
            with m.If(slot_out.kept):
                m.d.sync += e_operand.eq(slot_out.e)

        # The chunk counter picks one slice of `lanes` elements out of the value word (elements
        # chunk * lanes .. chunk * lanes + lanes - 1), one multiplexer shared by the array; lane l is
        # wired to element l of the slice.
        word = self.value_read.data.as_value()
        slice_bits = cfg.lanes * cfg.value_bits
        value_slice = Signal(slice_bits)
        m.d.comb += value_slice.eq(Array(word[c * slice_bits:(c + 1) * slice_bits] for c in range(cfg.chunks))[chunk])
        for index, lane in enumerate(lanes):
            m.d.comb += [
                lane.valid.eq(active & active_kept),
                lane.first.eq(first),
                lane.chunk.eq(chunk),
                lane.e.eq(e_operand),
                lane.v.eq(value_slice[index * cfg.value_bits:(index + 1) * cfg.value_bits]),
            ]

        # The accumulators reach the normalizer only while offered (operand isolation): while a
        # row accumulates, the wide result bus and everything behind it stay still.
        result = self.accumulated.payload
        for index, lane in enumerate(lanes):
            for c in range(cfg.chunks):
                m.d.comb += result.acc[c * cfg.lanes + index].eq(Mux(self.accumulated.valid, lane.acc[c], 0))
        m.d.comb += [result.z_kept.eq(row.z_kept), result.kept.eq(row.kept)]

        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.gate.ready.eq(1)
                with m.If(self.gate.valid):
                    payload = self.gate.payload
                    m.d.sync += [
                        row.eq(payload), running.eq(1), scan.eq(0), ties_seen.eq(0), first.eq(1),
                        slots_left.eq(payload.n if cfg.schedule == "lockstep" else
                                      Mux(payload.keep_all, payload.n, payload.kept)),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If((slots_left == 0) & finishing):
                    m.d.sync += running.eq(0)
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.accumulated.valid.eq(1)
                with m.If(self.accumulated.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.gate.ready)
        return m
