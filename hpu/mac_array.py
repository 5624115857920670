"""Sparse MAC array: a scanner that applies the gate and asks for kept values only, and `lanes` MAC lanes."""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.mac_lane import MacLane

SLOT_FIFO_DEPTH = 4
# Requests run ahead of the slots that consume their values, so a host answering within a few
# cycles never leaves a kept slot waiting.
REQUEST_FIFO_DEPTH = 4
# Cycles from a row's start to its first slot: the first request leaves two cycles after the row
# starts, so a host answering within VALUE_LEAD - 1 cycles of a request never makes a slot wait and
# the lockstep schedule's slots stay fixed whether the gate is open or not.
VALUE_LEAD = 4


class MacArray(wiring.Component):
    """Accumulates acc[d] = sum over kept j of e_j * v_j[d] for one row at a time.

    A scanner reads e_j in index order, decides whether key j is kept (threshold
    and tie count from the gate), asks the host for the value vector of a kept
    key (``requests``, in index order) and queues a slot: every key in the
    ``lockstep`` schedule, only kept keys in ``compact``. Each slot takes
    head_dim / lanes cycles; in cycle c of a kept slot lane l adds
    e_j * v_j[c * lanes + l] into its accumulator c, reading the value vector
    straight from the ``values`` stream, which is taken in the slot's last
    cycle: no value is stored. A gated key's value is never asked for; its slot
    presents nothing to the lanes (the value slice is isolated to zero), so they
    stay silent.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    gate : In(stream.Signature(layouts.gated(cfg)))
    requests : Out(stream.Signature(layouts.request(cfg)))
        The kept keys' indices, in index order; ``last`` on the row's final one.
    values : In(stream.Signature(layouts.value_word(cfg)))
        The requested value vectors, in the order asked for.
    accumulated : Out(stream.Signature(layouts.accumulated(cfg)))
    e_read : read port of the e buffer
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to accept the gate's descriptor, VALUE_LEAD
    until the first slot issues, then head_dim / lanes cycles per slot back to back
    (n slots in lockstep, kept slots in compact), 1 to hand the accumulators on.
    A kept slot whose value has not arrived waits for it (the lanes idle).
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "gate": In(stream.Signature(layouts.gated(cfg))),
            "requests": Out(stream.Signature(layouts.request(cfg))),
            "values": In(stream.Signature(layouts.value_word(cfg))),
            "accumulated": Out(stream.Signature(layouts.accumulated(cfg))),
            "e_read": In(layouts.read_port(cfg, "e")),
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
        request_layout = layouts.request(cfg)
        m.submodules.asks = asks = fifo.SyncFIFO(width=request_layout.size, depth=REQUEST_FIFO_DEPTH)

        row = Signal(layouts.gated(cfg))
        running = Signal()

        # Scanner: read e_j (issue) -> decide kept (s1) -> queue the slot.
        scan = Signal(range(cfg.max_keys + 1))
        s1_valid = Signal()
        s1_index = Signal(range(cfg.max_keys))
        ties_seen = Signal(range(cfg.max_keys + 1))
        requested = Signal(range(cfg.max_keys + 1))
        room = ((slots.level + s1_valid < SLOT_FIFO_DEPTH) & (asks.level + s1_valid < REQUEST_FIFO_DEPTH))
        scanning = running & (scan != row.n) & room
        e = self.e_read.data
        tie = ~row.keep_all & (e == row.threshold)
        kept = row.keep_all | (e > row.threshold) | (tie & (ties_seen < row.ties))
        slot_in = Signal(slot_layout)
        ask = Signal(request_layout)
        m.d.comb += [
            self.e_read.addr.eq(layouts.bank_address(cfg, row.e_bank, scan)),
            self.e_read.en.eq(scanning),
            slot_in.index.eq(s1_index), slot_in.e.eq(e), slot_in.kept.eq(kept),
            slots.w_data.eq(slot_in),
            slots.w_en.eq(s1_valid & (kept if cfg.schedule == "compact" else 1)),
            ask.index.eq(s1_index), ask.last.eq(requested + 1 == row.kept),
            asks.w_data.eq(ask),
            asks.w_en.eq(s1_valid & kept),
            self.requests.payload.eq(asks.r_data),
            self.requests.valid.eq(asks.r_rdy),
            asks.r_en.eq(self.requests.ready),
        ]
        m.d.sync += [s1_valid.eq(scanning), s1_index.eq(scan)]
        with m.If(scanning):
            m.d.sync += scan.eq(scan + 1)
        with m.If(s1_valid & tie):
            m.d.sync += ties_seen.eq(ties_seen + 1)
        with m.If(s1_valid & kept):
            m.d.sync += requested.eq(requested + 1)

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
        # A kept slot moves only while its value vector is on the values stream.
        adding = active & active_kept & self.values.valid
        finishing = ~active | Mux(active_kept, adding & (chunk == last_chunk), gap == last_chunk)
        slot_out = slot_layout(slots.r_data)
        lead = Signal(range(VALUE_LEAD + 1))
        pop = finishing & slots.r_rdy & (slots_left != 0) & (lead == 0)
        with m.If(lead != 0):
            m.d.sync += lead.eq(lead - 1)
        m.d.comb += [
            slots.r_en.eq(pop),
            self.values.ready.eq(adding & (chunk == last_chunk)),
        ]
        with m.If(active):
            with m.If(adding):
                m.d.sync += chunk.eq(Mux(chunk == last_chunk, 0, chunk + 1))
            with m.Elif(~active_kept):
                m.d.sync += gap.eq(Mux(gap == last_chunk, 0, gap + 1))
        with m.If(adding & (chunk == last_chunk)):
            m.d.sync += first.eq(0)
        with m.If(finishing):
            m.d.sync += active.eq(pop)
        with m.If(pop):
            m.d.sync += [active_kept.eq(slot_out.kept), slots_left.eq(slots_left - 1)]
            with m.If(slot_out.kept):
                m.d.sync += e_operand.eq(slot_out.e)

        # The chunk counter picks one slice of `lanes` elements out of the value word (elements
        # chunk * lanes .. chunk * lanes + lanes - 1), one multiplexer shared by the array; lane l is
        # wired to element l of the slice. The slice is zero unless a kept slot is adding, so the
        # lanes do not follow the host's bus between values.
        word = self.values.payload.as_value()
        slice_bits = cfg.lanes * cfg.value_bits
        value_slice = Signal(slice_bits)
        chosen = Array(word[c * slice_bits:(c + 1) * slice_bits] for c in range(cfg.chunks))[chunk]
        m.d.comb += value_slice.eq(Mux(adding, chosen, 0))
        for index, lane in enumerate(lanes):
            m.d.comb += [
                lane.valid.eq(adding),
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
                        row.eq(payload), running.eq(1), scan.eq(0), ties_seen.eq(0), requested.eq(0), first.eq(1),
                        lead.eq(VALUE_LEAD),
                        slots_left.eq(payload.n if cfg.schedule == "lockstep" else payload.kept),
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
