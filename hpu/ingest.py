"""Ingest: writes a row's keys into the score and value buffers and tracks the row maximum."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig


class Ingest(wiring.Component):
    """Takes one key per cycle into the row buffers.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    keys : In(stream.Signature(layouts.key(cfg)))
        The host's keys; ``last`` ends a row. A row reaching ``max_keys`` keys
        ends there even without ``last``, and ``overflow`` is set (sticky).
    row : Out(stream.Signature(layouts.ingested(cfg)))
        One descriptor per row: length n, maximum score m, banks used.
    score_write, value_write : memory write ports of the score and value buffers.
    overflow : Out(1)
    busy : Out(1)

    Cycle behaviour: n cycles to take a row, one more to hand its descriptor
    on; the next row's keys are taken right after.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "keys": In(stream.Signature(layouts.key(cfg))),
            "row": Out(stream.Signature(layouts.ingested(cfg))),
            "score_write": In(layouts.write_port(cfg, "score")),
            "value_write": In(layouts.write_port(cfg, "value")),
            "overflow": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        count = Signal(range(cfg.max_keys + 1))
        maximum = Signal(signed(cfg.score_bits))
        score_bank = Signal(range(layouts.SCORE_BANKS))
        value_bank = Signal(range(layouts.VALUE_BANKS))
        handing_off = Signal()

        key = self.keys.payload
        take = self.keys.valid & self.keys.ready
        m.d.comb += [
            self.keys.ready.eq(~handing_off),
            self.score_write.addr.eq(layouts.bank_address(cfg, score_bank, count)),
            self.score_write.data.eq(key.score),
            self.score_write.en.eq(take),
            self.value_write.addr.eq(layouts.bank_address(cfg, value_bank, count)),
            self.value_write.data.eq(key.value),
            self.value_write.en.eq(take),
            self.row.valid.eq(handing_off),
            self.row.payload.n.eq(count),
            self.row.payload.m.eq(maximum),
            self.row.payload.score_bank.eq(score_bank),
            self.row.payload.value_bank.eq(value_bank),
            self.busy.eq(handing_off | (count != 0)),
        ]
        with m.If(take):
            m.d.sync += count.eq(count + 1)
            with m.If((count == 0) | (key.score > maximum)):
                m.d.sync += maximum.eq(key.score)
            with m.If(key.last | (count == cfg.max_keys - 1)):
                m.d.sync += handing_off.eq(1)
                with m.If(~key.last):
                    m.d.sync += self.overflow.eq(1)
        with m.If(self.row.valid & self.row.ready):
            m.d.sync += [
                handing_off.eq(0),
                count.eq(0),
                score_bank.eq(Mux(score_bank == layouts.SCORE_BANKS - 1, 0, score_bank + 1)),
                value_bank.eq(Mux(value_bank == layouts.VALUE_BANKS - 1, 0, value_bank + 1)),
            ]
        return m
