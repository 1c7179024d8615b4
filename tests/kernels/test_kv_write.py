"""write_kv against write_kv_ref: odd head counts, both block sizes, strided inputs, slot -1 skipped."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.kv_write import write_kv
from engine.kernels.reference import write_kv_ref


def _run(num_tokens, num_kv_heads, head_dim, block_size, dtype, device, skip_every=0):
    gen = torch.Generator().manual_seed(1)
    num_blocks = num_tokens // block_size + 3
    # k, v as strided slices of one fused qkv-like buffer, as the attention layer hands them over.
    qkv = torch.randn(num_tokens, 5, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    k, v = qkv[:, 1], qkv[:, 3]
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(cache_shape, generator=gen).to(dtype).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    if skip_every:
        slots[::skip_every] = -1
    slots = slots.to(device)
    keep = slots >= 0
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    write_kv_ref(k[keep], v[keep], k_ref, v_ref, slots[keep])
    write_kv(k, v, k_cache, v_cache, slots)
    # Bit-exact: a copy, and every slot not written (skipped rows included) keeps its old contents.
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("num_kv_heads,head_dim,block_size,dtype", [
    (3, 64, 16, torch.float32), (1, 128, 64, torch.bfloat16), (7, 32, 16, torch.float16), (4, 16, 64, torch.float32),
])
def test_write_kv(num_kv_heads, head_dim, block_size, dtype, device):
    _run(37, num_kv_heads, head_dim, block_size, dtype, device)


def test_write_kv_skips_negative_slots(device):
    _run(29, 2, 64, 16, torch.bfloat16, device, skip_every=3)


def test_write_kv_empty(device):
    cache = torch.zeros(2, 16, 2, 32, device=device)
    write_kv(torch.empty(0, 2, 32, device=device), torch.empty(0, 2, 32, device=device), cache, cache.clone(),
             torch.empty(0, dtype=torch.int64, device=device))
    assert not cache.any()


@pytest.mark.gpu
def test_write_kv_gpu_realistic():
    for block_size in (16, 64):
        _run(4096, 4, 128, block_size, torch.bfloat16, "cuda", skip_every=97)
        _run(4096, 8, 128, block_size, torch.bfloat16, "cuda")
