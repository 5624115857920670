"""Ingest: writes a row's scores into the score buffer and tracks the row maximum."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import HPUConfig


class Ingest(wiring.Component):
    """Takes one score per cycle into the score buffer.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    scores : In(stream.Signature(layouts.score(cfg)))
        The host's scores; ``last`` ends a row. A row reaching ``max_keys`` keys
        ends there even without ``last``, and ``overflow`` is set (sticky).
    row : Out(stream.Signature(layouts.ingested(cfg)))
        One descriptor per row: length n, maximum score m, the bank used.
    score_write : memory write port of the score buffer.
    overflow : Out(1)
    busy : Out(1)

    Cycle behaviour: n cycles to take a row, one more to hand its descriptor
    on; the next row's keys are taken right after.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "scores": In(stream.Signature(layouts.score(cfg))),
            "row": Out(stream.Signature(layouts.ingested(cfg))),
            "score_write": In(layouts.write_port(cfg, "score")),
            "overflow": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        count = Signal(range(cfg.max_keys + 1))
        maximum = Signal(signed(cfg.score_bits))
        score_bank = Signal(range(layouts.SCORE_BANKS))
        handing_off = Signal()

        key = self.scores.payload
        take = self.scores.valid & self.scores.ready
        m.d.comb += [
            self.scores.ready.eq(~handing_off),
            self.score_write.addr.eq(layouts.bank_address(cfg, score_bank, count)),
            self.score_write.data.eq(key.score),
            self.score_write.en.eq(take),
            self.row.valid.eq(handing_off),
            self.row.payload.n.eq(count),
            self.row.payload.m.eq(maximum),
            self.row.payload.score_bank.eq(score_bank),
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
            ]
        return m
