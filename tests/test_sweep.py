"""hpu sweep: the spec, the Pareto front, and sweeps on a local Dask cluster and on a real scheduler."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hpu.cli import main
from hpu.errors import InputError
from sweep import report, spec as sweep_spec

SPEC = """[sweep]
base = "small"
metrics = ["cycles", "energy"]
seed = 3

[sweep.fields]
lanes = [2, 3]
permeability = [0.25, 0.5]

[[sweep.workload]]
source = "random"
rows = 1
"""


def write_spec(tmp_path, text=SPEC):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_grid_and_random_points_are_fixed_by_the_spec(tmp_path):
    spec = sweep_spec.load(write_spec(tmp_path, SPEC.replace("permeability = [0.25, 0.5]",
                                                             "permeability = {from = 0.25, to = 0.75, step = 0.25}")))
    points = [p.assignment() for p in spec.enumerate()]
    assert points == [{"lanes": l, "permeability": p} for l in (2, 3) for p in (0.25, 0.5, 0.75)]
    sampled = write_spec(tmp_path, SPEC.replace('metrics', 'sample = "random"\npoints = 3\nmetrics'))
    first = [p.assignment() for p in sweep_spec.load(sampled).enumerate()]
    grid = [{"lanes": l, "permeability": p} for l in (2, 3) for p in (0.25, 0.5)]
    # Three distinct points of the four, the same ones in the same order every time the spec is read.
    assert len(first) == 3 and all(a in grid for a in first) and len({tuple(a.values()) for a in first}) == 3
    assert first == [p.assignment() for p in sweep_spec.load(sampled).enumerate()]
    # More points than the grid holds: the whole grid, once.
    every = write_spec(tmp_path, SPEC.replace('metrics', 'sample = "random"\npoints = 9\nmetrics'))
    assert sorted(map(str, (p.assignment() for p in sweep_spec.load(every).enumerate()))) == sorted(map(str, grid))


@pytest.mark.parametrize("values, expected", [
    ("{from = 1, to = 4, step = 2}", [1, 3]),                  # `to` is a bound, not a point
    ("{from = 0.25, to = 1.0, step = 0.5}", [0.25, 0.75]),
    ("{from = 0.1, to = 1.0, step = 0.1}", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),   # float steps reach `to`
    ("{from = 2, to = 2, step = 1}", [2]),
])
def test_a_range_stops_at_its_bound(tmp_path, values, expected):
    spec = sweep_spec.load(write_spec(tmp_path, SPEC.replace("permeability = [0.25, 0.5]", f"permeability = {values}")))
    assert spec.fields["permeability"] == expected


@pytest.mark.parametrize("change, message", [
    (("lanes = [2, 3]", "lane = [2, 3]"), "lane is not a configuration field"),
    (("lanes = [2, 3]", "lanes = []"), "lanes has no values"),
    (('"cycles", "energy"', '"cycles", "speed"'), "unknown metric"),
    (('source = "random"', 'source = "nope"'), "workload source 'nope'"),
    (("rows = 1", "rows = 0"), "rows must be a whole number of at least 1"),
    (("seed = 3", "seed = 3\nworkers = 2"), "unknown [sweep] entry workers"),
    (("rows = 1", "rows = 1\nroute_window = -1"), "route_window must be a whole number of keys"),
    (("rows = 1", "rows = 1\nroute_window = 2"), "route_window 2 sends unrouted tokens' windows, which needs a router"),
    (("rows = 1", "rows = 1\nwindow = 2"), "workload random: unknown entry window"),
])
def test_bad_specs_are_refused_in_one_line(tmp_path, change, message):
    with pytest.raises(InputError, match=message.replace("[", "\\[").replace("]", "\\]")):
        sweep_spec.load(write_spec(tmp_path, SPEC.replace(*change)))


def test_a_workload_with_a_window_sends_the_unrouted_tokens_windows(tmp_path):
    """A routed design's workload with route_window W: each unrouted token's last W keys run as a row of
    their own beside the routed rows (`hpu sim --route-window`), all checked against the golden model."""
    import torch

    from golden_model.contract import run_contract, run_routing
    from golden_model.sources import routed_tokens
    from hpu.config import HPUConfig, resolve
    from sweep.point import evaluate

    config = HPUConfig.load(resolve("small")).replace(route_block=8, route_fraction=0.25).to_dict()
    figures = [evaluate(config, {"source": "random", "rows": 8, "route_window": w}, ["cycles"], 1, None, "icarus",
                        str(tmp_path)) for w in (0, 2)]
    # Capacity: 2 of the block's 8 tokens are routed; with the window the other 6 send 2 keys each.
    assert [(f["status"], f["rows_checked"], f["mismatches"], f["window_rows"]) for f in figures] == [
        ("ok", 2, 0, 0), ("ok", 8, 0, 6)]
    assert figures[1]["cycles_per_row"] > figures[0]["cycles_per_row"]
    # The kept fraction is of the whole dense work, every token's row: the golden model's kept keys of
    # the routed rows over all the block's keys (the rows not sent keep nothing).
    cfg = HPUConfig.from_dict(config)
    rows, blocks, _ = routed_tokens("random", cfg, 8, 1)
    routed = run_routing(cfg, torch.tensor(blocks)).positions()[0]
    kept = sum(int(run_contract(cfg, torch.tensor([rows[t].scores]), torch.tensor(rows[t].values)).kept[0])
               for t in routed)
    assert figures[0]["kept_fraction"] == kept / sum(row.n for row in rows) < 0.5
    spec = sweep_spec.load(write_spec(tmp_path, SPEC.replace("rows = 1", "rows = 1\nroute_window = 2")
                                      .replace("lanes = [2, 3]", "route_block = [8]")))
    assert [w.route_window for w in spec.workloads] == [2]


def test_the_cache_key_reads_the_code_that_derives_a_points_figures(monkeypatch):
    """The point module derives figures (pJ per row, cycles against ideal): it is part of the code digest."""
    from sweep import point

    with_point = point.tool_versions()["code"]
    assert "sweep/point.py" in point._CODE
    monkeypatch.setattr(point, "_CODE", tuple(c for c in point._CODE if c != "sweep/point.py"))
    assert point.tool_versions()["code"] != with_point


def test_pareto_front_keeps_the_unbeaten_per_workload():
    rows = [{"status": "ok", "workload": "w", "energy_pj_per_row_gated": 1.0, "area_nand2": 5.0, "cycles_per_row": 9},
            {"status": "ok", "workload": "w", "energy_pj_per_row_gated": 2.0, "area_nand2": 4.0, "cycles_per_row": 9},
            {"status": "ok", "workload": "w", "energy_pj_per_row_gated": 2.0, "area_nand2": 5.0, "cycles_per_row": 9},
            {"status": "ok", "workload": "v", "energy_pj_per_row_gated": 9.0, "area_nand2": 9.0, "cycles_per_row": 9},
            {"status": "refused", "workload": "w"}]
    assert report.pareto(rows) == [0, 1, 3]
    # What the gate keeps counts too: a softer gate that costs more energy is not beaten for it.
    softer = {"status": "ok", "workload": "w", "energy_pj_per_row_gated": 3.0, "area_nand2": 5.0, "cycles_per_row": 9}
    kept = [{**r, "kept_fraction": f} for r, f in zip(rows[:4] + [softer], (0.2, 0.2, 0.2, 0.5, 0.6))] + rows[4:]
    assert report.objectives(kept) == {"energy_pj_per_row_gated": "min", "kept_fraction": "max", "area_nand2": "min",
                                       "cycles_per_row": "min"}
    assert report.pareto(kept) == [0, 1, 3, 4]
    # Quality, where measured, is the gate's figure of merit instead of the kept fraction.
    quality = [{**r, "quality_embedding_cos_mean": q} for r, q in zip(kept[:5], (0.9, 0.9, 0.9, 0.9, 0.8))] + rows[4:]
    assert "kept_fraction" not in report.objectives(quality) and report.pareto(quality) == [0, 1, 3]


def _table(out):
    with open(out / "sweep.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# The tests that share the module's sweep run on one xdist worker (make test: --dist loadgroup).
cluster = pytest.mark.xdist_group(name="sweep")


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    spec = write_spec(root)
    assert main(["sweep", str(spec), "--workers", "2", "-o", str(root / "local")]) == 0
    return root, spec


@cluster
def test_local_sweep_measures_caches_and_records_refusals(local_sweep, capsys):
    root, spec = local_sweep
    out = root / "local"
    rows = _table(out)
    assert [(r["lanes"], r["permeability"], r["status"]) for r in rows] == [
        ("2", "0.25", "ok"), ("2", "0.5", "ok"), ("3", "0.25", "refused"), ("3", "0.5", "refused")]
    assert "lanes = 3: must divide head_dim" in rows[2]["message"]
    for r in rows[:2]:
        assert (r["rows_checked"], r["mismatches"]) == ("1", "0")
        assert 0 < float(r["energy_pj_per_row_gated"]) < float(r["energy_pj_per_row_dense"])
        assert float(r["cycles_per_row"]) >= float(r["ideal_cycles_per_row"]) > 0
    # The gate keeps no more than the permeability's cap of each row (16 keys at most).
    for r in rows[:2]:
        assert float(r["kept_fraction"]) <= float(r["permeability"]) + 1 / 16
    for name in report.FILES.values():
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "pareto.json").read_text())["points"]
    # Run again: everything comes from the cache, and the table is the same.
    capsys.readouterr()
    assert main(["sweep", str(spec), "--workers", "2", "-o", str(out)]) == 0
    assert "4 cached, 0 to compute" in capsys.readouterr().out
    assert _table(out) == rows


@contextlib.contextmanager
def dask_cluster(tmp_path, *worker_options):
    """A `dask scheduler` and two `dask worker` processes on loopback, as a user starts them; killed after."""
    address_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(address_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if address_file.exists() and address_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--no-dashboard", *worker_options],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(timeout=30)


def test_no_scheduler_at_the_address_is_refused_in_one_line(tmp_path, capsys):
    assert main(["sweep", str(write_spec(tmp_path)), "--scheduler", "tcp://127.0.0.1:9", "-o",
                 str(tmp_path / "out")]) == 2
    assert "no Dask scheduler answers there" in capsys.readouterr().err


@cluster
def test_a_real_scheduler_with_a_worker_killed_mid_sweep_gives_the_same_table(local_sweep, tmp_path):
    """`dask scheduler` and two `dask worker` processes, as a user starts them: the sweep's table equals the
    local cluster's, although one worker is killed while it measures a point (the scheduler runs the
    point again on the other): nothing lost, nothing doubled."""
    from dask.distributed import Client

    root, spec = local_sweep
    with dask_cluster(tmp_path, "--no-nanny") as address:
        sweep = subprocess.Popen([sys.executable, "-m", "hpu.cli", "sweep", str(spec), "--scheduler", address,
                                  "-o", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            with Client(address, timeout="10s") as client:
                for _ in range(600):
                    busy = [w for w, keys in client.processing().items() if keys]
                    if busy:
                        break
                    time.sleep(0.1)
                assert busy, "no task ever started"
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            output, _ = sweep.communicate(timeout=600)
        finally:
            sweep.kill()
        assert sweep.returncode == 0, output
    assert _table(tmp_path / "out") == _table(root / "local")
    assert len(list((tmp_path / "out" / "cache").glob("*.json"))) == 4
