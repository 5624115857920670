"""What `hpu calibrate` (power.calibrate) can fit and on what: its units and its workload classes.

Apart from the calibration, which needs the simulator, the golden model and SciPy, so that the
command line can offer them as choices without loading any of those."""

from __future__ import annotations

from rtl_gen.manifest import TOP_NAME
from sim.options import Options

# Unit name -> (the instance calibrated, the instances its coefficients apply to).
UNITS = {
    "lane": ("hpu.mac.lane0", "hpu.mac.lane*"),
    "gate": ("hpu.exp_gate", "hpu.exp_gate"),
    "normalizer": ("hpu.normalizer", "hpu.normalizer"),
    "fetch": ("hpu.fetch", "hpu.fetch"),
    "ingest": ("hpu.ingest", "hpu.ingest"),
    "hpu": (TOP_NAME, TOP_NAME),
}
# Workload class -> (row source, simulation options): MiniLM, long and random rows, rows made to
# defeat the gate, and MiniLM rows from a host that idles half the cycles.
WORKLOADS = {
    "random": ("random", Options(seed=1)),
    "minilm": ("minilm", Options(seed=1)),
    "minilm-long": ("minilm-long", Options(seed=1)),
    "adversarial": ("adversarial", Options(seed=1)),
    "minilm-idle": ("minilm", Options(seed=1, gaps=0.5)),
}
