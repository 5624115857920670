"""Warps per program of the block gate's selection kernels, swept on a GPU.

    python -m benchmarks.select_tuning [--seqs 16384 4096] [-o JSON]

bf16, batch 1, 16 heads, head_dim 128, gate blocks of 128 tokens, mass target 1.0, permeability 0.2.
Times the whole selection's GPU work (launch cost hidden, benchmarks.attention_gpu.gpu_ms), and
with its launch cost (do_bench), for
every number of query blocks per selection program and selection warps, causal and not, with the
pooling at its chosen step and warps, and the pooling alone. Needs CUDA; CI never runs it.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton

import gpu_kernels.block_sparse as block_sparse
from benchmarks.attention_gpu import BLOCK, HEAD_DIM, HEADS, gpu_ms
from benchmarks.common import write

WARPS = (4, 8, 16)
ROWS = (16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[16384, 4096])
    parser.add_argument("-o", "--output", default="benchmarks/results/select_tuning.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("select_tuning needs a CUDA GPU (run it through the device tool)")
    rows = []
    for n, causal in itertools.product(args.seqs, (False, True)):
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k = (torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        pool_ms = gpu_ms(lambda: block_sparse.pool(q, k, BLOCK))
        for per_program, warps in itertools.product(ROWS, WARPS):
            block_sparse.SELECT_ROWS, block_sparse.SELECT_WARPS = per_program, warps
            ms = gpu_ms(lambda: block_sparse.select(q, k, BLOCK, 1.0, 0.2, causal))
            launched_ms = triton.testing.do_bench(lambda: block_sparse.select(q, k, BLOCK, 1.0, 0.2, causal),
                                                  warmup=25, rep=100)
            rows.append({"seq": n, "causal": causal, "pool_rows": block_sparse.POOL_ROWS,
                         "pool_warps": block_sparse.POOL_WARPS, "select_rows": per_program, "select_warps": warps,
                         "gpu_ms": ms, "with_launch_ms": launched_ms, "pool_gpu_ms": pool_ms})
            print(f"N={n} causal={causal!s:5} select: {per_program} query blocks per program, {warps} warps: "
                  f"{ms:.4f} ms (pooling {pool_ms:.4f}); with launch cost {launched_ms:.4f} ms", flush=True)
    write(args.output, {"benchmark": "select_tuning", "device": torch.cuda.get_device_name(),
                        "triton": triton.__version__, "torch": torch.__version__, "results": rows})


if __name__ == "__main__":
    main()
