"""Router: the routed positions of a block of router logits, by radix select."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hpu import layouts
from hpu.config import ConfigError, HPUConfig

# Bits of the logit ordered per pass. The histogram holds 2**DIGIT_BITS counters and a pass walks at
# most that many bins, so 4 bits keep both small (16 counters, 16 walk cycles) while a 16-bit logit
# takes 4 passes; 8 bits would halve the passes for 16x the counters and walk.
DIGIT_BITS = 4


def passes(cfg: HPUConfig) -> int:
    """Radix passes over a block: ceil(route_bits / DIGIT_BITS)."""
    return -(-cfg.route_bits // DIGIT_BITS)


def block_cycles(cfg: HPUConfig) -> int:
    """Upper bound on the cycles the router spends on a block of route_block tokens (0 without one)."""
    n, p = cfg.route_block, passes(cfg)
    return (p + 1) * n + p * ((1 << DIGIT_BITS) + 1) if n else 0


class Router(wiring.Component):
    """Finds a block's routed tokens: the first ``cap = max(1, ceil(n * route_q / 256))`` of the
    order (r_t descending, t ascending), and emits their positions in ascending order.

    The gate's histogram walk needs a bin per value, which for a 16-bit logit is 65536 counters; a
    radix select needs 2**DIGIT_BITS. Each logit is stored as an unsigned key (sign bit flipped, so
    unsigned order is signed order) padded on the right to whole digits. Pass p histograms digit p
    (most significant first) of the keys whose higher digits equal the prefix found so far, then walks
    the bins down from the top to the one holding the ``need``-th largest key, which fixes digit p of
    the prefix and lowers ``need`` by the keys above that bin. After the last pass the prefix is the
    cap-th largest key exactly, and ``need`` says how many keys equal to it are routed: the first ones
    by position, as the order's ties by position ask. The emit pass reads the keys in position order
    and sends every key above the prefix and the first ``need`` equal to it.

    Parameters
    ----------
    cfg : HPUConfig
        ``route_block`` (> 0) sets the buffer depth, ``route_bits`` the logit width.

    Members
    -------
    logits : In(stream.Signature(layouts.logit(cfg)))
        One logit per beat, ``last`` on the block's final token. A block reaching ``route_block``
        tokens ends there even without ``last``, and ``overflow`` is set (sticky).
    routed : Out(stream.Signature(layouts.routed(cfg)))
        The routed positions, ascending, ``last`` on the block's final one.
    overflow : Out(1)
    busy : Out(1)

    Raises
    ------
    ConfigError
        If ``route_block`` is 0: that configuration has no router.

    Cycle behaviour per block of n tokens: n cycles to take the logits (histogramming the first
    digit as they arrive), then per pass at most 2**DIGIT_BITS walk cycles plus one, each pass
    after the first n cycles to histogram, and at most n cycles to emit (one per token up to the
    last routed one, plus back-pressure): at most (passes + 1) * n + passes * 17 cycles. The next
    block's logits are taken when the last position has gone out.
    """

    def __init__(self, cfg: HPUConfig):
        if cfg.route_block < 1:
            raise ConfigError(f"illegal configuration: route_block = {cfg.route_block}: a Router needs at least 1 "
                              "(0 builds an HPU without one)")
        self.cfg = cfg
        super().__init__({
            "logits": In(stream.Signature(layouts.logit(cfg))),
            "routed": Out(stream.Signature(layouts.routed(cfg))),
            "overflow": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        n_passes = passes(cfg)
        key_bits = n_passes * DIGIT_BITS
        pad = key_bits - cfg.route_bits
        bins = 1 << DIGIT_BITS
        # Pass p orders the key's bits digit_low[p] .. digit_low[p] + DIGIT_BITS - 1, most significant first.
        digit_low = [key_bits - (p + 1) * DIGIT_BITS for p in range(n_passes)]

        m.submodules.keys = keys = memory.Memory(shape=unsigned(key_bits), depth=cfg.route_block, init=[])
        key_write = keys.write_port()
        # A combinational read lets every pass take one key per cycle with no pipeline to drain before
        # its walk; the buffer is small and becomes flip-flops at gate level either way.
        key_read = keys.read_port(domain="comb")

        count = Signal(range(cfg.route_block + 1))    # tokens in the block
        cap = Signal(range(cfg.route_block + 1))
        index = Signal(range(cfg.route_block + 1))    # token read by a counting or emit pass
        pass_ = Signal(range(n_passes))
        prefix = Signal(key_bits)
        need = Signal(range(cfg.route_block + 1))
        hist = Array(Signal(range(cfg.route_block + 1), name=f"bin{b}") for b in range(bins))
        walk_bin = Signal(DIGIT_BITS)
        above = Signal(range(cfg.route_block + 1))    # keys in the bins the walk has passed
        sent = Signal(range(cfg.route_block + 1))

        logit = self.logits.payload
        incoming = Cat(Const(0, pad), logit.logit[:-1], ~logit.logit[-1])
        key = key_read.data
        digit = Signal(DIGIT_BITS)
        candidate = Signal()   # key's digits above pass_'s equal the prefix's
        with m.Switch(pass_):
            for p, low in enumerate(digit_low):
                with m.Case(p):
                    m.d.comb += [digit.eq(key[low:low + DIGIT_BITS]),
                                 candidate.eq(key[low + DIGIT_BITS:] == prefix[low + DIGIT_BITS:])]
        m.d.comb += key_read.addr.eq(index)
        clear = [h.eq(0) for h in hist]

        with m.FSM(name="phase"):
            with m.State("LOAD"):
                take = self.logits.valid
                ends = logit.last | (count == cfg.route_block - 1)
                m.d.comb += [
                    self.logits.ready.eq(1),
                    key_write.addr.eq(count), key_write.data.eq(incoming), key_write.en.eq(take),
                ]
                with m.If(take):
                    top_digit = incoming[key_bits - DIGIT_BITS:]
                    m.d.sync += [count.eq(count + 1), hist[top_digit].eq(hist[top_digit] + 1)]
                    with m.If(ends):
                        routed = cfg.route_capacity(count + 1)
                        m.d.sync += [cap.eq(routed), need.eq(routed),
                                     pass_.eq(0), prefix.eq(0), walk_bin.eq(bins - 1), above.eq(0)]
                        with m.If(~logit.last):
                            m.d.sync += self.overflow.eq(1)
                        m.next = "WALK"
            with m.State("COUNT"):
                with m.If(candidate):
                    m.d.sync += hist[digit].eq(hist[digit] + 1)
                m.d.sync += index.eq(index + 1)
                with m.If(index == count - 1):
                    m.d.sync += [walk_bin.eq(bins - 1), above.eq(0)]
                    m.next = "WALK"
            with m.State("WALK"):
                reached = above + hist[walk_bin] >= need
                with m.If(reached):
                    m.d.sync += [need.eq(need - above), index.eq(0), *clear]
                    with m.Switch(pass_):
                        for p, low in enumerate(digit_low):
                            with m.Case(p):
                                m.d.sync += prefix[low:low + DIGIT_BITS].eq(walk_bin)
                    with m.If(pass_ == n_passes - 1):
                        m.d.sync += sent.eq(0)
                        m.next = "EMIT"
                    with m.Else():
                        m.d.sync += pass_.eq(pass_ + 1)
                        m.next = "COUNT"
                with m.Else():
                    m.d.sync += [above.eq(above + hist[walk_bin]), walk_bin.eq(walk_bin - 1)]
            with m.State("EMIT"):
                tie = key == prefix
                chosen = (key > prefix) | (tie & (need != 0))
                out = self.routed.payload
                m.d.comb += [self.routed.valid.eq(chosen), out.position.eq(index), out.last.eq(sent == cap - 1)]
                with m.If(~chosen | self.routed.ready):
                    m.d.sync += index.eq(index + 1)
                with m.If(chosen & self.routed.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(tie):
                        m.d.sync += need.eq(need - 1)
                    with m.If(out.last):
                        m.d.sync += [count.eq(0), index.eq(0)]
                        m.next = "LOAD"
        m.d.comb += self.busy.eq((count != 0))
        return m
