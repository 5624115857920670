"""Rows per second of the bit-accurate model (golden_model.contract.run_contract) on the CPU.

    python -m benchmarks.golden_rows [--config FILE] [--rows R] [--repeats K] [-o JSON]

Random rows of length max_keys with their own value vectors (the RTL's view:
Q = 1 query per value set), values stored in the narrowest integer type that
holds value_bits. Reports the best and median of K timed repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import write
from golden_model.contract import run_contract
from hpu.config import HPUConfig


def storage_dtype(bits: int) -> torch.dtype:
    return next(t for t, w in ((torch.int8, 8), (torch.int16, 16), (torch.int32, 32)) if bits <= w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", default="benchmarks/results/golden_rows.json")
    args = parser.parse_args()
    cfg = HPUConfig.load(args.config)
    gen = torch.Generator().manual_seed(0)
    half_s, half_v = 1 << (cfg.score_bits - 1), 1 << (cfg.value_bits - 1)
    scores = torch.randint(-half_s, half_s, (args.rows, 1, cfg.max_keys), generator=gen,
                           dtype=storage_dtype(cfg.score_bits))
    values = torch.randint(-half_v, half_v, (args.rows, cfg.max_keys, cfg.head_dim), generator=gen,
                           dtype=storage_dtype(cfg.value_bits))
    results = {}
    for mode in ("dense", "topk", "mass"):
        mode_cfg = cfg.replace(mode=mode)
        run_contract(mode_cfg, scores[:256], values[:256])
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run_contract(mode_cfg, scores, values)
            rates.append(args.rows / (time.perf_counter() - start))
        results[mode] = {"rows_per_s_best": max(rates), "rows_per_s_median": statistics.median(rates)}
        print(f"{mode:6} best {max(rates):9.0f} rows/s  median {statistics.median(rates):9.0f} rows/s")
    write(args.output, {"benchmark": "golden_rows", "config": cfg.to_dict(), "rows": args.rows,
                        "n": cfg.max_keys, "head_dim": cfg.head_dim, "repeats": args.repeats,
                        "target_rows_per_s": 10000, "results": results})


if __name__ == "__main__":
    main()
