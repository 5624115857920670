"""One MAC lane: a multiplier and head_dim / lanes accumulators."""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hpu.config import HPUConfig


class MacLane(wiring.Component):
    """Lane l of the MAC array: accumulates e_j * v_j[c * lanes + l] into accumulator c.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    valid : In(1)
        Accumulate this cycle. While it is low no accumulator is enabled, and the
        MAC array holds the lane's inputs still, so a gated-off key leaves every
        net of the lane silent.
    first : In(1)
        The operands belong to the row's first kept key: overwrite instead of add.
    chunk : In(range(head_dim // lanes))
        Which accumulator the operands go to.
    e : In(prob_bits)    unnormalized probability of the key
    v : In(signed(value_bits))
        The key's value element for this lane and chunk: v_j[chunk * lanes + l].
    acc : Out(ArrayLayout(signed(acc_bits), head_dim // lanes))

    Cycle behaviour: operands presented with ``valid`` in cycle t are added into
    ``acc[chunk]`` at the end of t. Every input comes from the MAC array's operand
    registers, which hold still between kept keys, so the lane needs no operand
    registers of its own.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "chunk": In(range(cfg.chunks)),
            "e": In(unsigned(cfg.prob_bits)),
            "v": In(signed(cfg.value_bits)),
            "acc": Out(data.ArrayLayout(signed(cfg.acc_bits), cfg.chunks)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        product = Signal(signed(cfg.prob_bits + cfg.value_bits + 1))
        m.d.comb += product.eq(self.e * self.v)
        accs = Array(Signal(signed(cfg.acc_bits), name=f"acc{c}") for c in range(cfg.chunks))
        with m.If(self.valid):
            m.d.sync += accs[self.chunk].eq(Mux(self.first, 0, accs[self.chunk]) + product)
        m.d.comb += [self.acc[c].eq(accs[c]) for c in range(cfg.chunks)]
        return m
