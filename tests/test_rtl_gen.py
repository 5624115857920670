"""Generated Verilog: parses in Icarus, lints in Verilator, manifest describes it, synthesis reports area."""

import json
import re
from pathlib import Path

import pytest

from golden_model.lut import exp_lut
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.top import HPU
from rtl_gen.generate import cleanup, generate, lut_hash, write_cleaned
from rtl_gen.lint import check_icarus, check_verilator
from rtl_gen.tools import ToolFailed
from rtl_gen.processes import NotEquivalent, group_registers, prove_equivalent

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
    result_bits = cfg.head_dim * (cfg.acc_bits + cfg.out_bits) + cfg.z_bits + cfg.count_bits
    assert ports["scores__payload"] == {"name": "scores__payload", "direction": "input", "width": cfg.score_bits + 1}
    assert ports["requests__payload"] == {"name": "requests__payload", "direction": "output",
                                          "width": cfg.index_bits + 1}
    assert ports["values__payload"] == {"name": "values__payload", "direction": "input",
                                        "width": cfg.head_dim * cfg.value_bits}
    assert ports["results__payload"]["width"] == result_bits
    assert ports["results__ready"]["direction"] == "input"
    # The routing ports exist with or without a router (tied off without one); the router and its
    # energy path only with one.
    assert ports["logits__payload"] == {"name": "logits__payload", "direction": "input", "width": cfg.route_bits + 1}
    assert ports["routed__payload"]["width"] == ((cfg.route_block - 1).bit_length() + 1 if cfg.route_block else 1)
    assert ("hpu.router" in manifest["instances"]) == ("router" in manifest["paths"]) == (cfg.route_block > 0)
    assert manifest["exp_lut_sha256"] == lut_hash(cfg)
    # The ROM in the Verilog holds exactly the shared EXP_LUT.
    text = out.verilog.read_text()
    assert f"reg [{cfg.prob_bits - 1}:0] exp_lut [{cfg.lut_size - 1}:0]" in text
    first = exp_lut(cfg)[1]
    assert f"exp_lut[1] = {cfg.prob_bits}'h{first:x};" in text


def test_lint_reports_a_broken_file(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module hpu(input clk); wire [3:0] a = ; endmodule\n")
    # Each tool's failure is one line: the tool, its first error, and the log that holds the rest.
    with pytest.raises(ToolFailed, match=r"^Icarus Verilog \(parse\) failed: .*bad.v:1: syntax error .*whole output in .*lint_icarus.log\)$"):
        check_icarus(bad, "hpu")
    with pytest.raises(ToolFailed, match=r"^verilator --lint-only failed: %Error: .*bad.v:1.*lint_verilator.log\)$"):
        check_verilator(bad, "hpu")
    with pytest.raises(ToolFailed, match=r"^Yosys clean-up failed: .*ERROR.*yosys_cleanup.log\)$"):
        cleanup(bad)


def test_gen_command_with_synthesis(tmp_path, capsys):
    assert main(["gen", "--config", f"{REPO}/configs/small.toml", "-o", str(tmp_path), "--synth"]) == 0
    out = capsys.readouterr().out
    assert "generic-gate estimate" in out
    area = json.loads((tmp_path / "area.json").read_text())
    modules = area["modules"]
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")
    lanes = [modules[f"hpu.mac.lane{i}"] for i in range(cfg.lanes)]
    assert all(lane["cells"] > 0 and lane == lanes[0] for lane in lanes)
    # Row buffers: scores (2 banks) and e (2 banks); value vectors are consumed as they arrive.
    assert modules["hpu"]["memory_bits"] == cfg.max_keys * (2 * cfg.score_bits + 2 * cfg.prob_bits)
    assert json.loads((tmp_path / "manifest.json").read_text())["area"] == "area.json"


def test_gen_refuses_illegal_configuration(tmp_path, capsys):
    assert main(["gen", "--set", "lanes=3", "-o", str(tmp_path)]) == 2
    assert "lanes = 3: must divide head_dim (64)" in capsys.readouterr().err
    assert not (tmp_path / "hpu.v").exists()


# -- register regrouping (rtl_gen/processes.py) ----------------------------------------------------

EVERY_FORM = r"""
module forms(clk, rst, en, d, d2, c, q_dff, q_dffe, q_sdff, q_sdffe, q_sdffce, q_neg, \q$esc , part);
  input clk, rst, en, c;
  input [3:0] d, d2;
  output reg [3:0] q_dff, q_dffe, q_sdff, q_sdffe, q_sdffce, q_neg, \q$esc ;
  output reg [7:0] part;
  reg [3:0] mem [3:0];
  always @(posedge clk)
    q_dff <= d;
  always @(posedge clk)
    if (en) q_dffe <= d;
  always @(posedge clk)
    if (rst) q_sdff <= 4'h1;
    else q_sdff <= d2;
  always @(posedge clk)
    if (rst) q_sdffe <= 4'h2;
    else if (en) q_sdffe <= d ^ d2;
  always @(posedge clk)
    if (en)
      if (c) q_sdffce <= 4'h3;
      else q_sdffce <= d;
  always @(posedge clk)
    if (!rst) q_neg <= 4'h4;
    else if (!en) q_neg <= d2;
  always @(posedge clk)
    if (rst) \q$esc  <= 4'h5;
    else if (c) \q$esc  <= d;
  always @(posedge clk)
    if (rst) part[3:0] <= 4'h0;
    else if (c) part[3:0] <= d;
  always @(posedge clk)
    if (en) part[7:4] <= d2;
  always @(posedge clk) begin
    if (en)
      mem[d[1:0]] <= d2;
  end
endmodule
"""


def test_every_register_form_is_regrouped_and_proven_equivalent(tmp_path):
    after = group_registers(EVERY_FORM)
    # Nine register blocks become one; the memory write keeps its own block.
    assert after.count("always @(posedge clk)") == 1 + 1 + 1   # synthesis view, simulator view, memory
    assert "mem[d[1:0]] <= d2;" in after
    assert prove_equivalent(EVERY_FORM, after, tmp_path) == ["forms"]


def test_a_wrong_wake_guard_is_not_proven(tmp_path):
    before = """
module two(clk, en, c, d, q, r);
  input clk, en, c;
  input [3:0] d;
  output reg [3:0] q, r;
  always @(posedge clk)
    if (en) q <= d;
  always @(posedge clk)
    if (c) r <= d;
endmodule
"""
    after = group_registers(before)
    assert "assign \\$wake0  = en | c;" in after
    with pytest.raises(NotEquivalent, match="two"):
        prove_equivalent(before, after.replace("= en | c;", "= en;"), tmp_path)


def test_generated_hpu_regrouping_is_proven_equivalent(tmp_path):
    """The Verilog `hpu gen` writes, against the Yosys clean-up it was regrouped from."""
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")
    clean = tmp_path / "hpu.v"
    write_cleaned(HPU(cfg), clean)
    before = clean.read_text()
    after = generate(cfg, tmp_path / "gen").verilog.read_text()
    assert after == group_registers(before)
    proven = prove_equivalent(before, after, tmp_path / "proof")
    # Every unit is proven; instances of a unit that are the same text are proven once.
    units = {re.sub(r"lane\d+$", r"laneN", name) for name in proven}
    assert units == {"hpu", "\\hpu.ingest", "\\hpu.exp_gate", "\\hpu.exp_gate.need_divider", "\\hpu.mac",
                     "\\hpu.fetch", "\\hpu.fetch.slots", "\\hpu.fetch.asks", "\\hpu.mac.laneN", "\\hpu.normalizer", "\\hpu.normalizer.recip"}
