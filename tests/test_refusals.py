"""Bad input as a new user gives it: one line naming what is wrong, a non-zero exit, no traceback, and
no output that could pass for a whole one (interrupted runs included)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sim.runner
from golden_model.sources import rows_from
from golden_model.stimulus import Row, adversarial_rows, random_rows, validate_rows
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.files import claim
from sim.job import Job, Options
from sim.runner import make_job

from conftest import REPO

SMALL_TOML = f"{REPO}/configs/small.toml"
SMALL = HPUConfig.load(SMALL_TOML)


def refused(capsys, argv, message, code=2):
    """main(argv) ends with `code` and one stderr line (after any notes) containing `message`."""
    assert main(argv) == code
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("hpu: note:")]
    assert len(err) == 1 and err[0].startswith("hpu: "), err
    assert message in err[0], err[0]
    return err[0]


def argparse_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".partial") or p.name.startswith(".gen-")]


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, content, message", [
    (["config", "--config"], b"", "bad is empty: write an [hpu] table"),
    (["config", "--config"], b"[hpu]\nlanes = 8\n[extra]\nx = 1\n", "unknown top-level entry extra"),
    (["config", "--config"], b"hpu = 3\n", "`hpu` must be a table"),
    (["config", "--config"], bytes(range(256)), "bad is not a text file"),
    (["config", "--config"], b"[hpu\n", "is not valid TOML"),
    (["sim", "--replay"], b"{not json", "is not valid JSON (line 1"),
    (["sim", "--replay"], b"[1, 2]", "holds a JSON list, not an object"),
    (["sim", "--replay"], b'{"config": {}}', "is not a job written by `hpu sim`"),
])
def test_bad_input_files(tmp_path, capsys, argv, content, message):
    (tmp_path / "bad").write_bytes(content)
    refused(capsys, argv + [str(tmp_path / "bad")], message)


def test_missing_or_misplaced_configuration(tmp_path, capsys):
    refused(capsys, ["config", "--config", str(tmp_path)], "is a folder, not a file")
    refused(capsys, ["config", "--config", str(tmp_path / "missing.toml")], "missing.toml does not exist")
    refused(capsys, ["config", "-o", str(tmp_path)], "is a folder: name a file")


def test_derived_accumulator_stays_derived_under_overrides(capsys):
    cfg = HPUConfig.load(f"{REPO}/configs/default.toml")
    assert cfg.acc_bits == 24 and cfg.acc_bits_derived
    wider = cfg.with_overrides(["value_bits=12"])
    assert wider.acc_bits == wider.min_acc_bits == 28
    assert cfg.with_overrides(["prob_bits=10"]).acc_bits == 26
    assert cfg.with_overrides(["max_keys=2"]).acc_bits == 17
    assert cfg.to_dict()["acc_bits"] == 0 and HPUConfig.from_dict(cfg.to_dict()) == cfg
    chosen = cfg.replace(acc_bits=30)
    assert not chosen.acc_bits_derived and chosen.with_overrides(["lanes=8"]).acc_bits == 30
    with pytest.raises(ValueError, match="acc_bits = 30: cannot hold the accumulator: needs at least 32"):
        chosen.with_overrides(["value_bits=16"])
    assert main(["config", "--config", f"{REPO}/configs/default.toml", "--set", "value_bits=12"]) == 0
    assert "acc_bits      = 28  (derived)" in capsys.readouterr().out


def test_quantized_gate_parameters_are_announced(capsys):
    assert main(["config", "--set", "permeability=0.3", "--set", "mass_target=0.5"]) == 0
    err = capsys.readouterr().err
    assert "note: permeability 0.3 takes effect as 77/256 = 0.300781" in err
    assert "mass_target" not in err   # 0.5 is 128/256 exactly


# -- simulation options and stimulus -------------------------------------------------------------

def test_bad_sim_options_are_refused_before_anything_runs(tmp_path, capsys):
    argparse_refused(capsys, ["sim", "--rows", "0"], "argument --rows: 0 must be at least 1")
    refused(capsys, ["sim", "--rows", "100000000", "-o", str(tmp_path / "s.json")],
            "--rows 100000000: a run takes 1..2048 rows of this configuration")
    refused(capsys, ["sim", "--gaps", "0.9999", "-o", str(tmp_path / "s.json")], "--gaps 0.9999: must lie in 0..0.9961")
    refused(capsys, ["sim", "--vcd", str(tmp_path / "dump"), "-o", str(tmp_path / "s.json")],
            "must end in .vcd (e.g. ")
    refused(capsys, ["sim", "-o", str(tmp_path)], f"summary {tmp_path} is a folder: name a file")
    (tmp_path / "file").write_text("")
    refused(capsys, ["sim", "-o", str(tmp_path / "file" / "s.json")], "is a file, not a folder")
    assert not (tmp_path / "s.json").exists()


def test_bad_replay_files_are_refused(tmp_path, capsys):
    refused(capsys, ["sim", "--replay", str(tmp_path / "r.json"), "--rows", "3", "--vcd", "x.vcd"],
            "--rows, --vcd cannot be combined with --replay")
    job = make_job(SMALL, rows_from("random", SMALL, 2, 0), "random")
    job.save(tmp_path / "good.json")
    raw = json.loads((tmp_path / "good.json").read_text())

    def variant(name, change, message):
        data = json.loads(json.dumps(raw))
        change(data)
        (tmp_path / name).write_text(json.dumps(data))
        refused(capsys, ["sim", "--replay", str(tmp_path / name)], message)

    variant("count.json", lambda d: d["expected"].pop(), "2 rows but 1 expected results")
    variant("long.json", lambda d: d["rows"][0].update(scores=[0] * 17, values=[[0] * 8] * 17),
            "row 0: n = 17 keys; the HPU takes 1..max_keys (16)")
    variant("narrow.json", lambda d: d["rows"][1]["values"][0].pop(), "row 1: value vector 0 has 7 elements")
    variant("range.json", lambda d: d["rows"][0]["scores"].__setitem__(0, 5000),
            "row 0: score 5000 is not an integer in -2048..2047")
    variant("value.json", lambda d: d["rows"][0]["values"][0].__setitem__(2, 40),
            "row 0: value 40 of key 0 is not an integer in -32..31")


@st.composite
def small_configs(draw):
    score_bits = draw(st.integers(2, 16))
    value_bits = draw(st.integers(2, 10))
    out_bits = draw(st.integers(2, 20))
    lanes = draw(st.sampled_from([1, 2, 4]))
    return HPUConfig(head_dim=lanes * draw(st.integers(1, 3)), lanes=lanes, max_keys=draw(st.integers(1, 40)),
                     score_bits=score_bits, score_frac=draw(st.integers(0, score_bits - 1)),
                     value_bits=value_bits, prob_bits=draw(st.integers(1, 10)),
                     exp_shift=draw(st.integers(0, score_bits)), lut_size=2 ** draw(st.integers(1, 8)),
                     out_bits=out_bits, out_frac=draw(st.integers(0, out_bits - 1)))


@given(small_configs(), st.integers(0, 2**32 - 1))
def test_generators_make_legal_rows_for_every_legal_configuration(cfg, rng_seed):
    rng = random.Random(rng_seed)
    validate_rows(cfg, adversarial_rows(cfg, rng) + random_rows(cfg, 3, rng))


def test_rows_are_validated_when_a_job_is_made():
    with pytest.raises(ValueError, match="row 0: score 2048 is not an integer in -2048..2047"):
        make_job(SMALL, [Row((2048,), ((0,) * 8,))], "random")


# -- generated Verilog and shared folders ----------------------------------------------------------

def test_output_folder_in_use_is_refused(tmp_path, capsys):
    with claim(tmp_path / "rtl"):
        refused(capsys, ["gen", "--config", SMALL_TOML, "-o", str(tmp_path / "rtl")],
                f"output folder {tmp_path / 'rtl'} is in use by another hpu run (pid {os.getpid()})")
        with claim(tmp_path / "sim"):
            refused(capsys, ["sim", "--config", SMALL_TOML, "--rows", "2", "-o", str(tmp_path / "sim" / "s.json")],
                    "is in use by another hpu run")
    assert not (tmp_path / "rtl" / "manifest.json").exists()
    (tmp_path / "afile").write_text("")
    refused(capsys, ["gen", "-o", str(tmp_path / "afile")], "is a file, not a folder")
    refused(capsys, ["crosscheck", "-o", str(tmp_path / "afile")], "is a file, not a folder")


def test_interrupted_gen_leaves_no_manifest(tmp_path, monkeypatch, capsys):
    assert main(["gen", "--config", SMALL_TOML, "-o", str(tmp_path / "rtl")]) == 0
    assert (tmp_path / "rtl" / "manifest.json").exists()

    def interrupt(text):
        raise KeyboardInterrupt

    monkeypatch.setattr("rtl_gen.generate.group_registers", interrupt)
    refused(capsys, ["gen", "--config", SMALL_TOML, "-o", str(tmp_path / "rtl")], "interrupted", code=130)
    assert not (tmp_path / "rtl" / "manifest.json").exists() and no_partial_files(tmp_path)


def test_out_of_memory_and_unforeseen_os_errors_are_one_line(monkeypatch, capsys):
    def exhaust(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("hpu.cli.HPUConfig.describe", exhaust)
    refused(capsys, ["config", "--describe"], "out of memory")

    def exhaust_gpu(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr("hpu.cli.HPUConfig.describe", exhaust_gpu)
    refused(capsys, ["config", "--describe"], "out of GPU memory: ask for a smaller configuration")

    def other(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("hpu.cli.HPUConfig.describe", other)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["config", "--describe"])

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/somewhere")

    monkeypatch.setattr("hpu.cli.HPUConfig.describe", broken)
    refused(capsys, ["config", "--describe"], "/somewhere: Permission denied", code=1)
    with pytest.raises(PermissionError):
        main(["-E", "config", "--describe"])


def test_two_sim_runs_sharing_a_build_folder_keep_their_own_rows(tmp_path):
    """Two `hpu sim` processes at once, one build folder: each checks its own rows."""
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = {rows: subprocess.Popen([sys.executable, "-m", "hpu.cli", "sim", "--config", SMALL_TOML, "--rows",
                                     str(rows), "--build", str(tmp_path / "build"), "--quiet",
                                     "-o", str(tmp_path / f"s{rows}" / "summary.json")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rows in (4, 9)}
    for rows, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        run = json.loads((tmp_path / f"s{rows}" / "summary.json").read_text())["runs"]["gated"]
        assert (run["rows_checked"], run["mismatches"]) == (rows, 0)


def test_interrupted_sim_leaves_neither_dump_nor_summary(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.json").write_text('{"old": "summary"}')
    (tmp_path / "g.vcd").write_text("old dump")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim.runner, "_run", interrupt)
    refused(capsys, ["sim", "--config", SMALL_TOML, "--rows", "2", "--vcd", str(tmp_path / "g.vcd"),
                     "--build", str(tmp_path / "build"), "-o", str(tmp_path / "s.json")], "interrupted", code=130)
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "g.vcd").exists()
    assert no_partial_files(tmp_path)


def test_job_files_round_trip(tmp_path):
    job = make_job(SMALL, rows_from("adversarial", SMALL, 3, 0), "adversarial", Options(gaps=0.25, seed=3))
    job.save(tmp_path / "job.json")
    back = Job.load(tmp_path / "job.json")
    assert (back.cfg, back.rows, back.expected, back.options) == (job.cfg, job.rows, job.expected, job.options)
    assert back.options.per_step("gaps") == 64
