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


def pack_logits(cfg: HPUConfig, block: list[int]) -> list[int]:
    layout = layouts.logit(cfg)
    return [layout.const({"logit": r, "last": t == len(block) - 1}).as_bits() for t, r in enumerate(block)]


def unpack_routed(cfg: HPUConfig, bits: int) -> tuple[int, bool]:
    view = data.Const(layouts.routed(cfg), bits)
    return view.position, bool(view.last)


def unpack_result(cfg: HPUConfig, bits: int) -> RowResult:
    view = data.Const(layouts.result(cfg), bits)
    return RowResult(acc=tuple(view.acc), out=tuple(view.out), z_kept=view.z_kept, kept=view.kept)


def key_ring_depth(cfg: HPUConfig) -> int:
    """Keys the harness's score and value rings hold: a power of two of at least 16 full rows, so that
    the rows in flight (about four) fit in the quarter of the ring below which the testbench refills."""
    return max(4096, 1 << (16 * cfg.max_keys - 1).bit_length())


def logit_ring_depth(cfg: HPUConfig) -> int:
    """Logits (and routed positions) the harness's rings hold: a power of two of at least 4 blocks."""
    return max(1024, 1 << (4 * cfg.route_block - 1).bit_length())


def harness_parameters(cfg: HPUConfig) -> dict[str, int]:
    """The widths and depths the Verilog harness (sim/hdl/hpu_harness.v) is built with."""
    score, request, routed = layouts.score(cfg), layouts.request(cfg), layouts.routed(cfg)
    # The harness reads a score's `last` as its top bit, a request as {last, index} and a routed
    # position as {last, position}.
    assert all(layout["last"].offset == layout.size - 1 for layout in (score, request, routed))
    return {"SCORE_BITS": score.size, "VALUE_BITS": layouts.value_word(cfg).size,
            "INDEX_BITS": request.size - 1, "RESULT_BITS": layouts.result(cfg).size,
            "KEY_DEPTH": key_ring_depth(cfg), "LOGIT_BITS": layouts.logit(cfg).size,
            "POSITION_BITS": routed.size, "LOGIT_DEPTH": logit_ring_depth(cfg)}
