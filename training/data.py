"""Training data: real text nobody here wrote, split by file, tokenized once and cached under build/.

Sources (`DataConfig.source`):

- ``"linux+pydoc"``: Debian's ``linux-source-6.1`` (the kernel's C source and its ``Documentation/``,
  GPL-2.0) and ``python3.11-doc`` (the Python documentation's reStructuredText, PSF). They are
  installed offline by ``apt-get install linux-source-6.1 python3.11-doc`` and never committed; the
  kernel tarball is read as a stream, never unpacked.
- a folder: a user's own text files (``--data PATH``).
- a pack (a ``.tar.xz`` written by `pack`): the split documents and the tokenizer, so a machine
  without the sources rebuilds the identical token streams (the same `Corpus.fingerprint`).

What counts as text: a file whose suffix is in `TEXT_SUFFIXES` (or that has no suffix, such as
``Makefile`` or ``README``, or is a ``Kconfig*``), no larger than ``max_file_bytes``, that decodes as
UTF-8 without a NUL byte; hidden files and folders are skipped. The size limit matters for the kernel:
its largest files are generated register tables (353 MB of files over 1 MB, nearly all amdgpu
``asic_reg`` headers) that would otherwise be a quarter of the training stream.

Split, by file: a document's position is the SHA-1 of its path (relative to the source's root, so
the same on every machine) read as a fraction in [0, 1). Files below ``val_fraction`` are held out,
as prose (suffix in `PROSE_SUFFIXES`: the kernel's ``Documentation/*.rst|txt`` and every Python doc)
or as code (everything else); the rest are training documents. Each split is ordered by that same
hash, which mixes the kernel's subsystems through the stream and makes every limit a prefix: the
first documents whose tokens reach ``train_tokens`` (``val_tokens`` for each held-out split).

Tokenizer: a byte-level BPE of ``vocab_size`` tokens (16384 by default) trained with the `tokenizers`
library on the first ``tokenizer_bytes`` of the training stream only. GPT-2's BPE is not available
offline here; ``cl100k_base``'s 100k vocabulary would make the embedding and the LM head dominate a
small model's parameters and FLOPs; a 16k BPE of code and prose, trained on our own training split,
is deterministic, cached, and its ids fit in uint16 (a vocabulary above 65535 is refused). Every
document ends with the `EOS` token.

Cache: ``<cache>/<source kind>-<key>/`` holds the ordered documents (``<split>.txt`` and
``documents.json``), ``tokenizer.json``, the token streams (``<split>.u16``, uint16) and
``manifest.json``. It is built in a temporary folder and renamed when whole, so a half-written cache
is never used; concurrent runs (DDP ranks) wait on the entry's lock while one of them builds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import mmap
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from hpu.config import ConfigError
from hpu.errors import InputError
from hpu.files import OutputError, output_file, read_json, shared_lock, staged, write_json

FORMAT = 1
BUILTIN = "linux+pydoc"
LINUX_TAR = Path("/usr/src/linux-source-6.1.tar.xz")
PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
INSTALL_HINT = "install them (as root): apt-get install -y linux-source-6.1 python3.11-doc, or run make data"
EOS = "<|endoftext|>"
SPLITS = ("train", "val_code", "val_prose")
PACK_SUFFIX = ".tar.xz"
PACK_MEMBERS = ("manifest.json", "tokenizer.json") + tuple(f"{split}.txt" for split in SPLITS)
TEXT_SUFFIXES = frozenset(
    ".c .h .S .s .asm .rs .cc .cpp .hpp .go .java .js .ts .py .pyi .rb .lua .pl .pm .awk .sh .bash "
    ".y .l .lds .cocci .dts .dtsi .yaml .yml .toml .cfg .conf .ini .mk .cmake .tc .bpf "
    ".rst .txt .md .tex".split())
PROSE_SUFFIXES = frozenset(".rst .txt .md .tex".split())
BATCH_BYTES = 16 << 20  # text handed to one parallel encode_batch_fast call (no offsets): bounds memory


@dataclass(frozen=True)
class DataConfig:
    """What the training text is and how it becomes tokens; the ``[data]`` table of a training TOML.

    Parameters
    ----------
    source : str
        ``"linux+pydoc"`` (the Debian packages), a folder of text files, or a pack written by `pack`.
    vocab_size : int
        Tokens in the byte-level BPE, 257..65535 (the 256 bytes and `EOS`; ids must fit uint16).
    val_fraction : float
        Fraction of files held out for validation, in (0, 0.5].
    train_tokens : int
        Training tokens wanted: the stream stops after the document that reaches it; 0 keeps all.
    val_tokens : int
        The same limit for each held-out split (code, prose); 0 keeps all.
    tokenizer_bytes : int
        Bytes of the training stream's first documents that the BPE learns from.
    max_file_bytes : int
        Larger files are skipped (generated tables).
    cache : str
        Folder of the token caches.
    """

    source: str = BUILTIN
    vocab_size: int = 16384
    val_fraction: float = 0.02
    train_tokens: int = 0
    val_tokens: int = 1_000_000
    tokenizer_bytes: int = 50_000_000
    max_file_bytes: int = 1 << 20
    cache: str = "build/data"

    def __post_init__(self):
        def refuse(name, rule):
            raise ConfigError(f"illegal data configuration: {name} = {getattr(self, name)!r}: {rule}")

        for f in fields(self):
            value = getattr(self, f.name)
            want = {"str": str, "int": int, "float": float}[f.type]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, want) or isinstance(value, bool):
                refuse(f.name, f"must be of type {want.__name__}")
        if not 257 <= self.vocab_size <= 65535:
            refuse("vocab_size", "must lie in 257..65535 (the 256 bytes and EOS; token ids are stored as uint16)")
        if not 0.0 < self.val_fraction <= 0.5:
            refuse("val_fraction", "must lie in (0, 0.5]")
        for name in ("train_tokens", "val_tokens"):
            if getattr(self, name) < 0:
                refuse(name, "must be >= 0 (0 keeps every document)")
        for name in ("tokenizer_bytes", "max_file_bytes"):
            if getattr(self, name) < 1:
                refuse(name, "must be >= 1")
        if not self.source:
            refuse("source", f"must be {BUILTIN!r}, a folder of text files or a pack ({PACK_SUFFIX})")

    def settings(self) -> dict:
        """The fields that decide the token streams, whatever the source is and wherever the cache lives."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("source", "cache")}


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: uint16 token streams, each document followed by `EOS`.

    Attributes
    ----------
    train : numpy.ndarray
        The training stream (a read-only memmap), in the same order on every run and machine.
    val : dict of str to numpy.ndarray
        Held-out files: ``"code"`` and ``"prose"`` (an empty array when the source has none).
    vocab_size, eos_id : int
        The tokenizer's size and the id of `EOS`.
    tokenizer_path : pathlib.Path
        The tokenizer as JSON (``tokenizers.Tokenizer.from_file`` or transformers'
        ``PreTrainedTokenizerFast(tokenizer_file=...)``).
    fingerprint : str
        SHA-256 of everything that decides the streams: the split rule, every document's path and
        content hash in order, the tokenizer and the tokens themselves.
    folder : pathlib.Path
        The cache folder; ``manifest`` is its manifest.json.
    """

    train: np.ndarray
    val: dict
    vocab_size: int
    eos_id: int
    tokenizer_path: Path
    fingerprint: str
    folder: Path
    manifest: dict

    def describe(self) -> str:
        """A few lines for people: each split's files, megabytes and tokens, the fingerprint and the cache."""
        lines = [f"{split:<11} {s['documents']:>7} files {s['bytes'] / 1e6:>9.1f} MB {s['tokens']:>12,} tokens"
                 for split, s in self.manifest["splits"].items()]
        return "\n".join(lines + [f"{'vocab':<11} {self.vocab_size} (EOS id {self.eos_id})",
                                   f"fingerprint {self.fingerprint}", f"{'cache':<11} {self.folder}"])


# -- which files, which split ---------------------------------------------------------------------

def is_text_name(name: str) -> bool:
    """Whether a path names a text file by its name (hidden parts excluded); its content is checked later."""
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    suffix = os.path.splitext(parts[-1])[1]
    return suffix in TEXT_SUFFIXES or not suffix or parts[-1].startswith("Kconfig")


def position(name: str) -> float:
    """A path's place in [0, 1): its SHA-1 read as a fraction (stable across machines and runs)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2.0**64


def split_of(name: str, val_fraction: float) -> str:
    """The split of the document at path `name`: held out below `val_fraction`, as prose or code."""
    if position(name) >= val_fraction:
        return "train"
    return "val_prose" if os.path.splitext(name)[1] in PROSE_SUFFIXES else "val_code"


def _is_text(data: bytes) -> bool:
    """Non-empty UTF-8 without a NUL byte."""
    if not data or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _folder_files(root: Path, prefix: str, max_bytes: int) -> Iterator[tuple[str, Path]]:
    """(name, path) of a folder's candidate text files in sorted order; names are `prefix` + relative path."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            path = Path(folder, file)
            name = prefix + path.relative_to(root).as_posix()
            if is_text_name(name) and path.is_file() and path.stat().st_size <= max_bytes:
                yield name, path


def _documents(cfg: DataConfig) -> Iterator[tuple[str, bytes]]:
    """(name, UTF-8 bytes) of every text document of a builtin or folder source, streamed."""
    if cfg.source == BUILTIN:
        with tarfile.open(LINUX_TAR, "r|xz") as tar:
            for member in tar:
                if member.isfile() and member.size <= cfg.max_file_bytes and is_text_name(member.name):
                    data = tar.extractfile(member).read()
                    if _is_text(data):
                        yield member.name, data
        roots = [(PYDOC, "python3.11-doc/")]
    else:
        roots = [(Path(cfg.source), "")]
    for root, prefix in roots:
        for name, path in _folder_files(root, prefix, cfg.max_file_bytes):
            data = path.read_bytes()
            if _is_text(data):
                yield name, data


# -- the source and its cache key -----------------------------------------------------------------

def _source_kind(cfg: DataConfig) -> str:
    """'builtin', 'folder' or 'pack'; refuses a source that is none of them, in one line."""
    if cfg.source == BUILTIN:
        missing = [str(p) for p in (LINUX_TAR, PYDOC) if not p.exists()]
        if missing:
            raise InputError(f"the {BUILTIN} sources are not installed ({', '.join(missing)} missing): {INSTALL_HINT}")
        return "builtin"
    path = Path(cfg.source)
    if path.is_dir():
        return "folder"
    if path.is_file() and path.name.endswith(PACK_SUFFIX):
        return "pack"
    if path.exists():
        raise InputError(f"data source {path} is neither a folder of text files nor a pack ({PACK_SUFFIX} "
                         "written by training.data.pack): point source at one of those")
    raise InputError(f"data source {path} does not exist: give {BUILTIN!r}, a folder of text files or a pack")


def _read_pack_manifest(path: Path) -> dict:
    """The manifest of a pack, its first member; refuses a file that is not a pack of this format."""
    hint = "make it again with training.data.pack"
    try:
        with tarfile.open(path, "r|xz") as tar:
            member = tar.next()
            if member is None or member.name != "manifest.json" or not member.isfile():
                raise InputError(f"{path} is not a data pack (its first member is not manifest.json): {hint}")
            manifest = json.loads(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"data pack {path} cannot be read ({exc}): {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"data pack {path} is not of format {FORMAT}: {hint}")
    return manifest


def _source_identity(cfg: DataConfig, kind: str) -> dict:
    """What the cache key hashes for the source: cheap to compute, changes when the source does."""
    if kind == "pack":
        return {"pack": _read_pack_manifest(Path(cfg.source))["fingerprint"]}
    if kind == "builtin":
        stat = LINUX_TAR.stat()
        listed = [(LINUX_TAR.name, stat.st_size, stat.st_mtime_ns)]
        roots = [(PYDOC, "python3.11-doc/")]
    else:
        listed = []
        roots = [(Path(cfg.source).resolve(), "")]
    for root, prefix in roots:
        for name, path in _folder_files(root, prefix, cfg.max_file_bytes):
            stat = path.stat()
            listed.append((name, stat.st_size, stat.st_mtime_ns))
    return {"root": str(roots[0][0]), "files": hashlib.sha256(json.dumps(listed).encode()).hexdigest()}


# -- building a cache -----------------------------------------------------------------------------

@contextlib.contextmanager
def _staged_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path`, renamed to `path` when the block completes, removed otherwise."""
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield temp
        os.chmod(temp, 0o755)
        os.replace(temp, path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _progress(progress: bool, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress, leave=False)


def _collect(cfg: DataConfig, folder: Path, progress: bool) -> dict:
    """Write each split's documents in hash order to <split>.txt; returns {split: [[name, bytes, sha1]]}."""
    found = {split: [] for split in SPLITS}
    with contextlib.ExitStack() as stack, _progress(progress, 0, "reading sources") as bar:
        arrivals = {split: stack.enter_context(open(folder / f".{split}.arrival", "wb")) for split in SPLITS}
        for name, data in _documents(cfg):
            split = split_of(name, cfg.val_fraction)
            found[split].append((hashlib.sha1(name.encode()).digest(), name, arrivals[split].tell(), len(data),
                                 hashlib.sha1(data).hexdigest()))
            arrivals[split].write(data)
            bar.update(len(data))
    if not any(found.values()):
        raise InputError(f"data source {cfg.source} holds no text files (suffixes such as .txt .md .rst .py .c, "
                         f"at most max_file_bytes = {cfg.max_file_bytes}): point source at a folder of text files")
    documents = {}
    for split in SPLITS:
        arrival, order = folder / f".{split}.arrival", sorted(found[split])
        with open(folder / f"{split}.txt", "wb") as out:
            if order:
                with open(arrival, "rb") as src, mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    for _, _, offset, length, _ in order:
                        out.write(view[offset:offset + length])
        arrival.unlink()
        documents[split] = [[name, length, digest] for _, name, _, length, digest in order]
    return documents


def _texts(path: Path, documents: list) -> Iterator[str]:
    """The documents of one split's text file, in order."""
    with open(path, "rb") as f:
        for _, length, _ in documents:
            yield f.read(length).decode("utf-8")


def _train_tokenizer(cfg: DataConfig, folder: Path, documents: list, progress: bool) -> None:
    def sample() -> Iterator[str]:
        taken = 0
        for text in _texts(folder / "train.txt", documents):
            if taken >= cfg.tokenizer_bytes:
                return
            taken += len(text.encode())
            yield text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=[EOS], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sample(), trainer)
    tokenizer.save(str(folder / "tokenizer.json"))


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize(folder: Path, split: str, documents: list, limit: int, progress: bool) -> dict:
    """Write <split>.u16 (each document's ids, then EOS) up to the document that reaches `limit` tokens
    (0: all); truncates <split>.txt and `documents` to the documents kept. Returns the split's summary."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = np.array([tokenizer.token_to_id(EOS)], dtype=np.uint16)
    digest, tokens, kept, kept_bytes = hashlib.sha256(), 0, 0, 0
    total = sum(length for _, length, _ in documents)
    with open(folder / f"{split}.u16", "wb") as out, _progress(progress, total, f"tokenizing {split}") as bar:
        for batch in _batches(_texts(folder / f"{split}.txt", documents)):
            for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
                ids = np.concatenate([np.asarray(encoding.ids, dtype=np.uint16), eos]).tobytes()
                out.write(ids)
                digest.update(ids)
                tokens += len(ids) // 2
                kept_bytes += documents[kept][1]
                bar.update(documents[kept][1])
                kept += 1
                if limit and tokens >= limit:
                    break
            if limit and tokens >= limit:
                break
    del documents[kept:]
    os.truncate(folder / f"{split}.txt", kept_bytes)
    return {"documents": kept, "bytes": kept_bytes, "tokens": tokens, "sha256": digest.hexdigest()}


def _fingerprint(cfg: DataConfig, documents: dict, tokenizer_sha: str, splits: dict) -> str:
    rule = {"format": FORMAT, "split": "sha1(path)[:8] / 2**64 < val_fraction held out; order by sha1(path)",
            "prose_suffixes": sorted(PROSE_SUFFIXES), "eos": EOS, **cfg.settings()}
    whole = {"rule": rule, "documents": {split: [[name, digest] for name, _, digest in documents[split]]
                                         for split in SPLITS},
             "tokenizer": tokenizer_sha, "tokens": {split: splits[split]["sha256"] for split in SPLITS}}
    return hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()


def _unpack(path: Path, folder: Path, progress: bool) -> dict:
    """Copy a pack's members into `folder` (by their fixed names only); returns its manifest."""
    with tarfile.open(path, "r|xz") as tar, _progress(progress, 0, "unpacking") as bar:
        for member in tar:
            if member.name not in PACK_MEMBERS or not member.isfile():
                raise InputError(f"data pack {path} holds an unexpected member {member.name!r}: "
                                 "make it again with training.data.pack")
            with tar.extractfile(member) as src, open(folder / member.name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            bar.update(member.size)
    missing = [name for name in PACK_MEMBERS if not (folder / name).is_file()]
    if missing:
        raise InputError(f"data pack {path} lacks {', '.join(missing)}: make it again with training.data.pack")
    manifest = read_json(folder / "manifest.json", "manifest of data pack")
    (folder / "manifest.json").unlink()
    return manifest


def _check_pack(cfg: DataConfig, manifest: dict, folder: Path) -> dict:
    """The pack's documents, checked against its text files and against this configuration."""
    for name, value in manifest["settings"].items():
        if getattr(cfg, name) != value:
            raise ConfigError(f"illegal data configuration: {name} = {getattr(cfg, name)!r}: the pack "
                              f"{cfg.source} was made with {value!r}; set {name} = {value!r} or pack again")
    documents = manifest["documents"]
    for split in SPLITS:
        for text, (name, _, digest) in zip(_texts(folder / f"{split}.txt", documents[split]), documents[split]):
            if hashlib.sha1(text.encode()).hexdigest() != digest:
                raise InputError(f"data pack {cfg.source} is damaged: {name} does not match its hash; copy it again")
    return documents


def _build(cfg: DataConfig, kind: str, folder: Path, progress: bool) -> dict:
    """Fill `folder` with a whole cache; returns its manifest."""
    seconds = {}
    start = time.perf_counter()
    if kind == "pack":
        pack_manifest = _unpack(Path(cfg.source), folder, progress)
        documents = _check_pack(cfg, pack_manifest, folder)
    else:
        documents = _collect(cfg, folder, progress)
    seconds["read"] = time.perf_counter() - start
    if not documents["train"]:
        raise InputError(f"data source {cfg.source} has no training documents: lower val_fraction "
                         f"({cfg.val_fraction}) or add files")
    if not documents["val_code"] and not documents["val_prose"]:
        raise InputError(f"data source {cfg.source} has no held-out documents: raise val_fraction "
                         f"({cfg.val_fraction}) or add files")
    if kind != "pack":
        start = time.perf_counter()
        _train_tokenizer(cfg, folder, documents["train"], progress)
        seconds["tokenizer"] = time.perf_counter() - start
    start = time.perf_counter()
    limits = {"train": cfg.train_tokens, "val_code": cfg.val_tokens, "val_prose": cfg.val_tokens}
    splits = {split: _tokenize(folder, split, documents[split], limits[split], progress) for split in SPLITS}
    seconds["tokenize"] = time.perf_counter() - start
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer_sha = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    manifest = {"format": FORMAT, "fingerprint": _fingerprint(cfg, documents, tokenizer_sha, splits),
                "settings": cfg.settings(), "source": cfg.source, "vocab_size": tokenizer.get_vocab_size(),
                "eos_id": tokenizer.token_to_id(EOS), "eos": EOS, "tokenizer_sha256": tokenizer_sha,
                "splits": splits, "tokenizers": tokenizers.__version__,
                "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    if kind == "pack" and manifest["fingerprint"] != pack_manifest["fingerprint"]:
        raise InputError(f"data pack {cfg.source} tokenizes differently here (tokenizers {tokenizers.__version__}; "
                         f"the pack was made with {pack_manifest['tokenizers']}): install that version")
    write_json(folder / "documents.json", documents)
    write_json(folder / "manifest.json", manifest)
    return manifest


def _stream(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.uint16)


def _load(folder: Path, manifest: dict) -> Corpus:
    return Corpus(train=_stream(folder / "train.u16"),
                  val={"code": _stream(folder / "val_code.u16"), "prose": _stream(folder / "val_prose.u16")},
                  vocab_size=manifest["vocab_size"], eos_id=manifest["eos_id"],
                  tokenizer_path=folder / "tokenizer.json", fingerprint=manifest["fingerprint"],
                  folder=folder, manifest=manifest)


def prepare(cfg: DataConfig, progress: bool = True) -> Corpus:
    """The corpus `cfg` describes, from its cache or built into it (idempotent; safe across processes).

    Parameters
    ----------
    cfg : DataConfig
        The data configuration.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    Corpus
        Memory-mapped token streams, the tokenizer and the fingerprint.
    """
    kind = _source_kind(cfg)
    key = hashlib.sha256(json.dumps({"format": FORMAT, "source": _source_identity(cfg, kind),
                                     "settings": cfg.settings()}, sort_keys=True).encode()).hexdigest()
    folder = Path(cfg.cache) / f"{kind}-{key[:16]}"
    # One lock per cache entry: ranks of one run wait for its build; other entries stay usable meanwhile.
    with shared_lock(folder.parent / ".locks" / folder.name):
        if not (folder / "manifest.json").is_file():
            # Under the lock nobody else is building: leftovers of an interrupted run are garbage.
            for stale in [folder, *folder.parent.glob(f".{folder.name}.*.partial")]:
                shutil.rmtree(stale, ignore_errors=True)
            with _staged_folder(folder) as temp:
                _build(cfg, kind, temp, progress)
    manifest = read_json(folder / "manifest.json", "data cache manifest", f"remove {folder} and run again")
    return _load(folder, manifest)


def pack(cfg: DataConfig, out_path: str | Path, progress: bool = True, preset: int = 9) -> Path:
    """Write one portable ``.tar.xz`` from which `prepare` rebuilds the identical corpus elsewhere.

    The pack holds the manifest (settings, documents with their hashes, the fingerprint), the
    tokenizer and each split's documents in stream order: text, which xz compresses far better than
    tokens. Its bytes depend only on the corpus (no dates, owners or modes).

    Parameters
    ----------
    cfg : DataConfig
        The data configuration (``train_tokens`` bounds the pack's training documents).
    out_path : str or pathlib.Path
        The pack to write; must end in ``.tar.xz``.
    progress : bool
        Show progress bars on stderr.
    preset : int
        xz preset, 0..9.

    Returns
    -------
    pathlib.Path
        `out_path`.
    """
    out_path = Path(out_path)
    if not out_path.name.endswith(PACK_SUFFIX):
        raise OutputError(f"data pack {out_path} must end in {PACK_SUFFIX} (e.g. {out_path.name}{PACK_SUFFIX})")
    output_file(out_path, "data pack")
    corpus = prepare(cfg, progress)
    manifest = dict(corpus.manifest, documents=read_json(corpus.folder / "documents.json", "data cache documents"))

    def add(tar: tarfile.TarFile, name: str, data: io.BufferedIOBase, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        tar.addfile(info, data)

    with staged(out_path) as temp, tarfile.open(temp, "w:xz", preset=preset) as tar:
        text = json.dumps(manifest).encode()
        add(tar, "manifest.json", io.BytesIO(text), len(text))
        for name in PACK_MEMBERS[1:]:
            path = corpus.folder / name
            size = path.stat().st_size
            with tqdm.wrapattr(open(path, "rb"), "read", total=size, desc=f"packing {name}",
                               disable=not progress, leave=False) as f:
                add(tar, name, f, size)
    return out_path
