"""A newcomer's first minutes: shipped configurations from any folder, and the demo's index page."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hpu.config import ConfigError, HPUConfig, resolve, shipped_names
from hpu.files import write_json
from hpu.cli import main as hpu_main
from hpu.report_index import write_index

from conftest import REPO

HPU = Path(sys.executable).parent / "hpu"  # the installed entry point


def test_shipped_configurations_are_every_toml_under_configs():
    on_disk = sorted(p.relative_to(f"{REPO}/configs").with_suffix("").as_posix()
                     for p in Path(REPO, "configs").rglob("*.toml"))
    assert shipped_names() == on_disk and {"default", "minilm", "routing", "small"} <= set(on_disk)


@pytest.mark.parametrize("given", ["routing", "routing.toml", "configs/routing.toml"])
def test_a_shipped_configuration_is_found_by_name_from_another_folder(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(given).resolve() == Path(REPO, "configs", "routing.toml").resolve()
    assert HPUConfig.load(given) == HPUConfig.load(f"{REPO}/configs/routing.toml")


def test_installed_hpu_runs_a_shipped_configuration_from_another_folder(tmp_path):
    done = subprocess.run([HPU, "config", "--config", "configs/routing.toml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "route_block   = 256" in done.stdout


def test_a_file_in_the_working_folder_comes_before_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("default.toml").write_text("[hpu]\nlanes = 8\n")
    assert resolve("default.toml") == Path("default.toml") and HPUConfig.load("default.toml").lanes == 8
    assert HPUConfig.load("default") == HPUConfig()


def test_an_unknown_configuration_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given in ("nope.toml", "../configs/default.toml", "/configs/default.toml"):
        with pytest.raises(ConfigError) as info:
            HPUConfig.load(given)
        assert str(info.value) == (f"configuration file {given} does not exist: pass a TOML file or the name of a "
                                   f"shipped configuration ({', '.join(shipped_names())})")


def test_the_wheel_ships_every_configuration_nested_folders_included(tmp_path):
    """Built from a copy (setuptools writes build/ beside the sources) with a nested configuration
    added, installed by unpacking, and resolved by name from another folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(Path(REPO, name), src)
    for name in ("hpu", "rtl_gen", "sim", "golden_model", "power", "gpu_kernels", "configs"):
        shutil.copytree(Path(REPO, name), src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".hpu.lock"))
    (src / "configs" / "nested").mkdir(exist_ok=True)
    shutil.copy(src / "configs" / "small.toml", src / "configs" / "nested" / "tiny.toml")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", tmp_path / "wheel", src], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl")))
    shipped = sorted(n for n in wheel.namelist() if n.startswith("hpu/configs/"))
    expected = sorted(f"hpu/configs/{p.relative_to(src / 'configs').as_posix()}"
                      for p in (src / "configs").rglob("*.toml"))
    assert shipped == expected and "hpu/configs/nested/tiny.toml" in shipped
    wheel.extractall(tmp_path / "installed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", "from hpu.config import resolve; print(resolve('nested/tiny'))"],
                          cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "installed")})
    assert done.stdout.strip() == str(tmp_path / "installed" / "hpu" / "configs" / "nested" / "tiny.toml"), done.stderr


# -- set-up: the cell library's fetch ---------------------------------------------------------------

WHOLE_LIBERTY = "library (osu018) {\n  cell (INVX1) {\n    area : 16;\n  }\n}\n"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dpkg-deb"), reason="the fetch runs as root on Debian")
@pytest.mark.parametrize("liberty, whole", [(WHOLE_LIBERTY, True), (WHOLE_LIBERTY[:30], False)])
def test_make_cells_puts_only_a_whole_library_in_place(liberty, whole, tmp_path):
    """`make cells` against a stand-in apt-get whose package holds a whole or a cut-short Liberty file."""
    tree = tmp_path / "tree"
    cells_dir = tree / "usr/share/qflow/tech/osu018"
    cells_dir.mkdir(parents=True)
    (cells_dir / "osu018_stdcells.lib").write_text(liberty)
    (cells_dir / "osu018_stdcells.v").write_text("module INVX1(A, Y); endmodule\n")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text("Package: qflow-tech-osu018\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test\n")
    deb = tmp_path / "qflow-tech-osu018_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb], check=True, capture_output=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "apt-get").write_text(f"#!/bin/sh\n[ \"$1\" = download ] && cp {deb} . || true\n")
    (shim / "apt-get").chmod(0o755)
    cells = tmp_path / "build" / "cells" / "osu018"
    done = subprocess.run(["make", "-s", "-f", f"{REPO}/Makefile", f"CELLS={cells}", "cells"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    lib = cells / "osu018_stdcells.lib"
    if whole:
        assert done.returncode == 0, done.stdout + done.stderr
        assert lib.read_text() == WHOLE_LIBERTY and not Path(f"{cells}.fetch").exists()
    else:
        assert done.returncode != 0 and not lib.exists()
        assert (f"qflow-tech-osu018 did not unpack a whole cell library (left in {cells}.fetch); nothing was "
                "installed: run make cells again") in done.stdout


# -- the index page -----------------------------------------------------------------------------

CFG = HPUConfig().to_dict()


def _records(out: Path) -> list[Path]:
    """One record of each command, with the fields the index reads, and a report file beside each."""
    records = {
        "rtl/manifest.json": {"manifest_version": 1, "top": "hpu", "config": CFG, "area": "area.json"},
        "rtl/area.json": {"total": {"area_nand2_eq": 58030.0, "cells": 29720, "memory_bits": 16712}},
        "sim/summary.json": {"summary_version": 1, "simulator": "icarus", "runs": {
            "gated": {"rows_checked": 24, "mismatches": 0, "kept_fraction": 0.3125, "hpu_cycles": 5000},
            "dense": {"rows_checked": 24, "mismatches": 0, "kept_fraction": 1.0, "hpu_cycles": 5000}}},
        "power/power.json": {"energy_table": {"source": "Horowitz ISSCC 2014"}, "runs": {}, "comparison": {
            "mac_silent_ratio_compute": {"gated": 0.75, "dense": 0.0625},
            "lane_silent_ratio_compute": {"gated": 0.8125, "dense": 0.125}, "kept_fraction": 0.3125,
            "energy_saving_mac_array": 0.5, "energy_saving_hpu": 0.25, "energy_saving_total": 0.625,
            "energy_proportionality": {"hpu": 0.36363636}}},
        "crosscheck/crosscheck.json": {"simulator": "icarus", "kernel_device": "cpu", "cells": [
            {"rows": 8, "agree": 8, "disagreements": []}, {"rows": 8, "agree": 7, "disagreements": ["d.json"]}]},
        "quality/quality.json": {"config": CFG, "texts": 54, "rows": [
            {"path": "fixed", "mode": "mass", "permeability": 0.5, "mass_target": 0.9, "route_fraction": 1.0,
             "kept_fraction": 0.4, "embedding_cos_mean": 0.99, "embedding_cos_min": 0.95},
            {"path": "float", "mode": "mass", "permeability": 0.5, "mass_target": 0.9, "route_fraction": 1.0,
             "kept_fraction": 0.41, "embedding_cos_mean": 0.98, "embedding_cos_min": 0.94}]},
    }
    for name, value in records.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_json(out / name, value)
    (out / "power" / "power.html").write_text("<html></html>")
    (out / "power" / ".hpu.lock").write_text("1")
    return [out / n for n in records if not n.endswith("area.json")]


def test_index_lists_every_report_with_its_headline_figures(tmp_path, capsys):
    out = tmp_path / "out"
    records = _records(out)
    assert hpu_main(["index", "-o", str(out), *map(str, records)]) == 0
    assert capsys.readouterr().out == f"index: {out / 'index.html'}\n"
    index = json.loads((out / "index.json").read_text())
    assert [r["command"] for r in index["reports"]] == ["hpu gen", "hpu sim", "hpu power", "hpu crosscheck",
                                                         "hpu quality"]
    gen, sim, power, crosscheck, quality = (r["figures"] for r in index["reports"])
    assert gen["area (NAND2 equivalents, generic gates)"] == 58030.0 and gen["MAC lanes"] == 16
    assert sim["gated: rows checked bit-exact against the golden model"] == 24 and sim["gated: mismatches"] == 0
    assert power == {"energy table": "Horowitz ISSCC 2014",
                     "gated: MAC array silent ratio (compute phase)": 0.75,
                     "gated: MAC lane silent ratio, mean (compute phase)": 0.8125,
                     "dense: MAC array silent ratio (compute phase)": 0.0625,
                     "dense: MAC lane silent ratio, mean (compute phase)": 0.125, "kept fraction": 0.3125,
                     "energy saving, MAC array": 0.5, "energy saving, HPU on chip": 0.25,
                     "energy saving, on chip + value traffic": 0.625, "energy proportionality, HPU": 0.36363636}
    assert crosscheck == {"simulator": "icarus", "kernel device": "cpu",
                          "rows checked (golden model = Verilog = exact kernel)": 16,
                          "rows where all three agree": 15, "disagreements": 1}
    assert quality == {"texts": 54, "gate settings (each in float and fixed point)": 1,
                       "mass gate, permeability 0.5, mass target 0.9: kept fraction": 0.4,
                       "mass gate, permeability 0.5, mass target 0.9: embedding cosine vs dense (mean)": 0.99,
                       "mass gate, permeability 0.5, mass target 0.9: embedding cosine vs dense (min)": 0.95}
    # Every file beside a record is linked (lock files are not reports), relative to the index.
    assert [f["path"] for f in index["reports"][2]["files"]] == ["power/power.html", "power/power.json"]
    page = (out / "index.html").read_text()
    assert '<a href="power/power.html">power/power.html</a>' in page
    assert "<th>energy saving, HPU on chip</th><td>0.2500</td>" in page
    assert "<th>area (NAND2 equivalents, generic gates)</th><td>58,030.0</td>" in page


def test_index_escapes_what_it_puts_into_html(tmp_path):
    out = tmp_path / "out"
    folder = out / "<b>&'\""
    folder.mkdir(parents=True)
    write_json(folder / "crosscheck.json", {"simulator": "<script>alert(1)</script>", "kernel_device": "cpu",
                                            "cells": []})
    (folder / "x\" onclick=\"y.md").write_text("")
    write_index([folder / "crosscheck.json"], out)
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "onclick=\"" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="%3Cb%3E%26%27%22/x%22%20onclick%3D%22y.md"' in page


@pytest.mark.parametrize("content, message", [
    (None, "report record {p} does not exist: pass hpu gen's manifest.json, hpu sim's summary, power.json, "
           "crosscheck.json or quality.json"),
    ({"rows": []}, "{p} is not a record the index knows: pass hpu gen's manifest.json, hpu sim's summary, "
                   "power.json, crosscheck.json or quality.json"),
    ({"kernel_device": "cpu"}, "{p} lacks the fields hpu crosscheck writes: it is damaged or of another version; "
                               "run `hpu crosscheck` again"),
])
def test_index_refuses_a_bad_record_in_one_line_and_writes_nothing(content, message, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("an earlier run's page")
    record = out / "r" / "crosscheck.json"
    if content is not None:
        record.parent.mkdir()
        write_json(record, content)
    assert hpu_main(["index", "-o", str(out), str(record)]) == 2
    assert capsys.readouterr().err == f"hpu: {message.format(p=record)}\n"
    assert not (out / "index.html").exists() and not (out / "index.json").exists()
