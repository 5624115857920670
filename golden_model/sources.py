"""Stimulus sources by name: random rows, adversarial rows, and real attention rows of all-MiniLM-L6-v2."""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import torch

from golden_model.quantize import (attention_scores, clipped_rows, quantize_logits, quantize_scores, quantize_values,
                                   row_tops)
from golden_model.source_names import FILE_SUFFIXES, SOURCES
from golden_model.stimulus import Row, adversarial_rows, random_blocks, random_rows
from hpu.config import HPUConfig
from hpu.errors import InputError

# Rows are held in memory as Python integers (and as the job file the testbench reads): a run's rows
# may hold at most this many value elements at full length, about 2 GB of Python objects.
MAX_RUN_VALUES = 1 << 25


def max_rows(cfg: HPUConfig) -> int:
    """The most rows one run takes: MAX_RUN_VALUES over a full row's max_keys * head_dim values."""
    return max(1, MAX_RUN_VALUES // (cfg.max_keys * cfg.head_dim))


def check_row_count(cfg: HPUConfig, count: int) -> None:
    if not 1 <= count <= max_rows(cfg):
        raise InputError(f"--rows {count}: a run takes 1..{max_rows(cfg)} rows of this configuration "
                         f"(max_keys x head_dim = {cfg.max_keys * cfg.head_dim} values per row); "
                         "split more rows into several runs")


def head_rows(scores: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, cfg: HPUConfig,
              picks: list[tuple[int, int]], window: int = 0) -> list[Row]:
    """HPU rows from float attention: scores (S, Q, N) = q.k / sqrt(d) per head set S and query row Q,
    values (S, N, D), lengths (S, Q) admissible keys per row (a prefix: causal rows are shorter).

    One row per (set, query) of `picks`: its first min(length, max_keys) keys, or with `window` W
    (at most max_keys) its last min(length, W), a causal row's nearest keys; scores quantized to
    score_bits, values quantized per row with the golden model's quantizers. Heads narrower than
    head_dim continue with the next set's columns (wrapping), wider ones are cut."""
    wide = values.transpose(0, 1).reshape(values.shape[1], -1)      # (N, S * D)
    rows: list[Row] = []
    for s, q in picks:
        length = int(lengths[s, q])
        keys = slice(max(0, length - window), length) if window else slice(0, min(length, cfg.max_keys))
        columns = (torch.arange(cfg.head_dim) + s * values.shape[-1]) % wide.shape[1]
        quantized, _ = quantize_values(wide[keys, columns], cfg)
        row_scores = quantize_scores(scores[s, q, keys], cfg)
        rows.append(Row(tuple(row_scores.tolist()), tuple(map(tuple, quantized.tolist()))))
    return rows


def random_picks(scores: torch.Tensor, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """`count` (set, query) rows of (S, Q, N) scores drawn at random."""
    return [(rng.randrange(scores.shape[0]), rng.randrange(scores.shape[1])) for _ in range(count)]


def minilm_rows(cfg: HPUConfig, count: int, rng: random.Random, long: bool = False) -> list[Row]:
    """Real attention rows of all-MiniLM-L6-v2: one query row of one head of one layer per HPU row.

    ``long=False``: the built-in texts one at a time (rows of a few to a few hundred keys, most of a
    few dozen). ``long=True``: texts joined into passages of LONG_MIN_TOKENS..min(max_keys, MINILM_MAX_TOKENS) tokens, so every
    row has that many keys: the workload where attention is expensive."""
    from golden_model.minilm import MiniLM
    from golden_model.texts import TEXTS

    model = MiniLM()
    texts = list(TEXTS)
    rng.shuffle(texts)
    passages = _passages(model, texts, cfg, rng) if long else texts
    rows: list[Row] = []
    # One row per layer and passage, cycling through the passages.
    while len(rows) < count:
        for text in passages:
            for layer in model.run(text, trace=True).layers:
                scores = attention_scores(layer.q, layer.k)[0]            # (H, N, N)
                lengths = torch.full(scores.shape[:2], scores.shape[-1])
                rows += head_rows(scores, layer.v[0], lengths, cfg, random_picks(scores, 1, rng))
                if len(rows) == count:
                    return rows
    return rows


LONG_MIN_TOKENS = 128
MINILM_MAX_TOKENS = 512


def _passages(model, texts: list[str], cfg: HPUConfig, rng: random.Random) -> list[str]:
    top = min(cfg.max_keys, MINILM_MAX_TOKENS)
    if top < LONG_MIN_TOKENS:
        raise InputError(f"the minilm-long source makes rows of {LONG_MIN_TOKENS}..{MINILM_MAX_TOKENS} keys; "
                         f"max_keys = {cfg.max_keys} cannot hold one")
    passages: list[str] = []
    for _ in range(8):
        target = rng.randint(LONG_MIN_TOKENS, top)
        # Each passage opens with a text of its own, then takes texts at random until long enough.
        words = texts[len(passages) % len(texts)].split()
        while model.token_count(" ".join(words)) < target:
            words += rng.choice(texts).split()
        while model.token_count(" ".join(words)) > top:
            words.pop()
        passages.append(" ".join(words))
    return passages


# Attention files are read whole into memory and their scores and values converted to float64: this
# bounds the elements a file may hold (2 GiB as float64), checked before any data is read, so a small
# compressed archive cannot ask for more memory than a workstation has.
MAX_FILE_ELEMENTS = 1 << 28
ARRAY_KINDS = {"scores": "float", "values": "float", "lengths": "int", "router": "float"}
# Given to the functions that read an attention file, called with its `clipping` figures: computed
# from the arrays read for the rows, so that a caller reporting them reads a file of up to 2 GiB once.
Clipped = Callable[[float, float], None]


def file_rows(path: Path, cfg: HPUConfig, count: int, rng: random.Random, clipped: Clipped | None = None) -> list[Row]:
    """Rows from attention a user exported (docs/ARCHITECTURE.md, "Workloads"): an .npz (numpy,
    no pickle) or .pt (torch's zip format, weights only) holding float ``scores`` (..., Q, N) =
    q.k / sqrt(d), ``values`` (..., N, D), optionally integer ``lengths`` (..., Q) and float ``router``
    (..., Q) logits of the query tokens (read by `routed_tokens`), leading axes (layers, heads) alike.
    Each row is a (set, query) drawn at random. `clipped`, if given, is called with the file's
    `clipping` figures.

    Every array's kind, layout and shape is checked, and the elements counted against
    MAX_FILE_ELEMENTS, before any of its data is read or used."""
    what = f"attention file {path}"
    with _reading(what):
        scores, values, lengths, _ = _file_arrays(path, what)
        if clipped:
            clipped(*clipping(scores, lengths, cfg))
        return _named(what, lambda: head_rows(scores, values, lengths, cfg, random_picks(scores, count, rng)))


def routed_tokens(source: str, cfg: HPUConfig, count: int, seed: int, clipped: Clipped | None = None,
                  window: int = 0, cut: Callable[[int], None] | None = None
                  ) -> tuple[list[Row], list[list[int]], list[Row] | None]:
    """`count` tokens' rows, their router logits in blocks of route_block (the last one shorter), and
    with `window` W each token's window row (its last W keys, `head_rows`), else None.

    From an attention file holding ``router`` logits, a routed model's own: one head set (layer,
    head) drawn at random, its first `count` query tokens' rows in token order, and their logits,
    each block quantized to route_bits as the trained model's HPU routing step quantizes it
    (`golden_model.quantize.quantize_logits`, symmetric per block). From any other source, its rows
    (`rows_from`: an attention file's drawn at random) with random logits; a built-in source's rows
    have no positions, and their windows are their last W keys. `clipped`, if given, is called with
    an attention file's `clipping` figures, and `cut` with the longest of a routed model's rows when
    it runs past max_keys (each row is cut to its first max_keys keys: a later token loses its own
    and its nearest keys)."""
    check_row_count(cfg, count)
    if not 0 <= window <= cfg.max_keys:
        raise InputError(f"--route-window {window}: a window row must fit the HPU: 0..max_keys ({cfg.max_keys})")
    rng = random.Random(seed)
    windows = None
    if Path(source).suffix in FILE_SUFFIXES:
        what = f"attention file {source}"
        with _reading(what):
            scores, values, lengths, router = _file_arrays(Path(source), what)
            if clipped:
                clipped(*clipping(scores, lengths, cfg))
            if router is not None and count > scores.shape[1]:
                raise InputError(f"--rows {count}: {what} holds {scores.shape[1]} tokens a head; ask for at most "
                                 "that many")
            s = rng.randrange(scores.shape[0]) if router is not None else None
            picks = [(s, q) for q in range(count)] if router is not None else random_picks(scores, count, rng)
            rows = _named(what, lambda: head_rows(scores, values, lengths, cfg, picks))
            if window:
                _check_windows(what, lengths, picks, cfg)
                windows = _named(what, lambda: head_rows(scores, values, lengths, cfg, picks, window))
            if router is not None:
                longest = max(int(lengths[s, q]) for s, q in picks)
                if cut and longest > cfg.max_keys:
                    cut(longest)
                return rows, [quantize_logits(router[s, start:min(start + cfg.route_block, count)], cfg).tolist()
                              for start in range(0, count, cfg.route_block)], windows
    else:
        rows = rows_from(source, cfg, count, seed, clipped)
        if window:
            windows = [Row(row.scores[-window:], row.values[-window:]) for row in rows]
    lengths = [min(cfg.route_block, count - start) for start in range(0, count, cfg.route_block)]
    return rows, random_blocks(cfg, len(lengths), random.Random(seed), lengths), windows


def _check_windows(what: str, lengths: torch.Tensor, picks: list[tuple[int, int]], cfg: HPUConfig) -> None:
    """Refuse windows that would not be the model's, or not the same work as the whole rows they stand
    beside: a row that does not end at its own query (not causal: its last keys are not its nearest),
    and one longer than max_keys (its whole row is cut to the first max_keys keys, its window is not)."""
    for s, q in picks:
        if int(lengths[s, q]) != q + 1:
            raise InputError(f"--route-window: {what} is not causal (query {q} of head set {s} has "
                             f"{int(lengths[s, q])} keys, not {q + 1}): a window is a causal row's last keys; "
                             "capture a causal model")
    longest = max(int(lengths[s, q]) for s, q in picks)
    if longest > cfg.max_keys:
        raise InputError(f"--route-window: {what} has rows of up to {longest} keys, past max_keys ({cfg.max_keys}), "
                         f"which cuts whole rows to their first keys but not windows: set max_keys >= {longest} "
                         "or ask for fewer --rows")


def clipping(scores: torch.Tensor, lengths: torch.Tensor, cfg: HPUConfig) -> tuple[float, float]:
    """Of an attention file's scores (S, Q, N) and lengths (S, Q): (the share of its rows whose largest
    score, over the keys the HPU takes (the first min(length, max_keys)), the score format clips; the
    largest |row top|). A built-in source has none: the format holds its scores by construction."""
    taken = torch.arange(scores.shape[-1]) < lengths.clamp(max=cfg.max_keys)[..., None]
    tops = row_tops(scores, taken)
    return float(clipped_rows(tops, cfg).double().mean()), float(tops.abs().max())


def _named(what: str, make):
    try:
        return make()
    except InputError as exc:   # values the quantizer cannot take: name the file
        raise InputError(f"{what}: {exc}") from None


@contextlib.contextmanager
def _reading(what: str):
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        # torch reports a failed allocation as a RuntimeError; anything else is a bug to see whole.
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc) and "memory" not in str(exc):
            raise
        raise InputError(f"{what}: out of memory while reading it: free memory, or export fewer layers, "
                         "heads or tokens") from None


def _file_arrays(path: Path, what: str):
    """(scores (S, Q, N), values (S, N, D), lengths (S, Q), router (S, Q) or None) of an attention file,
    its leading axes flattened, every value checked."""
    arrays = _npz_arrays(path, what) if path.suffix == ".npz" else _pt_arrays(path, what)
    scores, values = arrays["scores"], arrays["values"]
    lead = scores.shape[:-2]
    scores = scores.reshape(-1, *scores.shape[-2:]).double()
    values = values.reshape(-1, *values.shape[-2:]).double()
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = torch.full(scores.shape[:2], scores.shape[-1])
    else:
        # Unsigned lengths of 2**63 or more wrap to negative here, and are refused with the others.
        lengths = lengths.to(torch.int64).reshape(scores.shape[:2])
        if int(lengths.min()) < 1 or int(lengths.max()) > scores.shape[-1]:
            raise InputError(f"{what}: lengths must be integers in 1..N = 1..{scores.shape[-1]} of shape "
                             f"(..., Q) = {tuple(lead) + (scores.shape[1],)}")
    if not torch.isfinite(values).all():
        raise InputError(f"{what}: values hold NaN or infinity")
    admissible = torch.arange(scores.shape[-1]) < lengths[..., None]
    if not (torch.isfinite(scores) | ~admissible).all():
        raise InputError(f"{what}: scores of admissible keys hold NaN or infinity")
    router = arrays.get("router")
    if router is not None:
        router = router.reshape(scores.shape[:2]).double()
        if not torch.isfinite(router).all():
            raise InputError(f"{what}: router logits hold NaN or infinity")
    return scores, values, lengths, router


def _check_kinds(what: str, kinds: dict[str, str]) -> None:
    """Which arrays there are and what they hold ("float", "int" or a phrase naming what else)."""
    if not {"scores", "values"} <= kinds.keys():
        raise InputError(f"{what} must hold arrays `scores` and `values` (and optionally `lengths` and `router`)")
    for name, kind in kinds.items():
        if kind != ARRAY_KINDS[name]:
            rule = ("scores and values must be floating point (they are quantized here)"
                    if ARRAY_KINDS[name] == "float" else "lengths must be integers")
            raise InputError(f"{what}: `{name}` is {kind}; {rule}")


def _check_shapes(what: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every axis of every array, and the elements in all, before any data is read or used."""
    scores, values = shapes["scores"], shapes["values"]
    if len(scores) < 2 or len(values) < 2 or scores[:-2] != values[:-2] or scores[-1] != values[-2]:
        raise InputError(f"{what}: scores {scores} and values {values} must be (..., Q, N) and (..., N, D) with "
                         "the same leading axes and N")
    for name in ("lengths", "router"):
        if name in shapes and shapes[name] != scores[:-1]:
            raise InputError(f"{what}: {name} {shapes[name]} must have the shape (..., Q) = {scores[:-1]}")
    for name, shape in shapes.items():
        if 0 in shape:
            raise InputError(f"{what}: {name} {shape} has an empty axis: every axis must hold at least one element")
    elements = sum(math.prod(shape) for shape in shapes.values())
    if elements > MAX_FILE_ELEMENTS:
        raise InputError(f"{what} holds {elements:,} array elements, beyond the {MAX_FILE_ELEMENTS:,} read at once "
                         "(2 GiB as float64): export fewer layers, heads or tokens")


def _file_kind(path: Path, what: str) -> str:
    """What the file really is, from its first bytes: "npz", "pt", or a phrase naming something else."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except FileNotFoundError:
        raise InputError(f"{what} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{what} cannot be read: {exc.strerror}") from None
    if magic.startswith(b"\x93NUMPY"):
        return "a single numpy array (.npy), not an archive of named arrays: save it with numpy.savez"
    if magic.startswith(b"\x80"):
        return ("a pickle of Python objects (plain pickle, or torch.save before PyTorch 1.6), which is never "
                "loaded: save the tensors with torch.save (PyTorch 1.6 or newer) or the arrays with numpy.savez")
    if magic.startswith(b"\x1f\x8b"):
        return "gzip-compressed: gunzip it first"
    if not magic.startswith(b"PK"):
        return "neither a numpy .npz nor a torch .pt file (no zip archive)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception as exc:   # whatever a corrupt archive raises: name it
        return f"a damaged zip archive ({type(exc).__name__}: {exc}): export it again"
    if any(name.endswith("/constants.pkl") for name in names):
        return ("a TorchScript program (torch.jit.save), which is never loaded: save the tensors themselves with "
                "torch.save or numpy.savez")
    if any(name.endswith("/data.pkl") for name in names):
        return "pt"
    if any(name.endswith(".npy") for name in names):
        return "npz"
    return "a zip archive of neither numpy arrays nor torch tensors"


def _npz_arrays(path: Path, what: str) -> dict[str, torch.Tensor]:
    from numpy.lib import format as npy

    kind = _file_kind(path, what)
    if kind != "npz":
        raise InputError(f"{what} is {'a torch .pt file: name it .pt' if kind == 'pt' else kind}")
    kinds, shapes, arrays = {}, {}, {}
    headers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [name for name in ARRAY_KINDS if f"{name}.npy" in archive.namelist()]
            for name in members:
                with archive.open(f"{name}.npy") as f:
                    version = npy.read_magic(f)
                    if version not in headers:
                        raise InputError(f"{what}: `{name}` is a .npy of format {version}: save it with numpy.savez")
                    shapes[name], _, dtype = headers[version](f)
                if dtype.hasobject:
                    raise InputError(f"{what} cannot be read as .npz: `{name}` holds Python objects (a pickle), "
                                     "which are never loaded: save numeric arrays")
                kinds[name] = ("float" if dtype.kind == "f" and dtype.itemsize <= 8 else
                               "int" if dtype.kind in "iu" else f"of dtype {dtype}")
            _check_kinds(what, kinds)
            _check_shapes(what, shapes)
            for name in members:
                with archive.open(f"{name}.npy") as f:
                    data = npy.read_array(f, allow_pickle=False)
                # Big-endian arrays (written on another machine) are converted, not refused.
                arrays[name] = torch.from_numpy(data.astype(data.dtype.newbyteorder("="), copy=False))
    except InputError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error, OSError) as exc:
        raise InputError(f"{what} cannot be read as .npz ({_damage(exc)}): export it again") from None
    return arrays


def _damage(exc: Exception) -> str:
    """A loader's error on a damaged file, in one line that never passes on its advice to load unsafely."""
    line = str(exc).splitlines()[0] if str(exc) else "truncated"
    if "weights_only" in line or "allow_pickle" in line:
        line = "it could be loaded only unsafely, which is never done"
    return f"damaged: {type(exc).__name__}: {line}"


def _torch_kind(x) -> str:
    if not torch.is_tensor(x):
        return f"a Python {type(x).__name__}, not a tensor"
    if x.dtype.is_floating_point:
        return "float"
    return "int" if not (x.dtype.is_complex or x.is_quantized or x.dtype == torch.bool) else f"of dtype {x.dtype}"


def _storage_problem(x) -> str | None:
    """Why a tensor's data cannot be read as a plain array (sparse, nested, meta ...), or None."""
    if not torch.is_tensor(x):
        return None
    if x.is_nested or x.layout != torch.strided:
        return f"a {'nested' if x.is_nested else str(x.layout).removeprefix('torch.')} tensor: save it dense"
    if x.device.type != "cpu":
        return f"a tensor on device {x.device.type}, which holds no data here: save it from .cpu()"
    return None


def _pt_arrays(path: Path, what: str) -> dict[str, torch.Tensor]:
    kind = _file_kind(path, what)
    if kind != "pt":
        raise InputError(f"{what} is {'a numpy .npz file: name it .npz' if kind == 'npz' else kind}")
    try:
        # Mapped, not read: only the arrays used are ever paged in, after their sizes are checked.
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code: never.
        raise InputError(f"{what} holds pickled Python objects beside its tensors, which are never loaded: "
                         "save a dict of tensors only (torch.save({'scores': ..., 'values': ...}), or "
                         "numpy.savez)") from None
    except MemoryError:
        raise   # file_rows names it
    except Exception as exc:   # a damaged archive: name it, never run it
        raise InputError(f"{what} cannot be read as .pt ({_damage(exc)}): export it again") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{what} must hold arrays `scores` and `values` (and optionally `lengths` and `router`) in a dict; "
                         f"it holds a {type(loaded).__name__}")
    arrays = {name: loaded[name] for name in ARRAY_KINDS if name in loaded}
    for name, x in arrays.items():
        if problem := _storage_problem(x):
            raise InputError(f"{what}: `{name}` is {problem}")
    _check_kinds(what, {name: _torch_kind(x) for name, x in arrays.items()})
    _check_shapes(what, {name: tuple(x.shape) for name, x in arrays.items()})
    return arrays


def rows_from(source: str, cfg: HPUConfig, count: int, seed: int, clipped: Clipped | None = None) -> list[Row]:
    """`count` rows from a named source or an attention file (adversarial rows repeat their set with
    fresh values). `clipped`, if given, is called with an attention file's `clipping` figures."""
    check_row_count(cfg, count)
    rng = random.Random(seed)
    if source == "random":
        return random_rows(cfg, count, rng)
    if source == "adversarial":
        rows: list[Row] = []
        while len(rows) < count:
            rows += adversarial_rows(cfg, rng)
        return rows[:count]
    if source == "minilm":
        return minilm_rows(cfg, count, rng)
    if source == "minilm-long":
        return minilm_rows(cfg, count, rng, long=True)
    if Path(source).suffix in FILE_SUFFIXES:
        return file_rows(Path(source), cfg, count, rng, clipped)
    raise InputError(f"unknown stimulus source {source!r}: choose one of {', '.join(SOURCES)}, "
                     f"or a file of exported attention ({' or '.join(FILE_SUFFIXES)})")
