"""The generated Verilog under cocotb: Icarus by default, one Verilator run; bit-exact against the golden model."""

import dataclasses
import json
import os

import pytest

from golden_model.sources import rows_from
from golden_model.stimulus import blocks_from
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.errors import InputError
from power.vcd import scan
from rtl_gen.generate import generate
from rtl_gen.tools import ToolMissing
from sim.job import Job, Options
from sim.runner import SimulationError, make_job, run

from conftest import REPO

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")
ROWS = {"random": 60, "adversarial": 30, "minilm": 30}


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sim_build")


@pytest.mark.parametrize("schedule", ["lockstep", "compact"])
@pytest.mark.parametrize("mode", ["mass", "topk", "dense"])
def test_icarus_rows_bit_exact_with_gaps_and_backpressure(mode, schedule, seed, build_root, tmp_path):
    cfg = SMALL.replace(mode=mode, schedule=schedule)
    # One simulation of every source's rows back to back (a simulator start costs as much as 40 rows).
    rows = [row for source, count in ROWS.items() for row in rows_from(source, cfg, count, seed)]
    job = make_job(cfg, rows, "+".join(ROWS), Options(gaps=0.15, backpressure=0.3, seed=seed))
    outcome = run(job, "icarus", build_root=build_root, work_dir=tmp_path)
    assert (outcome.rows_checked, outcome.mismatches) == (len(rows), 0)
    assert outcome.hpu_cycles > 0 and len(outcome.result_cycles) == len(rows)


def test_dense_baseline_holds_the_gate_open(seed, build_root, tmp_path):
    cfg = SMALL.replace(mode="mass", schedule="compact")
    rows = rows_from("random", cfg, 40, seed)
    job = make_job(cfg, rows, "random", Options(gate_open=True, seed=seed))
    assert all(e.kept == r.n for e, r in zip(job.expected, rows))
    assert run(job, "icarus", build_root=build_root, work_dir=tmp_path).mismatches == 0


def test_mismatch_reports_first_row_and_writes_a_replay(seed, build_root, tmp_path):
    cfg = SMALL
    rows = rows_from("random", cfg, 8, seed)
    job = make_job(cfg, rows, "random")
    job.expected[3] = dataclasses.replace(job.expected[3], z_kept=job.expected[3].z_kept + 1)
    with pytest.raises(SimulationError) as info:
        run(job, "icarus", build_root=build_root, work_dir=tmp_path)
    message = str(info.value)
    assert "1 of 8 rows differ" in message and "first: row 3" in message and "z_kept" in message
    replay = Job.load(tmp_path / "replay_row.json")
    assert replay.rows == [rows[3]] and replay.expected == [job.expected[3]]
    with pytest.raises(SimulationError, match="1 of 1 rows differ"):
        run(replay, "icarus", build_root=build_root, work_dir=tmp_path / "replay")


ROUTED = SMALL.replace(route_block=24, route_fraction=0.3, schedule="compact")


def routed_job(seed: int) -> Job:
    """Blocks of router logits and attention rows in one run, with gaps and back-pressure on every stream."""
    blocks = blocks_from("adversarial", ROUTED, 9, seed) + blocks_from("random", ROUTED, 12, seed)
    rows = rows_from("random", ROUTED, 10, seed) + rows_from("adversarial", ROUTED, 10, seed)
    return make_job(ROUTED, rows, "random", Options(gaps=0.2, backpressure=0.3, seed=seed), blocks=blocks)


def test_routing_bit_exact_beside_rows(seed, build_root, tmp_path):
    job = routed_job(seed)
    outcome = run(job, "icarus", build_root=build_root, work_dir=tmp_path)
    assert (outcome.rows_checked, outcome.mismatches, outcome.routing_mismatches) == (20, 0, 0)
    assert outcome.routed == job.routed and len(outcome.routed) == 21


def test_native_verilator_equals_cocotb(seed, build_root, tmp_path):
    """The native bench and the cocotb bench (the reference) under Verilator, on one job: the same rows
    checked, the same results in the same cycles, the same values fetched, the same routed tokens."""
    job = routed_job(seed)
    reference = run(job, "verilator", build_root=build_root, work_dir=tmp_path / "cocotb")
    native = run(job, "verilator-native", build_root=build_root, work_dir=tmp_path / "native")
    assert (native.rows_checked, native.mismatches, native.routing_mismatches) == (20, 0, 0)
    assert native.observed == reference.observed
    assert native.result_cycles == reference.result_cycles and native.hpu_cycles == reference.hpu_cycles
    assert native.values_fetched == reference.values_fetched and native.routed == reference.routed == job.routed
    assert native.hpu_cycles >= native.result_cycles[-1] > native.result_cycles[0] > 0


def test_native_verilator_reports_mismatches_and_stalls(seed, build_root, tmp_path):
    job = routed_job(seed)
    job.expected[3] = dataclasses.replace(job.expected[3], kept=job.expected[3].kept + 1)
    with pytest.raises(SimulationError, match=r"1 of 20 rows differ from the golden model under verilator-native; "
                                              r"first: row 3 \(n = \d+\) differs in kept"):
        run(job, "verilator-native", build_root=build_root, work_dir=tmp_path / "mismatch")
    assert Job.load(tmp_path / "mismatch" / "replay_row.json").expected == [job.expected[3]]
    job = make_job(ROUTED, rows_from("random", ROUTED, 3, 0), "random")
    job.expected.append(job.expected[-1])   # waits for a fourth result that never comes
    with pytest.raises(SimulationError, match="HPU stalled under verilator-native: no result within .* 3 of 4 rows done"):
        run(job, "verilator-native", build_root=build_root, work_dir=tmp_path / "stall")


def test_a_routed_job_sends_the_unrouted_tokens_windows():
    """With route_window the host sends, block by block, the routed tokens' rows and then the unrouted
    tokens' windows in token order; the summary counts the windows apart. A window without window rows,
    or window rows without a window, is refused."""
    from golden_model.stimulus import Row
    from sim import summary
    from sim.job import Outcome
    from sim.runner import make_routed_job

    tokens = rows_from("random", ROUTED, 30, 0)
    windows = [Row(row.scores[-2:], row.values[-2:]) for row in tokens]
    # Capacity ceil(T * 77 / 256): 8 of the first block's 24 tokens (the largest logits, 16..23), 2 of the last 6.
    blocks = [list(range(24)), [5, 4, 3, 2, 1, 0]]
    job = make_routed_job(ROUTED, tokens, "random", Options(route_window=2), blocks, windows)
    assert job.routed == [list(range(16, 24)), [0, 1]]
    assert job.rows == tokens[16:24] + windows[:16] + tokens[24:26] + windows[26:]
    assert job.token_keys == sum(row.n for row in tokens)
    record = summary.record(job, Outcome(rows_checked=30, mismatches=0, hpu_cycles=1, wall_s=1.0))
    assert (record["rows"], record["window_rows"], record["route_window"], record["tokens"]) == (30, 20, 2, 30)
    assert make_routed_job(ROUTED, tokens, "random", Options(), blocks).rows == tokens[16:24] + tokens[24:26]
    for options, given in ((Options(), windows), (Options(route_window=2), None), (Options(route_window=2), windows[1:])):
        with pytest.raises(InputError, match="one window row per token, and only with a window"):
            make_routed_job(ROUTED, tokens, "random", options, blocks, given)
    with pytest.raises(InputError, match="--route-window -1: must be a whole number of keys"):
        Options(route_window=-1)


def test_routing_mismatch_names_the_block(seed, build_root, tmp_path):
    cfg = SMALL.replace(route_block=24, route_fraction=0.3)
    blocks = blocks_from("random", cfg, 4, seed)
    job = make_job(cfg, [], "random", blocks=blocks)
    job.routed[2] = job.routed[2][1:] + [cfg.route_block]
    with pytest.raises(SimulationError, match="1 of 4 blocks routed unlike the golden model under icarus; first: block 2"):
        run(job, "icarus", build_root=build_root, work_dir=tmp_path)


def test_stalled_design_ends_with_a_message(build_root, tmp_path):
    cfg = SMALL
    rows = rows_from("random", cfg, 3, 0)
    job = make_job(cfg, rows, "random")
    job.expected.append(job.expected[-1])   # waits for a fourth result that never comes
    with pytest.raises(SimulationError, match="HPU stalled under icarus: no result within .* 3 of 4 rows done"):
        run(job, "icarus", build_root=build_root, work_dir=tmp_path)


def test_verilog_built_for_another_configuration_is_refused(build_root, tmp_path):
    generate(SMALL, tmp_path / "rtl")
    job = make_job(SMALL.replace(mode="topk"), rows_from("random", SMALL, 2, 0), "random")
    with pytest.raises(SimulationError, match="generated for another configuration .generated/asked: mode .mass./.topk."):
        run(job, "icarus", build_root=build_root, work_dir=tmp_path / "run", verilog_dir=tmp_path / "rtl")


def test_missing_simulator_is_named(monkeypatch, build_root, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    job = make_job(SMALL, rows_from("random", SMALL, 2, 0), "random")
    with pytest.raises(ToolMissing, match="Icarus Verilog .iverilog. is not installed: .*apt-get install -y iverilog"):
        run(job, "icarus", build_root=build_root, work_dir=tmp_path)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="--backpressure 1.0: must lie in 0..0.9961 .255/256."):
        Options(backpressure=1.0)
    with pytest.raises(ValueError, match="--gaps 0.9999: .* 256/256 would never send"):
        Options(gaps=0.9999)
    assert Options(gaps=255 / 256).per_step("gaps") == 255


def test_sim_command_summary(build_root, tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--rows", "12", "--source", "adversarial",
                 "--dense-baseline", "--vcd", str(tmp_path / "gated.vcd"), "--build", str(build_root),
                 "-o", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert set(summary["runs"]) == {"gated", "dense"}
    for name, record in summary["runs"].items():
        assert record["rows_checked"] == 12 and record["mismatches"] == 0
        assert os.path.getsize(record["vcd"]) > 1000
    assert summary["runs"]["dense"]["kept_fraction"] == 1.0
    assert summary["runs"]["gated"]["kept_fraction"] < 1.0
    assert "simulated cycles/s" in capsys.readouterr().out
    # A suffix that is not the format asked for is refused in one line, nothing written.
    assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--rows", "2", "--waves", "fst", "--vcd",
                 str(tmp_path / "v.vcd"), "--build", str(build_root), "-o", str(tmp_path / "v.json"), "--quiet"]) != 0
    assert "must end in .fst" in capsys.readouterr().err and not (tmp_path / "v.json").exists()


def test_verilator_dumps_the_run_as_vcd_and_as_fst(build_root, tmp_path):
    """Verilator traces the harness's dump in a build of its own, as VCD or FST; the FST reads as the VCD,
    names included (its FST writer puts an array's elements under a scope of the array's name, which the
    reader folds back), and `hpu power` reads it with the HPU's manifest."""
    counts = {}
    for waves in ("vcd", "fst"):
        dump = tmp_path / f"v.{waves}"
        assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--rows", "2", "--sim", "verilator",
                     "--waves", waves, "--vcd", str(dump), "--build", str(build_root), "-o",
                     str(tmp_path / f"{waves}.json"), "--quiet"]) == 0
        c = scan(dump)
        counts[waves] = {var.reference:
                         [getattr(c, f)[c.bits(var.code)].tolist() for f in ("rise", "fall", "xz", "t0", "t1", "tx")]
                         for var in c.header.vars}
    assert counts["fst"] == counts["vcd"]
    assert sum(sum(v[0]) for v in counts["fst"].values()) > 1000
    assert main(["gen", "--config", f"{REPO}/configs/small.toml", "-o", str(tmp_path / "rtl")]) == 0
    assert main(["power", str(tmp_path / "v.fst"), "--manifest", str(tmp_path / "rtl" / "manifest.json"),
                 "-o", str(tmp_path / "power")]) == 0


def test_native_dumps_give_the_power_of_icarus_dumps(build_root, tmp_path):
    """The native bench traces the HPU as VCD or FST (the same counts); `hpu power` finds every net of the
    manifest in it that it finds in Icarus's dump of the same run (Verilator writes Yosys's escaped
    names without their backslash) and gives the same energy, up to the dump's window: the native bench
    dumps from the first cycle after reset through the cycle after the last result, as the harness does
    give or take a cycle."""
    small = ["--config", f"{REPO}/configs/small.toml", "--rows", "6", "--build", str(build_root), "--quiet"]
    counts = {}
    for waves in ("vcd", "fst"):
        dump = tmp_path / f"native.{waves}"
        assert main(["sim", *small, "--sim", "verilator-native", "--waves", waves, "--vcd", str(dump),
                     "-o", str(tmp_path / f"native-{waves}.json")]) == 0
        c = scan(dump)
        counts[waves] = {var.reference: [getattr(c, f)[c.bits(var.code)].tolist() for f in ("rise", "fall", "t0", "t1")]
                         for var in c.header.vars}
    assert counts["fst"] == counts["vcd"]
    assert main(["sim", *small, "--vcd", str(tmp_path / "icarus.vcd"), "-o", str(tmp_path / "icarus.json")]) == 0
    assert main(["gen", "--config", f"{REPO}/configs/small.toml", "-o", str(tmp_path / "rtl")]) == 0
    reports = {}
    for name, dump, summary in (("native", "native.fst", "native-fst.json"), ("icarus", "icarus.vcd", "icarus.json")):
        assert main(["power", str(tmp_path / dump), "--manifest", str(tmp_path / "rtl" / "manifest.json"),
                     "--summary", str(tmp_path / summary), "-o", str(tmp_path / name)]) == 0
        reports[name] = json.loads((tmp_path / name / "power.json").read_text())["runs"]["gated"]
    native, icarus = reports["native"], reports["icarus"]
    assert native["nets_not_in_dump"] == icarus["nets_not_in_dump"]
    assert abs(native["cycles"] - icarus["cycles"]) <= 1
    assert native["energy_fJ"] == pytest.approx(icarus["energy_fJ"], rel=0.01)
