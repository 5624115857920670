"""Mass-gated block-sparse attention on a GPU against PyTorch's dense attention and FlexAttention.

    python -m benchmarks.attention_gpu [--seqs 4096 8192 16384 32768] [-o JSON]

bf16, batch 1, 16 heads, head_dim 128, gate blocks of 128 tokens, causal and not. Peers: SDPA
(flash backend), FlexAttention dense, and FlexAttention with a BlockMask holding exactly the
blocks our gate kept. Ours in dense mode (no selection, no list), and gated at block density
100% / 50% / 20% (mass target 1.0, permeability = density, so the permeability alone sets how many
blocks each query block keeps); the gate's selection is timed apart and included in "ours_total",
and the total's speedups are printed first. TFLOP/s count the work actually done (4 x head_dim x
computed query-key pairs, diagonal blocks of a causal mask at half). Needs CUDA; CI never runs it.
"""

from __future__ import annotations

import argparse

import torch
import triton

from benchmarks.common import write
from gpu_kernels.block_sparse import attend, select

BLOCK = 128
HEADS = 16
HEAD_DIM = 128


def flops(selection, causal: bool) -> float:
    pairs = float(selection.kv_count.sum()) * BLOCK * BLOCK
    if causal:
        pairs -= selection.kv_count.numel() * BLOCK * BLOCK / 2  # one diagonal block per query block
    return 4.0 * HEAD_DIM * pairs


def gpu_ms(fn, repeats: int = 50) -> float:
    """GPU time per call with the host's launch cost hidden: the calls are queued behind a sleeping
    kernel, so the events time the GPU's work alone (do_bench times whichever of the two is slower)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def causal_mod(b, h, q, kv):
    return q >= kv


def as_block_mask(selection, causal: bool, block: int = BLOCK):
    """FlexAttention's BlockMask over exactly the key blocks the gate kept, as a tuned peer would hand
    it over: every kept block whole ("full", no mask evaluated in it) but the causal diagonal, the
    only block the causal mask cuts. (Given as partial blocks, Flex would evaluate the mask on every
    element of every kept block: a slower peer than Flex's own create_block_mask gives.)"""
    from torch.nn.attention.flex_attention import BlockMask

    batch, heads = selection.heads
    blocks = selection.kv_index.shape[1]
    index = selection.kv_index.reshape(batch, heads, blocks, blocks)
    count = selection.kv_count.reshape(batch, heads, blocks)
    if not causal:
        return BlockMask.from_kv_blocks(torch.zeros_like(count), index, count, index, BLOCK_SIZE=block)
    # Kept blocks are listed ascending, so a kept diagonal is the last of its row's list.
    row = torch.arange(blocks, device=index.device, dtype=index.dtype).expand(batch, heads, blocks)
    last = index.gather(-1, (count.long() - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    diagonal = ((count > 0) & (last == row)).to(count.dtype)
    return BlockMask.from_kv_blocks(diagonal, row.unsqueeze(-1).expand_as(index).contiguous(), count - diagonal, index,
                                    BLOCK_SIZE=block, mask_mod=causal_mod)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    parser.add_argument("-o", "--output", default="benchmarks/results/attention_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_gpu needs a CUDA GPU (run it through the device tool)")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention)

    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)  # noqa: E731
    rows = []
    for n in args.seqs:
        for causal in (False, True):
            g = torch.Generator(device="cuda").manual_seed(n)
            q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
                       for _ in range(3))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                sdpa_ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
            full = select(q, k, BLOCK, 1.0, 1.0, causal)
            dense_mask = as_block_mask(full, causal) if causal else None
            flex_dense_ms = bench(lambda: flex(q, k, v, block_mask=dense_mask))
            ours_dense_ms = bench(lambda: attend(q, k, v, None, BLOCK, causal))
            dense_flops = flops(full, causal)
            row = {"seq": n, "causal": causal, "sdpa_dense_ms": sdpa_ms, "flex_dense_ms": flex_dense_ms,
                   "ours_dense_ms": ours_dense_ms, "ours_dense_vs_flex_dense": flex_dense_ms / ours_dense_ms,
                   "sdpa_dense_tflops": dense_flops / sdpa_ms / 1e9, "flex_dense_tflops": dense_flops / flex_dense_ms / 1e9,
                   "ours_dense_tflops": dense_flops / ours_dense_ms / 1e9, "densities": {}}
            print(f"N={n:6} causal={causal!s:5} dense mode: ours {ours_dense_ms:.3f} ms, flex dense {flex_dense_ms:.3f}, "
                  f"sdpa {sdpa_ms:.3f}: x{flex_dense_ms / ours_dense_ms:.2f} vs flex dense", flush=True)
            for density in args.densities:
                selection = select(q, k, BLOCK, 1.0, density, causal)
                select_ms = bench(lambda: select(q, k, BLOCK, 1.0, density, causal))
                select_gpu_ms = gpu_ms(lambda: select(q, k, BLOCK, 1.0, density, causal))
                ours_ms = bench(lambda: attend(q, k, v, selection, BLOCK, causal))
                mask = as_block_mask(selection, causal)
                flex_sparse_ms = bench(lambda: flex(q, k, v, block_mask=mask))
                ours = attend(q, k, v, selection, BLOCK, causal)
                theirs = flex(q, k, v, block_mask=mask)
                work = flops(selection, causal)
                row["densities"][str(density)] = {
                    "measured_density": selection.density, "select_ms": select_ms, "select_gpu_ms": select_gpu_ms,
                    "ours_ms": ours_ms,
                    "ours_total_ms": select_ms + ours_ms, "flex_same_blocks_ms": flex_sparse_ms,
                    "ours_tflops": work / ours_ms / 1e9, "flex_same_blocks_tflops": work / flex_sparse_ms / 1e9,
                    "speedup_vs_sdpa_dense": sdpa_ms / ours_ms, "speedup_total_vs_sdpa_dense": sdpa_ms / (select_ms + ours_ms),
                    "speedup_vs_flex_same_blocks": flex_sparse_ms / ours_ms,
                    "speedup_total_vs_flex_same_blocks": flex_sparse_ms / (select_ms + ours_ms),
                    "max_abs_diff_vs_flex": float((ours.float() - theirs.float()).abs().max()),
                }
                print(f"N={n:6} causal={causal!s:5} density {density:.1f}: total x{sdpa_ms / (select_ms + ours_ms):.2f} "
                      f"vs sdpa, x{flex_sparse_ms / (select_ms + ours_ms):.2f} vs flex same blocks | ours "
                      f"{select_ms + ours_ms:.3f} ms = select {select_ms:.3f} (GPU alone {select_gpu_ms:.3f}) + attention {ours_ms:.3f} "
                      f"(x{flex_sparse_ms / ours_ms:.2f} vs flex {flex_sparse_ms:.3f}), sdpa dense {sdpa_ms:.3f}; "
                      f"diff {row['densities'][str(density)]['max_abs_diff_vs_flex']:.3g}", flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    write(args.output, {"benchmark": "attention_gpu", "device": torch.cuda.get_device_name(),
                        "triton": triton.__version__, "cuda": torch.version.cuda,
                        "shape": {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM, "block": BLOCK, "dtype": "bfloat16"},
                        "results": rows})


if __name__ == "__main__":
    main()
