"""Rows per second of the Triton HPU emulator against the torch bit-accurate model, on one device.

    python -m benchmarks.kernel_rows [--device cuda] [-o JSON]

Workload: every attention row of a MiniLM-shaped model at 256 tokens (6 layers
x 12 heads x 256 query rows, each over 256 keys; value sets shared per head),
with random integer scores and values at the default configuration's widths,
head_dim 64. Both implementations are checked identical on the whole batch
before timing.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import write
from golden_model.contract import run_contract
from hpu.config import HPUConfig
from gpu_kernels.exact import run_contract_triton


def timed(fn, device, repeats):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", default="benchmarks/results/kernel_rows.json")
    args = parser.parse_args()
    device = args.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    results = {}
    for mode in ("mass", "dense"):
        cfg = HPUConfig(mode=mode)
        sets, n = args.layers * args.heads, args.tokens
        scores = torch.randint(-2000, 2000, (sets, n, n), generator=gen).to(device)
        values = torch.randint(-128, 128, (sets, n, cfg.head_dim), generator=gen, dtype=torch.int8).to(device)
        lengths = torch.full((sets * n,), n, device=device)
        groups = torch.arange(sets, device=device).repeat_interleave(n)
        golden = lambda: run_contract(cfg, scores, values)                                   # noqa: E731
        kernel = lambda: run_contract_triton(cfg, scores.reshape(-1, n), values, lengths, groups)  # noqa: E731
        g, k = golden(), kernel()
        identical = all(torch.equal(getattr(g, f).reshape(k[f].shape), k[f]) for f in ("acc", "out", "z_kept", "kept"))
        rows = sets * n
        t_golden, t_kernel = timed(golden, device, args.repeats), timed(kernel, device, args.repeats)
        results[mode] = {"rows": rows, "identical": identical, "torch_rows_per_s": rows / t_golden,
                         "triton_rows_per_s": rows / t_kernel, "speedup": t_golden / t_kernel}
        print(f"{mode:5} rows {rows}  identical {identical}  torch {rows / t_golden:,.0f} rows/s  "
              f"triton {rows / t_kernel:,.0f} rows/s  x{t_golden / t_kernel:.1f}", flush=True)
    import triton

    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "triton": triton.__version__}
    write(args.output, {"benchmark": "kernel_rows", **info, "workload": vars(args), "results": results})


if __name__ == "__main__":
    main()
