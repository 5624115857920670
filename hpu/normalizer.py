"""Normalizer: out[d] = acc[d] * 2**out_frac / z_kept, truncated toward zero and saturated."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig
from hpu.reciprocal import Reciprocal


class Normalizer(wiring.Component):
    """One reciprocal of z_kept per row, then one multiply and shift per output element.

    Division by the row's invariant z_kept (golden_model/reciprocal.py, which the tests prove equal
    to the contract's division for every acc and z_kept): with Q = quotient_bits, l = ceil(log2 z)
    and m = ceil(2**(Q + l) / z) from the sequential ``recip`` unit, the magnitude n = |acc| * 2**out_frac
    gives floor(n / z) = (n * m) >> (Q + l) when n < 2**Q; a larger n saturates. The sign is put back
    (truncation toward zero) and the result saturated to out_bits.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    accumulated : In(stream.Signature(layouts.accumulated(cfg)))
    result : Out(stream.Signature(layouts.result(cfg)))
    busy : Out(1)

    Cycle behaviour per row: Q + head_dim + 5 cycles back to back: 1 to take the accumulators, the
    reciprocal (Q + 2 cycles, and 1 to take it), head_dim cycles, one element each (element ``index`` is read through a multiplexer and
    only its output register is written, so the others hold still); then the result is held until
    taken. The single multiplier sees one operand pair per cycle and nothing between rows.
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
        m.submodules.recip = recip = Reciprocal(cfg)

        acc = Signal(data.ArrayLayout(signed(cfg.acc_bits), cfg.head_dim))
        out = Signal(data.ArrayLayout(signed(cfg.out_bits), cfg.head_dim))
        z_kept = Signal(cfg.z_bits)
        kept = Signal(cfg.count_bits)
        factor = Signal(cfg.reciprocal_bits)
        shift = Signal.like(recip.response.payload.shift)
        index = Signal(range(cfg.head_dim))
        m.d.comb += [self.result.payload.acc.eq(acc), self.result.payload.out.eq(out),
                     self.result.payload.z_kept.eq(z_kept), self.result.payload.kept.eq(kept),
                     recip.request.payload.eq(z_kept)]

        quotient_bits, high = cfg.quotient_bits, (1 << (cfg.out_bits - 1)) - 1
        element = Signal(signed(cfg.acc_bits))
        magnitude = Signal(cfg.acc_bits + cfg.out_frac)
        quotient = Signal(cfg.reciprocal_bits)
        saturated = Signal(signed(cfg.out_bits))
        multiplying = Signal()
        # Operands are held at zero outside the multiply phase, so the multiplier and shifter are
        # silent while the reciprocal runs and between rows.
        m.d.comb += [
            element.eq(Mux(multiplying, acc[index], 0)),
            magnitude.eq(Mux(element < 0, -element, element) << cfg.out_frac),
            quotient.eq((magnitude[:quotient_bits] * factor) >> quotient_bits >> shift),
        ]
        too_big = (magnitude[quotient_bits:] != 0) if cfg.acc_bits + cfg.out_frac > quotient_bits else 0
        m.d.comb += saturated.eq(Mux(element < 0,
                                     -Mux(too_big | (quotient > high + 1), high + 1, quotient),
                                     Mux(too_big | (quotient > high), high, quotient)))

        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.accumulated.ready.eq(1)
                with m.If(self.accumulated.valid):
                    taken = self.accumulated.payload
                    m.d.sync += [acc.eq(taken.acc), z_kept.eq(taken.z_kept), kept.eq(taken.kept)]
                    m.next = "RECIPROCAL"
            with m.State("RECIPROCAL"):
                m.d.comb += recip.request.valid.eq(~recip.response.valid)
                m.d.comb += recip.response.ready.eq(1)
                with m.If(recip.response.valid):
                    m.d.sync += [factor.eq(recip.response.payload.m), shift.eq(recip.response.payload.shift),
                                 index.eq(0)]
                    m.next = "MULTIPLY"
            with m.State("MULTIPLY"):
                m.d.comb += multiplying.eq(1)
                m.d.sync += out[index].eq(saturated)
                m.d.sync += index.eq(index + 1)
                with m.If(index == cfg.head_dim - 1):
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.accumulated.ready)
        return m
