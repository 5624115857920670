"""Sequential reciprocal: m = ceil(2**(quotient_bits + l) / z), l = ceil(log2 z), one bit per cycle."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu.config import HPUConfig


class Reciprocal(wiring.Component):
    """The normalizer's per-row reciprocal of z_kept (golden_model.reciprocal is its model).

    m - 1 = floor((2**(Q + l) - 1) / z) by restoring division. The dividend is all ones, and the
    quotient has at most Q + 1 bits, so the division starts from the remainder its top l - 1 bits
    leave, 2**(l - 1) - 1 (below z), and shifts in one bit (1 if l >= 1) and then Q ones.

    Parameters
    ----------
    cfg : HPUConfig
        ``quotient_bits`` (Q), ``reciprocal_bits`` and ``z_bits`` set the widths.

    Members
    -------
    request : In(stream.Signature(z_bits))
        z_kept, 1 <= z < 2**z_bits; accepted only while idle.
    response : Out(stream.Signature({m, shift}))
        m (reciprocal_bits wide) and l; held until taken, zero until valid (isolated).

    Cycle behaviour: a request accepted in cycle t is answered in cycle t + Q + 2.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        shift_range = range(cfg.z_bits + 1)
        super().__init__({
            "request": In(stream.Signature(cfg.z_bits)),
            "response": Out(stream.Signature(data.StructLayout({"m": cfg.reciprocal_bits, "shift": shift_range}))),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        steps = cfg.quotient_bits + 1
        z = Signal(cfg.z_bits)
        shift = Signal(range(cfg.z_bits + 1))
        remainder = Signal(cfg.z_bits + 1)
        quotient = Signal(steps)
        first = Signal()       # the bit shifted in first: 1 when l >= 1
        step = Signal(range(steps + 1))
        busy = Signal()

        # l = ceil(log2 z) = bit length of z - 1: a priority encoder, once per row.
        below = Signal(cfg.z_bits)
        length = Signal(range(cfg.z_bits + 1))
        m.d.comb += below.eq(self.request.payload - 1)
        for bit in range(cfg.z_bits):
            with m.If(below[bit]):
                m.d.comb += length.eq(bit + 1)

        trial = Signal(cfg.z_bits + 2)
        m.d.comb += trial.eq(Cat(Mux(step == steps, first, 1), remainder))
        m.d.comb += [
            self.request.ready.eq(~busy & (~self.response.valid | self.response.ready)),
            self.response.payload.m.eq(Mux(self.response.valid, quotient + 1, 0)),
            self.response.payload.shift.eq(Mux(self.response.valid, shift, 0)),
        ]
        with m.If(self.response.valid & self.response.ready):
            m.d.sync += self.response.valid.eq(0)
        with m.If(self.request.valid & self.request.ready):
            m.d.sync += [
                z.eq(self.request.payload),
                shift.eq(length),
                first.eq(length != 0),
                remainder.eq(((1 << length) - 1) >> 1),
                quotient.eq(0),
                step.eq(steps),
                busy.eq(1),
            ]
        with m.Elif(busy):
            with m.If(trial >= z):
                m.d.sync += [remainder.eq(trial - z), quotient.eq((quotient << 1) | 1)]
            with m.Else():
                m.d.sync += [remainder.eq(trial), quotient.eq(quotient << 1)]
            m.d.sync += step.eq(step - 1)
            with m.If(step == 1):
                m.d.sync += [busy.eq(0), self.response.valid.eq(1)]
        return m
