"""A simulation job: what the cocotb testbench runs and what it reports, as JSON files.

The parent process (sim.runner) writes the job (configuration, rows, the
golden model's expected results, options); the testbench reads it, checks
every row and writes the outcome. The same job format replays a single
failing row (``hpu sim --replay FILE``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from golden_model.stimulus import Row, RowResult
from hpu.config import HPUConfig
from hpu.errors import InputError


@dataclass
class Options:
    gaps: float = 0.0            # probability per cycle that the key source idles
    backpressure: float = 0.0    # probability per cycle that the result sink stalls
    seed: int = 0
    gate_open: bool = False      # dense baseline: the gate held open
    vcd: str | None = None       # dump the HPU's hierarchy while rows are in flight

    def __post_init__(self):
        for name in ("gaps", "backpressure"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} = {getattr(self, name)}: must lie in [0, 1) (a probability per cycle)")


@dataclass
class Job:
    cfg: HPUConfig
    rows: list[Row]
    expected: list[RowResult]
    options: Options = field(default_factory=Options)
    source: str = "random"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({
            "config": self.cfg.to_dict(), "source": self.source, "options": asdict(self.options),
            "rows": [{"scores": list(r.scores), "values": [list(v) for v in r.values]} for r in self.rows],
            "expected": [asdict(e) for e in self.expected],
        }))

    @classmethod
    def load(cls, path: Path) -> "Job":
        raw = json.loads(Path(path).read_text())
        return cls(
            cfg=HPUConfig.from_dict(raw["config"]),
            rows=[Row(tuple(r["scores"]), tuple(tuple(v) for v in r["values"])) for r in raw["rows"]],
            expected=[RowResult(tuple(e["acc"]), tuple(e["out"]), e["z_kept"], e["kept"]) for e in raw["expected"]],
            options=Options(**raw["options"]), source=raw.get("source", "random"))


@dataclass
class Outcome:
    rows_checked: int
    mismatches: int
    hpu_cycles: int
    wall_s: float
    first_mismatch: dict | None = None
    stalled: str | None = None
    result_cycles: list[int] = field(default_factory=list)
    observed: list[dict] = field(default_factory=list)

    @property
    def cycles_per_s(self) -> float:
        return self.hpu_cycles / self.wall_s if self.wall_s else 0.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Outcome":
        return cls(**json.loads(Path(path).read_text()))
