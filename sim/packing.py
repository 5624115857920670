"""Bits on the HPU's stream ports <-> rows and results, through the same layouts the hardware uses."""

from __future__ import annotations

from amaranth.lib import data

from golden_model.stimulus import Row, RowResult
from hpu import layouts
from hpu.config import HPUConfig


def pack_scores(cfg: HPUConfig, row: Row) -> list[int]:
    layout = layouts.score(cfg)
    return [layout.const({"score": s, "last": j == row.n - 1}).as_bits() for j, s in enumerate(row.scores)]


def pack_values(cfg: HPUConfig, row: Row) -> list[int]:
    layout = layouts.value_word(cfg)
    return [layout.const(list(v)).as_bits() for v in row.values]


def unpack_result(cfg: HPUConfig, bits: int) -> RowResult:
    view = data.Const(layouts.result(cfg), bits)
    return RowResult(acc=tuple(view.acc), out=tuple(view.out), z_kept=view.z_kept, kept=view.kept)


def key_ring_depth(cfg: HPUConfig) -> int:
    """Keys the harness's score and value rings hold: a power of two of at least 16 full rows, so that
    the rows in flight (about four) fit in the quarter of the ring below which the testbench refills."""
    return max(4096, 1 << (16 * cfg.max_keys - 1).bit_length())


def harness_parameters(cfg: HPUConfig) -> dict[str, int]:
    """The widths and depths the Verilog harness (sim/hdl/hpu_harness.v) is built with."""
    score, request = layouts.score(cfg), layouts.request(cfg)
    # The harness reads a score's `last` as its top bit and a request as {last, index}.
    assert score["last"].offset == score.size - 1 and request["last"].offset == request.size - 1
    return {"SCORE_BITS": score.size, "VALUE_BITS": layouts.value_word(cfg).size,
            "INDEX_BITS": request.size - 1, "RESULT_BITS": layouts.result(cfg).size,
            "KEY_DEPTH": key_ring_depth(cfg)}
