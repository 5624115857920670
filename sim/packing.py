"""Bits on the HPU's stream ports <-> rows and results, through the same layouts the hardware uses."""

from __future__ import annotations

from amaranth.lib import data

from golden_model.stimulus import Row, RowResult
from hpu import layouts
from hpu.config import HPUConfig


def pack_keys(cfg: HPUConfig, row: Row) -> list[int]:
    layout = layouts.key(cfg)
    return [layout.const({"score": s, "value": list(v), "last": j == row.n - 1}).as_bits()
            for j, (s, v) in enumerate(zip(row.scores, row.values))]


def unpack_result(cfg: HPUConfig, bits: int) -> RowResult:
    view = data.Const(layouts.result(cfg), bits)
    return RowResult(acc=tuple(view.acc), out=tuple(view.out), z_kept=view.z_kept, kept=view.kept)


def key_bits(cfg: HPUConfig) -> int:
    return layouts.key(cfg).size


def result_bits(cfg: HPUConfig) -> int:
    return layouts.result(cfg).size
