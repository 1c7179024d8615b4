"""paged_decode_attention against decode_attention_ref.

Odd head counts (7, 28), GQA ratios 1, 4 and 7, block sizes 16 and 64, head_dim 16-128, lengths
ending mid-block and mid-tile, one split and several (same result), empty splits and empty rows,
preallocated out/scratch reuse. bf16 is compared with an fp32 reference on the same (rounded) inputs.
"""
from __future__ import annotations

import pytest
import torch

from engine.kernels.decode_attention import decode_num_splits, decode_scratch_numel, paged_decode_attention
from engine.kernels.reference import decode_attention_ref

from .conftest import tolerance


def _reference(q, k_cache, v_cache, block_tables, seq_lens, scale):
    out = decode_attention_ref(q.float(), k_cache.float(), v_cache.float(), block_tables, seq_lens, scale,
                               int(seq_lens.max()))
    return out.masked_fill((seq_lens == 0)[:, None, None], 0.0)  # empty rows: the kernel gives 0


CASES = [  # num_heads, num_kv_heads, head_dim, block_size, dtype
    (28, 4, 64, 16, torch.float32),   # Qwen2.5-7B's group of 7
    (8, 2, 128, 64, torch.bfloat16),  # group of 4, head_dim 128, big blocks
    (7, 7, 32, 16, torch.float32),    # MHA, odd head count
    (28, 4, 128, 16, torch.bfloat16),
    (4, 1, 16, 64, torch.float16),
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CASES)
def test_decode_matches_reference(num_heads, num_kv_heads, head_dim, block_size, dtype, device, paged_kv):
    seq_lens = [37, 130, 1, 65]  # mid-block, past two 64-token tiles, a single token, one past a tile
    k_cache, v_cache, tables, lens = paged_kv(seq_lens, num_kv_heads, head_dim, block_size, dtype, device)
    q = torch.randn(len(seq_lens), num_heads, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    ref = _reference(q, k_cache, v_cache, tables, lens, scale)
    results = []
    for splits in (1, 3):
        out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
        paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=splits, out=out)
        torch.testing.assert_close(out.float(), ref, **tolerance(dtype))
        results.append(out)
    # Splitting only changes the order of the softmax merge.
    torch.testing.assert_close(results[0], results[1], **tolerance(dtype))


def test_decode_default_splits_and_idle_splits(device, paged_kv):
    """More splits than a request has tiles: the extra splits are no-ops the reduce ignores."""
    seq_lens = [5, 200, 16]
    k_cache, v_cache, tables, lens = paged_kv(seq_lens, 2, 64, 16, torch.float32, device, seed=1)
    q = torch.randn(3, 8, 64, device=device)
    ref = _reference(q, k_cache, v_cache, tables, lens, 0.125)
    for splits in (None, 8):
        out = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125, num_splits=splits)
        torch.testing.assert_close(out, ref, **tolerance(torch.float32))


def test_decode_empty_rows_and_buffer_reuse(device, paged_kv):
    """seq_len 0 (a CUDA-graph padding row) gives zeros; out and scratch are reused across calls."""
    seq_lens = [70, 0, 33]
    k_cache, v_cache, tables, lens = paged_kv([70, 1, 33], 4, 32, 16, torch.float32, device, seed=2)
    lens[1] = 0
    q = torch.randn(3, 4, 32, device=device)
    splits = 4
    out = torch.full_like(q, float("nan"))
    scratch = torch.full((decode_scratch_numel(3, 4, 32, splits) + 100,), float("nan"), device=device)
    for step in range(2):
        paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.2, num_splits=splits, out=out, scratch=scratch)
        torch.testing.assert_close(out, _reference(q, k_cache, v_cache, tables, lens, 0.2),
                                   **tolerance(torch.float32))
        assert not out[1].any()
        q = torch.randn_like(q)  # the second call must not see anything left over from the first


def test_decode_strided_q(device, paged_kv):
    """q as a slice of a fused qkv output (token stride > H * D)."""
    k_cache, v_cache, tables, lens = paged_kv([50, 9], 2, 32, 16, torch.float32, device, seed=3)
    qkv = torch.randn(2, 14, 32, device=device)
    q = qkv[:, :10]
    out = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.3, num_splits=2)
    torch.testing.assert_close(out, _reference(q.contiguous(), k_cache, v_cache, tables, lens, 0.3),
                               **tolerance(torch.float32))


def test_split_heuristic():
    # Batch 1 with Qwen2.5-7B's 4 kv heads and a 32k table: as many splits as allowed.
    assert decode_num_splits(1, 4, 2048, 16, 128, "cpu") == 64
    # Batch 32: 128 pairs, 4 splits fill 4 programs per SM of 132.
    assert decode_num_splits(32, 4, 256, 16, 128, "cpu") == 4
    # A table of 2 blocks holds one 64-token tile: one split, never idle splits by construction.
    assert decode_num_splits(1, 4, 2, 16, 128, "cpu") == 1
    # Big batches fill the SMs on their own.
    assert decode_num_splits(256, 8, 2048, 16, 128, "cpu") == 1
    # Shapes only: the same shapes give the same answer (CUDA-graph safe).
    assert decode_num_splits(8, 4, 256, 16, 128, "cpu") == decode_num_splits(8, 4, 256, 16, 128, "cpu")


def test_decode_rejects_bad_shapes(device):
    q = torch.randn(2, 6, 64, device=device)
    cache = torch.randn(4, 16, 4, 64, device=device)  # 6 heads are not a multiple of 4 kv heads
    tables = torch.zeros(2, 2, dtype=torch.int32, device=device)
    lens = torch.ones(2, dtype=torch.int32, device=device)
    with pytest.raises(ValueError):
        paged_decode_attention(q, cache, cache, tables, lens, 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("num_heads,num_kv_heads", [(28, 4), (32, 8)])  # Qwen2.5-7B, Llama-3-8B
@pytest.mark.parametrize("block_size", [16, 64])
def test_decode_gpu_realistic(num_heads, num_kv_heads, block_size, paged_kv):
    dtype = torch.bfloat16
    for seq_lens in ([32768], [4096, 32001, 1, 17000, 4097, 777, 8191, 12345]):
        k_cache, v_cache, tables, lens = paged_kv(seq_lens, num_kv_heads, 128, block_size, dtype, "cuda")
        q = torch.randn(len(seq_lens), num_heads, 128, device="cuda", dtype=dtype)
        ref = _reference(q, k_cache, v_cache, tables, lens, 128 ** -0.5)
        for splits in (None, 1, 7):
            out = paged_decode_attention(q, k_cache, v_cache, tables, lens, 128 ** -0.5, num_splits=splits)
            torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
def test_decode_cuda_graph_replay(paged_kv):
    """Captured once, replayed after seq_lens, tables and q change in place: no host syncs, no allocations."""
    dtype = torch.bfloat16
    k_cache, v_cache, tables, lens = paged_kv([3000, 5000, 100, 1], 4, 128, 16, dtype, "cuda")
    q = torch.randn(4, 28, 128, device="cuda", dtype=dtype)
    splits = decode_num_splits(4, 4, tables.shape[1], 16, 128, "cuda")
    out = torch.empty_like(q)
    scratch = torch.empty(decode_scratch_numel(4, 28, 128, splits), device="cuda")
    run = lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.088, num_splits=splits, out=out,
                                         scratch=scratch)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    # Table rows hold 3008, 5008, 112 and 16 tokens; flipping the table reverses those capacities.
    for new_lens in ([0, 2, 4000, 3001], [10, 5001, 112, 1]):
        tables.copy_(tables.flip(0))
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.testing.assert_close(out.float(), _reference(q, k_cache, v_cache, tables, lens, 0.088),
                                   atol=1e-2, rtol=1e-2)
