"""The training data pipeline on a small folder of text the test writes itself (no Debian sources)."""

import io
import json
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tokenizers import Tokenizer

from hpu.config import ConfigError
from hpu.errors import InputError
from hpu.files import OutputError, output_file
from training.data import EOS, PACK_SUFFIX, DataConfig, Corpus, pack, position, prepare, split_of

WORDS = ("the gate keeps keys until the mass target is reached and drops the rest so lanes stay silent "
         "energy attention query value row permeability").split()
CODE = ("static int {f}(struct hpu *h, int n)\n{{\n\tint i, acc = 0;\n\n\tfor (i = 0; i < n; i++)\n"
        "\t\tacc += h->lane[i] * {k};\n\treturn acc;\n}}\n")


def write_folder(root, files=60):
    """Prose (.md, .rst) and C files, plus files that must be skipped: binary, hidden, empty, unknown suffix."""
    rng = random.Random(1)
    for i in range(files):
        if i % 3:
            text = "".join(CODE.format(f=f"fn_{i}_{j}", k=rng.randrange(100)) for j in range(1 + i % 4))
            path = root / "src" / f"unit_{i}.c"
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(80 + 10 * i)) + ".\n"
            path = root / "docs" / f"page_{i}.{'md' if i % 2 else 'rst'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "logo.c").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "empty.txt").write_text("")
    (root / "table.json").write_text('{"a": 1}\n')
    return root


def small(source, cache, **overrides):
    settings = dict(vocab_size=300, val_fraction=0.25, val_tokens=0, tokenizer_bytes=100_000)
    return DataConfig(source=str(source), cache=str(cache), **(settings | overrides))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def corpus(folder, tmp_path_factory) -> Corpus:
    return prepare(small(folder, tmp_path_factory.mktemp("cache")), progress=False)


def documents(corpus):
    return json.loads((corpus.folder / "documents.json").read_text())


def test_split_is_by_file_stable_and_skips_non_text(corpus):
    docs = documents(corpus)
    names = {split: [name for name, _, _ in docs[split]] for split in docs}
    every = sum(names.values(), [])
    assert len(every) == len(set(every)) == 60
    assert not any(name in ("logo.c", "empty.txt", "table.json") or name.startswith(".") for name in every)
    for split, listed in names.items():
        assert all(split_of(name, 0.25) == split for name in listed)
    assert all(name.startswith("docs/") for name in names["val_prose"])
    assert all(name.startswith("src/") for name in names["val_code"])
    # The rule is a hash of the path alone: fixed values, the same on every machine.
    assert position("src/unit_1.c") == 0.25676813056020814 and split_of("src/unit_1.c", 0.25) == "train"
    assert [split_of(f"docs/page_{i}.md", 0.25) for i in (3, 9, 15)] == ["val_prose", "train", "val_prose"]
    assert (len(names["train"]), len(names["val_code"]), len(names["val_prose"])) == (38, 14, 8)


def test_streams_are_documents_each_followed_by_eos(corpus, folder):
    tokenizer = Tokenizer.from_file(str(corpus.tokenizer_path))
    assert corpus.eos_id == tokenizer.token_to_id(EOS) == 0
    assert corpus.vocab_size == 300 and corpus.train.dtype == np.uint16
    docs = documents(corpus)
    for split, stream in (("train", corpus.train), ("val_code", corpus.val["code"]),
                          ("val_prose", corpus.val["prose"])):
        expected = []
        for name, _, _ in docs[split]:
            expected += tokenizer.encode((folder / name).read_text()).ids + [corpus.eos_id]
        assert stream.tolist() == expected
        assert int(np.count_nonzero(stream == corpus.eos_id)) == len(docs[split])
    text = tokenizer.decode(corpus.train[: int(np.argmax(corpus.train == corpus.eos_id))].tolist())
    assert text == (folder / docs["train"][0][0]).read_text()


def test_describe_names_every_split(corpus):
    lines = corpus.describe().splitlines()
    assert [line.split()[0] for line in lines] == ["train", "val_code", "val_prose", "vocab", "fingerprint", "cache"]
    assert lines[0].split()[5] == f"{len(corpus.train):,}"
    assert lines[4] == f"fingerprint {corpus.fingerprint}"


def test_transformers_reads_the_tokenizer(corpus):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(corpus.tokenizer_path), eos_token=EOS)
    text = "static int acc = 0;\n\tthe gate keeps keys"
    assert fast(text)["input_ids"] == Tokenizer.from_file(str(corpus.tokenizer_path)).encode(text).ids
    assert fast.eos_token_id == corpus.eos_id


def test_prepare_is_cached_and_deterministic(corpus, folder, tmp_path):
    again = prepare(small(folder, corpus.folder.parent), progress=False)
    assert again.folder == corpus.folder and again.fingerprint == corpus.fingerprint
    fresh = prepare(small(folder, tmp_path / "other"), progress=False)
    assert fresh.fingerprint == corpus.fingerprint
    assert (fresh.folder / "tokenizer.json").read_bytes() == corpus.tokenizer_path.read_bytes()
    other = prepare(small(folder, tmp_path / "other", val_fraction=0.3), progress=False)
    assert other.fingerprint != corpus.fingerprint and other.folder != fresh.folder


def test_token_limit_keeps_a_prefix_of_whole_documents(corpus, folder, tmp_path):
    limited = prepare(small(folder, tmp_path, train_tokens=1000, val_tokens=200), progress=False)
    cut = int(np.flatnonzero(corpus.train == corpus.eos_id)[np.searchsorted(
        np.flatnonzero(corpus.train == corpus.eos_id), 999)]) + 1
    assert limited.train.tolist() == corpus.train[:cut].tolist()
    assert len(limited.train) >= 1000 and len(limited.val["code"]) >= 200
    assert limited.train[-1] == limited.eos_id
    assert (limited.folder / "train.txt").stat().st_size == limited.manifest["splits"]["train"]["bytes"]


def test_pack_round_trip_gives_the_same_tokens_and_fingerprint(folder, tmp_path):
    cfg = small(folder, tmp_path / "here", train_tokens=1500)
    here = prepare(cfg, progress=False)
    out = pack(cfg, tmp_path / "data.tar.xz", progress=False)
    with tarfile.open(out) as tar:
        assert tar.getnames()[0] == "manifest.json"
    packed = DataConfig(**(vars(cfg) | {"source": str(out), "cache": str(tmp_path / "there")}))
    there = prepare(packed, progress=False)
    assert there.fingerprint == here.fingerprint and there.folder.name.startswith("pack-")
    assert there.train.tolist() == here.train.tolist()
    for part in ("code", "prose"):
        assert there.val[part].tolist() == here.val[part].tolist()
    assert there.tokenizer_path.read_bytes() == here.tokenizer_path.read_bytes()
    # The pack's own bytes depend only on the corpus.
    assert pack(cfg, tmp_path / "again.tar.xz", progress=False).read_bytes() == out.read_bytes()
    with pytest.raises(ConfigError, match=r"^illegal data configuration: train_tokens = 0: the pack .* was made "
                                          r"with 1500; set train_tokens = 1500 or pack again$"):
        prepare(DataConfig(**(vars(packed) | {"train_tokens": 0})), progress=False)


def test_concurrent_prepares_build_once(folder, tmp_path):
    cfg = small(folder, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: prepare(cfg, progress=False), range(2)))
    assert results[0].fingerprint == results[1].fingerprint
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [results[0].folder.name]


def test_no_half_written_cache_is_used(folder, tmp_path):
    cfg = small(folder, tmp_path)
    done = prepare(cfg, progress=False)
    partial = tmp_path / f".{done.folder.name}.x.partial"
    partial.mkdir()
    (done.folder / "manifest.json").unlink()
    again = prepare(cfg, progress=False)
    assert again.fingerprint == done.fingerprint and not partial.exists()


@pytest.mark.parametrize("field, value, rule", [
    ("vocab_size", 65536, "must lie in 257..65535"),
    ("vocab_size", 100, "must lie in 257..65535"),
    ("val_fraction", 0.0, r"must lie in \(0, 0.5\]"),
    ("val_fraction", 0.9, r"must lie in \(0, 0.5\]"),
    ("train_tokens", -1, "must be >= 0"),
    ("tokenizer_bytes", 0, "must be >= 1"),
    ("vocab_size", "16k", "must be of type int"),
    ("val_fraction", True, "must be of type float"),
])
def test_bad_values_are_refused_in_one_line(field, value, rule):
    with pytest.raises(ConfigError, match=rf"^illegal data configuration: {field} = {value!r}: {rule}"):
        DataConfig(**{field: value})


def test_damaged_pack_is_refused_in_one_line(folder, tmp_path):
    cfg = small(folder, tmp_path / "here")
    good = pack(cfg, tmp_path / "good.tar.xz", progress=False)
    bad = tmp_path / "bad.tar.xz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:xz") as out:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "train.txt":
                data = data.replace(b"acc", b"ACC", 1)
            out.addfile(member, io.BytesIO(data))
    with pytest.raises(InputError, match=r"^data pack .*bad.tar.xz is damaged: .* does not match its hash; copy it again$"):
        prepare(DataConfig(**(vars(cfg) | {"source": str(bad), "cache": str(tmp_path / "there")})), progress=False)
    assert not list((tmp_path / "there").glob("*-*"))


def test_bad_sources_are_refused_in_one_line(tmp_path):
    binary = tmp_path / "only_binary"
    binary.mkdir()
    (binary / "blob.c").write_bytes(b"\0\1\2")
    (binary / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"^data source .*only_binary holds no text files \(suffixes such as "):
        prepare(small(binary, tmp_path / "cache"), progress=False)
    assert not list((tmp_path / "cache").glob("*-*"))
    with pytest.raises(InputError, match=r"^data source .*missing does not exist: give 'linux\+pydoc', a folder"):
        prepare(small(tmp_path / "missing", tmp_path / "cache"), progress=False)
    fake = tmp_path / "fake.tar.xz"
    fake.write_bytes(b"not xz")
    with pytest.raises(InputError, match=r"^data pack .*fake.tar.xz cannot be read \(.*\): make it again"):
        prepare(small(fake, tmp_path / "cache"), progress=False)
    with pytest.raises(OutputError, match=r"^data pack .*data.zip must end in .tar.xz \(e.g. data.zip.tar.xz\)$"):
        pack(small(binary, tmp_path / "cache"), tmp_path / "data.zip", progress=False)
    # The CLI checks the name before tokenizing; a suffix of two dots is one ending, not Path.suffix.
    assert output_file(tmp_path / "d.tar.xz", "data pack", suffix=PACK_SUFFIX) == tmp_path / "d.tar.xz"
    with pytest.raises(OutputError, match=r"^data pack .*d\.xz must end in .tar.xz \(e.g. .*d\.xz\.tar\.xz\)$"):
        output_file(tmp_path / "d.xz", "data pack", suffix=PACK_SUFFIX)
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("a single file lands in one split\n")
    with pytest.raises(InputError, match=r"^data source .*one has no (training|held-out) documents: "):
        prepare(small(one, tmp_path / "cache"), progress=False)


def test_missing_debian_sources_are_refused_in_one_line(tmp_path, monkeypatch):
    import training.data

    monkeypatch.setattr(training.data, "LINUX_TAR", tmp_path / "linux-source-6.1.tar.xz")
    # The Python docs may be missing too on a machine without `make data`: the message then names both.
    with pytest.raises(InputError, match=r"^the linux\+pydoc sources are not installed \(.*linux-source-6.1.tar.xz"
                                         r"(, \S+)? missing\): install them \(as root\): apt-get install -y linux-source-6.1 "
                                         r"python3.11-doc, or run make data$"):
        prepare(DataConfig(cache=str(tmp_path)), progress=False)
