"""A simulation job: what the cocotb testbench runs and what it reports, as JSON files.

The parent process (sim.runner) writes the job (configuration, rows, the
golden model's expected results, options); the testbench reads it, checks
every row and writes the outcome. The same job format replays a single
failing row (``hpu sim --replay FILE``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from golden_model.stimulus import Row, RowResult, validate_blocks, validate_rows
from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import read_json, write_text
from hpu.top import slowest_stage_cycles
from sim.options import Options


@dataclass
class Job:
    cfg: HPUConfig
    rows: list[Row]
    expected: list[RowResult]
    options: Options = field(default_factory=Options)
    source: str = "random"
    blocks: list[list[int]] = field(default_factory=list)   # blocks of router logits, routed first
    routed: list[list[int]] = field(default_factory=list)   # each block's expected routed positions
    token_keys: int | None = None   # routing: the keys of every token's row, the routed rows' and the rest

    @property
    def stall_cycles_per_row(self) -> int:
        """Cycles a bench waits per row still due (plus four for the pipeline) before it calls the HPU
        stalled: four times the slowest stage, stretched by the gaps and stalls."""
        slow = 1.0 / ((1 - self.options.gaps) * (1 - self.options.backpressure))
        return int(4 * slow * slowest_stage_cycles(self.cfg))

    def check(self) -> "Job":
        """Refuse rows and blocks the configured HPU cannot take, and expected results that do not pair
        with them."""
        validate_rows(self.cfg, self.rows)
        if len(self.expected) != len(self.rows):
            raise InputError(f"{len(self.rows)} rows but {len(self.expected)} expected results: "
                             "every row needs exactly one")
        if self.blocks:
            validate_blocks(self.cfg, self.blocks)
        if len(self.routed) != len(self.blocks):
            raise InputError(f"{len(self.blocks)} blocks of router logits but {len(self.routed)} expected routed "
                             "sets: every block needs exactly one")
        return self

    def save(self, path: Path) -> None:
        write_text(path, json.dumps({
            "config": self.cfg.to_dict(), "source": self.source, "options": asdict(self.options),
            "host": self.options.host(),
            "rows": [{"scores": list(r.scores), "values": [list(v) for v in r.values]} for r in self.rows],
            "expected": [asdict(e) for e in self.expected],
            "blocks": self.blocks, "routed": self.routed, "token_keys": self.token_keys,
        }))

    @classmethod
    def load(cls, path: Path, check: bool = True) -> "Job":
        """A job or replay file written by `hpu sim`; anything else is refused with what is wrong.

        The testbench loads its job unchecked: the parent process checked it, and a test may hand it
        an inconsistent one on purpose (a stall)."""
        hint = "pass a replay file written by `hpu sim` (replay_row.json)"
        raw = read_json(path, "replay file", hint)
        try:
            options = {k: v for k, v in raw["options"].items() if k in {f.name for f in fields(Options)}}
            job = cls(
                cfg=HPUConfig.from_dict(raw["config"]),
                rows=[Row(tuple(r["scores"]), tuple(tuple(v) for v in r["values"])) for r in raw["rows"]],
                expected=[RowResult(tuple(e["acc"]), tuple(e["out"]), e["z_kept"], e["kept"])
                          for e in raw["expected"]],
                options=Options(**options), source=str(raw.get("source", "random")),
                blocks=[[int(r) for r in b] for b in raw.get("blocks", [])],
                routed=[[int(t) for t in b] for b in raw.get("routed", [])], token_keys=raw.get("token_keys"))
            return job.check() if check else job
        except InputError as exc:
            raise InputError(f"replay file {path}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"replay file {path} is not a job written by `hpu sim` "
                             f"({type(exc).__name__}: {exc}): {hint}") from None


@dataclass
class Outcome:
    rows_checked: int
    mismatches: int
    hpu_cycles: int
    wall_s: float
    values_fetched: int = 0      # value vectors the HPU asked for and took
    first_mismatch: dict | None = None
    stalled: str | None = None
    result_cycles: list[int] = field(default_factory=list)
    observed: list[dict] = field(default_factory=list)
    routed: list[list[int]] = field(default_factory=list)   # each block's routed positions, as observed
    routing_mismatches: int = 0                             # blocks whose routed positions differ

    @property
    def cycles_per_s(self) -> float:
        return self.hpu_cycles / self.wall_s if self.wall_s else 0.0

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Outcome":
        return cls(**read_json(path, "simulation outcome"))
