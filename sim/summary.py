"""The summary `hpu sim` writes: one record per run, naming its dump by size and SHA-256.

`hpu power` takes the kept fraction from here, and only for a dump whose bytes are exactly the ones
the run wrote: a dump cut short, overwritten by a later run, or of another run is refused.
"""

from __future__ import annotations

from pathlib import Path

from hpu.config import HPUConfig
from hpu.errors import InputError
from hpu.files import read_json, sha256, write_json
from sim.job import Job, Outcome

VERSION = 1
HINT = "pass the summary JSON that `hpu sim -o` wrote with these dumps"
# Fields two runs must share for one to be the other's dense baseline.
# With routing the gated run computes only the routed tokens' rows: the work is the tokens.
SAME_WORK = ("tokens", "token_keys", "source", "seed", "gaps", "backpressure")


def record(job: Job, outcome: Outcome) -> dict:
    """One run: what was simulated, what was checked, and the identity of its dump."""
    keys = sum(row.n for row in job.rows)
    kept = sum(e.kept for e in job.expected)
    token_keys = job.token_keys or keys
    # With a window the rows past the routed ones are the unrouted tokens' windows (sim.runner.make_routed_job).
    windows = len(job.rows) - sum(map(len, job.routed)) if job.blocks and job.options.route_window else 0
    entry = {
        "rows": len(job.rows), "window_rows": windows, "keys": keys, "kept_keys": kept,
        # The share of the whole dense work (every token's row, every key) that the run computed.
        "kept_fraction": kept / token_keys,
        "tokens": sum(map(len, job.blocks)) if job.blocks else len(job.rows), "token_keys": token_keys,
        "blocks": len(job.blocks), "routing_mismatches": outcome.routing_mismatches,
        "rows_checked": outcome.rows_checked, "mismatches": outcome.mismatches,
        "hpu_cycles": outcome.hpu_cycles, "wall_s": outcome.wall_s, "sim_cycles_per_s": outcome.cycles_per_s,
        # Counted by the harness (the host), not derived from the kept fraction.
        "values_fetched": outcome.values_fetched,
        "value_bytes_fetched": outcome.values_fetched * job.cfg.head_dim * job.cfg.value_bits // 8,
        "config": job.cfg.to_dict(), "source": job.source, "seed": job.options.seed,
        "gaps": job.options.gaps, "backpressure": job.options.backpressure, "gate_open": job.options.gate_open,
        "route_window": job.options.route_window,
        "vcd": job.options.vcd,
    }
    if job.options.vcd:
        path = Path(job.options.vcd)
        entry.update(vcd_bytes=path.stat().st_size, vcd_sha256=sha256(path))
    return entry


def build(simulator: str, runs: dict[str, dict]) -> dict:
    return {"summary_version": VERSION, "simulator": simulator, "runs": runs}


def write(path: str | Path, summary: dict) -> Path:
    return write_json(path, summary)


def load(path: str | Path) -> dict:
    summary = read_json(path, "summary", HINT)
    runs = summary.get("runs")
    if summary.get("summary_version") != VERSION or not isinstance(runs, dict) or not all(
            isinstance(r, dict) and {"config", "kept_fraction", "rows"} <= set(r) for r in runs.values()):
        raise InputError(f"summary {path} is not a summary of this toolkit's `hpu sim` (version {VERSION}): {HINT}")
    return summary


def run_of_dump(summary: dict, summary_path: str | Path, vcd: str | Path) -> tuple[str, dict]:
    """The run whose dump `vcd` is, by its bytes; refuses a dump the summary does not describe."""
    size, digest = Path(vcd).stat().st_size, None
    for name, run in summary["runs"].items():
        if run.get("vcd_bytes") == size:
            digest = digest or sha256(vcd)
            if run.get("vcd_sha256") == digest:
                return name, run
    described = ", ".join(f"{name}: {run.get('vcd')} ({run.get('vcd_bytes')} bytes)"
                          for name, run in summary["runs"].items()) or "no dumps"
    raise InputError(f"{vcd} ({size} bytes) is not a dump that summary {summary_path} describes ({described}): "
                     "the dump was cut short or rewritten, or the summary is of another run; run `hpu sim` again "
                     "or pass its own summary")


def check_baseline(gated: dict, dense: dict) -> None:
    """The dense run must be the same work as the gated one, with the gate held open."""
    if gated["gate_open"] or not dense["gate_open"]:
        raise InputError("the baseline must be the run with the gate held open and the first dump the gated run "
                         f"(gate_open: first {gated['gate_open']}, baseline {dense['gate_open']}); swap them")
    differ = [f"{k} {gated.get(k)!r}/{dense.get(k)!r}" for k in SAME_WORK if gated.get(k) != dense.get(k)]
    if HPUConfig.from_dict(gated["config"]) != HPUConfig.from_dict(dense["config"]):
        differ.append("configuration")
    if differ:
        raise InputError(f"the baseline is not the same work as the gated run (gated/baseline: {', '.join(differ)}): "
                         "make both with one `hpu sim --dense-baseline`")
