"""Normalizer: out[d] = acc[d] * 2**out_frac / z_kept, truncated toward zero and saturated."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
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

        held = Signal(layouts.result(cfg))
        round_ = Signal(range(cfg.chunks))
        issued = Signal()
        m.d.comb += self.result.payload.eq(held)

        high = (1 << (cfg.out_bits - 1)) - 1
        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.accumulated.ready.eq(1)
                with m.If(self.accumulated.valid):
                    taken = self.accumulated.payload
                    m.d.sync += [held.acc.eq(taken.acc), held.z_kept.eq(taken.z_kept), held.kept.eq(taken.kept),
                                 round_.eq(0), issued.eq(0)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                all_done = 1
                for index, divider in enumerate(dividers):
                    acc = Signal(signed(cfg.acc_bits), name=f"acc_in{index}")
                    m.d.comb += [
                        acc.eq(held.acc.as_value().word_select(round_ * cfg.lanes + index, cfg.acc_bits)),
                        divider.request.payload.dividend.eq(Mux(acc < 0, -acc, acc) << cfg.out_frac),
                        divider.request.payload.divisor.eq(held.z_kept),
                        divider.request.valid.eq(~issued),
                        divider.response.ready.eq(1),
                    ]
                    all_done = all_done & divider.response.valid
                    quotient = divider.response.payload.quotient
                    saturated = Mux(acc < 0,
                                    -Mux(quotient > high + 1, high + 1, quotient),
                                    Mux(quotient > high, high, quotient))
                    with m.If(divider.response.valid):
                        m.d.sync += held.out.as_value().word_select(round_ * cfg.lanes + index, cfg.out_bits).eq(
                            saturated)
                m.d.sync += issued.eq(1)
                with m.If(all_done):
                    m.d.sync += [round_.eq(round_ + 1), issued.eq(0)]
                    with m.If(round_ == cfg.chunks - 1):
                        m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.accumulated.ready)
        return m
