"""Normalizer: out[d] = acc[d] * 2**out_frac / z_kept, truncated toward zero and saturated."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.divider import Divider


class Normalizer(wiring.Component):
    """Divides a row's accumulators by z_kept with ``lanes`` sequential dividers side by side.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    accumulated : In(stream.Signature(layouts.accumulated(cfg)))
    result : Out(stream.Signature(layouts.result(cfg)))
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to take the accumulators, then
    head_dim / lanes rounds of (acc_bits + out_frac + 1) cycles, then the result
    is held until taken. The magnitude |acc| * 2**out_frac is divided and the
    sign put back, which is truncation toward zero.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "accumulated": In(stream.Signature(layouts.accumulated(cfg))),
            "result": Out(stream.Signature(layouts.result(cfg))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        dividend_bits = cfg.acc_bits + cfg.out_frac
        dividers = []
        for index in range(cfg.lanes):
            divider = Divider(dividend_bits, cfg.z_bits)
            m.submodules[f"div{index}"] = divider
            dividers.append(divider)

        # Rounds rotate the accumulators and shift the outputs by `lanes` elements, so divider l
        # always reads element l and writes the top: fixed wiring instead of wide multiplexers.
        acc = Signal(data.ArrayLayout(signed(cfg.acc_bits), cfg.head_dim))
        out = Signal(data.ArrayLayout(signed(cfg.out_bits), cfg.head_dim))
        z_kept = Signal(cfg.z_bits)
        kept = Signal(cfg.count_bits)
        round_ = Signal(range(cfg.chunks))
        issued = Signal()
        m.d.comb += [self.result.payload.acc.eq(acc), self.result.payload.out.eq(out),
                     self.result.payload.z_kept.eq(z_kept), self.result.payload.kept.eq(kept)]

        high = (1 << (cfg.out_bits - 1)) - 1
        rest = cfg.head_dim - cfg.lanes
        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.accumulated.ready.eq(1)
                with m.If(self.accumulated.valid):
                    taken = self.accumulated.payload
                    m.d.sync += [acc.eq(taken.acc), z_kept.eq(taken.z_kept), kept.eq(taken.kept),
                                 round_.eq(0), issued.eq(0)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                take = Signal()
                m.d.comb += take.eq(Cat(d.response.valid for d in dividers).all())
                for index, divider in enumerate(dividers):
                    value = acc[index]
                    quotient = divider.response.payload.quotient
                    saturated = Mux(value < 0,
                                    -Mux(quotient > high + 1, high + 1, quotient),
                                    Mux(quotient > high, high, quotient))
                    m.d.comb += [
                        divider.request.payload.dividend.eq(Mux(value < 0, -value, value) << cfg.out_frac),
                        divider.request.payload.divisor.eq(z_kept),
                        divider.request.valid.eq(~issued),
                        divider.response.ready.eq(take),
                    ]
                    with m.If(take):
                        m.d.sync += [out[rest + index].eq(saturated), acc[rest + index].eq(value)]
                m.d.sync += issued.eq(1)
                with m.If(take):
                    for index in range(rest):
                        m.d.sync += [out[index].eq(out[index + cfg.lanes]), acc[index].eq(acc[index + cfg.lanes])]
                    m.d.sync += [round_.eq(round_ + 1), issued.eq(0)]
                    with m.If(round_ == cfg.chunks - 1):
                        m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.accumulated.ready)
        return m
