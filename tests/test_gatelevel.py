"""The Liberty reader and the gate-level energy engine, on a hand-made library and netlist whose
energies are computed by hand below, and on the OSU 0.18 um library that `make` fetches."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from hpu.cli import main
from hpu.config import HPUConfig
from hpu.files import claim
from power import calibrate, gatelevel, gatesim, liberty
from power.energy import EnergyTable
from power.vcd import scan
from rtl_gen.tools import opensta, run_tool

from conftest import REPO


TINY_LIB = """/* a hand-made library: units ns, pF, nW, V; energies in pJ */
library (tiny) {
  time_unit : "1ns";
  capacitive_load_unit (1, pf);
  leakage_power_unit : "1nW";
  voltage_unit : "1V";
  nom_voltage : 2.0;
  lu_table_template (t2) { variable_1 : total_output_net_capacitance; variable_2 : input_net_transition;
                           index_1 ("0.0, 0.1"); index_2 ("0.0, 1.0"); }
  power_lut_template (p2) { variable_1 : total_output_net_capacitance; variable_2 : input_transition_time;
                            index_1 ("0.0, 0.1"); index_2 ("0.0, 1.0"); }
  power_lut_template (p1) { variable_1 : input_transition_time; index_1 ("0.0, 1.0"); }
  cell (INV) {
    area : 1; cell_leakage_power : 3.0;
    pin (A) { direction : input; capacitance : 0.01; }
    pin (Y) { direction : output; function : "(!A)";
      timing () { related_pin : "A";
        rise_transition (t2) { values ("0.1, 0.3", \\
                                        "0.5, 0.7"); }
        fall_transition (t2) { values ("0.2, 0.4", "0.6, 0.8"); } }
      internal_power () { related_pin : "A";
        rise_power (p2) { values ("0.02, 0.04", "0.06, 0.08"); }
        fall_power (p2) { values ("0.01, 0.03", "0.05, 0.07"); } } }
  }
  cell (AND2) {
    area : 2; cell_leakage_power : 0;
    pin (A) { direction : input; capacitance : 0.01; }
    pin (B) { direction : input; capacitance : 0.01; }
    pin (Y) { direction : output; function : "(A B)";
      internal_power () { related_pin : "A";
        rise_power (p2) { values ("0.1, 0.1", "0.1, 0.1"); } fall_power (p2) { values ("0.1, 0.1", "0.1, 0.1"); } }
      internal_power () { related_pin : "B";
        rise_power (p2) { values ("0.6, 0.6", "0.6, 0.6"); } fall_power (p2) { values ("0.6, 0.6", "0.6, 0.6"); } } }
  }
  cell (DFF) {
    area : 4; cell_leakage_power : 5.0;
    ff (IQ, IQN) { clocked_on : "CLK"; next_state : "D"; }
    pin (CLK) { direction : input; clock : true; capacitance : 0.02;
      internal_power () { rise_power (p1) { values ("0.1, 0.2"); } fall_power (p1) { values ("0.05, 0.15"); } } }
    pin (D) { direction : input; capacitance : 0.01; }
    pin (Q) { direction : output; function : "IQ";
      timing () { related_pin : "CLK";
        rise_transition (t2) { values ("0.2, 0.2", "0.4, 0.4"); }
        fall_transition (t2) { values ("0.2, 0.2", "0.4, 0.4"); } }
      internal_power () { related_pin : "CLK";
        rise_power (p2) { values ("0.3, 0.3", "0.5, 0.5"); } fall_power (p2) { values ("0.3, 0.3", "0.5, 0.5"); } } }
  }
}
"""

# a -> u1 (INV) -> n4 -> u2 (INV) -> n5 -> ff.D; clk -> ff.CLK; ff.Q -> n6 -> u3 (INV) -> n7 (no load);
# u4 (AND2) takes a and clk and drives n8 (no load); u5 (AND2) takes a and the constant 1 and drives n9.
NETLIST = {"modules": {"top": {
    "attributes": {"top": "00000000000000000000000000000001"},
    "ports": {"a": {"direction": "input", "bits": [2]}, "clk": {"direction": "input", "bits": [3]},
              "z": {"direction": "output", "bits": [5]}},
    "cells": {"u1": {"type": "INV", "connections": {"A": [2], "Y": [4]}},
              "u2": {"type": "INV", "connections": {"A": [4], "Y": [5]}},
              "ff": {"type": "DFF", "connections": {"CLK": [3], "D": [5], "Q": [6]}},
              "u3": {"type": "INV", "connections": {"A": [6], "Y": [7]}},
              "u4": {"type": "AND2", "connections": {"A": [2], "B": [3], "Y": [8]}},
              "u5": {"type": "AND2", "connections": {"A": [2], "B": ["1"], "Y": [9]}}},
    "netnames": {"a": {"bits": [2]}, "clk": {"bits": [3]}, "n4": {"bits": [4], "hide_name": 1},
                 "z": {"bits": [5]}, "q": {"bits": [6]}, "n7": {"bits": [7]}, "n8": {"bits": [8]},
                 "n9": {"bits": [9]}}}}}
# (transitions, duty) per net; the clock's 18 transitions in the dump give way to its period's 20.
ACTIVITY = {2: (6, 0.25), 3: (18, 0.4), 4: (6, 0.75), 5: (6, 0.25), 6: (3, 0.5), 7: (3, 0.5), 8: (2, 0.1),
            9: (4, 0.25)}
PJ = 1e-12


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.lib"
    path.write_text(TINY_LIB)
    return liberty.load(path)


def test_liberty_units_tables_and_interpolation(tiny):
    assert tiny.voltage == 2.0 and set(tiny.cells) == {"INV", "AND2", "DFF"}
    inv = tiny.cells["INV"]
    assert inv.leakage == pytest.approx(3e-9) and inv.pins["A"].rise_cap == pytest.approx(1e-14)
    arc = inv.pins["Y"].transitions[0]
    assert arc.related == "A" and arc.rise.values.ravel().tolist() == pytest.approx([1e-10, 3e-10, 5e-10, 7e-10])
    power = inv.pins["Y"].power[0].rise
    # index points, then halfway along both axes, then linear extrapolation beyond the last index
    assert power.at(total_output_net_capacitance=0.1e-12, input_transition_time=1e-9) == pytest.approx(0.08 * PJ)
    assert power.at(total_output_net_capacitance=0.05e-12, input_transition_time=0.5e-9) == pytest.approx(0.05 * PJ)
    assert power.at(total_output_net_capacitance=0.2e-12, input_transition_time=0.0) == pytest.approx(0.10 * PJ)
    assert tiny.cells["DFF"].sequential and not inv.sequential and tiny.cells["DFF"].pins["CLK"].clock


def test_energy_of_a_hand_made_netlist(tiny):
    """Every rule of the engine (OpenSTA's) on numbers worked by hand; the tiny INV's fall transitions
    are 0.1 ns slower than its rises, so that each edge's own transition time shows."""
    netlist = gatelevel.Netlist.from_yosys(NETLIST, tiny)
    e = gatelevel.estimate(netlist, tiny, ACTIVITY, duration=100e-9, clock=3, period=10e-9)
    by = {name: k for k, name in enumerate(e.instances)}
    ns = 1e-9
    # Transition times: u1.Y at 10 fF from input slew 0: rise 0.1 + 0.1 x (0.5 - 0.1) = 0.14 ns, fall
    # 0.2 + 0.1 x 0.4 = 0.24 ns. u2 inverts: its rise comes from n4's fall (0.24 ns): 0.148 + 0.04 =
    # 0.188 ns, its fall from n4's rise (0.14 ns): 0.228 + 0.04 = 0.268 ns. ff.Q: 0.22 ns both; u3.Y
    # (no load) from 0.22 ns: rise 0.1 + 0.2 x 0.22 = 0.144, fall 0.2 + 0.2 x 0.22 = 0.244 ns.
    assert e.slews[4] == pytest.approx((0.14 * ns, 0.24 * ns))
    assert e.slews[5] == pytest.approx((0.188 * ns, 0.268 * ns))
    assert e.slews[6] == pytest.approx((0.22 * ns, 0.22 * ns))
    assert e.slews[7] == pytest.approx((0.144 * ns, 0.244 * ns))
    # switching: 1/2 x 10 fF x (2 V)^2 per transition
    assert e.switching[by["u1"]] == pytest.approx(6 * 0.5 * 1e-14 * 4)
    assert e.switching[by["ff"]] == pytest.approx(3 * 0.5 * 1e-14 * 4)
    assert e.switching[by["u3"]] == 0 and e.switching[by["u4"]] == 0
    # internal: the mean of the rise and fall energies per transition, each at the transition time of
    # the input edge that causes it. u1 at 10 fF, slew 0: rise 0.024, fall 0.014 pJ. u2 at 10 fF: its
    # rise at n4's fall (0.24 ns) 0.024 + 0.02 x 0.24 = 0.0288 pJ, its fall at n4's rise (0.14 ns)
    # 0.014 + 0.02 x 0.14 = 0.0168 pJ (at the larger transition time for both it would be 0.0188).
    assert e.internal[by["u1"]] == pytest.approx(6 * (0.024 + 0.014) / 2 * PJ)
    assert e.internal[by["u2"]] == pytest.approx(6 * (0.0288 + 0.0168) / 2 * PJ)
    # ff: Q 3 x 0.32 pJ; its clock pin takes the clock's 2 transitions per 10 ns period over 100 ns,
    # 20 (not the dump's 18), at (0.1 + 0.05) / 2 pJ (the D pin has no table)
    assert e.internal[by["ff"]] == pytest.approx((3 * 0.32 + 20 * 0.075) * PJ)
    assert e.clock_pins[by["ff"]] == pytest.approx(20 * 0.075 * PJ) and e.clock_pins[by["u1"]] == 0
    # u3 at no load: rise at 0.22 ns 0.0244, fall 0.0144 pJ
    assert e.internal[by["u3"]] == pytest.approx(3 * (0.0244 + 0.0144) / 2 * PJ)
    # u4 = A B: group A weighs a's 6 transitions x the duty of dY/dA = B (the clock: 1/2), group B
    # the clock's 20 x the duty of dY/dB = A (0.25): 3 against 5 (by transitions alone: 6 against 20).
    assert e.internal[by["u4"]] == pytest.approx(2 * (3 / 8 * 0.1 + 5 / 8 * 0.6) * PJ)
    # u5 = A 1: B tied high makes Y follow A (tied low, Y could not move and A would weigh nothing).
    assert e.internal[by["u5"]] == pytest.approx(4 * 0.1 * PJ)
    assert e.leakage[by["ff"]] == pytest.approx(5e-9 * 100e-9)
    assert e.total.sum() == pytest.approx(e.internal.sum() + e.switching.sum() + e.leakage.sum())


def test_liberty_functions_give_truth_tables_and_unateness():
    """Liberty's Boolean syntax (precedence: + and |, then & * and juxtaposition, then ^, then ! and ')
    as truth tables over the inputs (row r sets input k to bit k of r), and each input's unateness."""
    table, senses = gatelevel._logic("(!((S A) + (!S B)))", ("A", "B", "S"))
    assert table.tolist() == [True, True, False, False, True, False, True, False]
    assert senses == {"A": "negative", "B": "negative", "S": "non"}
    assert gatelevel._logic("A' B+C", ("A", "B", "C"))[0].tolist() == [False, False, True, False] + [True] * 4
    assert gatelevel._logic("A+B^C", ("A", "B", "C"))[0].tolist() == [False, True, True, True, True, True, False, True]
    assert gatelevel._logic("A*1", ("A",))[1] == {"A": "positive"}
    assert gatelevel._logic("IQ", ("CLK", "D")) is None
    with pytest.raises(gatelevel.InputError, match="parenthesis does not close"):
        gatelevel._logic("(A B", ("A", "B"))
    # dY/dA of A B is B: A matters exactly while B is 1
    assert gatelevel._sensitivity(gatelevel._logic("(A B)", ("A", "B"))[0], 0, np.array([0.3, 0.8])) == pytest.approx(0.8)


def test_a_quiet_netlist_costs_only_leakage(tiny):
    netlist = gatelevel.Netlist.from_yosys(NETLIST, tiny)
    e = gatelevel.estimate(netlist, tiny, {}, duration=1e-6)
    assert e.internal.sum() == 0 and e.switching.sum() == 0
    assert e.leakage.sum() == pytest.approx((3 * 3 + 5) * 1e-9 * 1e-6)


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("library (x) { nom_voltage : 1.8; cell (A) { area : 1; ", "never closes"),
    ("library (x) { cell (A) { area : 1; } }", "no nom_voltage"),
    ("cell (A) { }", "expected `library`"),
])
def test_bad_liberty_files_are_refused_with_their_line(tmp_path, text, message):
    path = tmp_path / "bad.lib"
    path.write_text(text)
    with pytest.raises(liberty.LibertyError, match=message):
        liberty.load(path)


def test_a_cell_outside_the_library_is_refused(tiny):
    netlist = {"modules": {"top": {"cells": {"u": {"type": "NAND9", "connections": {}}}, "ports": {}, "netnames": {}}}}
    with pytest.raises(gatelevel.InputError, match="NAND9, which library tiny does not have"):
        gatelevel.Netlist.from_yosys(netlist, tiny)


def test_osu018_library_reads_as_its_file_says():
    """Values copied from the file's AND2X1 cell: its first internal-power table (related pin A)."""
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    assert (lib.name, lib.voltage, len(lib.cells)) == ("osu018_stdcells", 1.8, 32)
    and2 = lib.cells["AND2X1"]
    assert and2.leakage == pytest.approx(0.0746794e-9) and and2.pins["A"].rise_cap == pytest.approx(0.0129077e-12)
    rise = and2.pins["Y"].power[0].rise
    assert rise.at(total_output_net_capacitance=0.005e-12, input_transition_time=0.06e-9) == pytest.approx(0.012351 * PJ)
    assert rise.at(total_output_net_capacitance=0.15e-12, input_transition_time=1.2e-9) == pytest.approx(0.086416 * PJ)
    # 0.01 pF lies 2/3 of the way from 0.005 to 0.0125; 0.12 ns halfway from 0.06 to 0.18
    near, far = (0.012351 + 0.01753) / 2, (0.013339 + 0.017698) / 2
    assert rise.at(total_output_net_capacitance=0.01e-12, input_transition_time=0.12e-9) == pytest.approx(
        (near + 2 / 3 * (far - near)) * PJ)


def test_a_lane_replayed_at_gate_level_accumulates_as_its_rtl(tmp_path):
    """The small configuration's lane 0, mapped to the OSU 0.18 um cells and replayed under Icarus with
    the inputs it saw in an RTL run of 6 rows, takes the same accumulator values cycle for cycle,
    without delays and with SDF delays; its energy is
    mostly switching and internal, and the delays add glitches."""
    small = f"{REPO}/configs/small.toml"
    cfg = HPUConfig.load(small)
    assert main(["gen", "--config", small, "-o", str(tmp_path / "rtl")]) == 0
    assert main(["sim", "--config", small, "--rows", "6", "--vcd", str(tmp_path / "g.vcd"), "--build",
                 str(tmp_path / "build"), "-o", str(tmp_path / "s.json"), "--quiet"]) == 0
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    mapped = gatesim.map_to_cells(tmp_path / "rtl" / "hpu.v", "hpu.mac.lane0", gatesim.CELLS_LIBERTY,
                                  tmp_path / "map")
    assert set(mapped.inputs) == {"clk", "rst", "valid", "first", "chunk", "e", "v"} and mapped.area > 0
    scope = ("hpu_harness", "dut", "mac", "lane0")
    stim = gatesim.stimulus(tmp_path / "g.vcd", scope, gatesim.data_inputs(mapped))
    dump = gatesim.replay(mapped, gatesim.CELLS_VERILOG, stim, name="gated")
    accs = {f"acc{c}": cfg.acc_bits for c in range(cfg.chunks)}
    rtl = gatesim.stimulus(tmp_path / "g.vcd", scope, accs).values
    # The replay's values settle before the next edge: one cycle fewer, each equal to the RTL's.
    gate = gatesim.stimulus(dump, ("replay", "dut"), accs, settled=True).values
    assert len(gate) == len(stim.values) - 1 and len(np.unique(gate, axis=0)) > 6
    assert np.array_equal(rtl[:len(gate)], gate)
    counts = scan(dump)
    gatesim.check_known(mapped, counts, "gated")
    energy = gatesim.energy(mapped, lib, counts, stim.period_ps)
    assert energy.switching.sum() > 0 and energy.internal.sum() > 10 * energy.leakage.sum() > 0
    # With OpenSTA's delays annotated: the same states, and glitches on top of the zero-delay toggles.
    delayed = gatesim.replay(mapped, gatesim.CELLS_VERILOG, stim, name="gated_sdf",
                             sdf=gatesim.write_sdf(mapped, stim.period_ps).sdf)
    assert np.array_equal(rtl[:len(gate)], gatesim.stimulus(delayed, ("replay", "dut"), accs, settled=True).values)
    more = scan(delayed)
    glitchy = gatesim.energy(mapped, lib, more, stim.period_ps)
    assert (more.rise + more.fall).sum() > (counts.rise + counts.fall).sum()
    assert glitchy.total.sum() > energy.total.sum()


MEMORY_V = r"""module m(input clk, input a, input we, input [1:0] wa, input [1:0] ra, input [2:0] d,
         output reg [2:0] q, output y, output w);
  reg [2:0] mem [0:3];
  reg never;
  initial begin mem[0] = 3'd5; mem[1] = 3'd2; mem[2] = 3'd7; mem[3] = 3'd1; end
  wire \$flip  = !a;
  always @(posedge clk) begin if (we) mem[wa] <= d; q <= mem[ra]; never <= never ^ a; end
  assign y = \$flip ;
  assign w = never;
endmodule
"""


def test_a_replay_starts_from_the_rtls_initial_values_and_refuses_x(tmp_path):
    """A memory mapped to flip-flops holds its initial contents from time 0 in the replay, as in the
    RTL (no reset clears it): reading its four words gives 5, 2, 7, 1. Registers with neither an
    initial value nor a reset, which the RTL leaves x, start at 0 and are named. A replay without the
    initial values carries x after its reset and is refused, naming the unit and the nets. A net
    whose name begins with `$` is matched to the netlist like any other."""
    (tmp_path / "m.v").write_text(MEMORY_V)
    mapped = gatesim.map_to_cells(tmp_path / "m.v", "m", gatesim.CELLS_LIBERTY, tmp_path / "map")
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    # the memory's 12 flip-flops start at 5, 2, 7, 1 (7 ones); q's 3 and `never` have no initial value
    assert sorted(mapped.initial.values()).count(1) == 7 and len(mapped.initial) == 16
    cells = mapped.netlist["modules"]["m"]["cells"]
    assert sorted(mapped.netlist["modules"]["m"]["netnames"]["never"]["bits"][0] in c["connections"]["Q"]
                  for c in (cells[name] for name in mapped.x_initial)) == [False] * 3 + [True]
    widths = gatesim.data_inputs(mapped)
    assert list(widths) == ["a", "we", "wa", "ra", "d"]
    rows = np.array([[0, 0, 0, ra, 0] for ra in (0, 1, 2, 3, 0)], np.int64)
    stim = gatesim.Stimulus(rows, np.zeros_like(rows), 10000, widths)
    dump = gatesim.replay(mapped, gatesim.CELLS_VERILOG, stim, name="reads")
    # Edge k sees row k - 1 (edge 0 the zeros of the reset): q settles to words 0, 0, 1, 2.
    q = gatesim.stimulus(dump, ("replay", "dut"), {"q": 3}, settled=True)
    assert q.values[:, 0].tolist() == [5, 5, 2, 7] and not q.unknown.any()
    counts = scan(dump)
    gatesim.check_known(mapped, counts, "reads")
    assert {gatesim._unescaped(v.name) for v in counts.header.vars} <= set(mapped.netlist["modules"]["m"]["netnames"])
    assert gatesim._unescaped("\\$flip") == "\\$flip" and gatesim._unescaped("\\r_en$32") == "r_en$32"
    unset = gatesim.replay(replace(mapped, initial={}), gatesim.CELLS_VERILOG, stim, name="unset")
    with pytest.raises(gatesim.InputError, match=r"^m: replay unset carries x or z after its reset on \d+ nets "
                                                 r"\(mem\[0\]\[0\], mem\[0\]\[1\], .*\): it would be charged"):
        gatesim.check_known(mapped, scan(unset), "unset")


VCD_WITH_X = """$timescale 1ns $end
$scope module top $end
$var wire 1 ! a $end
$var wire 1 " n4 $end
$var wire 1 # clk $end
$var wire 2 $ q $end
$upscope $end
$enddefinitions $end
#0
$dumpvars
0!
1"
0#
b01 $
$end
#5
1#
#10
1!
0"
0#
#15
1#
bx1 $
#20
x!
x"
0#
#25
1#
b11 $
#30
0!
1"
0#
#35
1#
#40
0#
"""


def test_x_changes_are_half_transitions_and_x_is_compared_as_x(tiny, tmp_path):
    """From a dump: a change to or from x counts half a transition (the first value none), the duty is
    the time at 1, and the clock's pins take the replay's period, not the dump's edges. Values read
    from a dump keep x apart from 0: a replayed x differs from the RTL's 0 or 1, an RTL x (an unknown
    value, which a replay drives 0) takes the replay's value, and the cycles of x are counted."""
    (tmp_path / "x.vcd").write_text(VCD_WITH_X)
    mapped = gatesim.Mapped("top", tmp_path / "x.v", NETLIST, {"a": 1, "clk": 1}, 0.0, {}, [])
    e = gatesim.energy(mapped, tiny, scan(tmp_path / "x.vcd"), period_ps=5000)
    by = {name: k for k, name in enumerate(e.instances)}
    # n4: a fall, then 1 -> x -> 0... as x changes: 1 + 2 halves; 1/2 x 10 fF x (2 V)^2 each
    assert e.switching[by["u1"]] == pytest.approx(2 * 0.5 * 1e-14 * 4)
    # a (10 ns of 40 at 1: duty 1/4) moves 2 transitions; u1 draws its mean energy on n4's 2
    assert e.internal[by["u1"]] == pytest.approx(2 * (0.024 + 0.014) / 2 * PJ)
    # the clock: 2 transitions per 5 ns over 40 ns, 16, not the dump's 15
    assert e.clock_pins[by["ff"]] == pytest.approx(16 * 0.075 * PJ)
    rtl = gatesim.stimulus(tmp_path / "x.vcd", ("top",), {"q": 2})
    assert rtl.values[:, 0].tolist() == [1, 1, 3, 3] and rtl.unknown[:, 0].tolist() == [0, 2, 0, 0]
    assert gatesim.unknown_cycles(rtl) == {"q": 1}
    replayed = gatesim.Stimulus(rtl.values[:3], np.zeros_like(rtl.values[:3]), 5000, {"q": 2})
    assert calibrate._differing_outputs(rtl, replayed) == []
    assert calibrate._differing_outputs(rtl, replace(replayed, values=replayed.values | 2)) == ["q"]
    assert calibrate._differing_outputs(rtl, replace(replayed, unknown=np.array([[0], [0], [2]]))) == ["q"]


def test_calibration_fit_recovers_known_coefficients_and_reports_held_out_error(seed):
    """Energies made from known coefficients are fitted back exactly, and predicted exactly for every
    held-out workload; a workload that costs more than the others' coefficients say shows it in its
    held-out prediction. The cited model scaled by one factor is exact when it is proportional."""
    rng = np.random.default_rng(seed)
    workloads = ["a", "a", "b", "b", "c", "c", "d", "d"]
    x = rng.uniform(100, 1000, size=(8, 4))
    cycles = rng.uniform(1000, 5000, size=8)
    truth = np.array([30.0, 12.0, 5.0, 2.0])
    y = 7.0 * cycles + x @ truth
    assert calibrate.fit(x, y, cycles, 7.0) == pytest.approx(truth)
    predicted = calibrate.leave_one_workload_out(workloads, x, y, cycles, 7.0)
    assert list(predicted) == ["a", "b", "c", "d"]
    assert np.concatenate(list(predicted.values())) == pytest.approx(y, rel=1e-9)
    costly = y.copy()
    costly[6:] *= 1.5   # workload d costs half as much again as the model says
    predicted = calibrate.leave_one_workload_out(workloads, x, costly, cycles, 7.0)
    assert all(p / c - 1 < -0.2 for p, c in zip(predicted["d"], costly[6:]))
    scaled = calibrate.scaled_out(workloads, y / 3.0, y)
    assert np.concatenate(list(scaled.values())) == pytest.approx(y)
    # Subtree features: toggles per logic class and enabled bit-cycles from power.json's instance
    # entries, the instance's and those below it (not a sibling whose name starts alike).
    own = {"register": 3, "datapath": 5, "memory": 9, "control": 1}
    instances = {"hpu.a": {"toggles_own": own, "clocked_bit_cycles_own": 20,
                           "energy_fJ_own": {"register": 1.0, "memory": 50.0, "clock": 2.0}},
                 "hpu.a.b": {"toggles_own": {**own, "register": 1}, "clocked_bit_cycles_own": 4,
                             "energy_fJ_own": {"datapath": 3.0, "memory": 7.0}},
                 "hpu.ab": {"toggles_own": own, "clocked_bit_cycles_own": 100, "energy_fJ_own": {"datapath": 5.0}}}
    assert calibrate.features(instances, "hpu.a").tolist() == [4, 10, 2, 24]
    assert calibrate.logic_energy(instances, "hpu.a") == 6.0


def test_hpu_calibrate_fits_a_lane_and_hpu_power_takes_its_table(tmp_path):
    """A small calibration (the small configuration's lanes, three workload classes of two rows): the
    table it writes holds the fit of its JSON, which that JSON's numbers reproduce; every held-out
    prediction is the fit without its workload; and `hpu power --energy` on one of the runs charges
    lane 0 exactly idle x cycles + its energy per toggle x its toggles, and says which table it used."""
    small = f"{REPO}/configs/small.toml"
    work, out = tmp_path / "work", tmp_path / "out"
    assert main(["calibrate", "--config", small, "--units", "lane", "--workloads", "random", "minilm",
                 "adversarial", "--rows", "2", "--work", str(work), "-o", str(out)]) == 0
    result = json.loads((out / "calibration.json").read_text())
    (lane,) = result["units"]
    assert lane["applies_to"] == "hpu.mac.lane*" and len(lane["runs"]) == 6
    runs = list(lane["runs"].values())
    x = np.array([r["rtl_features"] for r in runs])
    cycles = np.array([r["cycles"] for r in runs], float)
    fit = lane["fit"]["sdf"]
    idle = fit["idle_fJ_per_cycle"]
    y = np.array([r["gate_sdf_fJ"] for r in runs])
    # Glitches: the SDF replay costs more than the zero-delay one on every run.
    assert all(r["gate_sdf_fJ"] > r["gate_zero_delay_fJ"] > 0 for r in runs)
    for kind, (columns, _) in calibrate.MODELS.items():
        assert calibrate.fit(columns(x), y, cycles, idle) == pytest.approx(list(fit[kind]["fJ_per"].values()))
        held = calibrate.leave_one_workload_out([r["workload"] for r in runs], columns(x), y, cycles, idle)
        predicted = [r[f"{kind}_held_out_fJ_sdf"] for r in runs]
        assert predicted == pytest.approx(np.concatenate(list(held.values())).tolist())
        assert fit[kind]["held_out_worst_error"] == pytest.approx(max(abs(p / g - 1) for p, g in zip(predicted, y)))
    per_toggle = fit[calibrate.MODEL]["fJ_per"]["logic toggle"]
    table = EnergyTable.load(out / "energy.toml")
    (entry,) = table.units
    assert entry.pattern == "hpu.mac.lane*" and table.calibration["config"] == small
    assert entry.toggle_fj == pytest.approx({c: per_toggle for c in ("register", "datapath", "control")}, rel=1e-4)
    assert (entry.clock_fj, entry.idle_fj_per_cycle) == (0.0, pytest.approx(idle, rel=1e-4))
    assert (out / "calibration.png").stat().st_size > 0 and "hpu.mac.lane0" in (out / "calibration.md").read_text()

    assert main(["power", str(work / "random" / "gated.vcd"), "--manifest", str(work / "rtl" / "manifest.json"),
                 "--energy", str(out / "energy.toml"), "-o", str(tmp_path / "power")]) == 0
    report = json.loads((tmp_path / "power" / "power.json").read_text())
    run = report["runs"]["gated"]
    features = calibrate.features(run["instances"], "hpu.mac.lane0")
    assert features.tolist() == lane["runs"]["random/gated"]["rtl_features"]
    assert run["instances"]["hpu.mac.lane0"]["energy_fJ_subtree"] == pytest.approx(
        entry.idle_fj_per_cycle * run["cycles"] + features[:3].sum() * entry.toggle_fj["register"])
    assert report["energy_table"]["calibration"]["library"].startswith("osu018_stdcells")
    assert "Calibrated against osu018_stdcells" in (tmp_path / "power" / "power.md").read_text()


POOL_INTERRUPT = """
import concurrent.futures, time
from power import calibrate
start = time.monotonic()
try:
    with calibrate._pool(2) as pool:
        futures = [pool.submit(time.sleep, 30) for _ in range(4)]
        raise KeyboardInterrupt
except KeyboardInterrupt:
    interrupted = True
assert interrupted
concurrent.futures.wait(futures, timeout=10)
assert time.monotonic() - start < 15, time.monotonic() - start
# at most 3 tasks reach the workers' queue (2 workers + 1): the 4th was still queued here
assert all(f.done() for f in futures) and futures[-1].cancelled()
"""


def test_an_interrupted_pool_drops_its_queued_work_and_ends_its_running_work():
    """An exception (Ctrl-C) inside a calibration's pool cancels the queued tasks and ends the running
    ones at once; a pool's own shutdown would wait for all of them (here 4 x 30 s on 2 workers).

    It runs in a process of its own: ending processes inside a test runner's worker took that worker
    down with it in full-suite runs under pytest-xdist."""
    run = subprocess.run([sys.executable, "-c", POOL_INTERRUPT], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr


def test_ctrl_c_twice_ends_a_calibration_at_once_with_130(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the RTL runs, then
    again half a second later: `hpu calibrate` says it was interrupted and ends within seconds,
    instead of hanging in its pool's shutdown."""
    work = tmp_path / "work"
    args = ["calibrate", "--config", f"{REPO}/configs/small.toml", "--units", "lane", "--workloads", "random",
            "minilm", "adversarial", "--rows", "2", "--work", str(work), "-o", str(tmp_path / "out")]
    # As from a terminal: a suite started in the background (`make test &`, nohup) hands its children
    # SIGINT ignored, and Python keeps an ignored SIGINT ignored, so `hpu` is given Python's own handler.
    command = [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               f"sys.argv = ['hpu', *{args!r}]; runpy.run_module('hpu.cli', run_name='__main__')"]
    run = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (work / "random").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.poll() is None and (work / "random").exists()
        os.killpg(run.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(run.pid, signal.SIGINT)
        stopped = time.monotonic()
        _, err = run.communicate(timeout=60)
        # 130, or the second SIGINT ends the exit itself, which a shell reports as 130 too
        assert run.returncode in (130, -signal.SIGINT) and "hpu: interrupted" in err
        assert time.monotonic() - stopped < 30
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_a_second_calibration_in_a_work_folder_in_use_is_refused_before_it_runs(tmp_path, capsys):
    """The whole work folder is claimed at the start: a calibration that names one in use is refused
    with exit 2 before it generates or simulates anything."""
    work = tmp_path / "work"
    with claim(work, "calibration work folder"):
        assert main(["calibrate", "--config", f"{REPO}/configs/small.toml", "--units", "lane", "--workloads",
                     "random", "minilm", "adversarial", "--rows", "2", "--work", str(work),
                     "-o", str(tmp_path / "out")]) == 2
    assert f"calibration work folder {work} is in use by another hpu run" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == [".hpu.lock"]


def test_calibrate_without_the_cells_names_the_make_target_that_fetches_them(tmp_path, monkeypatch):
    monkeypatch.setattr(gatesim, "CELLS_LIBERTY", tmp_path / "absent.lib")
    with pytest.raises(calibrate.InputError, match=r"no cell library at .*absent.lib: run `make setup`"):
        calibrate.calibrate(HPUConfig(), "defaults", ["lane"], 2, tmp_path / "work", tmp_path / "out")


CHAIN_V = """module chain(clk, a, y);
  input clk, a;
  output y;
  wire n1, n2, q;
  INVX1 u1 (.A(a), .Y(n1));
  BUFX2 u2 (.A(n1), .Y(n2));
  DFFPOSX1 r (.CLK(clk), .D(n2), .Q(q));
  INVX4 u4 (.A(q), .Y(y));
endmodule
"""
# The same netlist as Yosys writes it: nets 2 clk, 3 a, 4 y, 5 n1, 6 n2, 7 q.
CHAIN_JSON = {"modules": {"chain": {
    "ports": {"clk": {"direction": "input", "bits": [2]}, "a": {"direction": "input", "bits": [3]},
              "y": {"direction": "output", "bits": [4]}},
    "cells": {"u1": {"type": "INVX1", "connections": {"A": [3], "Y": [5]}},
              "u2": {"type": "BUFX2", "connections": {"A": [5], "Y": [6]}},
              "r": {"type": "DFFPOSX1", "connections": {"CLK": [2], "D": [6], "Q": [7]}},
              "u4": {"type": "INVX4", "connections": {"A": [7], "Y": [4]}}},
    "netnames": {n: {"bits": [b]} for n, b in (("clk", 2), ("a", 3), ("y", 4), ("n1", 5), ("n2", 6), ("q", 7))}}}}


def test_engine_against_debian_opensta_report_power_in_global_mode(tmp_path):
    """Debian's OpenSTA (2019) on a small netlist with `set_power_activity -global -activity 0.1`: it
    gives register outputs, and what they drive, 0.1 transitions per clock period and primary inputs
    none. With the same activity, our leakage and switching energy agree with it within 1% per
    instance. Its internal energy on the inverter is twice the mean of the rise and fall energies at
    the related input's same edges (that build charges a rise's and a fall's table energy on every
    transition and ignores unateness, where current OpenSTA and we charge their mean at the causing
    edge), and on the flip-flop, whose clock pin dominates, within 5% of twice ours."""
    (tmp_path / "cells.lib").write_bytes(gatesim.CELLS_LIBERTY.read_bytes())
    (tmp_path / "chain.v").write_text(CHAIN_V)
    (tmp_path / "power.tcl").write_text(
        "read_liberty cells.lib\nread_verilog chain.v\nlink_design chain\n"
        "create_clock -name clk -period 10 [get_ports clk]\nset_power_activity -global -activity 0.1 -duty 0.5\n"
        "report_power -instances [get_cells *] -digits 6\nexit\n")
    done = run_tool("OpenSTA", [opensta(), "-no_splash", "-exit", "power.tcl"], log=tmp_path / "sta.log", cwd=tmp_path)
    theirs = {}
    for line in done.stdout.splitlines():
        words = line.split()
        if len(words) == 5 and words[4] in CHAIN_JSON["modules"]["chain"]["cells"]:
            theirs[words[4]] = dict(zip(("internal", "switching", "leakage"), map(float, words[:3])))
    assert set(theirs) == {"u1", "u2", "r", "u4"}
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    netlist = gatelevel.Netlist.from_yosys(CHAIN_JSON, lib, "chain")
    cycles, period = 1000, 10e-9
    moving = {7: (cycles // 10, 0.5), 4: (cycles // 10, 0.5)}
    e = gatelevel.estimate(netlist, lib, moving, cycles * period, clock=2, period=period)
    ours = {name: {"internal": e.internal[i], "switching": e.switching[i], "leakage": e.leakage[i]}
            for i, name in enumerate(e.instances)}
    watts = {name: {k: v / (cycles * period) for k, v in d.items()} for name, d in ours.items()}
    for name in theirs:
        assert watts[name]["leakage"] == pytest.approx(theirs[name]["leakage"], rel=1e-5)
        assert watts[name]["switching"] == pytest.approx(theirs[name]["switching"], rel=0.01, abs=1e-12)
    # u4 inverts q. That build looks each output edge up at q's same edge; current OpenSTA and we at the
    # edge that causes it, the opposite one (q rises in 70.4 ps, falls in 77.4 ps).
    arc, seconds = lib.cells["INVX4"].pins["Y"].power[0], cycles * period
    rise, fall = e.slews[7]
    assert 2 * 100 * gatelevel._mean_energy(arc, 0.0, rise, fall) / seconds == pytest.approx(
        theirs["u4"]["internal"], rel=1e-5)
    assert watts["u4"]["internal"] == pytest.approx(100 * gatelevel._mean_energy(arc, 0.0, fall, rise) / seconds)
    assert 2 * watts["r"]["internal"] == pytest.approx(theirs["r"]["internal"], rel=0.05)
    assert theirs["u1"]["internal"] < 1e-12 and watts["u1"]["internal"] == 0


def test_a_calibrated_table_charges_the_whole_hpus_idle_once(tmp_path):
    """With lanes and the whole HPU calibrated, the HPU's entry keeps its own idle energy less that
    of every lane instance, so an idle cycle costs what the whole HPU's idle replay measured."""
    def result(instance, pattern, idle, per_toggle):
        fit = {"idle_fJ_per_cycle": idle, "cited_scaled_held_out_worst_error": 0.2,
               calibrate.MODEL: {"fJ_per": {"logic toggle": per_toggle}, "held_out_worst_error": 0.05}}
        return {"instance": instance, "applies_to": pattern, "cells": 10, "fit": {"sdf": fit}}

    results = [result("hpu.mac.lane0", "hpu.mac.lane*", 10.0, 1.0), result("hpu", "hpu", 100.0, 5.0)]
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    text = calibrate.table_text(results, ["hpu", "hpu.mac", "hpu.mac.lane0", "hpu.mac.lane1"], "small.toml", lib,
                                "2026-12-01")
    (tmp_path / "t.toml").write_text(text)
    table = EnergyTable.load(tmp_path / "t.toml")
    lane, top = table.units
    assert (lane.idle_fj_per_cycle, top.idle_fj_per_cycle) == (10.0, 80.0)
    assert top.toggle_fj == {"register": 5.0, "datapath": 5.0, "control": 5.0} and top.clock_fj == 0.0
    assert table.entry_for("hpu.mac") == (top, False) and table.entry_for("hpu.mac.lane1") == (lane, True)
    assert table.calibration["date"] == "2026-12-01" and table.memory_points == EnergyTable.load().memory_points


def test_memory_flip_flops_are_found_by_their_words(tmp_path):
    """A 4 x 3-bit memory mapped to the cells is 12 flip-flops named mem[0..3]: those, and only those,
    are the memory cells a calibration leaves out (the read port's register is logic)."""
    (tmp_path / "m.v").write_text(
        "module m(input clk, input we, input [1:0] wa, input [1:0] ra, input [2:0] d, output reg [2:0] q);\n"
        "  reg [2:0] mem [0:3];\n"
        "  always @(posedge clk) begin\n    if (we) mem[wa] <= d;\n    q <= mem[ra];\n  end\nendmodule\n")
    mapped = gatesim.map_to_cells(tmp_path / "m.v", "m", gatesim.CELLS_LIBERTY, tmp_path / "map")
    lib = liberty.load(gatesim.CELLS_LIBERTY)
    cells = mapped.netlist["modules"]["m"]["cells"]
    left_out = gatesim.memory_cells(mapped, lib, {"mem"})
    assert gatesim.memory_cells(mapped, lib, {"other"}) == set()
    assert len(left_out) == 12 and {cells[c]["type"] for c in left_out} == {"DFFPOSX1"}
    assert sum(lib.cells[c["type"]].sequential for c in cells.values()) == 15


def test_memories_are_named_as_the_flattened_unit_names_them():
    nets = {"hpu": {"memories": [{"name": "e_buffer"}]}, "hpu.fetch.asks": {"memories": [{"name": "storage"}]},
            "hpu.fetcher": {"memories": [{"name": "m"}]}, "hpu.normalizer": {"memories": []}}
    assert calibrate.memories_of(nets, "hpu.fetch") == {"asks.storage"}
    assert calibrate.memories_of(nets, "hpu") == {"e_buffer", "fetch.asks.storage", "fetcher.m"}
    assert calibrate.memories_of(nets, "hpu.normalizer") == set()
