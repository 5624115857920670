"""Payload layouts of the HPU's streams, all derived from the one HPUConfig."""

from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data, memory

from hpu.config import HPUConfig

SCORE_BANKS = 2   # ingest fills one while the exp front end reads the other
E_BANKS = 2       # exp front end fills one while the MAC array reads the other


def score(cfg: HPUConfig) -> data.StructLayout:
    """One key's score, as the host sends it, and the end of its row."""
    return data.StructLayout({"score": signed(cfg.score_bits), "last": 1})


def request(cfg: HPUConfig) -> data.StructLayout:
    """A kept key's index in its row, as the HPU asks the host for its value vector."""
    return data.StructLayout({"index": range(cfg.max_keys), "last": 1})


def value_word(cfg: HPUConfig) -> data.ArrayLayout:
    """One value vector, as the host answers a request."""
    return data.ArrayLayout(signed(cfg.value_bits), cfg.head_dim)


def logit(cfg: HPUConfig) -> data.StructLayout:
    """One token's router logit, as the host sends it, and the end of its block."""
    return data.StructLayout({"logit": signed(cfg.route_bits), "last": 1})


def routed(cfg: HPUConfig) -> data.StructLayout:
    """A routed token's position in its block, ascending; ``last`` on the block's final one."""
    return data.StructLayout({"position": range(max(1, cfg.route_block)), "last": 1})


def ingested(cfg: HPUConfig) -> data.StructLayout:
    """Ingest -> exp front end: a row is in the buffers."""
    return data.StructLayout({
        "n": unsigned(cfg.count_bits),
        "m": signed(cfg.score_bits),
        "score_bank": range(SCORE_BANKS),
    })


def gated(cfg: HPUConfig) -> data.StructLayout:
    """Exp front end and gate -> MAC array: which keys of the row are kept.

    A key j is kept when ``keep_all``, or ``e_j > threshold``, or ``e_j == threshold``
    and fewer than ``ties`` earlier keys had ``e == threshold``; ``kept`` counts them (n with
    ``keep_all``).
    """
    return data.StructLayout({
        "n": unsigned(cfg.count_bits),
        "kept": unsigned(cfg.count_bits),
        "z_kept": unsigned(cfg.z_bits),
        "keep_all": 1,
        "threshold": unsigned(cfg.prob_bits),
        "ties": unsigned(cfg.count_bits),
        "e_bank": range(E_BANKS),
    })


def row_totals(cfg: HPUConfig) -> data.StructLayout:
    """Fetch sequencer -> MAC array, once per row: how many slots follow, and the totals the
    normalizer needs."""
    return data.StructLayout({
        "slots": unsigned(cfg.count_bits),
        "z_kept": unsigned(cfg.z_bits),
        "kept": unsigned(cfg.count_bits),
    })


def slot(cfg: HPUConfig) -> data.StructLayout:
    """Fetch sequencer -> MAC array: one key's turn in the lanes. A kept slot multiplies ``e`` with
    the next value vector on the values stream; a gated one (lockstep only) passes with the lanes
    silent."""
    return data.StructLayout({"e": unsigned(cfg.prob_bits), "kept": 1})


def accumulated(cfg: HPUConfig) -> data.StructLayout:
    """MAC array -> normalizer."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(cfg.acc_bits), cfg.head_dim),
        "z_kept": unsigned(cfg.z_bits),
        "kept": unsigned(cfg.count_bits),
    })


def result(cfg: HPUConfig) -> data.StructLayout:
    """One row's results, as the host receives them."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(cfg.acc_bits), cfg.head_dim),
        "out": data.ArrayLayout(signed(cfg.out_bits), cfg.head_dim),
        "z_kept": unsigned(cfg.z_bits),
        "kept": unsigned(cfg.count_bits),
    })


def bank_address(cfg: HPUConfig, bank, index):
    """Word address of key ``index`` in row bank ``bank`` of a row-buffer memory."""
    return bank * cfg.max_keys + index


# The row buffers: name -> (banks, word shape). One row per bank, one word per key.
def _buffers(cfg: HPUConfig) -> dict:
    return {
        "score": (SCORE_BANKS, signed(cfg.score_bits)),
        "e": (E_BANKS, unsigned(cfg.prob_bits)),
    }


def buffer_memory(cfg: HPUConfig, name: str, init=()) -> memory.Memory:
    banks, shape = _buffers(cfg)[name]
    return memory.Memory(shape=shape, depth=banks * cfg.max_keys, init=list(init))


def _port_args(cfg: HPUConfig, name: str) -> dict:
    banks, shape = _buffers(cfg)[name]
    return {"addr_width": max(1, (banks * cfg.max_keys - 1).bit_length()), "shape": shape}


def read_port(cfg: HPUConfig, name: str) -> memory.ReadPort.Signature:
    """Signature of a read port of row buffer ``name`` (a unit takes it as ``In(...)`` to drive it)."""
    return memory.ReadPort.Signature(**_port_args(cfg, name))


def write_port(cfg: HPUConfig, name: str) -> memory.WritePort.Signature:
    return memory.WritePort.Signature(**_port_args(cfg, name))
