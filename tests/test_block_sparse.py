"""The block gate (float reference) and the block-sparse Triton attention that must match it.

Tolerance: against the float32 reference on the same kept blocks, the kernel's output may differ by
at most 2e-2 (bf16) or 4e-3 (fp16) absolute on unit-variance inputs (about 2 ulp of bf16 at 1.0).
On the CPU interpreter only fp16 runs (it has no bfloat16 arithmetic); bf16 runs on a GPU."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from golden_model.block_gate import block_attention, block_mask, mass_gated_block_attention
from hpu.errors import InputError
from gpu_kernels import DEVICE
from gpu_kernels.block_sparse import attend, mass_gated_attention, select

DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def qkv(seed, n, d, dtype=torch.float32, heads=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, d, generator=g).to(dtype) for _ in range(3)]


@given(st.integers(0, 2**31), st.sampled_from([0.25, 0.5, 1.0]), st.sampled_from([0.5, 0.9, 1.0]), st.booleans())
def test_block_mask_follows_the_mass_rule(seed, permeability, mass_target, causal):
    q, k, _ = qkv(seed, 512, 16)
    block = 64
    keep = block_mask(q, k, block, mass_target, permeability, causal)
    blocks = 512 // block
    for qb in range(blocks):
        visible = qb + 1 if causal else blocks
        row = keep[0, 0, qb]
        assert not row[visible:].any()
        kept = int(row.sum())
        assert 1 <= kept <= max(math.ceil(permeability * visible), 1) + (1 if causal else 0)
        if causal:
            assert row[qb]
    if mass_target == 1.0 and permeability == 1.0:
        full = torch.ones(blocks, blocks, dtype=torch.bool)
        assert torch.equal(keep[0, 0], full.tril() if causal else full)


def test_block_mask_keeps_the_largest_mass_first():
    q, k, _ = qkv(3, 256, 16, heads=1)
    k[0, 0, 128:192] += 3 * q[0, 0].mean(0)  # key block 2 aligns with every query block
    keep = block_mask(q, k, 64, 0.5, 0.25, causal=False)
    assert keep[0, 0, :, 2].all() and int(keep.sum()) == 4


def test_dense_gate_is_exact_attention():
    q, k, v = qkv(5, 256, 32)
    for causal in (False, True):
        out, keep = mass_gated_block_attention(q, k, v, block=64, mass_target=1.0, permeability=1.0, causal=causal)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(out, sdpa, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_kernel_matches_reference(dtype, causal, head_dim, seed):
    q, k, v = (t.to(DEVICE) for t in qkv(seed % 2**31, 256, head_dim, dtype))
    out, selection = mass_gated_attention(q, k, v, block=64, mass_target=0.9, permeability=0.5, causal=causal)
    assert torch.equal(selection.keep, block_mask(q, k, 64, 0.9, 0.5, causal))
    reference = block_attention(q, k, v, selection.keep, 64, causal)
    assert (out.float() - reference).abs().max().item() <= TOLERANCE[dtype]


def test_kernel_dense_and_skipped_blocks(seed):
    q, k, v = (t.to(DEVICE) for t in qkv(seed % 2**31, 256, 64, torch.float16))
    selection = select(q, k, 64, 1.0, 1.0, causal=False)
    assert selection.density == 1.0
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert (attend(q, k, v, selection, 64, False).float() - sdpa).abs().max().item() <= TOLERANCE[torch.float16]
    # Make every query block keep key block 2 alone, then poison the others: a kernel that loaded a
    # skipped block would produce NaN.
    k = k.clone()
    k[..., 128:192, :] += 3 * q.float().mean(2, keepdim=True).to(k.dtype)
    selection = select(q, k, 64, 0.5, 0.25, causal=False)
    assert selection.keep[..., 2].all() and int(selection.kv_count.sum()) == selection.keep.shape[1] * 4
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for kb in (0, 1, 3):
        poisoned_k[..., kb * 64:(kb + 1) * 64, :] = float("nan")
        poisoned_v[..., kb * 64:(kb + 1) * 64, :] = float("nan")
    out = attend(q, poisoned_k, poisoned_v, selection, 64, False)
    assert not out.isnan().any()
    reference = block_attention(q, k, v, selection.keep, 64, False)
    assert (out.float() - reference).abs().max().item() <= TOLERANCE[torch.float16]


@pytest.mark.parametrize("causal", [False, True])
def test_dense_mode_is_exact_attention(causal, seed):
    q, k, v = (t.to(DEVICE) for t in qkv(seed % 2**31, 256, 64, torch.float16))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
    assert (attend(q, k, v, None, 64, causal).float() - sdpa).abs().max().item() <= TOLERANCE[torch.float16]


def kept_lists(keep):
    """The reference's keep mask as the kernel's lists: kept blocks ascending, then the rest ascending."""
    flat = keep.reshape(-1, keep.shape[-1])
    order = torch.argsort((~flat).int() * flat.shape[-1] + torch.arange(flat.shape[-1], device=flat.device), dim=-1)
    return order.int(), flat.sum(-1).int()


def assert_selection_is_the_reference(q, k, block, mass_target, permeability, causal):
    selection = select(q, k, block, mass_target, permeability, causal)
    keep = block_mask(q, k, block, mass_target, permeability, causal)
    index, count = kept_lists(keep)
    assert torch.equal(selection.keep, keep)
    assert torch.equal(selection.kv_count, count) and torch.equal(selection.kv_index, index)
    return selection


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("permeability, mass_target", [(0.5, 0.9), (0.25, 1.0), (1.0, 1.0), (0.3, 0.5), (0.1, 0.99)])
def test_selection_kernel_equals_the_reference(causal, permeability, mass_target, seed):
    """Kept lists, counts and masks bit for bit, over more query blocks than one program takes (20 of 64
    tokens: a partial second program) and a block count that is not a power of two."""
    q, k, _ = (t.to(DEVICE) for t in qkv(seed % 2**31, 20 * 64, 64, torch.float16))
    assert_selection_is_the_reference(q, k, 64, mass_target, permeability, causal)
    q, k, _ = (t.to(DEVICE) for t in qkv(seed % 2**31 + 1, 5 * 128, 128, torch.float16, heads=3))
    assert_selection_is_the_reference(q, k, 128, mass_target, permeability, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_selection_kernel_breaks_ties_by_index(causal, seed):
    """Key blocks that are copies of one another pool to the same key, so their masses tie exactly; a
    cap or a mass target inside the tie keeps the lowest indices, as the reference does."""
    q, k, _ = (t.to(DEVICE) for t in qkv(seed % 2**31, 12 * 64, 64, torch.float16))
    k = k.clone()
    for copy in (3, 5, 6, 9, 11):
        k[..., copy * 64:(copy + 1) * 64, :] = k[..., 64:128, :]
    for permeability, mass_target in ((0.25, 1.0), (0.5, 0.6), (1.0, 0.3)):
        assert_selection_is_the_reference(q, k, 64, mass_target, permeability, causal)
    # Every key block the same: all masses tie, and the cap keeps the first blocks by index.
    k[...] = k[..., :64, :].repeat(1, 1, 12, 1)
    selection = assert_selection_is_the_reference(q, k, 64, 1.0, 0.25, False)
    assert selection.keep[0, 0, 0].tolist() == [True] * 3 + [False] * 9


def test_bad_shapes_and_types_are_refused():
    q, k, v = qkv(1, 200, 64, torch.float16)
    with pytest.raises(InputError, match="200 is not a multiple of the block size 64"):
        mass_gated_attention(q, k, v, block=64)
    q, k, v = (t.to(DEVICE) for t in qkv(1, 128, 64))
    with pytest.raises(InputError, match="fp16 or bf16, got torch.float32"):
        attend(q, k, v, select(q, k, 64, 0.9, 0.5, False), 64, False)
    with pytest.raises(InputError, match="permeability 0 "):
        block_mask(q, k, 64, 0.9, 0, False)


@pytest.mark.parametrize("causal", [False, True])
def test_the_benchmarks_flex_peer_reads_the_kept_blocks_whole_but_the_diagonal(causal, seed):
    """`benchmarks.attention_gpu`'s FlexAttention peer: a BlockMask of exactly the kept blocks, each one
    whole (no mask evaluated in it) but the causal diagonal. (Flex's output under it needs a compiled
    Flex, which the CPU's inductor does not build for a causal mask_mod; eager Flex reads no block lists.)"""
    from benchmarks.attention_gpu import as_block_mask

    g = torch.Generator().manual_seed(seed)
    block, n = 16, 64
    q, k = (torch.randn(1, 2, n, 32, generator=g) for _ in range(2))
    selection = select(q.to(DEVICE, torch.float16), k.to(DEVICE, torch.float16), block, 1.0, 0.5, causal)
    mask = as_block_mask(selection, causal, block)
    keep = selection.keep.cpu()
    assert torch.equal(mask.to_dense().cpu().bool(), keep)
    # The blocks Flex masks element by element (the slots past a row's count point at a spare column).
    blocks = keep.shape[-1]
    listed = torch.arange(blocks) < mask.kv_num_blocks.cpu()[..., None]
    slots = torch.where(listed, mask.kv_indices.cpu().long(), blocks)
    partial = torch.zeros(*keep.shape[:-1], blocks + 1, dtype=torch.bool).scatter_(-1, slots, True)[..., :blocks]
    diagonal = torch.eye(blocks, dtype=torch.bool) & keep
    assert torch.equal(partial, diagonal if causal else torch.zeros_like(keep))
    # The blocks read whole lie below the diagonal when causal, where the causal mask keeps every element.
    whole = keep & ~partial
    assert not causal or not (whole & ~torch.ones(blocks, blocks, dtype=torch.bool).tril(-1)).any()
