"""Sparse-query attention (token routing) on a GPU against PyTorch's dense attention and FlexAttention.

    python -m benchmarks.routing_gpu [--seqs 4096 16384 65536] [--fractions 0.2 0.5] [-o JSON]

Batch 1, 16 query heads, head_dim 128, causal; 16 and 4 key/value heads (GQA 4:1); fp16 and bf16.
Routed tokens are the top fraction of random router logits (randomly placed). Peers: SDPA (flash)
dense over every query, and FlexAttention over the gathered routed queries with
`mask_mod = pos[q] >= kv` (its BlockMask built beforehand, not timed; the gather of q not timed
either). Ours: the router's top-k on the GPU (`gpu_kernels.sqdk.route`, timed apart), the SQDK kernel
(gather and scatter fused, timed apart), and both in one call (`routed_attention` without its NaN
check, a host sync a caller places where it costs nothing): the total. TFLOP/s count the work done: 4 x head_dim x heads x
the query-key pairs of the routed rows (a causal row at position p has p + 1 keys). Needs CUDA; CI
never runs it.
"""

from __future__ import annotations

import argparse

import torch
import triton

from benchmarks.common import write
from gpu_kernels.sqdk import route, routed_attention, sqdk

HEADS = 16
HEAD_DIM = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[16, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("-o", "--output", default="benchmarks/results/routing_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("routing_gpu needs a CUDA GPU (run it through the device tool)")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # Every routed count is a new shape for FlexAttention's compiled kernel: allow them all.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    flex = torch.compile(flex_attention)
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)  # noqa: E731
    rows = []
    for n in args.seqs:
        for kv_heads in args.kv_heads:
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                g = torch.Generator(device="cuda").manual_seed(n)
                q = torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=dtype, generator=g)
                k, v = (torch.randn(1, kv_heads, n, HEAD_DIM, device="cuda", dtype=dtype, generator=g) for _ in range(2))
                gqa = kv_heads != HEADS
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    sdpa_ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=True, enable_gqa=gqa))
                dense_pairs = n * (n + 1) / 2
                row = {"seq": n, "kv_heads": kv_heads, "dtype": dtype_name, "sdpa_dense_ms": sdpa_ms,
                       "sdpa_dense_tflops": 4 * HEAD_DIM * HEADS * dense_pairs / sdpa_ms / 1e9, "fractions": {}}
                for fraction in args.fractions:
                    logits = torch.randn(1, n, device="cuda", generator=g)
                    positions, _ = route(logits, fraction)
                    route_ms = bench(lambda: route(logits, fraction))
                    ours_ms = bench(lambda: sqdk(q, k, v, positions, causal=True))
                    total = bench(lambda: routed_attention(q, k, v, logits, fraction, causal=True, check=False))
                    pos = positions[0]

                    def routed_causal(b, h, qi, kv):
                        return pos[qi] >= kv

                    block_mask = create_block_mask(routed_causal, B=None, H=None, Q_LEN=pos.numel(), KV_LEN=n,
                                                   device="cuda")
                    gathered = q[:, :, pos].contiguous()
                    flex_ms = bench(lambda: flex(gathered, k, v, block_mask=block_mask, enable_gqa=gqa))
                    pairs = float((pos + 1).sum())
                    work = 4 * HEAD_DIM * HEADS * pairs
                    r = row["fractions"][str(fraction)] = {
                        "routed": int(pos.numel()), "route_ms": route_ms, "ours_attention_ms": ours_ms,
                        "ours_total_ms": total, "flex_gathered_ms": flex_ms,
                        "ours_tflops": work / ours_ms / 1e9, "flex_tflops": work / flex_ms / 1e9,
                        "total_vs_sdpa": sdpa_ms / total, "total_vs_flex": flex_ms / total,
                        "attention_vs_flex": flex_ms / ours_ms, "flex_vs_sdpa": sdpa_ms / flex_ms,
                        "ideal_vs_sdpa": 1 / fraction}
                    print(f"S {n:6d} kv {kv_heads:2d} {dtype_name:8} routed {fraction:.0%}: total {total:.3f} ms "
                          f"(route {route_ms:.3f} + attention {ours_ms:.3f}), {r['ours_tflops']:.0f} TFLOP/s; "
                          f"x{r['total_vs_sdpa']:.2f} SDPA ({sdpa_ms:.3f} ms), x{r['total_vs_flex']:.2f} Flex "
                          f"({flex_ms:.3f} ms); ideal x{1 / fraction:.1f}", flush=True)
                rows.append(row)
    props = torch.cuda.get_device_properties(0)
    write(args.output, {"benchmark": "routing_gpu", "device": props.name, "triton": triton.__version__,
                        "heads": HEADS, "head_dim": HEAD_DIM, "causal": True, "rows": rows})


if __name__ == "__main__":
    main()
