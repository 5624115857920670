"""The gate inside the real all-MiniLM-L6-v2."""

import json

import pytest
import torch

from golden_model.minilm import MiniLM
from golden_model.texts import TEXTS
from hpu.cli import main
from hpu.config import HPUConfig

from conftest import REPO

CFG = HPUConfig.load(f"{REPO}/configs/minilm.toml")


@pytest.fixture(scope="module")
def model():
    return MiniLM()


def test_texts_are_varied_and_long_enough(model):
    lengths = [model.token_count(t) for t in TEXTS]
    assert len(TEXTS) >= 50
    assert min(lengths) < 12 and max(lengths) > 256
    assert max(lengths) <= CFG.max_keys


def test_dense_gate_reproduces_the_unmodified_model(model):
    from transformers import AutoModel

    stock = AutoModel.from_pretrained(model.model.name_or_path).eval()
    for text in (TEXTS[0], TEXTS[-1]):
        inputs = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = stock(**inputs).last_hidden_state[0]
        want = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        got = model.run(text, CFG.replace(mode="dense"), "float").embedding
        assert torch.dot(want, got).item() == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(want, got, atol=1e-5)


@pytest.mark.parametrize("text", [TEXTS[5], TEXTS[45], TEXTS[-2]], ids=["short", "medium", "long"])
def test_fixed_point_tracks_float_on_real_attention_rows(model, text):
    """Real MiniLM rows through both paths, layer by layer, on the same q, k, v.

    Bounds (errors in units of the head's largest |v|): dense, every element
    within 0.06 and the mean below 0.005, mean row cosine above 0.99; mass, mean
    element error below 0.01 and mean row cosine above 0.98. A single row's
    cosine is no bound: a row whose output nearly cancels to zero has an
    ill-conditioned direction.
    """
    from golden_model.reference import fixed_point_attention, mass_gated_attention

    for layer in model.run(text, trace=True).layers:
        for mode in ("dense", "mass"):
            cfg = CFG.replace(mode=mode)
            ref = mass_gated_attention(layer.q.double(), layer.k.double(), layer.v.double(), cfg)
            fix = fixed_point_attention(layer.q, layer.k, layer.v, cfg)
            err = (ref.out - fix.out).abs() / layer.v.abs().amax(dim=(-2, -1), keepdim=True)
            cos = torch.nn.functional.cosine_similarity(ref.out, fix.out, dim=-1).mean()
            if mode == "dense":
                assert err.max() < 0.06 and err.mean() < 0.005 and cos > 0.99, (err.max(), err.mean(), cos)
            else:
                assert err.mean() < 0.01 and cos > 0.98, (err.mean(), cos)


def test_gated_model_stays_close_and_keeps_less(model):
    cfg = CFG.replace(permeability=0.5, mass_target=0.9)
    dense = model.run(TEXTS[-1])
    for path in ("float", "fixed"):
        run = model.run(TEXTS[-1], cfg, path, trace=True)
        kept = sum(int(layer.kept.sum()) for layer in run.layers)
        admissible = sum(int(layer.admissible.sum()) for layer in run.layers)
        assert kept / admissible <= 0.5 + 1e-9
        assert torch.dot(run.embedding, dense.embedding) > 0.95


def test_wrong_head_dim_is_refused(model):
    with pytest.raises(ValueError, match="MiniLM heads are 32 wide"):
        model.run(TEXTS[0], HPUConfig(), "float")


def test_quality_command_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["quality", "--config", f"{REPO}/configs/minilm.toml", "--permeability", "0.5",
                 "--mass-target", "0.9", "--route-fraction", "0.5", "-o", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "emb cos mean" in out and str(tmp_path / "quality.png") in out
    report = json.loads((tmp_path / "quality.json").read_text())
    rows = {(r["path"], r["mode"], r["route_fraction"]): r for r in report["rows"]}
    assert set(rows) == {(p, m, r) for p in ("float", "fixed") for m in ("dense", "mass") for r in (1.0, 0.5)}
    assert rows["float", "dense", 1.0]["embedding_cos_min"] > 0.99999
    assert rows["float", "dense", 1.0]["kept_fraction"] == 1.0
    assert rows["float", "mass", 1.0]["kept_fraction"] <= 0.5
    # Routing half the queries keeps every key of about half the rows (ceil of half of each text's
    # tokens); the gate on the routed rows keeps fewer; routing costs quality.
    routed = rows["float", "dense", 0.5]
    assert 0.5 <= routed["kept_fraction"] <= 0.6
    assert rows["float", "mass", 0.5]["kept_fraction"] < routed["kept_fraction"]
    assert routed["embedding_cos_mean"] < rows["float", "dense", 1.0]["embedding_cos_mean"]
    assert (tmp_path / "quality.png").stat().st_size > 10000


def test_routing_every_token_is_the_dense_model(model):
    """A route fraction of 1 routes every query: the forward pass is the dense model's."""
    dense = model.run(TEXTS[0])
    routed = model.run(TEXTS[0], route_fraction=1.0)
    assert torch.allclose(routed.embedding, dense.embedding, atol=1e-6)


def test_fixed_path_routes_by_the_hpus_integer_step():
    """The fixed path's router quantizes the logits to route_bits and applies the contract's routing step:
    on well-separated logits it picks what the float router picks; where quantization merges logits, ties
    go to the earlier token, as the HPU's router decides them."""
    from golden_model.minilm import _router

    cfg = HPUConfig.load(f"{REPO}/configs/minilm.toml")
    logits = torch.tensor([[3.0, 9.0, 1.0, 7.0, 5.0, 8.0, 2.0, 6.0]])
    fixed, floating = _router("fixed", cfg, 0.5)(logits), _router("float", cfg, 0.5)(logits)
    assert torch.equal(fixed, floating) and fixed[0].tolist() == [False, True, False, True, False, True, False, True]
    close = torch.tensor([[1.0, 1.0 + 1e-6, 0.5, 0.25]])   # apart in float32, one code of 16 bits apart they are not
    assert _router("fixed", cfg, 0.25)(close)[0].tolist() == [True, False, False, False]
    assert _router("float", cfg, 0.25)(close)[0].tolist() == [False, True, False, False]
