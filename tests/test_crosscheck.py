"""`hpu crosscheck`: golden model, Verilog under cocotb and the exact kernel agree, and a planted
disagreement is reported with a reproducer naming the odd one out."""

import json

import torch

import gpu_kernels.exact
from hpu.cli import main
from hpu.config import HPUConfig
from sim.crosscheck import crosscheck

from conftest import REPO

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")


def test_three_way_agreement_on_rows_and_routing(seed, tmp_path):
    cfg = SMALL.replace(route_block=24, route_fraction=0.3)
    cells, _ = crosscheck(cfg, ["random", "adversarial", "minilm"], ["mass"], 9, seed, tmp_path / "out",
                          build_root=tmp_path / "build")
    assert [(c.source, c.mode, c.rows, c.agree, c.disagreements) for c in cells] == [
        ("random", "mass", 9, 9, []), ("random", "routing", 9, 9, []),
        ("adversarial", "mass", 9, 9, []), ("adversarial", "routing", 9, 9, []), ("minilm", "mass", 9, 9, [])]


def test_routing_disagreement_names_the_kernel(seed, tmp_path, monkeypatch):
    real = gpu_kernels.exact.route_contract_triton

    def first_token_always(cfg, logits, lengths):
        routed = real(cfg, logits, lengths)
        routed[1, 0] = ~routed[1, 0]
        return routed

    monkeypatch.setattr(gpu_kernels.exact, "route_contract_triton", first_token_always)
    cfg = SMALL.replace(route_block=24, route_fraction=0.3)
    cells, _ = crosscheck(cfg, ["random"], ["topk"], 3, seed, tmp_path / "out", build_root=tmp_path / "build")
    routing = cells[-1]
    assert (routing.mode, routing.agree, len(routing.disagreements)) == ("routing", 2, 1)
    record = json.loads(routing.disagreements[0].read_text())
    assert (record["disagrees"], record["block_index"]) == ("kernel", 1)


def test_disagreement_names_the_odd_one_out(seed, tmp_path, monkeypatch, capsys):
    real = gpu_kernels.exact.run_contract_triton

    def off_by_one(cfg, *args, **kwargs):
        result = real(cfg, *args, **kwargs)
        result["z_kept"] = result["z_kept"] + torch.nn.functional.one_hot(
            torch.tensor(2), len(result["z_kept"])).to(result["z_kept"])
        return result

    monkeypatch.setattr(gpu_kernels.exact, "run_contract_triton", off_by_one)
    code = main(["crosscheck", "--config", f"{REPO}/configs/small.toml", "--source", "random", "--modes", "topk",
                 "--rows", "4", "--seed", str(seed), "--build", str(tmp_path / "build"), "-o", str(tmp_path / "o")])
    assert code == 1
    report = json.loads((tmp_path / "o" / "crosscheck.json").read_text())
    [cell] = report["cells"]
    assert (cell["agree"], len(cell["disagreements"])) == (3, 1)
    reproducer = json.loads(open(cell["disagreements"][0]).read())
    assert reproducer["disagrees"] == "kernel" and reproducer["row_index"] == 2
    assert "disagreement-random-topk-row2.json" in capsys.readouterr().err
