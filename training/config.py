"""One training experiment, from one TOML file: the model, the schedule, the data and the arms.

An experiment is an A/B: every arm trains the same Llama-style decoder on the same token stream, in
the same order, from the same seeds; the arms differ only in attention (``sdpa`` dense, or the mass
gate ``hpu_mass`` with its gate fields). ``TrainConfig.load`` refuses an unknown key or an illegal
value in one line naming the table, the key, the value and the rule.

    [model]   hidden_size, layers, heads, kv_heads, intermediate_size, rope_theta
    [run]     context, batch, micro_batch, tokens, lr, min_lr, warmup_steps, weight_decay, grad_clip,
              anneal_steps, eval_every, eval_tokens, log_every, checkpoint_every, compile, seeds
    [data]    `training.data.DataConfig`'s fields
    [arms.NAME]  attention = "sdpa" | "hpu_mass" | "hpu_routed", and for hpu_mass the gate: mode,
                 permeability, mass_target, k_min (`HPUConfig` fields, validated by it); optionally
                 a learned router: route = "sqdk" | "skip", route_fraction, route_block (default:
                 the context), route_layers = "all" | "alternate", route_bits, route_window,
                 route_predictor = "hidden" | "rank" (`training.routing.RouterConfig`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpu.config import ConfigError, HPUConfig
from hpu.files import read_toml
from training.attention import GATE_FIELDS
from training.attention import NAME as GATE_ATTENTION
from training.data import DataConfig
from training.routing import MODES as ROUTE_MODES
from training.routing import NAME as ROUTED_ATTENTION
from training.routing import ROUTE_FIELDS, RouterConfig

ATTENTIONS = ("sdpa", GATE_ATTENTION, ROUTED_ATTENTION)


def _refuse(table: str, name: str, value, rule: str):
    raise ConfigError(f"illegal training configuration: [{table}] {name} = {value!r}: {rule}")


def _check_types(obj, table: str):
    for f in fields(obj):
        value = getattr(obj, f.name)
        want = {"int": int, "float": float, "bool": bool, "str": str}.get(f.type)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))
        elif want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
            _refuse(table, f.name, value, f"must be of type {want.__name__}")


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape (a `transformers.LlamaConfig`; the vocabulary comes from the data)."""

    hidden_size: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 8
    intermediate_size: int = 1536
    rope_theta: float = 10000.0

    def __post_init__(self):
        _check_types(self, "model")
        for name in ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                _refuse("model", name, getattr(self, name), "must be at least 1")
        if self.hidden_size % self.heads:
            _refuse("model", "heads", self.heads, f"must divide hidden_size ({self.hidden_size})")
        if self.heads % self.kv_heads:
            _refuse("model", "kv_heads", self.kv_heads, f"must divide heads ({self.heads})")


@dataclass(frozen=True)
class RunConfig:
    """Schedule and evaluation. ``batch`` sequences of ``context`` tokens make one optimizer step,
    whatever the number of ranks; each rank runs ``micro_batch`` sequences at a time."""

    context: int = 1024
    batch: int = 16
    micro_batch: int = 16
    tokens: int = 100_000_000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    anneal_steps: int = 500
    eval_every: int = 250
    eval_tokens: int = 1_048_576
    log_every: int = 10
    checkpoint_every: int = 1000
    compile: bool = True
    seeds: list = field(default_factory=lambda: [1, 2, 3])

    def __post_init__(self):
        _check_types(self, "run")
        for name in ("context", "batch", "micro_batch", "tokens", "eval_every", "eval_tokens", "log_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                _refuse("run", name, getattr(self, name), "must be at least 1")
        for name in ("warmup_steps", "anneal_steps"):
            if getattr(self, name) < 0:
                _refuse("run", name, getattr(self, name), "must not be negative")
        if not 0 < self.min_lr <= self.lr:
            _refuse("run", "min_lr", self.min_lr, f"must lie in (0, lr] (lr = {self.lr})")
        if self.batch % self.micro_batch:
            _refuse("run", "micro_batch", self.micro_batch, f"must divide batch ({self.batch})")
        if self.tokens < self.batch * self.context:
            _refuse("run", "tokens", self.tokens, f"must cover one step (batch x context = {self.batch * self.context})")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            _refuse("run", "seeds", self.seeds, "must be a non-empty list of non-negative integers")
        if len(set(self.seeds)) != len(self.seeds):
            _refuse("run", "seeds", self.seeds, "must not repeat a seed")

    @property
    def steps(self) -> int:
        return self.tokens // (self.batch * self.context)


@dataclass(frozen=True)
class Arm:
    """One arm: its attention, for the gate its target gate (`HPUConfig` fields), and optionally a
    learned token router (`training.routing.RouterConfig`, the ``route*`` keys)."""

    name: str
    attention: str = "sdpa"
    gate: dict = field(default_factory=dict)
    router: RouterConfig | None = None

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            _refuse(f"arms.{self.name}", "attention", self.attention, f"must be one of {', '.join(ATTENTIONS)}")
        unknown = sorted(set(self.gate) - set(GATE_FIELDS))
        if unknown:
            _refuse(f"arms.{self.name}", unknown[0], self.gate[unknown[0]],
                    f"is not a key of an arm (attention, {', '.join(GATE_FIELDS + ROUTE_FIELDS)})")
        if self.gate and self.attention != GATE_ATTENTION:
            _refuse(f"arms.{self.name}", "attention", self.attention, f"gate fields need attention = {GATE_ATTENTION!r}")
        if self.attention == GATE_ATTENTION:
            self.hpu  # validated by HPUConfig now, not at the first step
        if self.attention == ROUTED_ATTENTION and (self.router is None or self.router.route != "sqdk"
                                                   or self.router.route_window):
            _refuse(f"arms.{self.name}", "attention", self.attention,
                    "gathers the routed queries of an sqdk router without a window: add route = \"sqdk\" "
                    "(and no route_window), or use attention = \"sdpa\"")

    def table(self) -> dict:
        """The arm as its TOML table (an arm without a router has no route keys, as before routers)."""
        return {"attention": self.attention, **self.gate, **(self.router.as_dict() if self.router else {})}

    @property
    def hpu(self) -> HPUConfig:
        """The arm's target gate as the HPU's one configuration object."""
        return HPUConfig(**self.gate)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    run: RunConfig
    data: DataConfig
    arms: tuple[Arm, ...]

    @classmethod
    def from_dict(cls, table: dict) -> "TrainConfig":
        unknown = sorted(set(table) - {"model", "run", "data", "arms"})
        if unknown:
            raise ConfigError(f"illegal training configuration: unknown table [{unknown[0]}]; "
                              "the tables are [model], [run], [data] and [arms.NAME]")
        parts = {}
        for name, kind in (("model", ModelConfig), ("run", RunConfig), ("data", DataConfig)):
            values = table.get(name, {})
            known = {f.name for f in fields(kind)}
            extra = sorted(set(values) - known)
            if extra:
                _refuse(name, extra[0], values[extra[0]], f"is not a key of [{name}] ({', '.join(sorted(known))})")
            parts[name] = kind(**values)
        arms = table.get("arms", {})
        if not arms:
            raise ConfigError("illegal training configuration: no [arms.NAME] table; add at least one arm")
        built = []
        for name, arm in arms.items():
            arm = dict(arm)
            route = {key: arm.pop(key) for key in ROUTE_FIELDS if key in arm}
            if route and "route" not in route:
                _refuse(f"arms.{name}", next(iter(route)), next(iter(route.values())),
                        f"router fields need route = one of {', '.join(ROUTE_MODES)}")
            router = None
            if route:
                try:
                    router = RouterConfig(**{"route_block": parts["run"].context, **route})
                except ConfigError as exc:
                    raise ConfigError(f"illegal training configuration: [arms.{name}] {exc}") from None
                if parts["run"].context % router.route_block:
                    _refuse(f"arms.{name}", "route_block", router.route_block,
                            f"must divide the context ({parts['run'].context})")
            built.append(Arm(name=name, attention=arm.pop("attention", "sdpa"), gate=arm, router=router))
        return cls(arms=tuple(built), **parts)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_toml(path, "training configuration"))

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ConfigError(f"no arm named {name!r}: the arms are {', '.join(a.name for a in self.arms)}")

    def with_source(self, source: str | Path | None) -> "TrainConfig":
        """This experiment with its text read from `source` (a folder or a data pack) when one is given."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, source=str(source))) if source else self

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "run": dataclasses.asdict(self.run),
                "data": dataclasses.asdict(self.data),
                "arms": {a.name: a.table() for a in self.arms}}

    def fingerprint(self, arm: Arm) -> str:
        """What a run's results depend on, besides its seed and the token stream: model, run and arm."""
        what = {"model": dataclasses.asdict(self.model), "run": dataclasses.asdict(self.run),
                "arm": arm.table()}
        what["run"].pop("seeds")
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
