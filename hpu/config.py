"""The one configuration of an HPU instance.

`HPUConfig` is frozen and validated on construction: an illegal value never
reaches the hardware, the models, the kernels or the reports. Everything that
depends on a width or a gate parameter reads it from here, including the
derived widths (`acc_bits`, `z_bits`, ...), which are properties so that
nothing else re-derives them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpu.errors import HPUError, InputError
from hpu.files import read_toml, write_text

MODES = ("mass", "topk", "dense")
SCHEDULES = ("lockstep", "compact")

# Permeability, mass target and routed fraction are carried to the hardware as
# integers in 1..GATE_SCALE (units of 1/256), so the float rule and the integer
# rule use exactly the same thresholds.
GATE_SHIFT = 8
GATE_SCALE = 1 << GATE_SHIFT


def _steps(fraction: float) -> int:
    """A fraction in (0, 1] in units of 1/GATE_SCALE, in 1..GATE_SCALE."""
    return min(GATE_SCALE, max(1, round(fraction * GATE_SCALE)))


def route_capacity(tokens, route_fraction: float):
    """Routed tokens of a block of `tokens` (an int or an integer tensor) at `route_fraction`, taken in
    units of 1/256 as the hardware holds it: ceil(tokens * route_q / 256), at least 1 as a block has a
    token and route_q is at least 1. The one rule of every path that routes (float reference, kernels,
    training, RTL): ceil(tokens * route_fraction) would route one token more wherever the fraction is
    not a multiple of 1/256 (0.8 of 10 tokens: 8, against the hardware's 9)."""
    return (tokens * _steps(route_fraction) + GATE_SCALE - 1) >> GATE_SHIFT


class ConfigError(HPUError, ValueError):
    """An illegal configuration: the message names the field, the value and the rule."""


def _doc(text: str, **kwargs):
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class HPUConfig:
    """One HPU instance: datapath shape, number formats and gate.

    Parameters are the fields below; each field's ``doc`` metadata says what it
    means (``HPUConfig.describe()`` prints them all). Derived widths are
    properties.
    """

    head_dim: int = _doc("Elements per value vector (and output row).", default=64)
    lanes: int = _doc("MAC lanes; each key takes head_dim / lanes MAC cycles.", default=16)
    max_keys: int = _doc("Row-buffer depth: the largest row length n the HPU accepts.", default=256)
    score_bits: int = _doc("Width of a signed score s_j.", default=16)
    score_frac: int = _doc("Fractional bits of a score (s_j / 2**score_frac is q.k/sqrt(d)).", default=8)
    value_bits: int = _doc("Width of a signed value element v_j[d].", default=8)
    prob_bits: int = _doc("Width of an unsigned unnormalized probability e_j.", default=8)
    exp_shift: int = _doc("Right shift of (m - s_j) before the EXP_LUT lookup.", default=4)
    lut_size: int = _doc("Entries in EXP_LUT (a power of two).", default=256)
    out_frac: int = _doc("Fractional bits of an output element out[d].", default=8)
    out_bits: int = _doc("Width of a signed output element; results saturate to it.", default=16)
    mode: str = _doc("Gate mode: 'mass' (shortest prefix reaching the mass target, capped), "
                     "'topk' (the cap alone) or 'dense' (keep every key).", default="mass")
    permeability: float = _doc("Largest fraction of a row's keys the gate may keep, in (0, 1].", default=0.5)
    mass_target: float = _doc("Fraction of the row's mass the kept keys must reach, in (0, 1].", default=0.9)
    k_min: int = _doc("Fewest keys a row keeps (when it has that many).", default=1)
    schedule: str = _doc("'lockstep': every key takes its MAC slot and gated slots leave lanes silent; "
                         "'compact': only kept keys are issued.", default="lockstep")
    route_block: int = _doc("Token routing: the most tokens in one block of router logits the HPU's router "
                            "orders; 0 builds no router (its ports stay tied off).", default=0)
    route_bits: int = _doc("Width of a signed quantized router logit r_t.", default=16)
    route_fraction: float = _doc("Fraction of a block's tokens routed as queries, in (0, 1]: "
                                 "max(1, ceil(T * route_q / 256)) of T.", default=1.0)
    acc_bits: int = _doc("Signed accumulator width; 0 chooses the smallest width that cannot overflow. "
                         "A non-zero value smaller than that is refused.", default=0)

    def __post_init__(self):
        self._validate()
        # A derived width stays derived: `replace` and `to_dict` give 0 back, so overriding another
        # field (a wider value, fewer keys) derives it again instead of checking the old number.
        object.__setattr__(self, "_acc_bits_chosen", self.acc_bits != 0)
        if self.acc_bits == 0:
            object.__setattr__(self, "acc_bits", self.min_acc_bits)

    # -- validation -------------------------------------------------------------------

    def _validate(self):
        def refuse(name, rule):
            raise ConfigError(f"illegal configuration: {name} = {getattr(self, name)!r}: {rule}")

        for f in fields(self):
            value = getattr(self, f.name)
            want = float if f.type == "float" else int if f.type == "int" else str
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                continue
            if not isinstance(value, want) or isinstance(value, bool):
                refuse(f.name, f"must be of type {want.__name__}")

        for name, low, high in (("head_dim", 1, 1024), ("lanes", 1, 1024), ("max_keys", 1, 65536),
                                ("score_bits", 2, 32), ("value_bits", 2, 32), ("prob_bits", 1, 24),
                                ("out_bits", 2, 48), ("k_min", 1, 65536), ("route_block", 0, 65536),
                                ("route_bits", 2, 32)):
            if not low <= getattr(self, name) <= high:
                refuse(name, f"must lie in {low}..{high}")
        if self.head_dim % self.lanes:
            refuse("lanes", f"must divide head_dim ({self.head_dim})")
        if not 0 <= self.score_frac < self.score_bits:
            refuse("score_frac", f"must lie in 0..score_bits-1 ({self.score_bits - 1})")
        if not 0 <= self.exp_shift <= self.score_bits:
            refuse("exp_shift", f"must lie in 0..score_bits ({self.score_bits})")
        if self.lut_size < 2 or self.lut_size & (self.lut_size - 1) or self.lut_size > 65536:
            refuse("lut_size", "must be a power of two in 2..65536")
        if not 0 <= self.out_frac < self.out_bits:
            refuse("out_frac", f"must lie in 0..out_bits-1 ({self.out_bits - 1})")
        if self.mode not in MODES:
            refuse("mode", f"must be one of {', '.join(MODES)}")
        if self.schedule not in SCHEDULES:
            refuse("schedule", f"must be one of {', '.join(SCHEDULES)}")
        for name in ("permeability", "mass_target", "route_fraction"):
            if not (0.0 < getattr(self, name) <= 1.0):
                refuse(name, "must lie in (0, 1]")
        if self.k_min > self.max_keys:
            refuse("k_min", f"must not exceed max_keys ({self.max_keys})")
        if self.acc_bits and self.acc_bits < self.min_acc_bits:
            refuse("acc_bits", f"cannot hold the accumulator: needs at least {self.min_acc_bits} bits "
                               f"for max_keys * (2**prob_bits - 1) * 2**(value_bits - 1)")
        if self.acc_bits > 53 or self.min_acc_bits > 53:
            refuse("acc_bits" if self.acc_bits else "max_keys",
                   f"accumulator of {max(self.acc_bits, self.min_acc_bits)} bits exceeds 53 bits, "
                   "the widest the golden model computes exactly")
        if max(self.acc_bits, self.min_acc_bits) + self.out_frac > 62:
            refuse("out_frac", f"acc_bits ({max(self.acc_bits, self.min_acc_bits)}) + out_frac must not exceed 62, "
                               "the normalizer's dividend width")

    # -- quantized gate parameters ----------------------------------------------------

    @property
    def rho_q(self) -> int:
        """Permeability in units of 1/256, in 1..256."""
        return _steps(self.permeability)

    @property
    def tau_q(self) -> int:
        """Mass target in units of 1/256, in 1..256."""
        return _steps(self.mass_target)

    @property
    def route_q(self) -> int:
        """Routed fraction in units of 1/256, in 1..256."""
        return _steps(self.route_fraction)

    def gate_cap(self, keys):
        """The most keys a row of `keys` admissible keys keeps (an int or an integer tensor):
        max(k_min, ceil(keys * rho_q / 256)). The Triton kernels (gpu_kernels/exact.py, gpu_kernels/row_gate.py)
        compute this expression inside their programs, where no Python runs."""
        cap = (keys * self.rho_q + GATE_SCALE - 1) >> GATE_SHIFT
        return cap.clamp(min=self.k_min) if hasattr(cap, "clamp") else max(cap, self.k_min)

    def route_capacity(self, tokens):
        """Routed tokens of a block of `tokens` (an int or an integer tensor): `route_capacity` at this
        configuration's route_fraction."""
        return route_capacity(tokens, self.route_fraction)

    # -- derived widths ---------------------------------------------------------------

    @property
    def e_max(self) -> int:
        return (1 << self.prob_bits) - 1

    @property
    def min_acc_bits(self) -> int:
        """Smallest signed width holding any sum of max_keys products e_j * v_j[d]."""
        most_negative = self.max_keys * self.e_max * (1 << (self.value_bits - 1))
        return most_negative.bit_length() + 1 if most_negative else 2

    @property
    def z_bits(self) -> int:
        """Unsigned width of Z and z_kept."""
        return (self.max_keys * self.e_max).bit_length()

    @property
    def count_bits(self) -> int:
        """Unsigned width of a key count 0..max_keys."""
        return self.max_keys.bit_length()

    @property
    def index_bits(self) -> int:
        """Unsigned width of a key index 0..max_keys-1."""
        return max(1, (self.max_keys - 1).bit_length())

    @property
    def lut_index_bits(self) -> int:
        return self.lut_size.bit_length() - 1

    @property
    def quotient_bits(self) -> int:
        """Dividend width the normalizer divides exactly: |acc| * 2**out_frac below 2**quotient_bits.

        A larger dividend saturates whatever z_kept is (z_kept < 2**z_bits), so the width need not
        exceed z_bits + out_bits - 1; it is never more than the dividend's own acc_bits + out_frac."""
        return min(self.acc_bits + self.out_frac, self.z_bits + self.out_bits - 1)

    @property
    def reciprocal_bits(self) -> int:
        """Width of the normalizer's per-row reciprocal ceil(2**(quotient_bits + l) / z_kept)."""
        return self.quotient_bits + 1

    @property
    def chunks(self) -> int:
        """MAC cycles per key: head_dim / lanes."""
        return self.head_dim // self.lanes

    # -- persistence ------------------------------------------------------------------

    @property
    def acc_bits_derived(self) -> bool:
        """Whether acc_bits was derived (0 in the file or unset) rather than chosen by the user."""
        return not self._acc_bits_chosen

    def to_dict(self) -> dict:
        """The fields as the user chose them (a derived acc_bits is written as 0)."""
        values = dataclasses.asdict(self)
        if self.acc_bits_derived:
            values["acc_bits"] = 0
        return values

    def replace(self, **changes) -> "HPUConfig":
        if self.acc_bits_derived:
            changes.setdefault("acc_bits", 0)
        return dataclasses.replace(self, **changes)

    def ideal_mac_cycles(self, keys: float, kept_keys: float) -> float:
        """The MAC array's own cycles for a row of `keys` keys keeping `kept_keys`: every key's slot in
        lockstep, only the kept keys' otherwise, one cycle per slot and chunk."""
        return (keys if self.schedule == "lockstep" else kept_keys) * self.chunks

    def notes(self) -> list[str]:
        """What takes effect differently from what was written: the gate's 1/256 quantization."""
        notes = []
        for name, q, unit in (("permeability", self.rho_q, "the gate"), ("mass_target", self.tau_q, "the gate"),
                              ("route_fraction", self.route_q, "the router")):
            value = getattr(self, name)
            if q / GATE_SCALE != value:
                notes.append(f"{name} {value} takes effect as {q}/{GATE_SCALE} = {q / GATE_SCALE:.6g} "
                             f"({unit} works in steps of 1/{GATE_SCALE})")
        return notes

    def with_overrides(self, assignments: list[str]) -> "HPUConfig":
        """Apply CLI overrides of the form ``field=value``."""
        return self.replace(**parse_overrides(assignments))

    @classmethod
    def from_dict(cls, data: dict) -> "HPUConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"illegal configuration: unknown field(s) {', '.join(unknown)}; "
                              f"known fields are {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "HPUConfig":
        """A configuration file (`resolve`): an ``[hpu]`` table of fields (or the fields at the top level)."""
        path = resolve(path)
        try:
            data = read_toml(path, "configuration file")
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        if not data:
            raise ConfigError(f"configuration file {path} is empty: write an [hpu] table of fields "
                              "(`hpu config --describe` lists them), or leave out --config for the defaults")
        if "hpu" in data:
            others = sorted(set(data) - {"hpu"})
            if others:
                raise ConfigError(f"configuration file {path}: unknown top-level entr{'ies' if len(others) > 1 else 'y'} "
                                  f"{', '.join(others)}; every field belongs in the [hpu] table")
            data = data["hpu"]
            if not isinstance(data, dict):
                raise ConfigError(f"configuration file {path}: `hpu` must be a table ([hpu]), not a value")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        import tomli_w

        write_text(path, tomli_w.dumps({"hpu": self.to_dict()}))

    def show(self) -> str:
        """Every field with its value, then the derived quantities."""
        lines = [f"{name:13} = {value!r}" + ("  (derived)" if name == "acc_bits" and self.acc_bits_derived else "")
                 for name, value in dataclasses.asdict(self).items()]
        lines.append(f"{'(derived)':13}   acc_bits={self.acc_bits} z_bits={self.z_bits} rho_q={self.rho_q}/256 "
                     f"tau_q={self.tau_q}/256 route_q={self.route_q}/256 chunks={self.chunks}")
        return "\n".join(lines)

    @classmethod
    def describe(cls) -> str:
        return "\n".join(f"{f.name:13} {f.metadata['doc']}" for f in fields(cls))


# The configurations the toolkit ships: `configs/` in the repository, installed as package data
# through the link hpu/configs, so that a name finds them from any working folder.
SHIPPED = Path(__file__).parent / "configs"


def shipped_names() -> list[str]:
    """Every shipped configuration's name: its path under configs/ without `.toml` (e.g. `train/...`)."""
    return sorted(p.relative_to(SHIPPED).with_suffix("").as_posix() for p in SHIPPED.rglob("*.toml"))


def resolve(path: str | Path) -> Path:
    """The file a ``--config`` names: the path itself when it exists, else the shipped configuration it
    names (`default`, `default.toml` and `configs/default.toml` all name configs/default.toml)."""
    path = Path(path)
    if path.exists():
        return path
    name = path.as_posix().removeprefix("configs/").removesuffix(".toml")
    if name in shipped_names():
        return SHIPPED / f"{name}.toml"
    raise ConfigError(f"configuration file {path} does not exist: pass a TOML file or the name of a shipped "
                      f"configuration ({', '.join(shipped_names())})")


def parse_overrides(assignments: list[str]) -> dict:
    """Turn ``["lanes=8", "mode=topk"]`` into typed field values."""
    types = {f.name: f.type for f in fields(HPUConfig)}
    changes = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in types:
            raise ConfigError(f"illegal override {item!r}: expected field=value with a field among "
                              f"{', '.join(types)}")
        kind = types[name]
        try:
            changes[name] = int(text) if kind == "int" else float(text) if kind == "float" else text.strip()
        except ValueError:
            raise ConfigError(f"illegal override {item!r}: {name} takes "
                              f"{ {'int': 'an integer', 'float': 'a number'}[kind]}") from None
    return changes

