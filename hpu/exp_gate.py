"""Exp front end and mass gate: e_j from the shared EXP_LUT, Z, and the kept set by histogram walk."""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.lut import exp_lut
from hpu import layouts
from hpu.config import GATE_SCALE, GATE_SHIFT, HPUConfig
from hpu.divider import Divider


class ExpGate(wiring.Component):
    """Computes e_j and Z for a row, then finds the contract's kept set.

    The kept set is a prefix of the keys ordered by (e desc, index asc), so it is
    fully described by a threshold t and a tie count: every key with e > t, and
    the first ``ties`` keys (by index) with e == t. A histogram of e (one bin per
    value, 2**prob_bits bins) is built during the exp pass; walking the bins from
    the top accumulates key counts and mass until the cap or the mass target T is
    reached. Where the mass target falls inside a bin, ceil((T - mass above) / t)
    keys of that bin are needed: a small sequential divider computes it.

    An occupancy bit per bin, all cleared in one cycle when a row starts, says
    which bins this row has filled: a bin not yet filled reads as zero, so the
    histogram is never cleared bin by bin, and the walk visits only filled bins
    (a priority encoder finds the next one down) and stops at the threshold.

    Parameters
    ----------
    cfg : HPUConfig

    Members
    -------
    row : In(stream.Signature(layouts.ingested(cfg)))
    gate : Out(stream.Signature(layouts.gated(cfg)))
    score_read : read port of the score buffer
    e_write : write port of the e buffer (read by the MAC array)
    gate_open : In(1)
        Hold the gate open: every row keeps all its keys (the dense baseline
        of the same hardware). The walk still runs, so the front end's activity
        is the same either way.
    busy : Out(1)

    Cycle behaviour per row: 1 cycle to accept, n + 3 for the exp pass, one
    cycle per filled bin from the top down to the threshold's, plus 2 (and the
    divider's z_bits + 1 cycles when the mass target decides), 1 to hand the
    result on. At most 2**prob_bits + 1 walk cycles, as many as distinct e values
    above the threshold on most rows.
    """

    def __init__(self, cfg: HPUConfig):
        self.cfg = cfg
        super().__init__({
            "row": In(stream.Signature(layouts.ingested(cfg))),
            "gate": Out(stream.Signature(layouts.gated(cfg))),
            "score_read": In(layouts.read_port(cfg, "score")),
            "e_write": In(layouts.write_port(cfg, "e")),
            "gate_open": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bins = 1 << cfg.prob_bits

        m.submodules.exp_lut = lut = memory.Memory(shape=unsigned(cfg.prob_bits), depth=cfg.lut_size,
                                                   init=exp_lut(cfg))
        lut_read = lut.read_port(domain="comb")
        m.submodules.histogram = histogram = memory.Memory(shape=unsigned(cfg.count_bits), depth=bins, init=[])
        hist_write = histogram.write_port()
        hist_read = histogram.read_port(transparent_for=(hist_write,))
        m.submodules.need_divider = divider = Divider(cfg.z_bits, cfg.prob_bits)

        desc = self.row.payload
        n = Signal.like(desc.n)
        top = Signal.like(desc.m)
        score_bank = Signal.like(desc.score_bank)
        e_bank = Signal(range(layouts.E_BANKS))
        cap = Signal(range(cfg.max_keys + 1))
        z = Signal(cfg.z_bits)
        target = Signal(cfg.z_bits)

        # Exp pass: issue (read score j) -> s1 (e_j, write e, read histogram) -> s2 (histogram += 1).
        issue = Signal(range(cfg.max_keys + 1))
        s1_valid, s2_valid = Signal(), Signal()
        s1_index = Signal(range(cfg.max_keys))
        s2_e = Signal(cfg.prob_bits)
        distance = Signal(cfg.score_bits + 1)
        step = Signal(cfg.score_bits + 1)
        e = Signal(cfg.prob_bits)
        m.d.comb += [
            distance.eq(top - self.score_read.data),
            step.eq(distance >> cfg.exp_shift),
            lut_read.addr.eq(Mux(step >= cfg.lut_size - 1, cfg.lut_size - 1, step)),
            e.eq(lut_read.data),
            self.score_read.addr.eq(layouts.bank_address(cfg, score_bank, issue)),
            self.e_write.addr.eq(layouts.bank_address(cfg, e_bank, s1_index)),
            self.e_write.data.eq(e),
        ]

        # Bins this row has filled; a bin not filled reads as zero whatever the memory holds. The
        # walk clears each bit as it visits the bin, so the highest bit left is the next bin down.
        occupied = Signal(bins)

        # Walk: issue (read the highest filled bin left) -> w1 (count of that bin, accumulate).
        any_left, highest = _highest_set(occupied)
        next_bin = Signal(cfg.prob_bits)
        m.d.comb += next_bin.eq(highest)
        w1_valid = Signal()
        w1_bin = Signal(cfg.prob_bits)
        count = Signal(cfg.count_bits)
        above_count = Signal(range(cfg.max_keys + 1))
        above_mass = Signal(cfg.z_bits)
        bin_mass = Signal(cfg.z_bits)
        found = Signal()
        cap_reached = Signal()
        mass_reached = Signal()
        threshold = Signal(cfg.prob_bits)
        at_count = Signal(range(cfg.max_keys + 1))
        at_mass = Signal(cfg.z_bits)
        mass_ties = Signal(range(cfg.max_keys + 1))
        m.d.comb += [count.eq(hist_read.data), bin_mass.eq(w1_bin * count)]
        s2_count = Mux(occupied.bit_select(s2_e, 1), hist_read.data, 0)
        cap_hit = above_count + count >= cap
        mass_hit = (above_mass + bin_mass >= target) if cfg.mode == "mass" else 0

        keep_all = Signal()
        m.d.comb += keep_all.eq(self.gate_open | (cfg.mode == "dense"))
        cap_ties = cap - at_count
        ties = Signal(range(cfg.max_keys + 1))
        m.d.comb += ties.eq(Mux(cap_reached & (~mass_reached | (cap_ties < mass_ties)), cap_ties, mass_ties))

        out = self.gate.payload
        m.d.comb += [
            out.n.eq(n),
            out.keep_all.eq(keep_all),
            out.threshold.eq(threshold),
            out.ties.eq(ties),
            out.kept.eq(Mux(keep_all, n, at_count + ties)),
            out.z_kept.eq(Mux(keep_all, z, at_mass + ties * threshold)),
            out.e_bank.eq(e_bank),
            divider.request.payload.dividend.eq(target - above_mass),
            divider.request.payload.divisor.eq(w1_bin),
        ]

        with m.FSM(name="phase"):
            with m.State("IDLE"):
                m.d.comb += self.row.ready.eq(1)
                with m.If(self.row.valid):
                    rounded_up = (desc.n * cfg.rho_q + GATE_SCALE - 1) >> GATE_SHIFT
                    at_least_k_min = Mux(rounded_up < cfg.k_min, cfg.k_min, rounded_up)
                    m.d.sync += [
                        n.eq(desc.n), top.eq(desc.m), score_bank.eq(desc.score_bank),
                        cap.eq(Mux(at_least_k_min > desc.n, desc.n, at_least_k_min)),
                        issue.eq(0), z.eq(0), occupied.eq(0),
                    ]
                    m.next = "EXP"
            with m.State("EXP"):
                issuing = issue != n
                m.d.comb += [
                    self.score_read.en.eq(issuing),
                    self.e_write.en.eq(s1_valid),
                    hist_read.addr.eq(e),
                    hist_read.en.eq(s1_valid),
                    hist_write.addr.eq(s2_e),
                    hist_write.data.eq(s2_count + 1),
                    hist_write.en.eq(s2_valid),
                ]
                with m.If(s2_valid):
                    m.d.sync += occupied.eq(occupied | (1 << s2_e))
                m.d.sync += [
                    issue.eq(Mux(issuing, issue + 1, issue)),
                    s1_valid.eq(issuing), s1_index.eq(issue),
                    s2_valid.eq(s1_valid), s2_e.eq(e),
                ]
                with m.If(s1_valid):
                    m.d.sync += z.eq(z + e)
                with m.If(~issuing & ~s1_valid & ~s2_valid):
                    m.d.sync += [
                        target.eq((z * cfg.tau_q + GATE_SCALE - 1) >> GATE_SHIFT),
                        w1_valid.eq(0),
                        above_count.eq(0), above_mass.eq(0),
                        found.eq(0), cap_reached.eq(0), mass_reached.eq(0),
                        threshold.eq(0), at_count.eq(0), at_mass.eq(0), mass_ties.eq(0),
                    ]
                    m.next = "WALK"
            with m.State("WALK"):
                walking = any_left & ~found
                m.d.comb += [
                    hist_read.addr.eq(next_bin),
                    hist_read.en.eq(walking),
                ]
                m.d.sync += [w1_valid.eq(walking), w1_bin.eq(next_bin)]
                with m.If(walking):
                    m.d.sync += occupied.eq(occupied & ~(1 << next_bin))
                with m.If(w1_valid):
                    m.d.sync += [above_count.eq(above_count + count), above_mass.eq(above_mass + bin_mass)]
                    with m.If(~found & (cap_hit | mass_hit)):
                        m.d.sync += [
                            found.eq(1), cap_reached.eq(cap_hit), mass_reached.eq(mass_hit),
                            threshold.eq(w1_bin), at_count.eq(above_count), at_mass.eq(above_mass),
                        ]
                        m.d.comb += divider.request.valid.eq(mass_hit)
                with m.If(~walking & ~w1_valid):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += divider.response.ready.eq(1)
                with m.If(divider.response.valid):
                    quotient = divider.response.payload.quotient
                    m.d.sync += mass_ties.eq(quotient + (divider.response.payload.remainder != 0))
                with m.If(~mass_reached | divider.response.valid):
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += self.gate.valid.eq(1)
                with m.If(self.gate.ready):
                    m.d.sync += e_bank.eq(Mux(e_bank == layouts.E_BANKS - 1, 0, e_bank + 1))
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.row.ready)
        return m


def _highest_set(bits: Value) -> tuple[Value, Value]:
    """(any bit set, index of the highest set bit) as a tree of log2(width) levels of multiplexers:
    a priority chain over 2**prob_bits bins would be as deep as it is wide."""
    if len(bits) == 1:
        return bits[0], Const(0, 1)
    half = 1 << ((len(bits) - 1).bit_length() - 1)
    low_any, low_index = _highest_set(bits[:half])
    high_any, high_index = _highest_set(bits[half:])
    return low_any | high_any, Mux(high_any, half + high_index, low_index)
