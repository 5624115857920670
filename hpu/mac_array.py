"""Sparse MAC array: `lanes` MAC lanes and the issue logic that feeds them one slot at a time."""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.mac_lane import MacLane

# Cycles from a row's start to its first slot: the fetch sequencer's first request leaves two
# cycles after the row starts, so a host answering within VALUE_LEAD - 1 cycles of a request never
# makes a slot wait and the lockstep schedule's slots stay fixed whether the gate is open or not.
VALUE_LEAD = 4


class MacArray(wiring.Component):
    """Accumulates acc[d] = sum over kept j of e_j * v_j[d] for one row at a time.

    The fetch sequencer (``hpu.fetch``) decides which keys are kept and asks the host for their
    values; the array only does the arithmetic that gating silences. Each slot takes
    head_dim / lanes cycles; in cycle c of a kept slot lane l adds e_j * v_j[c * lanes + l] into
    its accumulator c, reading the value vector straight from the ``values`` stream, which is
    taken in the slot's last cycle: no value vector is stored. The lanes read operand registers
    (one value slice, e, chunk, first) that load only in a kept slot's cycles, so a gated slot
    leaves every lane input still and the lanes silent.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    row : In(stream.Signature(layouts.row_totals(cfg)))
        Taken when idle: the row's slot count and totals.
    slots : In(stream.Signature(layouts.slot(cfg)))
    values : In(stream.Signature(layouts.value_word(cfg)))
        The kept keys' value vectors, in slot order.
    accumulated : Out(stream.Signature(layouts.accumulated(cfg)))
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to take the row, VALUE_LEAD until the first slot issues,
    then head_dim / lanes cycles per slot back to back; each cycle's operands are added one cycle
    later, so the row ends with 1 cycle for the last add (kept or not) and 1 to hand the
    accumulators on. A kept slot whose value has not arrived waits for it (the lanes idle).
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "row": In(stream.Signature(layouts.row_totals(cfg))),
            "slots": In(stream.Signature(layouts.slot(cfg))),
            "values": In(stream.Signature(layouts.value_word(cfg))),
            "accumulated": Out(stream.Signature(layouts.accumulated(cfg))),
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

        # One slot of head_dim / lanes cycles at a time. The chunk counter moves only in kept
        # slots and the gap counter only in gated ones, so that the lanes' inputs stay still while
        # a gated slot passes; every register is written under its own enable.
        z_kept = Signal(cfg.z_bits)
        kept = Signal(cfg.count_bits)
        slots_left = Signal(cfg.count_bits)
        start = self.row.valid & self.row.ready
        active = Signal()
        active_kept = Signal()
        chunk = Signal(range(cfg.chunks))
        gap = Signal(range(cfg.chunks))
        e_operand = Signal(unsigned(cfg.prob_bits))
        first = Signal()
        lead = Signal(range(VALUE_LEAD + 1))
        last_chunk = cfg.chunks - 1
        # A kept slot moves only while its value vector is on the values stream.
        adding = active & active_kept & self.values.valid
        slot_done = adding & (chunk == last_chunk)
        finishing = ~active | Mux(active_kept, slot_done, gap == last_chunk)
        pop = finishing & self.slots.valid & (slots_left != 0) & (lead == 0)
        m.d.comb += [self.slots.ready.eq(pop), self.values.ready.eq(slot_done)]
        with m.If(start):
            m.d.sync += [z_kept.eq(self.row.payload.z_kept), kept.eq(self.row.payload.kept)]
        with m.If(start | pop):
            m.d.sync += slots_left.eq(Mux(start, self.row.payload.slots, slots_left - 1))
        with m.If(start | (lead != 0)):
            m.d.sync += lead.eq(Mux(start, VALUE_LEAD, lead - 1))
        with m.If(start | slot_done):
            m.d.sync += first.eq(start)
        with m.If(adding):
            m.d.sync += chunk.eq(Mux(chunk == last_chunk, 0, chunk + 1))
        with m.If(active & ~active_kept):
            m.d.sync += gap.eq(Mux(gap == last_chunk, 0, gap + 1))
        with m.If(finishing):
            m.d.sync += active.eq(pop)
        with m.If(pop):
            m.d.sync += active_kept.eq(self.slots.payload.kept)
        with m.If(pop & self.slots.payload.kept):
            m.d.sync += e_operand.eq(self.slots.payload.e)

        # The chunk counter picks one slice of `lanes` elements out of the value word (elements
        # chunk * lanes .. chunk * lanes + lanes - 1), one multiplexer shared by the array; lane l is
        # wired to element l of the slice. The lanes read operand registers that load only while a kept
        # slot adds, one cycle ahead of its accumulation: between kept keys every lane input holds its
        # last value, whatever the host's bus does. (Isolating the slice to zero instead moved every
        # operand bit, and the product behind it, twice per kept key that follows a gated one: 8% more
        # lane energy per kept key gated than dense on the demo rows.)
        word = self.values.payload.as_value()
        slice_bits = cfg.lanes * cfg.value_bits
        chosen = Array(word[c * slice_bits:(c + 1) * slice_bits] for c in range(cfg.chunks))[chunk]
        v_operands = Signal(slice_bits)
        e_lanes = Signal(unsigned(cfg.prob_bits))
        chunk_lanes = Signal(range(cfg.chunks))
        first_lanes = Signal()
        add = Signal()
        with m.If(adding):
            m.d.sync += [v_operands.eq(chosen), first_lanes.eq(first)]
        with m.If(adding & (chunk == 0)):
            m.d.sync += e_lanes.eq(e_operand)
        # The lanes' accumulator select follows the chunk counter one cycle late, including its wrap
        # to 0 after a slot's final add, as it does when kept slots follow each other: the select
        # that rested on the last accumulator would pass its final update through the lanes'
        # multiplexers once more before the next kept key.
        with m.If(adding | add):
            m.d.sync += [add.eq(adding), chunk_lanes.eq(chunk)]
        for index, lane in enumerate(lanes):
            m.d.comb += [
                lane.valid.eq(add),
                lane.first.eq(first_lanes),
                lane.chunk.eq(chunk_lanes),
                lane.e.eq(e_lanes),
                lane.v.eq(v_operands[index * cfg.value_bits:(index + 1) * cfg.value_bits]),
            ]

        # The accumulators are wired straight to the normalizer's capture register, which is
        # enabled once per row and so already isolates everything behind it. An AND isolation in
        # front of it cost 2 x popcount(acc) toggles per row for nothing (110 pJ on the demo's 24
        # rows, the same gated and dense).
        result = self.accumulated.payload
        for index, lane in enumerate(lanes):
            for c in range(cfg.chunks):
                m.d.comb += result.acc[c * cfg.lanes + index].eq(lane.acc[c])
        m.d.comb += [result.z_kept.eq(z_kept), result.kept.eq(kept)]

        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.row.ready.eq(1)
                with m.If(self.row.valid):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If((slots_left == 0) & finishing):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # The last slot's final add lands now; taken whether that slot was kept or not, so a
                # lockstep row takes the same cycles gated and dense.
                m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.accumulated.valid.eq(1)
                with m.If(self.accumulated.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.row.ready)
        return m
