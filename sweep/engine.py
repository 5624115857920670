"""Running a sweep on Dask: one task per (point, workload), results cached on disk by their key.

With no scheduler address the sweep starts a local cluster (one single-threaded worker process per
core); with one (`tcp://HOST:PORT`) it uses a cluster started with `dask scheduler` and `dask worker`.
A task is named by its cache key, so a point that appears twice runs once; a worker that dies has its
tasks run again elsewhere by the scheduler, and each finished task is written to the cache as it
arrives, so a killed sweep loses no finished point and a re-run computes only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from hpu.errors import InputError
from hpu.files import write_json
from sweep.point import evaluate, key, tool_versions
from sweep.spec import Spec


@dataclass(frozen=True)
class Task:
    point: int
    assignment: dict
    workload: dict
    config: dict
    key: str


def tasks(spec: Spec, tools: dict) -> list[Task]:
    energy = str(spec.energy) if spec.energy else None
    out = []
    for point in spec.enumerate():
        config = {**spec.base, **point.assignment()}
        for workload in spec.workloads:
            w = asdict(workload)
            out.append(Task(point.index, point.assignment(), w, config,
                            key(config, w, list(spec.metrics), spec.seed, energy, spec.simulator, tools)))
    return out


@contextlib.contextmanager
def client(scheduler: str | None, workers: int | None):
    """A Dask client: of the cluster at `scheduler`, or of a local cluster of `workers` processes."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            c = Client(scheduler, timeout="5s")
        except OSError as exc:
            raise InputError(f"--scheduler {scheduler}: no Dask scheduler answers there ({exc}); start one with "
                             "`dask scheduler` and workers with `dask worker ADDRESS`") from None
        with c:
            yield c
        return
    # Dask's own log lines below errors (a worker's heartbeat cut short as the cluster closes) say nothing
    # to a user; a failed point is reported by the sweep itself.
    with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        yield c


def run(spec: Spec, out: Path, scheduler: str | None = None, workers: int | None = None,
        work_root: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Every (point, workload) of `spec`, from the cache under `out/cache` or computed on Dask; returns
    one record per task, in the spec's order."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    todo = tasks(spec, tool_versions())
    results: dict[str, dict] = {}
    for t in todo:
        path = cache / f"{t.key}.json"
        if path.exists():
            results[t.key] = json.loads(path.read_text())
    missing = list({t.key: t for t in todo if t.key not in results}.values())
    cached, failed, done, started = len(todo) - len(missing), 0, 0, time.perf_counter()
    log(f"sweep: {len(todo)} tasks ({len({t.point for t in todo})} points x {len(spec.workloads)} workloads), "
        f"{cached} cached, {len(missing)} to compute")
    if missing:
        from dask.distributed import as_completed

        # Workers may run on other machines: each point works in a temporary folder of its worker's.
        root = work_root or str(Path(tempfile.gettempdir()) / "hpu-sweep")
        metrics, energy = list(spec.metrics), str(spec.energy) if spec.energy else None
        with client(scheduler, workers) as c:
            futures = c.map(evaluate, [t.config for t in missing], [t.workload for t in missing],
                            [metrics] * len(missing), [spec.seed] * len(missing), [energy] * len(missing),
                            [spec.simulator] * len(missing), [root] * len(missing), key=[f"point-{t.key}" for t in missing], pure=False)
            for future in as_completed(futures):
                task_key = future.key.removeprefix("point-")
                if future.status == "error":
                    failed += 1
                    results[task_key] = {"status": "failed", "message": f"{type(future.exception()).__name__}: "
                                                                        f"{future.exception()}"}
                else:
                    results[task_key] = future.result()
                    # Written as each arrives (whole or not at all), so that a killed sweep keeps it.
                    write_json(cache / f"{task_key}.json", results[task_key])
                done += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (len(missing) - done)
                log(f"  {done + cached}/{len(todo)} done ({cached} cached, {failed} failed), ETA {eta:.0f} s")
    return [{"point": t.point, **t.assignment, "workload": t.workload["source"], "workload_rows": t.workload["rows"],
             "workload_route_window": t.workload["route_window"], "key": t.key, **results[t.key]} for t in todo]



def sweep(spec_path: Path, out: Path, scheduler: str | None = None, workers: int | None = None,
          log: Callable[[str], None] = print) -> dict[str, Path]:
    """`hpu sweep`: read the spec, measure every point (cached), write the report into `out`."""
    from hpu.files import claim
    from sweep import report
    from sweep.spec import load

    spec = load(spec_path)
    with claim(out, "sweep folder", tuple(report.FILES.values())):
        rows = run(spec, out, scheduler, workers, log=log)
        return report.write(rows, spec, out)
