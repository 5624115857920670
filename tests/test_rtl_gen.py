"""Generated Verilog: parses in Icarus, lints in Verilator, manifest describes it, synthesis reports area."""

import json
from pathlib import Path

import pytest

from golden_model.lut import exp_lut
from hpu.cli import main
from hpu.config import HPUConfig
from rtl_gen.generate import generate, lut_hash
from rtl_gen.lint import LintError, check_icarus, check_verilator

from conftest import REPO

CONFIGS = sorted(p.stem for p in Path(REPO, "configs").glob("*.toml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_generates_parses_and_lints(name, tmp_path):
    cfg = HPUConfig.load(f"{REPO}/configs/{name}.toml")
    out = generate(cfg, tmp_path)
    check_icarus(out.verilog, "hpu")
    check_verilator(out.verilog, "hpu")
    manifest = json.loads(out.manifest.read_text())
    assert HPUConfig.from_dict(manifest["config"]) == cfg
    assert manifest["mac_lanes"] == [f"hpu.mac.lane{i}" for i in range(cfg.lanes)]
    assert set(manifest["mac_lanes"]) <= set(manifest["instances"])
    assert {"hpu.ingest", "hpu.exp_gate", "hpu.mac", "hpu.normalizer"} <= set(manifest["instances"])
    ports = {p["name"]: p for p in manifest["ports"]}
    key_bits = cfg.score_bits + cfg.head_dim * cfg.value_bits + 1
    result_bits = cfg.head_dim * (cfg.acc_bits + cfg.out_bits) + cfg.z_bits + cfg.count_bits
    assert ports["keys__payload"] == {"name": "keys__payload", "direction": "input", "width": key_bits}
    assert ports["results__payload"]["width"] == result_bits
    assert ports["results__ready"]["direction"] == "input"
    assert manifest["exp_lut_sha256"] == lut_hash(cfg)
    # The ROM in the Verilog holds exactly the shared EXP_LUT.
    text = out.verilog.read_text()
    assert f"reg [{cfg.prob_bits - 1}:0] exp_lut [{cfg.lut_size - 1}:0]" in text
    first = exp_lut(cfg)[1]
    assert f"exp_lut[1] = {cfg.prob_bits}'h{first:x};" in text


def test_lint_reports_a_broken_file(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module hpu(input clk); wire [3:0] a = ; endmodule\n")
    with pytest.raises(LintError, match="Icarus Verilog rejected"):
        check_icarus(bad, "hpu")
    with pytest.raises(LintError, match="Verilator lint failed"):
        check_verilator(bad, "hpu")


def test_gen_command_with_synthesis(tmp_path, capsys):
    assert main(["gen", "--config", f"{REPO}/configs/small.toml", "-o", str(tmp_path), "--synth"]) == 0
    out = capsys.readouterr().out
    assert "generic-gate estimate" in out
    area = json.loads((tmp_path / "area.json").read_text())
    modules = area["modules"]
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")
    lanes = [modules[f"hpu.mac.lane{i}"] for i in range(cfg.lanes)]
    assert all(lane["cells"] > 0 and lane == lanes[0] for lane in lanes)
    # Row buffers: scores (2 banks), values (3 banks), e (2 banks).
    assert modules["hpu"]["memory_bits"] == cfg.max_keys * (2 * cfg.score_bits + 3 * cfg.head_dim * cfg.value_bits
                                                           + 2 * cfg.prob_bits)
    assert json.loads((tmp_path / "manifest.json").read_text())["area"] == "area.json"


def test_gen_refuses_illegal_configuration(tmp_path, capsys):
    assert main(["gen", "--set", "lanes=3", "-o", str(tmp_path)]) == 2
    assert "lanes = 3: must divide head_dim (64)" in capsys.readouterr().err
    assert not (tmp_path / "hpu.v").exists()
