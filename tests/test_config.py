import argparse
import dataclasses
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpu.cli import build_parser, main
from hpu.config import ConfigError, HPUConfig, parse_overrides

from conftest import REPO


def test_default_file_is_the_brief_defaults():
    assert HPUConfig.load(f"{REPO}/configs/default.toml") == HPUConfig()


@pytest.mark.parametrize("name", ["default", "small", "large", "minilm"])
def test_example_configs_load_and_round_trip(name, tmp_path):
    cfg = HPUConfig.load(f"{REPO}/configs/{name}.toml")
    cfg.save(tmp_path / "again.toml")
    assert HPUConfig.load(tmp_path / "again.toml") == cfg


def test_derived_widths_of_the_default():
    cfg = HPUConfig()
    # 256 keys * 255 * 128 = 8,355,840 < 2**23: 24 signed bits.
    assert cfg.acc_bits == cfg.min_acc_bits == 24
    assert cfg.z_bits == 16 and cfg.count_bits == 9 and cfg.index_bits == 8
    assert (cfg.rho_q, cfg.tau_q) == (128, 230)
    assert cfg.chunks == 4


def test_accumulator_width_cannot_overflow():
    for cfg in (HPUConfig(), HPUConfig(max_keys=1, value_bits=2, prob_bits=1), HPUConfig(max_keys=1000)):
        low = -(1 << (cfg.acc_bits - 1))
        high = (1 << (cfg.acc_bits - 1)) - 1
        extreme = cfg.max_keys * cfg.e_max
        assert low <= extreme * -(1 << (cfg.value_bits - 1)) and extreme * ((1 << (cfg.value_bits - 1)) - 1) <= high
        # and it is the smallest such width
        assert extreme * (1 << (cfg.value_bits - 1)) > (1 << (cfg.acc_bits - 2)) - 1


ILLEGAL = [
    ({"lanes": 5}, "lanes = 5: must divide head_dim (64)"),
    ({"permeability": 0.0}, "permeability = 0.0: must lie in (0, 1]"),
    ({"permeability": 1.5}, "permeability = 1.5: must lie in (0, 1]"),
    ({"mass_target": -0.1}, "mass_target = -0.1: must lie in (0, 1]"),
    ({"acc_bits": 20}, "acc_bits = 20: cannot hold the accumulator: needs at least 24 bits"),
    ({"mode": "sparse"}, "mode = 'sparse': must be one of mass, topk, dense"),
    ({"schedule": "eager"}, "schedule = 'eager': must be one of lockstep, compact"),
    ({"lut_size": 100}, "lut_size = 100: must be a power of two"),
    ({"score_frac": 16}, "score_frac = 16: must lie in 0..score_bits-1 (15)"),
    ({"out_frac": 16}, "out_frac = 16: must lie in 0..out_bits-1 (15)"),
    ({"exp_shift": 17}, "exp_shift = 17: must lie in 0..score_bits (16)"),
    ({"k_min": 0}, "k_min = 0: must lie in 1..65536"),
    ({"k_min": 300}, "k_min = 300: must not exceed max_keys (256)"),
    ({"head_dim": 0}, "head_dim = 0: must lie in 1..1024"),
    ({"max_keys": 0}, "max_keys = 0: must lie in 1..65536"),
    ({"value_bits": 1}, "value_bits = 1: must lie in 2..32"),
    ({"max_keys": 65536, "value_bits": 32}, "exceeds 53 bits"),
    ({"out_bits": 48, "out_frac": 40}, "out_frac = 40: acc_bits (24) + out_frac must not exceed 62"),
    ({"lanes": "4"}, "lanes = '4': must be of type int"),
    ({"permeability": True}, "permeability = True: must be of type float"),
]


@pytest.mark.parametrize("change,message", ILLEGAL, ids=[str(c) for c, _ in ILLEGAL])
def test_illegal_value_is_refused_with_field_value_and_rule(change, message):
    with pytest.raises(ConfigError) as info:
        HPUConfig(**change)
    assert message in str(info.value)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HPUConfig().lanes = 8


def test_unknown_field_in_toml_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[hpu]\nlanes = 8\nlane_count = 4\n")
    with pytest.raises(ConfigError, match="unknown field.*lane_count"):
        HPUConfig.load(path)


def test_missing_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HPUConfig.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[hpu\nlanes = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        HPUConfig.load(tmp_path / "bad.toml")


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["lanes=8", "permeability=0.25", "mode=topk"]) == \
        {"lanes": 8, "permeability": 0.25, "mode": "topk"}
    assert HPUConfig().with_overrides(["permeability=1"]).permeability == 1.0
    with pytest.raises(ConfigError, match="lanes takes an integer"):
        parse_overrides(["lanes=eight"])
    with pytest.raises(ConfigError, match="expected field=value"):
        parse_overrides(["bogus=1"])


def test_cli_refuses_illegal_configuration_with_one_line(capsys):
    assert main(["config", "--set", "lanes=5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "hpu: illegal configuration: lanes = 5: must divide head_dim (64)"


def test_cli_prints_and_saves(tmp_path, capsys):
    assert main(["config", "--set", "mode=topk", "-o", str(tmp_path / "c.toml")]) == 0
    assert "mode          = 'topk'" in capsys.readouterr().out
    assert HPUConfig.load(tmp_path / "c.toml").mode == "topk"


def test_every_cli_option_has_help():
    """`hpu CMD --help` is the tool's manual: an option without help is a hole in it."""
    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    walk(sub, f"{name} {command}")
            elif action.help is None:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "hpu")
    assert missing == []


def test_building_the_parser_loads_no_heavy_library():
    """`hpu --help` answers at once: the parser's names (sources, calibration units and workloads)
    come from modules that load none of torch, Amaranth, SciPy or numba, which take seconds."""
    code = ("import hpu.cli, sys; hpu.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'amaranth', 'scipy', 'numba') if m in sys.modules]; "
            "assert not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@given(keys=st.integers(1, 1 << 20), permeability=st.integers(1, 256), k_min=st.integers(1, 64))
def test_gate_cap_is_one_rule_for_ints_and_tensors(keys, permeability, k_min):
    """max(k_min, ceil(keys * rho_q / 256)): the golden gate's cap, for a Python int and a tensor alike."""
    import math

    import torch

    cfg = HPUConfig(permeability=permeability / 256, k_min=k_min)
    want = max(k_min, math.ceil(keys * cfg.rho_q / 256))
    assert cfg.gate_cap(keys) == want
    assert cfg.gate_cap(torch.tensor([keys]))[0].item() == want


def test_ideal_mac_cycles_count_every_slot_in_lockstep_and_kept_keys_in_compact():
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")   # head_dim 8 on 4 lanes: 2 chunks per key
    assert cfg.replace(schedule="lockstep").ideal_mac_cycles(keys=10, kept_keys=3) == 20
    assert cfg.replace(schedule="compact").ideal_mac_cycles(keys=10, kept_keys=3) == 6
