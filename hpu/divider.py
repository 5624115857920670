"""Sequential unsigned divider: one quotient bit per cycle (restoring division)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


class Divider(wiring.Component):
    """``quotient, remainder = divmod(dividend, divisor)`` in ``dividend_bits`` cycles.

    Parameters
    ----------
    dividend_bits, divisor_bits : int
        Unsigned operand widths. The quotient is ``dividend_bits`` wide.

    Members
    -------
    request : In(stream.Signature(dividend, divisor))
        Accepted only while idle. A zero divisor yields an all-ones quotient.
    response : Out(stream.Signature(quotient, remainder))
        Held until taken; the next request is accepted in the same cycle.

    Cycle behaviour: a request accepted in cycle t is answered (``response.valid``)
    in cycle t + dividend_bits + 1.
    """

    def __init__(self, dividend_bits: int, divisor_bits: int):
        if dividend_bits < 1 or divisor_bits < 1:
            raise ValueError(f"Divider widths must be positive, not {dividend_bits}, {divisor_bits}")
        self.dividend_bits = dividend_bits
        self.divisor_bits = divisor_bits
        super().__init__({
            "request": In(stream.Signature(data.StructLayout({
                "dividend": unsigned(dividend_bits), "divisor": unsigned(divisor_bits)}))),
            "response": Out(stream.Signature(data.StructLayout({
                "quotient": unsigned(dividend_bits), "remainder": unsigned(divisor_bits)}))),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.dividend_bits
        shifting = Signal(width)            # dividend bits not yet consumed, MSB first
        divisor = Signal(self.divisor_bits)
        remainder = Signal(self.divisor_bits + 1)
        quotient = Signal(width)
        step = Signal(range(width + 1))
        busy = Signal()

        trial = Signal(self.divisor_bits + 2)
        m.d.comb += trial.eq((remainder << 1) | shifting[-1])

        m.d.comb += [
            self.request.ready.eq(~busy & (~self.response.valid | self.response.ready)),
            # Outputs isolated until valid: the partial quotient does not ripple into the consumer.
            self.response.payload.quotient.eq(Mux(self.response.valid, quotient, 0)),
            self.response.payload.remainder.eq(Mux(self.response.valid, remainder, 0)),
        ]
        with m.If(self.response.valid & self.response.ready):
            m.d.sync += self.response.valid.eq(0)
        with m.If(self.request.valid & self.request.ready):
            m.d.sync += [
                shifting.eq(self.request.payload.dividend),
                divisor.eq(self.request.payload.divisor),
                remainder.eq(0),
                step.eq(width),
                busy.eq(1),
            ]
        with m.Elif(busy):
            with m.If(trial >= divisor):
                m.d.sync += [remainder.eq(trial - divisor), quotient.eq((quotient << 1) | 1)]
            with m.Else():
                m.d.sync += [remainder.eq(trial), quotient.eq(quotient << 1)]
            m.d.sync += [shifting.eq(shifting << 1), step.eq(step - 1)]
            with m.If(step == 1):
                m.d.sync += [busy.eq(0), self.response.valid.eq(1)]
        return m
