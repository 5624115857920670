"""The Liberty reader and the gate-level energy engine, on a hand-made library and netlist whose
energies are computed by hand below, and on the OSU 0.18 um library that `make` fetches."""

import numpy as np
import pytest

from hpu.cli import main
from hpu.config import HPUConfig
from power import calibrate, gatelevel, gatesim, liberty

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
        fall_transition (t2) { values ("0.1, 0.3", "0.5, 0.7"); } }
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
# u4 (AND2) takes a and clk and drives n8 (no load).
NETLIST = {"modules": {"top": {
    "attributes": {"top": "00000000000000000000000000000001"},
    "ports": {"a": {"direction": "input", "bits": [2]}, "clk": {"direction": "input", "bits": [3]},
              "z": {"direction": "output", "bits": [5]}},
    "cells": {"u1": {"type": "INV", "connections": {"A": [2], "Y": [4]}},
              "u2": {"type": "INV", "connections": {"A": [4], "Y": [5]}},
              "ff": {"type": "DFF", "connections": {"CLK": [3], "D": [5], "Q": [6]}},
              "u3": {"type": "INV", "connections": {"A": [6], "Y": [7]}},
              "u4": {"type": "AND2", "connections": {"A": [2], "B": [3], "Y": [8]}}},
    "netnames": {"a": {"bits": [2]}, "clk": {"bits": [3]}, "n4": {"bits": [4], "hide_name": 1},
                 "z": {"bits": [5]}, "q": {"bits": [6]}, "n7": {"bits": [7]}, "n8": {"bits": [8]}}}}}
ACTIVITY = {2: (3, 3), 3: (10, 10), 4: (3, 3), 5: (3, 3), 6: (2, 1), 7: (1, 2), 8: (1, 1)}
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
    netlist = gatelevel.Netlist.from_yosys(NETLIST, tiny)
    e = gatelevel.estimate(netlist, tiny, ACTIVITY, duration=100e-9)
    by = {name: k for k, name in enumerate(e.instances)}
    ns = 1e-9
    # Transition times: u1.Y at 10 fF and input slew 0: 0.1 + 0.1 x (0.5 - 0.1) = 0.14 ns; u2.Y at
    # 10 fF and 0.14 ns: 0.128 + 0.1 x 0.4 = 0.168 ns; ff.Q: 0.22 ns; u3.Y (no load) at 0.22 ns: 0.144 ns.
    assert e.slews[4] == pytest.approx((0.14 * ns, 0.14 * ns))
    assert e.slews[5] == pytest.approx((0.168 * ns, 0.168 * ns))
    assert e.slews[6] == pytest.approx((0.22 * ns, 0.22 * ns))
    assert e.slews[7] == pytest.approx((0.144 * ns, 0.144 * ns))
    # switching: 1/2 x 10 fF x (2 V)^2 per transition
    assert e.switching[by["u1"]] == pytest.approx(6 * 0.5 * 1e-14 * 4)
    assert e.switching[by["ff"]] == pytest.approx(3 * 0.5 * 1e-14 * 4)
    assert e.switching[by["u3"]] == 0 and e.switching[by["u4"]] == 0
    # internal: u1 at 10 fF, slew 0: rise 0.024, fall 0.014 pJ; u2 at 0.14 ns: rise 0.0268, fall 0.0168 pJ
    assert e.internal[by["u1"]] == pytest.approx((3 * 0.024 + 3 * 0.014) * PJ)
    assert e.internal[by["u2"]] == pytest.approx((3 * 0.0268 + 3 * 0.0168) * PJ)
    # ff: Q 3 x 0.32 pJ; its clock pin 10 rises x 0.1 + 10 falls x 0.05 pJ (the D pin has no table)
    assert e.internal[by["ff"]] == pytest.approx((3 * 0.32 + 10 * 0.1 + 10 * 0.05) * PJ)
    assert e.clock_pins[by["ff"]] == pytest.approx((10 * 0.1 + 10 * 0.05) * PJ) and e.clock_pins[by["u1"]] == 0
    # u3 at no load and 0.22 ns: rise 0.0244, fall 0.0144 pJ
    assert e.internal[by["u3"]] == pytest.approx((0.0244 + 2 * 0.0144) * PJ)
    # u4: two groups weighted by their inputs' transitions, a 6 and clk 20
    assert e.internal[by["u4"]] == pytest.approx(2 * (6 / 26 * 0.1 + 20 / 26 * 0.6) * PJ)
    assert e.leakage[by["ff"]] == pytest.approx(5e-9 * 100e-9)
    assert e.total.sum() == pytest.approx(e.internal.sum() + e.switching.sum() + e.leakage.sum())


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
    the inputs it saw in an RTL run of 6 rows, takes the same accumulator values in the same order
    (so the replay is aligned cycle for cycle), without delays and with SDF delays; its energy is
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
    rtl = gatesim.distinct_states(gatesim.stimulus(tmp_path / "g.vcd", scope, accs).values)
    gate = gatesim.distinct_states(gatesim.stimulus(dump, ("replay", "dut"), accs).values)
    # The RTL dump ends in `$dumpoff` (every bit x, read as 0): one state more.
    assert len(gate) > 6 and np.array_equal(rtl[:-1], gate)
    energy, counts = gatesim.energy(mapped, lib, dump)
    assert energy.switching.sum() > 0 and energy.internal.sum() > 10 * energy.leakage.sum() > 0
    # With OpenSTA's delays annotated: the same states, and glitches on top of the zero-delay toggles.
    delayed = gatesim.replay(mapped, gatesim.CELLS_VERILOG, stim, name="gated_sdf",
                             sdf=gatesim.write_sdf(mapped, stim.period_ps).sdf)
    assert np.array_equal(rtl[:-1], gatesim.distinct_states(gatesim.stimulus(delayed, ("replay", "dut"), accs).values))
    glitchy, more = gatesim.energy(mapped, lib, delayed)
    assert (more.rise + more.fall).sum() > (counts.rise + counts.fall).sum()
    assert glitchy.total.sum() > energy.total.sum()


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
