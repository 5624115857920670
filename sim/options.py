"""How the harness drives a run: idle sources, stalled sinks, their seed, an open gate, the rows it
sends for unrouted tokens, a dump.

Apart from the job (sim.job), which loads the golden model and the HPU's design, so that workloads'
options can be named (power.calibration_plan) where neither is needed, as in the command line's parser."""

from __future__ import annotations

from dataclasses import dataclass

from hpu.errors import InputError

# The harness draws idle sources and stalled sinks in steps of 1/256 per cycle (an 8-bit LFSR compare).
RATE_STEPS = 256


@dataclass
class Options:
    gaps: float = 0.0            # probability per cycle that the key source idles
    backpressure: float = 0.0    # probability per cycle that the result sink stalls
    seed: int = 0
    gate_open: bool = False      # dense baseline: the gate held open
    # Token routing: an unrouted token's row is its last route_window keys (0: it sends none). The
    # router and the datapath are the same for every value; only the host's work differs.
    route_window: int = 0
    vcd: str | None = None       # dump the HPU's hierarchy while rows are in flight

    def __post_init__(self):
        top = (RATE_STEPS - 1) / RATE_STEPS
        for name in ("gaps", "backpressure"):
            value = getattr(self, name)
            if not 0.0 <= value <= top:
                raise InputError(f"--{name} {value}: must lie in 0..{top:.4f} ({RATE_STEPS - 1}/{RATE_STEPS}), "
                                 f"a probability per cycle in steps of 1/{RATE_STEPS}; "
                                 f"{RATE_STEPS}/{RATE_STEPS} would never {'send' if name == 'gaps' else 'accept'}")
        if isinstance(self.route_window, bool) or not isinstance(self.route_window, int) or self.route_window < 0:
            raise InputError(f"--route-window {self.route_window!r}: must be a whole number of keys, 0 for none")

    def per_step(self, name: str) -> int:
        """gaps or backpressure as the harness draws it: a count of 1/RATE_STEPS."""
        return round(getattr(self, name) * RATE_STEPS)

    def host(self) -> dict:
        """The harness's settings for these options, as both benches set them: idle gaps and stalls per
        RATE_STEPS, and the xorshift generators' seeds."""
        return {"gap_per_256": self.per_step("gaps"), "stall_per_256": self.per_step("backpressure"),
                "gap_seed": (self.seed * 2654435761 + 1) & 0xFFFFFFFF,
                "stall_seed": (self.seed * 40503 + 7) & 0xFFFFFFFF}
