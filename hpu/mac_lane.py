"""One MAC lane: operand registers, a multiplier and head_dim / lanes accumulators."""

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
        Load the operands this cycle. While it is low nothing in the lane
        changes: operand registers hold and no accumulator is enabled, so a
        gated-off key leaves every net of the lane silent.
    first : In(1)
        The operands belong to the row's first kept key: overwrite instead of add.
    chunk : In(range(head_dim // lanes))
        Which accumulator the operands go to.
    e : In(prob_bits)    unnormalized probability of the key
    column : In(ArrayLayout(signed(value_bits), head_dim // lanes))
        This lane's elements of the key's value vector (element c is v_j[c * lanes + l]);
        the lane takes ``column[chunk]``.
    acc : Out(ArrayLayout(signed(acc_bits), head_dim // lanes))

    Cycle behaviour: operands presented with ``valid`` in cycle t are registered
    at the end of t and added into ``acc[chunk]`` at the end of t + 1.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "valid": In(1),
            "first": In(1),
            "chunk": In(range(cfg.chunks)),
            "e": In(unsigned(cfg.prob_bits)),
            "column": In(data.ArrayLayout(signed(cfg.value_bits), cfg.chunks)),
            "acc": Out(data.ArrayLayout(signed(cfg.acc_bits), cfg.chunks)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        e_op = Signal(unsigned(cfg.prob_bits))
        v_op = Signal(signed(cfg.value_bits))
        chunk_op = Signal(range(cfg.chunks))
        first_op = Signal()
        loaded = Signal()
        with m.If(self.valid):
            m.d.sync += [e_op.eq(self.e), v_op.eq(self.column[self.chunk]), chunk_op.eq(self.chunk),
                         first_op.eq(self.first)]
        m.d.sync += loaded.eq(self.valid)

        product = Signal(signed(cfg.prob_bits + cfg.value_bits + 1))
        m.d.comb += product.eq(e_op * v_op)
        accs = Array(Signal(signed(cfg.acc_bits), name=f"acc{c}") for c in range(cfg.chunks))
        with m.If(loaded):
            m.d.sync += accs[chunk_op].eq(Mux(first_op, 0, accs[chunk_op]) + product)
        m.d.comb += [self.acc[c].eq(accs[c]) for c in range(cfg.chunks)]
        return m
