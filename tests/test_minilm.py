"""The gate inside the real all-MiniLM-L6-v2."""

import json

import pytest
import torch

from golden_model.minilm import LinearRouter, MiniLM
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


# -- a fitted router (training/minilm_router.py) ----------------------------------------------------------

def test_a_fitted_router_routes_the_top_k_of_its_own_scores(model, tmp_path):
    """A LinearRouter's file reloads exactly; routing by it is the top-k of its scores of each layer's
    hidden state: all scores equal, the first tokens (ties to the earlier token), on both paths; any
    scores, the routed rows the golden order picks from them."""
    from golden_model.minilm import load_router
    from golden_model.routing import route_topk, routed_mask

    weight = torch.randn(model.layers, model.hidden_size, generator=torch.Generator().manual_seed(3))
    LinearRouter(weight, 0.5).save(tmp_path / "router.npz")
    router = load_router(tmp_path / "router.npz")
    assert torch.equal(router.weight, weight) and router.route_fraction == 0.5
    tied = LinearRouter(torch.zeros_like(weight), 0.5)
    text = TEXTS[0]
    n = model.token_count(text)
    for path_name in ("float", "fixed"):
        run = model.run(text, CFG.replace(mode="dense"), path_name, trace=True, route_fraction=0.5, router=tied)
        for layer in run.layers:
            assert (layer.kept[0, 0] > 0).tolist() == [i < (n + 1) // 2 for i in range(n)]
    chosen = []

    def rows(layer, hidden):
        chosen.append(routed_mask(route_topk(router.logits(layer, hidden), 0.5), hidden.shape[1]))
        return chosen[-1]

    want = torch.nn.functional.normalize(model.hidden(text, rows).mean(0), dim=0)
    run = model.run(text, route_fraction=0.5, router=router, trace=False)
    assert torch.allclose(run.embedding, want, atol=1e-6) and len(chosen) == model.layers
    assert not torch.equal(chosen[0], routed_mask(route_topk(torch.zeros(1, n), 0.5), n))


def test_two_minilms_keep_their_own_router(model):
    """transformers holds one attention function per name: a second MiniLM must not take over the
    first one's routing (each attention module names its own MiniLM)."""
    dense = model.run(TEXTS[0]).embedding
    MiniLM()
    assert float(torch.dot(model.run(TEXTS[0], route_fraction=0.2).embedding, dense)) < 0.99


def _npz(path, **arrays):
    import numpy as np

    np.savez(path, **arrays)


def _write(content):
    return lambda path: path.write_bytes(content)


@pytest.mark.parametrize("make, message", [
    (None, "does not exist: fit one"),
    (lambda p: _npz(p, weight=torch.zeros(6, 384).numpy()), "is not a router file"),
    (lambda p: _npz(p, weight=torch.zeros(5, 384).numpy(), route_fraction=0.5), r"weight \(5, 384\)"),
    (lambda p: _npz(p, weight=torch.full((6, 384), float("nan")).numpy(), route_fraction=0.5), "not finite"),
    (lambda p: _npz(p, weight=torch.full((6, 384), 1e300, dtype=torch.float64).numpy(), route_fraction=0.5),
     "not finite in float32"),
    (lambda p: _npz(p, weight=torch.zeros(6, 384).numpy(), route_fraction=1.5), r"outside \(0, 1\]"),
    (lambda p: _npz(p, weight=torch.zeros(6, 384).numpy(), route_fraction="abc"), "must be real numbers"),
    (lambda p: _npz(p, weight=torch.zeros(6, 384, dtype=torch.complex64).numpy(), route_fraction=0.5),
     "must be real numbers"),
    (lambda p: __import__("numpy").savez(p, weight=__import__("numpy").array([object()]), route_fraction=0.5),
     "is not a router file"),
    (lambda p: __import__("numpy").save(open(p, "wb"), torch.zeros(6, 384).numpy()), "is not a router file"),
    (_write(b""), "is not a router file"), (_write(b"PK\x03\x04 truncated"), "is not a router file"),
    (lambda p: p.mkdir(), "is not a router file")])
def test_a_bad_router_file_is_refused_in_one_line(tmp_path, make, message):
    from hpu.errors import InputError

    path = tmp_path / "router.npz"
    if make is not None:
        make(path)
    with pytest.raises(InputError, match=message) as caught:
        LinearRouter.load(path, 6, 384)
    assert "\n" not in str(caught.value)


def test_the_straight_through_row_scale_is_the_top_k_with_a_gradient_for_every_token():
    """In value exactly the top-k's 0/1; in gradient a sigmoid of the scores' standardized distance to
    the midpoint between the last routed and first unrouted score, the same at any scale of the
    scores, and reaching every token."""
    from training.minilm_router import TEMPERATURE, straight_through

    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    grads = []
    for scale in (1.0, 10.0):
        logits = (torch.tensor([[0.5, 3.0, -1.0, 2.0, 0.0]]) * scale).requires_grad_()
        rows = straight_through(logits, 0.4)
        assert torch.equal(rows, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]))
        (rows * weights).sum().backward()
        z = (logits - logits.mean()) / (logits.std() + 1e-6)
        middle = (z[0, 3] + z[0, 0]).detach() / 2   # between the last routed (2.0) and first unrouted (0.5)
        (want,) = torch.autograd.grad((torch.sigmoid((z - middle) / TEMPERATURE) * weights).sum(), logits)
        assert torch.allclose(logits.grad, want) and (logits.grad != 0).all()
        grads.append(logits.grad * scale)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4)


def test_fitting_a_router_brings_the_routed_embedding_closer_to_the_dense_one(model):
    """A few steps on two texts, MiniLM frozen: the fitted router's embeddings of those texts are closer
    to the dense model's than those of the router it started from, and the model's weights are
    unchanged."""
    from training.minilm_router import fit, start

    texts = [TEXTS[5], TEXTS[30]]
    before = {name: p.clone() for name, p in model.model.named_parameters()}
    fitted, losses = fit(texts, 0.2, 30, lr=3e-2, seed=1, model=model)
    begun = start(model, 0.2, seed=1)
    assert len(losses) == 30 and all(torch.equal(p, before[n]) for n, p in model.model.named_parameters())

    def distance(router):
        return sum(1 - float(torch.dot(model.run(t, route_fraction=0.2, router=router).embedding,
                                       model.run(t).embedding)) for t in texts)

    assert distance(fitted) < distance(begun)


def test_paragraphs_are_prose_without_markup_code_or_the_judging_texts(tmp_path):
    from hpu.errors import InputError
    from training.minilm_router import MIN_CHARS, paragraphs

    prose = ("The :func:`open` call returns a ``file object``; see `the tutorial\n<tut.html>`_ and **bold** "
             "words, 2 * 3 and *args. ")
    prose = (prose * (2 * MIN_CHARS // len(prose) + 1)).strip()
    judging = next(t for t in TEXTS if MIN_CHARS <= len(t) <= 700 and "\n" not in t)
    (tmp_path / "doc.rst.txt").write_text("\n\n".join([
        "Title\n=====", prose, "Code::\n\n   x = 1", ".. note::\n   A note", "short", judging]))
    (got,) = paragraphs(tmp_path, 1)
    assert got.startswith("The open call returns a file object; see the tutorial and bold words, 2 * 3 and *args.")
    with pytest.raises(InputError, match="holds 1 prose paragraphs"):
        paragraphs(tmp_path, 2)


def test_fit_minilm_router_command_writes_a_router_that_quality_runs_beside_the_norm(tmp_path, capsys,
                                                                                     monkeypatch):
    """`hpu fit-minilm-router` writes router.npz and fit.json; `quality.evaluate` runs every routed
    setting by the norm and by that router (the fitted rows are the runs by it), and `hpu quality
    --router` hands the file through and names it in quality.json."""
    from golden_model import quality
    from training.minilm_router import MIN_CHARS

    text = "Routing picks which tokens attend in each layer of the encoder, and the rest keep their state. "
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("\n\n".join((f"{i}. " + text * (MIN_CHARS // len(text) + 1)).strip()
                                                          for i in range(3)))
    assert main(["fit-minilm-router", "--route-fraction", "0.5", "--steps", "3", "--texts", "3", "--text",
                 str(tmp_path / "text"), "-o", str(tmp_path / "fit"), "--quiet"]) == 0
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["route_fraction"] == 0.5 and fit["steps"] == 3 and fit["curve"] == [] and fit["temperature"] == 0.5
    path = tmp_path / "fit" / "router.npz"
    texts = TEXTS[:2]
    dense = CFG.replace(mode="dense")
    model = MiniLM()
    router = LinearRouter.load(path, model.layers, model.hidden_size)
    rows = quality.evaluate(CFG, [(dense, 1.0), (dense, 0.5)], texts=texts, progress=False, router=router)
    assert [(r.path, r.route_fraction, r.router) for r in rows] == [
        ("float", 1.0, "-"), ("fixed", 1.0, "-"), ("float", 0.5, "norm"), ("fixed", 0.5, "norm"),
        ("float", 0.5, "fitted"), ("fixed", 0.5, "fitted")]
    want = [float(torch.dot(model.run(t, dense, "float", route_fraction=0.5, router=router).embedding.double(),
                            model.run(t).embedding.double())) for t in texts]
    assert rows[4].embedding_cos_mean == pytest.approx(sum(want) / 2, abs=1e-9)
    assert rows[4].embedding_cos_mean != rows[2].embedding_cos_mean
    handed = {}
    monkeypatch.setattr(quality, "evaluate", lambda *a, router=None, **k: handed.setdefault("router", router) and rows)
    assert main(["quality", "--config", f"{REPO}/configs/minilm.toml", "--route-fraction", "0.5", "--router",
                 str(path), "-o", str(tmp_path / "q"), "--quiet"]) == 0
    assert torch.equal(handed["router"].weight, router.weight) and " fitted " in capsys.readouterr().out
    import hashlib

    assert json.loads((tmp_path / "q" / "quality.json").read_text())["router"] == {
        "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # A bad router file is refused before the report folder is claimed: the earlier report stays.
    assert main(["quality", "--config", f"{REPO}/configs/minilm.toml", "--router", str(tmp_path / "no.npz"),
                 "-o", str(tmp_path / "q"), "--quiet"]) == 2
    assert (tmp_path / "q" / "quality.json").exists()
    # So is a router with nothing to route, and text that is not a folder.
    assert main(["quality", "--config", f"{REPO}/configs/minilm.toml", "--route-fraction", "--router", str(path),
                 "-o", str(tmp_path / "q"), "--quiet"]) == 2
    assert "no setting routes" in capsys.readouterr().err and (tmp_path / "q" / "quality.json").exists()
    assert main(["fit-minilm-router", "--text", str(path), "-o", str(tmp_path / "fit2"), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
