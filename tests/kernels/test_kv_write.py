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


def _fused_against_two_kernels(bits, rot_dim, dtype, device, tokens=23, heads=6, kv_heads=2, head_dim=64,
                               block_size=16):
    from engine.kernels.rotary import apply_rotary

    gen = torch.Generator().manual_seed(2)
    num_blocks = tokens // block_size + 3
    qkv = torch.randn(tokens, heads + 2 * kv_heads, head_dim, generator=gen).to(dtype).to(device)
    positions = torch.randint(0, 100, (tokens,), generator=gen).to(device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(128).float(), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos().to(device), torch.cat((freqs, freqs), -1).sin().to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[::5] = -1
    slots = slots.to(device)
    width = head_dim * bits // 8 if bits else head_dim
    cache_dtype = torch.uint8 if bits else dtype

    def run(fused: bool):
        buf = qkv.clone()
        q, k, v = buf[:, :heads], buf[:, heads:heads + kv_heads], buf[:, heads + kv_heads:]
        caches = [torch.zeros(num_blocks, block_size, kv_heads, width, dtype=cache_dtype, device=device)
                  for _ in range(2)]
        scales = ({"k_scale": torch.zeros(num_blocks, block_size, kv_heads, 2, device=device),
                   "v_scale": torch.zeros(num_blocks, block_size, kv_heads, 2, device=device)} if bits else {})
        if fused:
            write_kv(k, v, *caches, slots, **scales, rotary=(q, positions, cos, sin))
        else:
            apply_rotary(q, k, positions, cos, sin)
            write_kv(k, v, *caches, slots, **scales)
        return [buf, *caches, *scales.values()]

    fused = run(True)
    assert all(torch.equal(a, b) for a, b in zip(fused, run(False)))
    assert not torch.equal(fused[0], qkv)  # it did rotate


@pytest.mark.parametrize("bits, rot_dim, dtype", [(0, 64, torch.bfloat16), (0, 32, torch.float32), (8, 64, torch.float16),
                                                   (4, 64, torch.bfloat16)])
def test_rotation_fused_into_the_write_is_apply_rotary_then_write_kv(bits, rot_dim, dtype, device):
    """write_kv(..., rotary=...) leaves q, k and the cache (codes and scales of a quantized one) bit for bit as
    apply_rotary followed by write_kv: the same arithmetic in one launch; partial rotary, skipped slots."""
    _fused_against_two_kernels(bits, rot_dim, dtype, device)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [0, 8])
def test_fused_rotation_gpu_realistic(bits):
    """Qwen2.5-7B's heads, a prefill's worth of tokens: the cache must get the rotated k (the barrier between the
    rotation's stores and the write's loads), in every program."""
    _fused_against_two_kernels(bits, 128, torch.bfloat16, "cuda", tokens=2048, heads=28, kv_heads=4, head_dim=128,
                               block_size=64)


def test_fused_rotation_checks_its_arguments(device):
    k = torch.zeros(3, 2, 32, device=device)
    cache = torch.zeros(2, 16, 2, 32, device=device)
    cos = torch.zeros(8, 32, device=device)
    with pytest.raises(ValueError, match="positions must be"):
        write_kv(k, k, cache, cache.clone(), torch.zeros(3, dtype=torch.int64, device=device),
                 rotary=(torch.zeros(3, 4, 32, device=device), torch.zeros(2, dtype=torch.int64, device=device), cos, cos))
