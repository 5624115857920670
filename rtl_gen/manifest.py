"""The manifest `hpu gen` writes beside the Verilog, and the one loader every reader of it uses.

The manifest is written last, so a folder with a manifest holds a whole generation; the loader
refuses a file of another format or version, and one whose configuration no longer validates.
"""

from __future__ import annotations

from pathlib import Path

from hpu.config import HPUConfig
from hpu.errors import HPUError, InputError
from hpu.files import read_json

# The generated design's top module, which every manifest names as `top`.
TOP_NAME = "hpu"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
NETS = "nets.json"
REQUIRED = ("top", "verilog", "config", "instances", "mac_lanes", "nets")
HINT = "run `hpu gen -o DIR` and pass DIR/manifest.json"


def load_manifest(path: str | Path) -> dict:
    """The manifest at `path`, checked for its format; its `config` is validated as an HPUConfig."""
    path = Path(path)
    manifest = read_json(path, "manifest", HINT)
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise InputError(f"manifest {path} lacks {', '.join(missing)}: it was not written by `hpu gen`; {HINT}")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise InputError(f"manifest {path} has version {manifest.get('manifest_version')!r}, this toolkit reads "
                         f"version {MANIFEST_VERSION}: regenerate it with `hpu gen`")
    try:
        manifest_config(manifest)
    except HPUError as exc:
        raise InputError(f"manifest {path}: {exc}") from None
    return manifest


def manifest_config(manifest: dict) -> HPUConfig:
    return HPUConfig.from_dict(manifest["config"])


def load_nets(manifest_path: str | Path, manifest: dict) -> dict:
    """nets.json beside the manifest: each module's net classes and register enables."""
    nets_path = Path(manifest_path).parent / manifest.get("nets", NETS)
    modules = read_json(nets_path, "net classes", "regenerate the folder with `hpu gen`").get("modules")
    if not isinstance(modules, dict):
        raise InputError(f"net classes {nets_path} hold no `modules` table: regenerate the folder with `hpu gen`")
    return modules


def config_difference(a: HPUConfig, b: HPUConfig) -> str:
    """The fields in which two configurations differ, as `field a/b`, for refusals."""
    da, db = a.to_dict(), b.to_dict()
    da["acc_bits"], db["acc_bits"] = a.acc_bits, b.acc_bits
    return ", ".join(f"{k} {da[k]!r}/{db[k]!r}" for k in da if da[k] != db[k])
