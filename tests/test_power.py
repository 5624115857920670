"""The power module: the VCD reader against vcdvcd, activity, silent ratio, energy, SAIF, reports."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden_model.sources import rows_from
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.errors import InputError
from power import activity, design, saif
from power.energy import EnergyTable, estimate
from power.reference import reference_counts
from power.vcd import VcdError, read_header, scan
from sim.job import Options
from sim.runner import make_job, run

from conftest import REPO

CORPUS = Path(REPO).parent / "shared" / "vcd-corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.vcd"))
MALFORMED = {"VCD_file_with_errors.vcd"}
FIELDS = ("rise", "fall", "xz", "t0", "t1", "tx", "value_changes")


def assert_same_counts(a, b):
    for field in FIELDS:
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert (a.begin_time, a.end_time) == (b.begin_time, b.end_time)


def write_vcd(tmp_path, body: str, defs: str, timescale: str = "1 ns", name: str = "t.vcd") -> Path:
    path = tmp_path / name
    path.write_text(f"$timescale {timescale} $end\n{defs}\n$enddefinitions $end\n{body}\n")
    return path


def per_var(counts):
    """{reference: (rises, falls, xz)} summed over bits."""
    out = {}
    for var in counts.header.vars:
        s = counts.bits(var.code)
        out[var.reference] = (int(counts.rise[s].sum()), int(counts.fall[s].sum()), int(counts.xz[s].sum()))
    return out


@pytest.mark.skipif(not CORPUS_FILES, reason="the shared VCD corpus is not next to the repository")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_equals_vcdvcd_or_is_refused(path):
    if path.name in MALFORMED:
        with pytest.raises(VcdError, match=f"{path.name}:\\d+: no `\\$enddefinitions"):
            scan(path)
        return
    fast = scan(path)
    assert_same_counts(fast, reference_counts(path))
    # Chunking must not change a single count (small chunks split the body everywhere).
    assert_same_counts(scan(path, chunk_bytes=4096), fast)


@pytest.mark.skipif(not CORPUS_FILES, reason="the shared VCD corpus is not next to the repository")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_power_command_reads_any_designs_dump(path, tmp_path, capsys):
    """No manifest: every valid corpus file is reported (exit 0), the broken one refused with its line."""
    out = tmp_path / "report"
    if path.name in MALFORMED:
        assert main(["power", str(path), "-o", str(out)]) == 2
        assert f"{path.name}:92: no `$enddefinitions" in capsys.readouterr().err
        assert not (out / "activity.json").exists()
        return
    assert main(["power", str(path), "-o", str(out)]) == 0
    report = json.loads((out / "activity.json").read_text())
    counts = scan(path)
    assert report["toggles"] == int((counts.rise + counts.fall).sum())
    assert "uncalibrated" in report["note"]
    for name in ("activity_bits.csv", "activity_windows.csv", "activity.png", "activity.saif"):
        assert (out / name).stat().st_size > 0
    if report["clock"] is not None:
        assert all(0.0 <= s["silent_ratio"] <= 1.0 for s in report["scopes"].values())


def test_any_dump_by_hand_with_a_named_clock(tmp_path):
    """The tiny dump of the HPU tests read as an unknown design, its clock named: exact per-scope figures."""
    vcd = write_vcd(tmp_path, TINY_BODY, TINY_DEFS)
    assert main(["power", str(vcd), "--clock", "tb.t.clk", "--window", "5", "-o", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "activity.json").read_text())
    assert (report["clock"], report["cycles"]) == ("tb.t.clk", 10)
    lane, top = report["scopes"]["tb.t.l"], report["scopes"]["tb.t"]
    # The lane: acc 0000->0011->0101 and sum 0000->0011->0101 (4 + 4 toggles, go counted in t), active in
    # cycles 2, 3 and 4; t adds busy (2) and go (2) and is active in cycles 1, 2, 3, 4 and 9.
    assert (lane["toggles"], lane["active_cycles"], lane["silent_ratio"]) == (8 + 2, 3, 0.7)
    assert (top["toggles"], top["active_cycles"]) == (8 + 2 + 2 + 2, 5)
    assert report["scopes"]["tb"]["toggles"] == top["toggles"]
    with pytest.raises(SystemExit):
        main(["power", str(vcd), "--window", "0", "-o", str(tmp_path / "r")])
    assert main(["power", str(vcd), "--clock", "nope", "-o", str(tmp_path / "r")]) == 2


def test_quirks_have_known_counts(tmp_path):
    defs = """$scope module top $end
$var wire 1 ! clk $end
$var wire 4 b bus [3:0] $end
$scope task t1 $end $var reg 4 b bus_alias [3:0] $end $upscope $end
$scope begin blk $end $var wire 1 \\#x esc $end $upscope $end
$var real 64 r% level $end
$var wire 8 bb wide [7:0] $end
$upscope $end"""
    body = """#0
$dumpvars
0!
b0 b
bx bb
r0.5 r%
0\\#x
$end
$comment a comment with b1 b and #99 inside $end
#10 1! b1 b
b1z bb
#20 0!
b1010 b r1.25 r%
b1 bb
$dumpoff
x!
bx b
$end
#1000000
$dumpon
1!
b1010 b
$end
#1000005
1\\#x"""
    counts = scan(write_vcd(tmp_path, body, defs, timescale="10 ps"))
    assert counts.header.timescale == pytest.approx(1e-11)
    v = per_var(counts)
    # clk: x->0 (xz), 0->1, 1->0, 0->x (xz), x->1 (xz)
    assert v["top.clk"] == (1, 1, 3)
    # bus: x->0000 (4 xz), 0000->0001 (1 rise), 0001->1010 (2 rises, 1 fall), ->xxxx (4 xz), ->1010 (4 xz)
    assert v["top.bus"] == (3, 1, 12) and v["top.t1.bus_alias"] == v["top.bus"]
    # wide: xxxxxxxx; then 1z, padded with 0: 0000001z (8 x/z changes: x->z counts, x->0 and x->1 too);
    # then 1, padded: 00000001 (bit 1 falls, bit 0 goes z->1)
    assert v["top.wide"] == (0, 1, 8 + 1)
    assert v["top.blk.esc"] == (1, 0, 1)
    assert counts.value_changes[counts.header.vars[4].code] == 2  # real: counted as changes, not toggles
    assert counts.end_time == 1000005
    bus = counts.bits(counts.header.vars[1].code)
    # bit 1 of bus: x until 0, 0 from 0 to 20, 1 from 20 to the $dumpoff at 20, x until 1000000, then 1
    assert counts.t1[bus][1] == 5 and counts.tx[bus][1] == 1000000 - 20


def test_two_state_counts_hold_beyond_exact_float_times(tmp_path):
    """Two-state groups are summed in float64 only while every time sum is an exact integer; far in
    the 2**63 time range they take the per-changed-bit path, with the same counts."""
    defs = "$var wire 3 ! v $end\n$var wire 1 \" c $end"
    start = (1 << 62) + 1
    body = "\n".join(f"#{start + 7 * k} b{k % 8:b} ! {k % 2}\"" for k in range(40))
    path = write_vcd(tmp_path, f"#0 b0 ! 0\"\n{body}", defs)
    counts = scan(path)
    assert_same_counts(counts, reference_counts(path))
    v = counts.bits(0)
    # bit 0 of v and c flip at every step after the first: 39 toggles each, plus the x -> 0 at #0.
    assert int(counts.rise[v][0] + counts.fall[v][0]) == 39 and int(counts.xz[v][0]) == 1
    assert (counts.t0[v] + counts.t1[v] + counts.tx[v]).tolist() == [start + 7 * 39] * 3


def test_codes_starting_with_value_letters_pair_correctly(tmp_path):
    defs = "$var wire 2 b a $end\n$var wire 2 r c $end\n$var wire 1 s d $end"
    counts = scan(write_vcd(tmp_path, "#0 b00 b b11 r 0s #5 b01 b b10 r 1s", defs))
    v = per_var(counts)
    assert v == {"a": (1, 0, 2), "c": (0, 1, 2), "d": (1, 0, 1)}


@pytest.mark.parametrize("body, message", [
    ("#0 1!\n#x5 0!", "5: timestamp '#x5' is not `#` and a whole number"),
    ("#0 1?", "4: identifier code '\\?' was never declared"),
    ("#0 b2 !", "4: value '2' has a character that is not 0, 1, x, z"),
    ("#0 b101 !", "4: value of 3 bits for a 1-bit variable"),
    ("#0 1!\n$var wire 1 # y $end", "5: unexpected \\$var after the definitions"),
    ("#0 1!\n#5 b10", "5: a value has no identifier code after it"),
    ("#0 1!\n$comment never closed", "5: a `\\$comment` never ends"),
    ("#0 q!", "4: expected a timestamp, a value change or a `\\$` keyword"),
])
def test_malformed_body_names_file_line_and_expectation(tmp_path, body, message):
    path = write_vcd(tmp_path, body, "$var wire 1 ! x $end")
    with pytest.raises(VcdError, match=f"t.vcd:{message}"):
        scan(path)


@pytest.mark.parametrize("defs, message", [
    ("$scope module a $end $var wire 1 ! x $end", "scope a is never closed"),
    ("$var wire y ! x $end", "variable size 'y' is not an integer"),
    ("$timescale 3 weeks $end", "timescale '3 weeks'"),
    ("$upscope $end", "`\\$upscope` without an open `\\$scope`"),
    ("$var wire 1 ! $end", "expected `\\$var TYPE SIZE CODE NAME \\$end`"),
])
def test_malformed_definitions_are_refused(tmp_path, defs, message):
    with pytest.raises(VcdError, match=message):
        read_header(write_vcd(tmp_path, "#0", defs))


def test_time_going_back_is_held_and_reported(tmp_path):
    counts = scan(write_vcd(tmp_path, "#4 0!\n#1 1!\n#5 0!", "$var wire 1 ! x $end"))
    assert counts.warnings and "time goes back to 1 after 4" in counts.warnings[0]
    # 0 from 4, 1 from 4 (held) to 5, 0 from 5 to the end at 5
    assert (int(counts.t0[0]), int(counts.t1[0]), counts.end_time) == (0, 1, 5)


def _random_dump(rng: random.Random) -> tuple[str, str]:
    """Definitions and a body with x/z and VHDL states, short vectors, comments, `$dumpoff`/`$dumpon`
    and times that go back."""
    widths = [rng.choice([1, 1, 2, 3, 8, 13]) for _ in range(rng.randrange(1, 6))]
    codes = ["!", "b", "#a", "rr", "s1", "%&"][:len(widths)]
    defs = "\n".join(f"$var wire {w} {c} v{i} $end" for i, (w, c) in enumerate(zip(widths, codes)))
    lines, t = [], 0
    for _ in range(rng.randrange(0, 60)):
        event = rng.random()
        if event < 0.3:
            t += rng.choice([0, 1, 5, 1000])
            lines.append(f"#{t}")
        elif event < 0.33:
            lines.append(f"#{max(t - rng.choice([1, 7]), 0)}")
        elif event < 0.36:
            lines.append(f"$comment {rng.choice(['b1 !', '#5', 'a note'])} $end")
        elif event < 0.38:
            lines.append(rng.choice(["$dumpoff", "$dumpon", "$dumpall"]) + " "
                         + " ".join(("x" + c) if w == 1 else f"bx {c}" for w, c in zip(widths, codes)) + " $end")
        i = rng.randrange(len(widths))
        if widths[i] == 1 and rng.random() < 0.7:
            lines.append(rng.choice("01xzuwlh-") + codes[i])
        else:
            length = rng.randrange(1, widths[i] + 1)
            lines.append("b" + "".join(rng.choice("0011xzuwlh-") for _ in range(length)) + " " + codes[i])
    return defs, "#0\n" + "\n".join(lines)


@given(st.integers(0, 2**32 - 1), st.integers(1, 300))
def test_random_dumps_match_vcdvcd(tmp_path_factory, dump_seed, chunk_bytes):
    """Any dump, its chunks ending anywhere, counts as the vcdvcd-based reference counts it."""
    rng = random.Random(dump_seed)
    defs, body = _random_dump(rng)
    path = write_vcd(tmp_path_factory.mktemp("rand"), body, defs)
    counts = scan(path, chunk_bytes=chunk_bytes)
    assert_same_counts(counts, reference_counts(path))
    assert_same_counts(scan(path), counts)


def test_truncated_dump_never_crashes(seed, tmp_path):
    source = (CORPUS / "icarus_CPU.vcd") if CORPUS_FILES else None
    if source is None:
        pytest.skip("no corpus")
    data = source.read_bytes()
    rng = random.Random(seed)
    for k in range(25):
        cut = rng.randrange(len(data))
        path = tmp_path / f"cut{k}.vcd"
        path.write_bytes(data[:cut])
        try:
            scan(path)
        except VcdError as e:
            assert str(e).startswith(str(path))


# A tiny design described by hand: top `t` with one lane `t.l`, clock `clk`, phase `busy`.
TINY_MANIFEST = {"manifest_version": 1, "top": "t", "verilog": "t.v", "config": {}, "instances": ["t", "t.l"],
                 "mac_lanes": ["t.l"], "nets": "nets.json"}
TINY_NETS = {"modules": {
    "t": {"nets": {"clk": {"class": "clock", "width": 1, "owned": []},
                   "busy": {"class": "register", "width": 1, "owned": [0]},
                   "go": {"class": "control", "width": 1, "owned": [0]}},
          "registers": [{"cell": "b", "q": "busy", "width": 1, "enable": None}]},
    "t.l": {"nets": {"acc": {"class": "register", "width": 4, "owned": [0, 1, 2, 3]},
                     "sum": {"class": "datapath", "width": 4, "owned": [0, 1, 2, 3]}},
            "registers": [{"cell": "a", "q": "acc", "width": 4, "enable": {"net": "go", "bit": 0, "polarity": 1}}]},
}}
TINY_DEFS = """$scope module tb $end
$scope module t $end
$var wire 1 ! clk $end
$var reg 1 " busy $end
$var wire 1 # go $end
$scope module l $end
$var wire 1 ! clk $end
$var wire 1 # go $end
$var reg 4 $ acc [3:0] $end
$var wire 4 % sum [3:0] $end
$upscope $end
$upscope $end
$upscope $end"""
# Ten cycles (rising edges at 0, 10, ..., 90). busy is high in cycles 1-8. go (the lane's enable)
# is high in cycles 2-4; the lane's nets toggle in cycles 2, 3 and 4.
TINY_BODY = """#0 0" 0# b0 $ b0 % 1!
#5 0!
#10 1! 1"
#15 0!
#20 1! 1# b11 %
#25 0!
#30 1! b11 $ b101 %
#35 0!
#40 1! b101 $ 0#
#45 0!
#50 1!
#55 0!
#60 1!
#65 0!
#70 1!
#75 0!
#80 1!
#85 0!
#90 1! 0"
#95 0!"""


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(TINY_MANIFEST))
    (tmp_path / "nets.json").write_text(json.dumps(TINY_NETS))
    vcd = write_vcd(tmp_path, TINY_BODY, TINY_DEFS)
    return design.load(vcd, tmp_path / "manifest.json")


def test_silent_ratio_and_energy_of_a_tiny_dump_by_hand(tiny, tmp_path):
    a = activity.measure(tiny, window=5)
    assert (a.cycles, a.phase_cycles) == (10, 8)
    lane, top = tiny.index("t.l"), tiny.index("t")
    # lane: active in cycles 2, 3, 4 (x->0 at time 0 is not a toggle)
    assert a.active[lane] == 3 and a.silent_ratio(lane) == pytest.approx(0.7)
    assert a.silent_ratio(lane, phase=True) == pytest.approx(1 - 3 / 8)
    # top: busy rises in cycle 1 and falls in cycle 9, go toggles in 2 and 4, plus the lane's cycles
    assert a.active[top] == 5 and a.silent_ratio(top) == pytest.approx(0.5)
    assert a.silent_ratio(top, phase=True) == pytest.approx(1 - 4 / 8)
    # window 0 (cycles 0-4): sum 2 + 2, acc 2 + 2, and go (declared in the lane too) 2
    assert a.window_toggles[lane].tolist() == [10, 0]
    sum_code = next(v.code for v in tiny.header.vars if v.name == "sum")
    assert a.signal_window_toggles[sum_code].tolist() == [4, 0]
    # go is set in cycle 2 and cleared in cycle 4: the lane's register is clocked in cycles 2 and 3
    assert a.enabled_cycles[tiny.enables[0]] == 2
    table = EnergyTable.load()
    e = estimate(a, table)
    # lane: acc toggles 0000->0011->0101 = 2 + 2 = 4, sum the same 4; clock: 4 bits x 2 enabled cycles
    assert e.toggles[lane].tolist() == [4, 4, 0, 0]
    assert e.total[lane] == pytest.approx(4 * table.toggle_fj["register"] + 4 * table.toggle_fj["datapath"]
                                          + 8 * table.clock_fj)
    # top: busy 2 toggles (register), go 2 toggles (control), busy's register clocked all 10 cycles
    assert e.total[top] == pytest.approx(2 * table.toggle_fj["register"] + 2 * table.toggle_fj["control"]
                                         + 10 * table.clock_fj)


CALIBRATED = """
source = "calibrated, for the test"
[calibration]
library = "osu018_stdcells (1.8 V)"
date = "2026-12-01"
[toggle_fJ]
register = 1.0
datapath = 2.0
memory = 3.0
control = 4.0
[clock_fJ]
per_enabled_bit = 0.5
[units."t.l*"]
toggle_fJ = { register = 10.0, datapath = 20.0, control = 40.0 }
clock_fJ_per_enabled_bit = 5.0
idle_fJ_per_cycle = 100.0
held_out_error = 0.05
"""


def test_a_calibrated_unit_entry_charges_its_instances_and_its_idle_once(tiny, tmp_path):
    """A [units] entry charges the instances it matches (and those below) at its own figures, adds its
    idle energy per cycle once, to the instance it matches; the rest keeps the table's figures."""
    (tmp_path / "cal.toml").write_text(CALIBRATED)
    table = EnergyTable.load(tmp_path / "cal.toml")
    assert table.calibration["library"] == "osu018_stdcells (1.8 V)" and table.units[0].held_out_error == 0.05
    assert table.entry_for("t.l") == (table.units[0], True)
    assert table.entry_for("t.l.deeper") == (table.units[0], False)
    assert table.entry_for("t") == (None, False)
    a = activity.measure(tiny, window=5)
    e = estimate(a, table)
    lane, top = tiny.index("t.l"), tiny.index("t")
    # The tiny dump's lane: 4 register and 4 datapath toggles, 8 enabled bit-cycles, 10 cycles.
    assert e.total[lane] == pytest.approx(4 * 10.0 + 4 * 20.0 + 8 * 5.0 + 100.0 * 10)
    assert e.total[top] == pytest.approx(2 * 1.0 + 2 * 4.0 + 10 * 0.5)
    assert e.clocked_bits.tolist()[lane] == 8


@pytest.mark.parametrize("entry, message", [
    ('toggle_fJ = { register = 1.0 }\nclock_fJ_per_enabled_bit = 1.0\nidle_fJ_per_cycle = 1.0',
     'units."x" needs toggle_fJ = { register, datapath, control }'),
    ('toggle_fJ = { register = 1.0, datapath = 1.0, control = -1.0 }\nclock_fJ_per_enabled_bit = 1.0\n'
     'idle_fJ_per_cycle = 1.0', 'units."x".toggle_fJ.control = -1.0: must be a number of femtojoules >= 0'),
])
def test_bad_unit_entries_are_refused_by_name(tmp_path, entry, message):
    text = EnergyTable.load().path
    (tmp_path / "bad.toml").write_text(Path(text).read_text() + f'\n[units."x"]\n{entry}\n')
    with pytest.raises(InputError, match=re.escape(message)):
        EnergyTable.load(tmp_path / "bad.toml")


def test_memory_access_energy_follows_capacity_and_counts_accesses(tmp_path):
    """Per-access memory energy: the table's points exactly, log-log between them, the 8-32 KB slope
    below 8 KB; and a port's accesses are its enabled cycles (or its address changes)."""
    table = EnergyTable.load()
    assert table.memory_fj_per_bit(8192 * 8) == pytest.approx(156.25)
    assert table.memory_fj_per_bit(32768 * 8) == pytest.approx(312.5)
    assert table.memory_fj_per_bit(16384 * 8) == pytest.approx(156.25 * 2 ** 0.5)
    assert table.memory_fj_per_bit(2048 * 8) == pytest.approx(156.25 / 2)
    # The tiny design with a 4 x 4-bit memory in the lane: written when `go` is high (cycles 2, 3),
    # read asynchronously at the address `sum` (which changes 3 times, counting its first value).
    nets = json.loads(json.dumps(TINY_NETS))
    nets["modules"]["t.l"]["memories"] = [{"name": "m", "width": 4, "depth": 4, "ports": [
        {"kind": "write", "enable": {"net": "go", "bit": 0, "polarity": 1}},
        {"kind": "read", "enable": None, "address": "sum"}]}]
    (tmp_path / "manifest.json").write_text(json.dumps(TINY_MANIFEST))
    (tmp_path / "nets.json").write_text(json.dumps(nets))
    d = design.load(write_vcd(tmp_path, TINY_BODY, TINY_DEFS), tmp_path / "manifest.json")
    a = activity.measure(d, window=5)
    e = estimate(a, table)
    lane = d.index("t.l")
    per_bit = table.memory_fj_per_bit(16)
    assert e.by_class[lane, 2] == pytest.approx(4 * (2 + 3) * per_bit)


def test_activity_does_not_depend_on_where_chunks_end(tmp_path):
    """A time step's changes written before its clock edge belong to the cycle that edge starts,
    whichever chunk of the file they are read in."""
    # The tiny dump with every step's clock change written last.
    steps = []
    for line in TINY_BODY.splitlines():
        time, *changes = line.split(" ")
        clock = [c for c in changes if c.endswith("!") and len(c) == 2]
        steps.append(" ".join([time] + [c for c in changes if c not in clock] + clock))
    (tmp_path / "manifest.json").write_text(json.dumps(TINY_MANIFEST))
    (tmp_path / "nets.json").write_text(json.dumps(TINY_NETS))
    d = design.load(write_vcd(tmp_path, "\n".join(steps), TINY_DEFS), tmp_path / "manifest.json")
    whole = activity.measure(d, window=5)
    assert whole.enabled_cycles[d.enables[0]] == 2
    for chunk in range(8, 90, 3):
        a = activity.measure(d, window=5, chunk_bytes=chunk)
        assert (a.cycles, a.active.tolist(), a.enabled_cycles) == (whole.cycles, whole.active.tolist(),
                                                                   whole.enabled_cycles), chunk
        for field in ("active", "active_in_phase", "window_toggles", "signal_window_toggles", "window_active"):
            assert np.array_equal(getattr(a, field), getattr(whole, field)), (chunk, field)
        assert a.phase_cycles == whole.phase_cycles, chunk
        assert_same_counts(a.counts, whole.counts)


def test_a_clock_written_high_again_starts_no_cycle(tmp_path):
    """A change that writes the 1 the clock already holds (a redundant `1!`, as a `$dumpall` writes)
    is no edge, wherever the chunks end."""
    body = TINY_BODY.replace("#25 0!", "#22 1!\n#25 0!").replace("#65 0!", "#62 1! 1#\n#65 0!")
    (tmp_path / "manifest.json").write_text(json.dumps(TINY_MANIFEST))
    (tmp_path / "nets.json").write_text(json.dumps(TINY_NETS))
    d = design.load(write_vcd(tmp_path, body, TINY_DEFS), tmp_path / "manifest.json")
    whole = activity.measure(d, window=5)
    assert whole.cycles == 10
    for chunk in (8, 16, 40):
        a = activity.measure(d, window=5, chunk_bytes=chunk)
        for field in ("active", "active_in_phase", "window_toggles", "signal_window_toggles", "window_active"):
            assert np.array_equal(getattr(a, field), getattr(whole, field)), (chunk, field)
        assert (a.cycles, a.enabled_cycles, a.phase_cycles) == (whole.cycles, whole.enabled_cycles,
                                                                 whole.phase_cycles), chunk


def test_saif_round_trip(tiny, tmp_path):
    counts = scan(tiny.vcd)
    path = saif.write(counts, tmp_path / "tiny.saif", design="t")
    assert saif.read(path) == saif.expected(counts)
    big = scan(CORPUS / "icarus_CPU.vcd") if CORPUS_FILES else counts
    assert saif.read(saif.write(big, tmp_path / "cpu.saif")) == saif.expected(big)


def test_power_command_refuses_bad_input(tmp_path, capsys):
    assert main(["power", str(tmp_path / "missing.vcd"), "--manifest", str(tmp_path / "m.json")]) == 2
    assert "missing.vcd does not exist" in capsys.readouterr().err
    vcd = write_vcd(tmp_path, TINY_BODY, TINY_DEFS)
    assert main(["power", str(vcd), "--manifest", str(tmp_path / "m.json")]) == 2
    assert "m.json does not exist: run `hpu gen" in capsys.readouterr().err
    if CORPUS_FILES:
        (tmp_path / "manifest.json").write_text(json.dumps(TINY_MANIFEST))
        (tmp_path / "nets.json").write_text(json.dumps(TINY_NETS))
        bad = CORPUS / "VCD_file_with_errors.vcd"
        assert main(["power", str(bad), "--manifest", str(tmp_path / "manifest.json"), "-o", str(tmp_path / "o")]) == 2
        assert "VCD_file_with_errors.vcd:92" in capsys.readouterr().err
        assert not (tmp_path / "o" / "power.json").exists()


def test_gated_lanes_are_silent_for_gated_keys(seed, tmp_path):
    """The real HPU (default configuration, lockstep), gated and with the gate held open on the same rows.

    What holds for every input, and is asserted exactly:
    - lockstep takes the same cycles whether the gate is open or not;
    - a lane's accumulators are clocked once per chunk of a kept key and never otherwise, so each
      lane's clock energy is clock_fJ x acc_bits x chunks x kept keys, in both runs;
    - a lane moves only while it is handed a kept key's operands (chunks cycles a key) or writes the
      sum of the last one (one cycle more): a gated key leaves it silent, so its active cycles are
      at most (chunks + 1) x kept keys.
    Toggle energy depends on the data (a kept value of 0 toggles nothing) and is not bounded here.
    """
    cfg = HPUConfig.load(f"{REPO}/configs/default.toml")
    rows = rows_from("random", cfg, 6, seed)
    vcds, kept = {}, {}
    for name, gate_open in (("gated", False), ("dense", True)):
        vcds[name] = tmp_path / f"{name}.vcd"
        job = make_job(cfg, rows, "random", Options(gate_open=gate_open, seed=seed, vcd=str(vcds[name])))
        assert run(job, "icarus", build_root=tmp_path / "build").mismatches == 0
        kept[name] = sum(e.kept for e in job.expected)
    assert kept["dense"] == sum(r.n for r in rows)
    manifest = next((tmp_path / "build").glob("rtl-*/manifest.json"))
    out = tmp_path / "report"
    assert main(["power", str(vcds["gated"]), "--baseline", str(vcds["dense"]), "--manifest", str(manifest),
                 "-o", str(out)]) == 0
    result = json.loads((out / "power.json").read_text())
    table = EnergyTable.load()
    assert result["runs"]["gated"]["cycles"] == result["runs"]["dense"]["cycles"]
    for name in ("gated", "dense"):
        r = result["runs"][name]
        assert r["rows_delivered"] == len(rows)
        for lane in r["lanes"]:
            own = r["instances"][lane]
            assert own["energy_fJ_own"]["clock"] == pytest.approx(
                table.clock_fj * cfg.acc_bits * cfg.chunks * kept[name], rel=1e-12), (name, lane)
            assert own["active_cycles"] <= (cfg.chunks + 1) * kept[name], (name, lane, own["active_cycles"])
    for name in ("power.csv", "signals.csv", "power.md", "power.html", "gated.saif", "dense.saif"):
        assert (out / name).stat().st_size > 0
    assert "not sign-off power" in (out / "power.md").read_text()


# -- companions that do not belong together -------------------------------------------------------

@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """`hpu gen` and two `hpu sim` runs of the small configuration: 4 rows gated and dense, 3 rows."""
    root = tmp_path_factory.mktemp("companions")
    small = f"{REPO}/configs/small.toml"
    build = str(root / "build")
    assert main(["gen", "--config", small, "-o", str(root / "rtl")]) == 0
    assert main(["gen", "--config", small, "--set", "lanes=2", "-o", str(root / "rtl2")]) == 0
    assert main(["sim", "--config", small, "--rows", "4", "--dense-baseline", "--vcd", str(root / "four" / "g.vcd"),
                 "--build", build, "-o", str(root / "four" / "s.json"), "--quiet"]) == 0
    assert main(["sim", "--config", small, "--rows", "3", "--dense-baseline", "--vcd", str(root / "three" / "g.vcd"),
                 "--build", build, "-o", str(root / "three" / "s.json"), "--quiet"]) == 0
    # The first run again, dumped as FST.
    assert main(["sim", "--config", small, "--rows", "4", "--dense-baseline", "--waves", "fst",
                 "--vcd", str(root / "fst" / "g.fst"), "--build", build, "-o", str(root / "fst" / "s.json"),
                 "--quiet"]) == 0
    return root


def _per_variable(counts):
    return {var.reference: [getattr(counts, f)[counts.bits(var.code)].tolist() for f in FIELDS[:-1]]
            + [int(counts.value_changes[var.code])] for var in counts.header.vars}


def test_fst_of_a_run_reads_as_its_vcd(small_runs, tmp_path):
    """Icarus's FST of a run, read through GTKWave's FST library, gives the VCD's counts for every bit
    of every variable, and the same power report."""
    r = small_runs
    for name in ("g", "g_dense"):
        fst, vcd = scan(r / "fst" / f"{name}.fst"), scan(r / "four" / f"{name}.vcd")
        assert _per_variable(fst) == _per_variable(vcd)
        assert (fst.begin_time, fst.end_time, fst.closed) == (vcd.begin_time, vcd.end_time, True)
        assert (r / "fst" / f"{name}.fst").stat().st_size * 5 < (r / "four" / f"{name}.vcd").stat().st_size
    reports = []
    for folder, suffix in (("four", "vcd"), ("fst", "fst")):
        assert main(["power", str(r / folder / f"g.{suffix}"), "--baseline", str(r / folder / f"g_dense.{suffix}"),
                     "--manifest", str(r / "rtl" / "manifest.json"), "--summary", str(r / folder / "s.json"),
                     "-o", str(tmp_path / folder)]) == 0
        reports.append(json.loads((tmp_path / folder / "power.json").read_text()))
    for name in ("gated", "dense"):
        assert reports[0]["runs"][name]["energy_fJ"] == reports[1]["runs"][name]["energy_fJ"]
        assert reports[0]["runs"][name]["instances"] == reports[1]["runs"][name]["instances"]


def test_a_corrupt_fst_is_refused_in_one_line(small_runs, tmp_path, capsys):
    broken = tmp_path / "cut.fst"
    broken.write_bytes((small_runs / "fst" / "g.fst").read_bytes()[:400])
    _refused(capsys, ["power", str(broken), "-o", str(tmp_path / "p")], "cut.fst")


def _refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


def test_matching_companions_are_accepted(small_runs, tmp_path):
    r = small_runs
    assert main(["power", str(r / "four" / "g.vcd"), "--baseline", str(r / "four" / "g_dense.vcd"),
                 "--manifest", str(r / "rtl" / "manifest.json"), "--summary", str(r / "four" / "s.json"),
                 "-o", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "power.json").read_text())
    summary = json.loads((r / "four" / "s.json").read_text())
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")
    table = EnergyTable.load()
    for name in ("gated", "dense"):
        run, sim = result["runs"][name], summary["runs"][name]
        assert run["kept_fraction"] == sim["kept_fraction"] and run["rows_delivered"] == 4
        # The host counted exactly one value vector per kept key: the gate's dropped values never moved.
        assert sim["values_fetched"] == sim["kept_keys"]
        assert run["value_bytes_fetched"] == sim["kept_keys"] * cfg.head_dim * cfg.value_bits // 8
        assert run["offchip_energy_fJ"] == pytest.approx(run["value_bytes_fetched"] * table.dram_pj_per_byte * 1e3)
        assert sum(run["energy_fJ_by_path"].values()) == pytest.approx(run["energy_fJ"])
    c = result["comparison"]
    assert c["kept_fraction"] == summary["runs"]["gated"]["kept_fraction"]
    g, d = result["runs"]["gated"], result["runs"]["dense"]
    assert c["energy_saving_total"] == pytest.approx(1 - g["energy_fJ_with_offchip"] / d["energy_fJ_with_offchip"])
    assert c["energy_proportionality"]["hpu"] == pytest.approx(c["energy_saving_hpu"] / (1 - c["kept_fraction"]))


def test_mismatched_companions_are_refused(small_runs, tmp_path, capsys):
    r = small_runs
    four, three, out = r / "four", r / "three", str(tmp_path / "p")
    manifest = str(r / "rtl" / "manifest.json")
    _refused(capsys, ["power", str(four / "g.vcd"), "--manifest", str(r / "rtl2" / "manifest.json"), "-o", out],
             "holds instances that manifest")
    _refused(capsys, ["power", str(four / "g.vcd"), "--manifest", manifest, "--summary", str(three / "s.json"),
                      "-o", out], "is not a dump that summary")
    _refused(capsys, ["power", str(four / "g.vcd"), "--baseline", str(three / "g_dense.vcd"), "--manifest", manifest,
                      "-o", out], "the dumps are not of the runs' rows: the HPU delivered 4 rows")
    _refused(capsys, ["power", str(four / "g_dense.vcd"), "--baseline", str(four / "g.vcd"), "--manifest", manifest,
                      "--summary", str(four / "s.json"), "-o", out], "the baseline must be the run with the gate held open")
    # A dump cut short at a token boundary: refused against its summary, flagged without one.
    data = (four / "g.vcd").read_bytes()
    cut = tmp_path / "cut.vcd"
    cut.write_bytes(data[:data.index(b"\n#", len(data) // 2) + 1])
    _refused(capsys, ["power", str(cut), "--manifest", manifest, "--summary", str(four / "s.json"), "-o", out],
             "cut.vcd (")
    assert main(["power", str(cut), "--manifest", manifest, "-o", out]) == 0
    assert "it may be cut short" in capsys.readouterr().err
    assert not (tmp_path / "p" / "power.json").exists() or "cut short" in (tmp_path / "p" / "power.md").read_text()


def test_broken_companion_files_are_refused(small_runs, tmp_path, capsys):
    r = small_runs
    vcd, out = str(r / "four" / "g.vcd"), str(tmp_path / "p")
    (tmp_path / "bad.json").write_text("{")
    _refused(capsys, ["power", vcd, "--manifest", str(tmp_path / "bad.json"), "-o", out], "is not valid JSON")
    (tmp_path / "other.json").write_text('{"top": "hpu"}')
    _refused(capsys, ["power", vcd, "--manifest", str(tmp_path / "other.json"), "-o", out], "lacks verilog, config")
    manifest = str(r / "rtl" / "manifest.json")
    _refused(capsys, ["power", vcd, "--manifest", manifest, "--summary", str(tmp_path / "other.json"), "-o", out],
             "is not a summary of this toolkit's `hpu sim`")
    (tmp_path / "e.toml").write_bytes(b"\xff\xfe")
    _refused(capsys, ["power", vcd, "--manifest", manifest, "--energy", str(tmp_path / "e.toml"), "-o", out],
             "e.toml is not a text file")
    (tmp_path / "e.toml").write_text('[toggle_fJ]\nregister = "a"\ndatapath = 1\nmemory = 1\ncontrol = 1\n'
                                     '[clock_fJ]\nper_enabled_bit = 1\n')
    _refused(capsys, ["power", vcd, "--manifest", manifest, "--energy", str(tmp_path / "e.toml"), "-o", out],
             "toggle_fJ.register = 'a': must be a number")
    _refused(capsys, ["power", str(tmp_path), "--manifest", manifest, "-o", out], "is not a file")
    (tmp_path / "afile").write_text("")
    _refused(capsys, ["power", vcd, "--manifest", manifest, "-o", str(tmp_path / "afile")], "is a file, not a folder")


def test_interrupted_report_leaves_no_power_json(small_runs, tmp_path, monkeypatch, capsys):
    r = small_runs
    argv = ["power", str(r / "four" / "g.vcd"), "--manifest", str(r / "rtl" / "manifest.json"),
            "-o", str(tmp_path / "p")]
    assert main(argv) == 0 and (tmp_path / "p" / "power.json").exists()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("power.report.plots", interrupt)
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "p" / "power.json").exists()
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("body, defs, message", [
    ("#0 1!\n#99999999999999999999 0!", "$var wire 1 ! x $end", r"timestamp #99999999999999999999 is beyond 2\*\*63"),
    ("#0", "$var wire 99999999999 ! x $end", "variable size 99999999999 is beyond the 1048576 bits"),
    ("#0", "\n".join(f"$var wire 1000000 {chr(33 + i)} v{i} $end" for i in range(20)), "20000000 bits in all"),
])
def test_absurd_dumps_are_refused_without_exhausting_memory(tmp_path, body, defs, message):
    with pytest.raises(VcdError, match=message):
        scan(write_vcd(tmp_path, body, defs))


def test_routed_run_reports_row_level_dark_silicon(tmp_path):
    """A routed run computes only its routed tokens' rows: the report counts them against every token's,
    and charges the router to the routed run."""
    small, build = f"{REPO}/configs/small.toml", str(tmp_path / "build")
    settings = ["--config", small, "--set", "route_block=16", "--set", "route_fraction=0.25"]
    assert main(["gen", *settings, "-o", str(tmp_path / "rtl")]) == 0
    assert main(["sim", *settings, "--rows", "40", "--dense-baseline", "--vcd", str(tmp_path / "v" / "g.vcd"),
                 "--build", build, "-o", str(tmp_path / "v" / "s.json"), "--quiet"]) == 0
    assert main(["power", str(tmp_path / "v" / "g.vcd"), "--baseline", str(tmp_path / "v" / "g_dense.vcd"),
                 "--manifest", str(tmp_path / "rtl" / "manifest.json"), "--summary", str(tmp_path / "v" / "s.json"),
                 "-o", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "v" / "s.json").read_text())["runs"]
    result = json.loads((tmp_path / "p" / "power.json").read_text())
    g, d = result["runs"]["gated"], result["runs"]["dense"]
    # Blocks of 16, 16 and 8 tokens route 4, 4 and 2.
    assert (summary["gated"]["tokens"], summary["gated"]["rows"], summary["dense"]["rows"]) == (40, 10, 40)
    assert summary["gated"]["kept_fraction"] == summary["gated"]["kept_keys"] / summary["dense"]["keys"]
    r = result["comparison"]["routing"]
    assert r["rows_computed"] == {"gated": 10, "dense": 40} and r["unrouted_fraction"] == 0.75
    datapath = {n: sum(s["energy_fJ_by_path"][p] for p in ("score", "value", "normalizer")) for n, s in (("gated", g), ("dense", d))}
    assert r["datapath_energy_fJ"] == pytest.approx(datapath)
    assert r["datapath_saving"] == pytest.approx(1 - datapath["gated"] / datapath["dense"])
    assert r["router_energy_fJ"] == g["energy_fJ_by_path"]["router"] > 10 * d["energy_fJ_by_path"]["router"]
    assert g["energy_fJ"] == pytest.approx(datapath["gated"] + r["router_energy_fJ"])
    assert "## Token routing: row-level dark silicon" in (tmp_path / "p" / "power.md").read_text()
    # With a window of 3 keys the unrouted tokens' rows enter the chip as 3-key rows: still unrouted,
    # and the datapath saves less.
    assert main(["sim", *settings, "--rows", "40", "--route-window", "3", "--dense-baseline", "--vcd",
                 str(tmp_path / "w" / "g.vcd"), "--build", build, "-o", str(tmp_path / "w" / "s.json"), "--quiet"]) == 0
    assert main(["power", str(tmp_path / "w" / "g.vcd"), "--baseline", str(tmp_path / "w" / "g_dense.vcd"),
                 "--manifest", str(tmp_path / "rtl" / "manifest.json"), "--summary", str(tmp_path / "w" / "s.json"),
                 "-o", str(tmp_path / "pw")]) == 0
    # Without the summary the dumps cannot say which tokens their rows stand for (here as many rows as
    # the dense run's): refused, not read as a plain gated run.
    assert main(["power", str(tmp_path / "w" / "g.vcd"), "--baseline", str(tmp_path / "w" / "g_dense.vcd"),
                 "--manifest", str(tmp_path / "rtl" / "manifest.json"), "-o", str(tmp_path / "pn")]) == 2
    ws = json.loads((tmp_path / "w" / "s.json").read_text())["runs"]
    # The dense baseline sends every token's whole row and no windows, and says so.
    assert [(ws[n]["route_window"], ws[n]["window_rows"]) for n in ("gated", "dense")] == [(3, 30), (0, 0)]
    w = json.loads((tmp_path / "pw" / "power.json").read_text())["comparison"]["routing"]
    assert (w["rows_computed"], w["window_rows"], w["unrouted_fraction"]) == ({"gated": 40, "dense": 40}, 30, 0.75)
    assert r["datapath_saving"] > w["datapath_saving"] > 0
    assert "of whose rows only their windows entered the chip (30 rows)" in (tmp_path / "pw" / "power.md").read_text()
