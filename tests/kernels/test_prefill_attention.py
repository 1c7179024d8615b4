"""paged_prefill_attention against prefill_attention_ref.

Batches mixing fresh prompts, chunks with earlier cached context (chunked prefill, prefix-cache
hits), one-token decode rows and empty chunks; odd head counts, GQA ratios 1, 4 and 7, block sizes
16 and 64, head_dim 16-128; bf16 against an fp32 reference on the same rounded inputs.
"""
from __future__ import annotations

import pytest
import torch

from engine.kernels.prefill_attention import paged_prefill_attention
from engine.kernels.reference import prefill_attention_ref

from .conftest import tolerance


def _run(query_lens, contexts, num_heads, num_kv_heads, head_dim, block_size, dtype, device, paged_kv, atol=None,
         batch_invariant=False):
    seq_lens = [q + c for q, c in zip(query_lens, contexts)]
    k_cache, v_cache, tables, lens = paged_kv([max(s, 1) for s in seq_lens], num_kv_heads, head_dim, block_size,
                                              dtype, device)
    lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    qsl = torch.tensor(starts, dtype=torch.int32, device=device)
    q = torch.randn(starts[-1], num_heads, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
    paged_prefill_attention(q, k_cache, v_cache, qsl, lens, tables, scale, max(query_lens), out=out,
                            batch_invariant=batch_invariant)
    tol = tolerance(dtype) if atol is None else {"atol": atol, "rtol": atol}
    for i, (n, s) in enumerate(zip(query_lens, seq_lens)):
        if n == 0:
            continue
        rows = slice(starts[i], starts[i + 1])
        ref = prefill_attention_ref(q[rows].float(), k_cache.float(), v_cache.float(), tables[i], s, scale)
        torch.testing.assert_close(out[rows].float(), ref, **tol, msg=lambda m: f"request {i}: {m}")


CASES = [  # num_heads, num_kv_heads, head_dim, block_size, dtype
    (28, 4, 64, 16, torch.float32),   # Qwen2.5-7B's group of 7
    (8, 2, 128, 64, torch.bfloat16),  # group of 4, head_dim 128, big blocks
    (7, 7, 32, 16, torch.float32),    # MHA, odd head count
    (28, 4, 128, 64, torch.bfloat16),
    (4, 1, 16, 16, torch.float16),
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CASES)
def test_prefill_mixed_batch(num_heads, num_kv_heads, head_dim, block_size, dtype, device, paged_kv):
    # A fresh prompt ending mid-block, a decode row, an empty chunk, and a chunk after 17 cached tokens.
    _run([21, 1, 0, 30], [0, 40, 5, 17], num_heads, num_kv_heads, head_dim, block_size, dtype, device, paged_kv)


def test_prefill_batch_invariant_mode_is_still_correct(device, paged_kv):
    _run([21, 1, 0, 30], [0, 40, 5, 17], 28, 4, 64, 16, torch.bfloat16, device, paged_kv, batch_invariant=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_batch_invariant_rows_do_not_depend_on_chunking(dtype, device, paged_kv):
    """The last 23 rows of a 150-token prompt have the same bits whether the prompt runs as one chunk,
    as 127 cached + 23 new tokens (a prefix-cache hit), or beside other requests."""
    heads, kv_heads, dim = 28, 4, 64
    k_cache, v_cache, tables, lens = paged_kv([150], kv_heads, dim, 16, dtype, device)
    q = torch.randn(150, heads, dim).to(dtype).to(device)

    def attend(q_rows, qsl, seq_lens, table_rows, max_len):
        return paged_prefill_attention(q_rows, k_cache, v_cache, torch.tensor(qsl, dtype=torch.int32, device=device),
                                       torch.tensor(seq_lens, dtype=torch.int32, device=device), table_rows,
                                       0.125, max_len, batch_invariant=True)

    whole = attend(q, [0, 150], [150], tables, 150)[127:]
    chunk = attend(q[127:].contiguous(), [0, 23], [150], tables, 23)
    mixed = attend(torch.cat([q[:5], q[127:]]), [0, 5, 28], [5, 150], tables.repeat(2, 1), 23)[5:]
    assert torch.equal(whole, chunk) and torch.equal(whole, mixed)


def test_prefill_single_prompt_gqa7(device, paged_kv):
    _run([50], [0], 14, 2, 64, 16, torch.float32, device, paged_kv)


def test_prefill_long_cached_prefix(device, paged_kv):
    """A short chunk after a prefix longer than the chunk (a prefix-cache hit): unmasked tiles then the diagonal."""
    _run([9, 3], [150, 64], 4, 4, 32, 64, torch.float32, device, paged_kv)


def test_prefill_decode_rows_only(device, paged_kv):
    _run([1, 1, 1], [0, 63, 100], 8, 2, 32, 16, torch.bfloat16, device, paged_kv)


def test_prefill_strided_q(device, paged_kv):
    k_cache, v_cache, tables, lens = paged_kv([20], 2, 32, 16, torch.float32, device)
    qkv = torch.randn(20, 12, 32, device=device)
    q = qkv[:, :8]
    qsl = torch.tensor([0, 20], dtype=torch.int32, device=device)
    out = paged_prefill_attention(q, k_cache, v_cache, qsl, lens, tables, 0.2, 20)
    ref = prefill_attention_ref(q.contiguous(), k_cache, v_cache, tables[0], 20, 0.2)
    torch.testing.assert_close(out, ref, **tolerance(torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("num_heads,num_kv_heads", [(28, 4), (32, 8)])  # Qwen2.5-7B, Llama-3-8B
@pytest.mark.parametrize("block_size", [16, 64])
def test_prefill_gpu_realistic(num_heads, num_kv_heads, block_size, paged_kv):
    # A 1024-token prompt, a 1000-token chunk after 3000 cached tokens, decode rows at 4k context, and
    # an odd-length prompt.
    _run([1024, 1000, 1, 1, 333], [0, 3000, 4095, 17, 0], num_heads, num_kv_heads, 128, block_size,
         torch.bfloat16, "cuda", paged_kv, atol=1e-2)
