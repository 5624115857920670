"""Three-way cross-check: the golden model, the generated Verilog under cocotb, the Triton exact kernel.

The same rows go through all three; a row agrees when acc, out, z_kept and kept are identical in
all three. With a router (route_block > 0) blocks of router logits do too, as cells of mode
``routing``; a block agrees when its routed positions are. For a row or block that does not, a
reproducer file names the configuration, the input, the three results and which of the three is
the odd one out (or that all three differ).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from golden_model.contract import routed_positions
from golden_model.sources import rows_from
from golden_model.stimulus import ROUTING_SOURCES, RowResult, batch, batch_blocks, blocks_from, expected
from hpu.config import HPUConfig
from sim.job import Options
from hpu.files import write_json, write_text
from sim.runner import SimulationError, make_job, run

PATHS = ("golden", "verilog", "kernel")
REPORT_MD, REPORT_JSON = "crosscheck.md", "crosscheck.json"
DISAGREEMENT = "disagreement-{}.json"   # one reproducer per row or block that the three disagree on
RUN_FOLDER = "run-{}"                    # the simulator's files of one source and mode
# Everything `hpu crosscheck` may write in its report folder.
OUTPUTS = (REPORT_MD, REPORT_JSON, DISAGREEMENT.format("*"), RUN_FOLDER.format("*"))


@dataclass
class Cell:
    source: str
    mode: str
    rows: int
    agree: int
    disagreements: list[Path]


def odd_one_out(results: dict) -> str:
    g, v, k = (results[p] for p in PATHS)
    if g == v != k:
        return "kernel"
    if g == k != v:
        return "verilog"
    if v == k != g:
        return "golden"
    return "all three differ"


def _label(source: str) -> str:
    """A source as part of a file name: an attention file's path without its folder separators."""
    return re.sub(r"[^\w.-]", "_", source)


def crosscheck(cfg: HPUConfig, sources: list[str], modes: list[str], rows: int, seed: int,
               out_dir: Path, sim: str = "icarus", build_root: Path = Path("build/sim")) -> tuple[list[Cell], str]:
    from gpu_kernels import DEVICE as device
    from gpu_kernels.exact import run_contract_triton

    # Every source is read, and a bad one refused, before the first simulation.
    inputs = {(source, mode): rows_from(source, cfg.replace(mode=mode), rows, seed) for source in sources
              for mode in modes}
    cells = []
    for source in sources:
        for mode in modes:
            mode_cfg = cfg.replace(mode=mode)
            chosen = inputs[source, mode]
            golden = expected(mode_cfg, chosen)
            job = make_job(mode_cfg, chosen, source, Options(seed=seed))
            work_dir = out_dir / RUN_FOLDER.format(f"{_label(source)}-{mode}")
            outcome = run(job, sim, build_root=build_root, work_dir=work_dir, check=False)
            verilog = [RowResult(tuple(o["acc"]), tuple(o["out"]), o["z_kept"], o["kept"]) for o in outcome.observed]
            scores, values, lengths = batch(mode_cfg, chosen)
            k = run_contract_triton(mode_cfg, scores.to(device), values.to(device), lengths.to(device))
            kernel = [RowResult(tuple(a), tuple(o), z, n) for a, o, z, n in
                      zip(k["acc"].cpu().tolist(), k["out"].cpu().tolist(), k["z_kept"].cpu().tolist(),
                          k["kept"].cpu().tolist())]
            if len(verilog) != len(chosen):
                raise SimulationError(f"{sim} returned {len(verilog)} of {len(chosen)} rows")
            bad = []
            for i, row in enumerate(chosen):
                results = {"golden": golden[i], "verilog": verilog[i], "kernel": kernel[i]}
                if golden[i] == verilog[i] == kernel[i]:
                    continue
                path = out_dir / DISAGREEMENT.format(f"{_label(source)}-{mode}-row{i}")
                write_text(path, json.dumps({
                    "disagrees": odd_one_out(results), "config": mode_cfg.to_dict(), "source": source,
                    "seed": seed, "row_index": i, "row": {"n": row.n, "scores": list(row.scores),
                                                          "values": [list(v) for v in row.values]},
                    "results": {p: r.__dict__ for p, r in results.items()}}, indent=1))
                bad.append(path)
            cells.append(Cell(source, mode, len(chosen), len(chosen) - len(bad), bad))
        if cfg.route_block and source in ROUTING_SOURCES:
            cells.append(_routing_cell(cfg, source, rows, seed, out_dir, sim, build_root, device))
    return cells, device


def _routing_cell(cfg: HPUConfig, source: str, count: int, seed: int, out_dir: Path, sim: str,
                  build_root: Path, device: str) -> Cell:
    from gpu_kernels.exact import route_contract_triton

    blocks = blocks_from(source, cfg, count, seed)
    job = make_job(cfg, [], source, Options(seed=seed), blocks=blocks)
    golden = job.routed
    work_dir = out_dir / RUN_FOLDER.format(f"{_label(source)}-routing")
    outcome = run(job, sim, build_root=build_root, work_dir=work_dir, check=False)
    if len(outcome.routed) != len(blocks):
        raise SimulationError(f"{sim} routed {len(outcome.routed)} of {len(blocks)} blocks")
    logits, lengths = batch_blocks(blocks)
    kernel = routed_positions(route_contract_triton(cfg, logits.to(device), lengths.to(device)))
    bad = []
    for i, block in enumerate(blocks):
        results = {"golden": golden[i], "verilog": outcome.routed[i], "kernel": kernel[i]}
        if golden[i] == outcome.routed[i] == kernel[i]:
            continue
        path = out_dir / DISAGREEMENT.format(f"{_label(source)}-routing-block{i}")
        write_text(path, json.dumps({"disagrees": odd_one_out(results), "config": cfg.to_dict(), "source": source,
                                     "seed": seed, "block_index": i, "logits": block, "routed": results}, indent=1))
        bad.append(path)
    return Cell(source, "routing", len(blocks), len(blocks) - len(bad), bad)


def table(cells: list[Cell]) -> str:
    lines = ["| source | mode | rows (blocks for routing) | all three agree | disagreements |", "|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c.source} | {c.mode} | {c.rows} | {c.agree} | {len(c.disagreements)} |")
    return "\n".join(lines)


def write_report(cells: list[Cell], cfg: HPUConfig, sim: str, device: str, seed: int, out_dir: Path) -> Path:
    """crosscheck.md and, last, crosscheck.json (the record that the report is whole)."""
    write_text(out_dir / REPORT_MD, table(cells) + "\n")
    return write_json(out_dir / REPORT_JSON, {
        "config": cfg.to_dict(), "simulator": sim, "kernel_device": device, "seed": seed,
        "cells": [{"source": c.source, "mode": c.mode, "rows": c.rows, "agree": c.agree,
                   "disagreements": [str(p) for p in c.disagreements]} for c in cells]})
