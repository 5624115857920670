"""Every command's outputs: declared once, all removed when a run starts, and every number in them finite.

Each command declares the files it may write (its OUTPUTS, the names its writers use). A run writes
nothing outside that declaration, and a run that fails or is interrupted at a late step leaves none
of an earlier run's outputs behind: the tests plant a stale file under every declared name first.
"""

import fnmatch
import json
import math

import pytest

import golden_model.quality as quality
import power.generic as generic
import power.report as report
import sim.crosscheck as crosscheck
from golden_model.quality import QualityRow
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.files import write_json
from power.energy import EnergyTable
from rtl_gen.generate import OUTPUTS as GEN_OUTPUTS
from test_power import write_vcd

from conftest import REPO

SMALL_TOML = f"{REPO}/configs/small.toml"
STALE = "stale: an earlier run's output\n"


def plant(folder, outputs) -> list:
    """A stale file under each declared name (a pattern's `*` made `old`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / pattern.replace("*", "old") for pattern in outputs]
    for path in paths:
        path.write_text(STALE)
    return paths


def stale_left(paths) -> list[str]:
    return [p.name for p in paths if p.is_file() and p.read_bytes() == STALE.encode()]


def undeclared(folder, outputs) -> list[str]:
    """Files in folder that no declared name matches (the lock and partial names are hidden)."""
    return sorted(p.name for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file()
                  and not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in outputs))


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def interrupted(capsys, argv) -> None:
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`hpu gen --synth --lint` of the small configuration, and 2 rows simulated gated and dense."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["gen", "--config", SMALL_TOML, "--synth", "--lint", "-o", str(root / "rtl")]) == 0
    assert main(["sim", "--config", SMALL_TOML, "--rows", "2", "--dense-baseline", "--vcd", str(root / "g.vcd"),
                 "--build", str(root / "build"), "-o", str(root / "s.json"), "--quiet"]) == 0
    return root


# -- hpu gen ----------------------------------------------------------------------------------------

def test_gen_writes_its_declared_outputs_and_an_interrupted_synthesis_leaves_no_earlier_one(runs, tmp_path,
                                                                                           monkeypatch, capsys):
    assert sorted(p.name for p in (runs / "rtl").iterdir() if not p.name.startswith(".")) == sorted(GEN_OUTPUTS)
    assert json.loads((runs / "rtl" / "manifest.json").read_text())["area"] == "area.json"
    out = tmp_path / "rtl"
    stale = plant(out, GEN_OUTPUTS)
    monkeypatch.setattr("rtl_gen.generate.synthesize", interrupt)
    interrupted(capsys, ["gen", "--config", SMALL_TOML, "--synth", "-o", str(out)])
    # The manifest marks a whole generation: without the area asked for, there is none.
    assert stale_left(stale) == [] and not (out / "manifest.json").exists()


# -- hpu power --------------------------------------------------------------------------------------

DEFS = "$scope module t $end\n$var wire 1 ! clk $end\n$var wire 4 \" x $end\n$upscope $end"
BODY = "#0 0! b0000 \"\n#5 1!\n#10 0! b0011 \"\n#15 1!\n#20 0! b0101 \"\n#25 1!\n#30 0!"


def test_power_without_a_manifest_writes_only_declared_outputs(tmp_path):
    vcd = write_vcd(tmp_path, BODY, DEFS)
    out = tmp_path / "p"
    assert main(["power", str(vcd), "--baseline", str(vcd), "-o", str(out)]) == 0
    assert (out / "activity.json").exists() and (out / "dense_activity.json").exists()
    assert undeclared(out, report.OUTPUTS) == []


def test_power_with_a_manifest_writes_only_declared_outputs(runs, tmp_path):
    out = tmp_path / "p"
    assert main(["power", str(runs / "g.vcd"), "--baseline", str(runs / "g_dense.vcd"), "--manifest",
                 str(runs / "rtl" / "manifest.json"), "--summary", str(runs / "s.json"), "-o", str(out)]) == 0
    assert (out / "power.json").exists() and undeclared(out, report.OUTPUTS) == []


def test_a_table_of_zeros_states_no_saving_instead_of_dividing_by_zero(runs, tmp_path, capsys):
    table = tmp_path / "zero.toml"
    table.write_text("[toggle_fJ]\nregister = 0\ndatapath = 0\nmemory = 0\ncontrol = 0\n[clock_fJ]\n"
                     "per_enabled_bit = 0\n")
    out = tmp_path / "p"
    assert main(["power", str(runs / "g.vcd"), "--baseline", str(runs / "g_dense.vcd"), "--manifest",
                 str(runs / "rtl" / "manifest.json"), "--summary", str(runs / "s.json"), "--energy", str(table),
                 "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    comparison = json.loads((out / "power.json").read_text())["comparison"]
    assert (comparison["energy_saving_hpu"], comparison["energy_saving_mac_array"]) == (None, None)
    assert set(comparison["energy_proportionality"].values()) == {None}


def test_failed_power_without_a_manifest_leaves_no_earlier_output(tmp_path, monkeypatch, capsys):
    vcd = write_vcd(tmp_path, BODY, DEFS)
    out = tmp_path / "p"
    stale = plant(out, report.OUTPUTS)
    write = generic.write

    def fail_on_dense(g, table, out_dir, name="activity"):
        if name != "activity":
            raise KeyboardInterrupt
        return write(g, table, out_dir, name)

    monkeypatch.setattr(generic, "write", fail_on_dense)
    interrupted(capsys, ["power", str(vcd), "--baseline", str(vcd), "-o", str(out)])
    assert stale_left(stale) == []


def test_interrupted_power_report_leaves_no_earlier_output(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "p"
    stale = plant(out, report.OUTPUTS)
    monkeypatch.setattr("power.report.plots", interrupt)
    interrupted(capsys, ["power", str(runs / "g.vcd"), "--baseline", str(runs / "g_dense.vcd"),
                         "--manifest", str(runs / "rtl" / "manifest.json"), "-o", str(out)])
    assert stale_left(stale) == []


# -- hpu quality and hpu crosscheck -----------------------------------------------------------------

def test_quality_report_writes_only_declared_outputs(tmp_path):
    row = QualityRow("float", "mass", 0.5, 0.9, 1.0, 0.25, 0.99, 0.98, 0.97)
    quality.write_report([row], HPUConfig(), tmp_path)
    assert undeclared(tmp_path, quality.OUTPUTS) == [] and (tmp_path / "quality.json").exists()


@pytest.mark.parametrize("step", ["evaluate", "write_report"])
def test_interrupted_quality_leaves_no_earlier_report(tmp_path, monkeypatch, capsys, step):
    stale = plant(tmp_path / "q", quality.OUTPUTS)
    monkeypatch.setattr(quality, "evaluate", lambda *a, **k: [QualityRow("float", "dense", 1, 1, 1, 1, 1, 1, 1)])
    monkeypatch.setattr(quality, step, interrupt)
    interrupted(capsys, ["quality", "-o", str(tmp_path / "q")])
    assert stale_left(stale) == []


def test_crosscheck_report_writes_only_declared_outputs(tmp_path):
    cells = [crosscheck.Cell("random", "mass", 2, 1, [tmp_path / crosscheck.DISAGREEMENT.format("random-mass-row1")])]
    crosscheck.write_report(cells, HPUConfig(), "icarus", "cpu", 1, tmp_path)
    assert undeclared(tmp_path, crosscheck.OUTPUTS) == []
    assert fnmatch.fnmatchcase(cells[0].disagreements[0].name, crosscheck.DISAGREEMENT.format("*"))


def test_interrupted_crosscheck_leaves_no_earlier_report(tmp_path, monkeypatch, capsys):
    stale = plant(tmp_path / "x", crosscheck.OUTPUTS)
    run_folder = tmp_path / "x" / crosscheck.RUN_FOLDER.format("random-mass")
    run_folder.mkdir()
    (run_folder / "sim.log").write_text(STALE)
    monkeypatch.setattr(crosscheck, "crosscheck", interrupt)
    interrupted(capsys, ["crosscheck", "--config", SMALL_TOML, "-o", str(tmp_path / "x")])
    assert stale_left(stale) == [] and not run_folder.exists()


# -- hpu sim: the user names its files, so they are matched literally -------------------------------

def test_sim_removes_its_own_summary_and_no_file_its_name_would_match_as_a_pattern(tmp_path, monkeypatch, capsys):
    import sim.runner

    (tmp_path / "s[1].json").write_text(STALE)
    (tmp_path / "s1.json").write_text("the user's own file")
    monkeypatch.setattr(sim.runner, "_run", interrupt)
    interrupted(capsys, ["sim", "--config", SMALL_TOML, "--rows", "2", "--build", str(tmp_path / "build"),
                         "-o", str(tmp_path / "s[1].json")])
    assert not (tmp_path / "s[1].json").exists() and (tmp_path / "s1.json").read_text() == "the user's own file"


# -- every number written is finite ----------------------------------------------------------------

def test_write_json_refuses_non_finite_numbers_and_writes_nothing(tmp_path):
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            write_json(tmp_path / "r.json", {"energy_fJ": value})
    assert list(tmp_path.iterdir()) == []


TABLE = ('[toggle_fJ]\nregister = {register}\ndatapath = 3.1\nmemory = 156.0\ncontrol = 3.1\n'
         '[clock_fJ]\nper_enabled_bit = {clock}\n[offchip_pJ]\ndram_per_byte = {dram}\n'
         '[memory_access]\nbytes = [8192, {size}]\nfJ_per_bit = [156.25, {memory}]\n'
         '[units."hpu.mac.lane*"]\ntoggle_fJ = {{ register = 1.0, datapath = 1.0, control = 1.0 }}\n'
         'clock_fJ_per_enabled_bit = 1.0\nidle_fJ_per_cycle = {idle}\n')
GOOD = {"register": 3.75, "clock": 1.875, "dram": 244.0, "size": 32768, "memory": 312.5, "idle": 10.0}


@pytest.mark.parametrize("key, value, message", [
    ("register", "inf", "toggle_fJ.register = inf: must be a number of femtojoules >= 0 and at most 1e+06"),
    ("register", "1.7e308", "toggle_fJ.register = 1.7e+308: must be a number of femtojoules >= 0 and at most 1e+06"),
    ("register", "nan", "toggle_fJ.register = nan: must be a number"),
    ("clock", "1.7e308", "clock_fJ.per_enabled_bit = 1.7e+308: must be a number of femtojoules"),
    ("dram", "inf", "offchip_pJ.dram_per_byte = inf: must be a number of picojoules >= 0 and at most 1e+06"),
    ("dram", "1.7e308", "offchip_pJ.dram_per_byte = 1.7e+308"),
    ("memory", "inf", "memory_access.fJ_per_bit[1] = inf: must be a number of femtojoules > 0 and at most 1e+06"),
    ("memory", "1.7e308", "memory_access.fJ_per_bit[1] = 1.7e+308"),
    ("size", "1.7e308", "memory_access.bytes[1] = 1.7e+308: must be a number of bytes > 0"),
    ("idle", "1.7e308", 'units."hpu.mac.lane*".idle_fJ_per_cycle = 1.7e+308: must be a number of femtojoules >= 0 '
                        "and at most 1e+09"),
])
def test_energy_tables_with_infinite_or_overflowing_values_are_refused_by_key(tmp_path, capsys, key, value, message):
    table = tmp_path / "e.toml"
    table.write_text(TABLE.format(**{**GOOD, key: value}))
    out = tmp_path / "p"
    assert main(["power", str(write_vcd(tmp_path, BODY, DEFS)), "--energy", str(table), "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_the_shipped_table_loads_and_a_steep_memory_extrapolation_is_refused(tmp_path):
    EnergyTable.load()
    table = tmp_path / "e.toml"
    table.write_text(TABLE.format(**{**GOOD, "size": 8193, "memory": 1e6}))
    with pytest.raises(Exception, match=r"\[memory_access\] extrapolates to more than 1e\+06 fJ per bit for a "
                                        r"memory of 65536 bytes: add a point near that capacity"):
        EnergyTable.load(table).memory_fj_per_bit(65536 * 8)


# -- arguments are checked before any expensive work -----------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--route-fraction", "2"], "route_fraction = 2.0: must lie in (0, 1]"),
    (["--permeability", "1.5"], "permeability = 1.5: must lie in (0, 1]"),
    (["--mass-target", "0"], "mass_target = 0.0: must lie in (0, 1]"),
])
def test_quality_refuses_bad_settings_before_the_model_loads(tmp_path, monkeypatch, capsys, args, message):
    def no_model():
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(quality, "MiniLM", no_model)
    assert main(["quality", *args, "-o", str(tmp_path / "q")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("hpu: note:")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--workloads", "random", "random", "random"], "argument --workloads: random given more than once"),
    (["calibrate", "--units", "lane", "gate", "lane"], "argument --units: lane given more than once"),
    (["crosscheck", "--modes", "mass", "mass"], "argument --modes: mass given more than once"),
    (["crosscheck", "--source", "random", "minilm", "random"], "argument --source: random given more than once"),
    (["quality", "--permeability", "0.5", "0.5"], "argument --permeability: 0.5 given more than once"),
])
def test_repeated_list_values_are_refused_not_collapsed(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_crosscheck_reads_every_source_before_the_first_simulation(tmp_path, monkeypatch, capsys):
    def no_simulation(*args, **kwargs):
        raise AssertionError("a simulation ran before every source was read")

    monkeypatch.setattr(crosscheck, "run", no_simulation)
    assert main(["crosscheck", "--config", SMALL_TOML, "--source", "random", "nosuch", "--modes", "dense",
                 "-o", str(tmp_path / "x")]) == 2
    assert "unknown stimulus source 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("command, hint", [
    ("power", "out of memory: analyze a shorter dump (fewer rows in `hpu sim`) or pass a larger --window"),
    ("quality", "out of memory: free memory for the MiniLM model"),
])
def test_out_of_memory_names_what_the_command_can_reduce(tmp_path, monkeypatch, capsys, command, hint):
    def exhaust(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("power.flow.analyze", exhaust)
    monkeypatch.setattr(quality, "evaluate", exhaust)
    argv = {"power": ["power", str(tmp_path / "x.vcd")], "quality": ["quality"]}[command]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert hint in err and "rows or a smaller configuration" not in err
