"""Files the toolkit reads and writes: inputs are data checked on the way in, outputs are whole or absent.

Every output is written under a temporary name in its own folder and renamed when complete, so an
interrupted run never leaves a file that could pass for a whole one. An output folder belongs to one
run at a time (`claim`): a second run that names the same folder is refused instead of mixing its
files with the first run's, and every output the run may write (the names its writers declare) is
removed when it starts, so a failed or interrupted run leaves none of an earlier run's outputs beside
its own. Inputs are parsed as JSON or TOML only (never pickle, never eval), and a
file that is missing, unreadable, not text or of the wrong shape is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Iterable, Iterator

from hpu.errors import HPUError, InputError

LOCK_NAME = ".hpu.lock"


class OutputError(HPUError):
    """An output cannot be written where it was asked for, or another run is writing there."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` if needed and check that it is a writable folder; refuses a file in its place."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder: remove it or choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {_reason(exc)}; choose another path") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable: choose another path")
    return path


def output_file(path: str | Path, what: str = "output file", suffix: str | None = None) -> Path:
    """Check that `path` can be written as a file (its folder is created); refuses a folder in its place."""
    path = Path(path)
    if suffix and not path.name.endswith(suffix):
        raise OutputError(f"{what} {path} must end in {suffix} (e.g. {path.with_name(path.name + suffix)})")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder: name a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable: choose another path")
    output_folder(path.parent, f"folder of the {what}")
    return path


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed to `path` when the block completes, removed otherwise."""
    path = Path(path)
    # mkstemp creates a fresh name (O_EXCL) that nobody can have planted a link at; its mode is set
    # through the descriptor, not by name.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.fchmod(fd, 0o644)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with staged(path) as temp:
        temp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with staged(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, value) -> Path:
    """Strict JSON: a NaN or infinity is a bug, refused here rather than written as a token no JSON reader accepts."""
    return write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def _open_lock(folder: Path) -> int:
    """The folder's lock file, created if need be, never through a link: a link planted at its name
    would have the run truncate and write whatever it points to."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{path} is a symbolic link, not an hpu lock file: remove it, or choose another "
                              "folder") from None
        raise OutputError(f"cannot open the lock file {path}: {_reason(exc)}; choose another folder") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise OutputError(f"{path} is not an hpu lock file of yours (a regular file you own, with no other "
                          "links): remove it, or choose another folder")
    return fd


def _clear(folder: Path, outputs: Iterable[str]) -> None:
    """Remove what an earlier run left under the names (glob patterns) this run may write, files and
    folders; a link, dangling or not, is removed, never followed."""
    names = os.listdir(folder)
    for pattern in outputs:
        for name in [n for n in names if fnmatch.fnmatchcase(n, pattern)]:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def claim(folder: str | Path, what: str = "output folder", outputs: Iterable[str] = ()) -> Iterator[Path]:
    """Hold `folder` for this run: another run claiming it meanwhile is refused, not interleaved.

    `outputs` are the names (glob patterns; glob.escape a name the user chose) of everything the run
    may write there, from the same constants its writers use: what an earlier run left under them is
    removed before the run starts."""
    folder = output_folder(folder, what)
    fd = _open_lock(folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(f"{what} {folder} is in use by another hpu run (pid {holder}): "
                              "wait for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _clear(folder, outputs)
        yield folder
    finally:
        os.close(fd)   # closing releases the lock


@contextlib.contextmanager
def shared_lock(folder: str | Path) -> Iterator[None]:
    """Wait for, then hold, `folder`'s lock: for caches that concurrent runs share (build folders)."""
    folder = output_folder(folder, "build folder")
    fd = _open_lock(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def not_text(head: bytes, kind: str) -> str | None:
    """Why a file whose first bytes are `head` is certainly not `kind` text (compressed, binary);
    None when it may be."""
    if head.startswith(b"\x1f\x8b"):
        return "the file is gzip-compressed: gunzip it first"
    if b"\x00" in head:
        return f"the file is binary, not {kind} text"
    return None


def _read(path: Path, what: str, hint: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist{': ' + hint if hint else ''}") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not a text file{': ' + hint if hint else ''}") from None
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be read: {_reason(exc)}") from None


def read_json(path: str | Path, what: str, hint: str = "") -> dict:
    """A JSON object from `path`, or one clear InputError."""
    path = Path(path)
    text = _read(path, what, hint)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
                         f"{': ' + hint if hint else ''}") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} {path} holds a JSON {type(value).__name__}, not an object"
                         f"{': ' + hint if hint else ''}")
    return value


def read_toml(path: str | Path, what: str, hint: str = "") -> dict:
    """A TOML document from `path`, or one clear InputError."""
    path = Path(path)
    text = _read(path, what, hint)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{what} {path} is not valid TOML: {exc}") from None


def sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
