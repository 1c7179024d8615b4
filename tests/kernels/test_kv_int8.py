"""Quantized KV cache (quant_policy 8, and 4): write_kv's quantization and the attention kernels' dequantizing
reads against the torch references in reference.py.

- write: codes and (scale, min) equal to quantize_kv_ref's (bit for bit in the interpreter; one code of
  slack on a GPU, whose fp32 division may round the other way at a tie), every dequantized value within
  half a step of the input, skipped slots untouched, strided inputs, odd head counts, head_dim not a
  power of two.
- decode / prefill: the kernels on uint8 caches (built from the `paged_kv` fixture's shuffled blocks)
  against the references that dequantize to fp32; GQA 7 and 4, MHA, both block sizes, several splits,
  mixed prefill batches with cached context, and batch invariance (deterministic mode) with int8.
"""
from __future__ import annotations

import pytest
import torch

from engine.kernels.decode_attention import paged_decode_attention
from engine.kernels.kv_write import write_kv
from engine.kernels.prefill_attention import paged_prefill_attention
from engine.kernels.reference import (decode_attention_ref, dequantize_kv_ref, prefill_attention_ref, quantize_kv_ref,
                                      write_kv_ref)

from .conftest import DEVICE, tolerance


def _unpack(codes: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Codes as ints [..., D] (4-bit codes unpacked from their nibbles)."""
    if codes.shape[-1] != head_dim:
        codes = torch.stack((codes & 15, codes >> 4), -1).flatten(-2)
    return codes.int()


def _quantized(paged, bits):
    """The fixture's caches as (codes, scales) pairs of one quantized cache."""
    k_cache, v_cache, tables, lens = paged
    (kc, ks), (vc, vs) = quantize_kv_ref(k_cache, bits), quantize_kv_ref(v_cache, bits)
    return kc, vc, ks, vs, tables, lens


# -- write ----------------------------------------------------------------------------------------
def _write(num_tokens, num_kv_heads, head_dim, block_size, dtype, bits, device, skip_every=0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = num_tokens // block_size + 3
    # k, v as strided slices of one fused qkv-like buffer, with per-head offsets and spreads as in real K.
    qkv = torch.randn(num_tokens, 5, num_kv_heads, head_dim, generator=gen) * 3 + torch.randn(num_kv_heads, 1)
    qkv = qkv.to(dtype).to(device)
    k, v = qkv[:, 1], qkv[:, 3]
    width = head_dim * bits // 8
    caches = [torch.randint(0, 256, (num_blocks, block_size, num_kv_heads, width), generator=gen, dtype=torch.uint8)
              for _ in range(2)]
    scales = [torch.randn(num_blocks, block_size, num_kv_heads, 2, generator=gen) for _ in range(2)]
    caches, scales = [c.to(device) for c in caches], [s.to(device) for s in scales]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    if skip_every:
        slots[::skip_every] = -1
    slots = slots.to(device)
    keep = slots >= 0
    ref = [t.clone() for t in caches + scales]
    write_kv_ref(k[keep], v[keep], ref[0], ref[1], slots[keep], ref[2], ref[3])
    write_kv(k, v, caches[0], caches[1], slots, scales[0], scales[1])
    for got, want in zip(caches, ref[:2]):
        if DEVICE == "cpu":
            assert torch.equal(got, want)  # the same fp32 arithmetic: the same codes
        else:
            assert (_unpack(got, head_dim) - _unpack(want, head_dim)).abs().max() <= 1
    for got, want in zip(scales, ref[2:]):
        torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
    # Slots not written (skipped rows included) keep their old contents: compared above with the clones.
    # Every dequantized value is within half a step of what was written.
    idx = slots[keep]
    for cache, scale, x in ((caches[0], scales[0], k), (caches[1], scales[1], v)):
        rows = cache.view(-1, num_kv_heads, width)[idx]
        row_scales = scale.view(-1, num_kv_heads, 2)[idx]
        err = (dequantize_kv_ref(rows, row_scales, head_dim) - x[keep].float()).abs()
        step = row_scales[..., :1]
        assert (err <= 0.5 * step * (1 + 1e-4) + 1e-6).all(), float((err / step).max())


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size,dtype", [
    (3, 64, 16, torch.float32), (1, 128, 64, torch.bfloat16), (7, 32, 16, torch.float16), (5, 80, 16, torch.bfloat16),
])
def test_write_quantized_matches_reference(num_kv_heads, head_dim, block_size, dtype, bits, device):
    _write(37, num_kv_heads, head_dim, block_size, dtype, bits, device)


@pytest.mark.parametrize("bits", [8, 4])
def test_write_quantized_skips_negative_slots(bits, device):
    _write(29, 2, 64, 16, torch.bfloat16, bits, device, skip_every=3)


def test_constant_rows_are_exact(device):
    """A row of equal values has scale 0: code 0 and min = the value, no division by zero."""
    k = torch.full((4, 2, 32), 1.25, device=device)
    v = torch.zeros(4, 2, 32, device=device)
    cache = torch.full((2, 16, 2, 32), 7, dtype=torch.uint8, device=device)
    scales = torch.ones(2, 16, 2, 2, device=device)
    caches, all_scales = [cache, cache.clone()], [scales, scales.clone()]
    slots = torch.tensor([0, 5, 17, 31], device=device)
    write_kv(k, v, caches[0], caches[1], slots, all_scales[0], all_scales[1])
    for c, s, x in zip(caches, all_scales, (k, v)):
        rows = c.view(-1, 2, 32)[slots]
        assert not rows.any()
        assert torch.equal(dequantize_kv_ref(rows, s.view(-1, 2, 2)[slots], 32), x)


def test_scales_must_come_with_a_uint8_cache(device):
    k = torch.randn(3, 2, 32, device=device)
    plain = torch.zeros(2, 16, 2, 32, device=device)
    codes = torch.zeros(2, 16, 2, 32, dtype=torch.uint8, device=device)
    scales = torch.zeros(2, 16, 2, 2, device=device)
    slots = torch.arange(3, device=device)
    with pytest.raises(ValueError, match="k_scale and v_scale"):
        write_kv(k, k, plain, plain.clone(), slots, scales, scales.clone())
    with pytest.raises(ValueError, match="k_scale and v_scale"):
        write_kv(k, k, codes, codes.clone(), slots)
    with pytest.raises(ValueError, match="last dim"):
        write_kv(k, k, codes[..., :24], codes[..., :24].clone(), slots, scales, scales.clone())


# -- decode ---------------------------------------------------------------------------------------
DECODE_CASES = [  # num_heads, num_kv_heads, head_dim, block_size, dtype, bits
    (28, 4, 64, 16, torch.float32, 8),   # Qwen2.5-7B's group of 7
    (8, 2, 128, 64, torch.bfloat16, 8),  # group of 4, head_dim 128, big blocks
    (7, 7, 32, 16, torch.bfloat16, 8),   # MHA, odd head count
    (9, 3, 64, 16, torch.bfloat16, 4),   # SmolLM2's group of 3, 4-bit
    (8, 2, 128, 64, torch.bfloat16, 4),
    (4, 2, 32, 16, torch.float16, 4),
    (4, 1, 16, 64, torch.float16, 4),    # head_dim 16 reads 4-bit codes another way (load_kv_codes)
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype,bits", DECODE_CASES)
def test_decode_quantized_matches_reference(num_heads, num_kv_heads, head_dim, block_size, dtype, bits, device,
                                            paged_kv):
    seq_lens = [37, 130, 1, 65]  # mid-block, past two 64-token tiles, a single token, one past a tile
    kc, vc, ks, vs, tables, lens = _quantized(
        paged_kv(seq_lens, num_kv_heads, head_dim, block_size, dtype, device), bits)
    q = torch.randn(len(seq_lens), num_heads, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    ref = decode_attention_ref(q.float(), kc, vc, tables, lens, scale, max(seq_lens), ks, vs)
    outs = []
    for splits in (1, 3):
        out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
        paged_decode_attention(q, kc, vc, tables, lens, scale, num_splits=splits, out=out, k_scale=ks, v_scale=vs)
        torch.testing.assert_close(out.float(), ref, **tolerance(dtype))
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], **tolerance(dtype))


def test_decode_int8_close_to_unquantized(device, paged_kv):
    """What quantization costs: int8 attention within ~1% of the 16-bit cache's (N(0, 1) keys and values)."""
    k_cache, v_cache, tables, lens = paged_kv([200, 77], 2, 64, 16, torch.float32, device, seed=3)
    kc, vc, ks, vs, _, _ = _quantized((k_cache, v_cache, tables, lens), 8)
    # q seeded: drawn from the global generator it depended on the tests before (0.4-0.8% over twelve seeds, one
    # draw in the full suite 1.1%)
    q = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(3)).to(device)
    plain = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125)
    quant = paged_decode_attention(q, kc, vc, tables, lens, 0.125, k_scale=ks, v_scale=vs)
    assert (quant - plain).abs().max() < 0.01 * plain.abs().max()


# -- prefill --------------------------------------------------------------------------------------
def _prefill(query_lens, contexts, num_heads, num_kv_heads, head_dim, block_size, dtype, bits, device, paged_kv,
             batch_invariant=False):
    seq_lens = [q + c for q, c in zip(query_lens, contexts)]
    kc, vc, ks, vs, tables, lens = _quantized(
        paged_kv([max(s, 1) for s in seq_lens], num_kv_heads, head_dim, block_size, dtype, device), bits)
    lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    qsl = torch.tensor(starts, dtype=torch.int32, device=device)
    q = torch.randn(starts[-1], num_heads, head_dim).to(dtype).to(device)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, kc, vc, qsl, lens, tables, scale, max(query_lens), out=out,
                            batch_invariant=batch_invariant, k_scale=ks, v_scale=vs)
    for i, (n, s) in enumerate(zip(query_lens, seq_lens)):
        if n == 0:
            continue
        rows = slice(starts[i], starts[i + 1])
        ref = prefill_attention_ref(q[rows].float(), kc, vc, tables[i], s, scale, ks, vs)
        torch.testing.assert_close(out[rows].float(), ref, **tolerance(dtype), msg=lambda m: f"request {i}: {m}")


PREFILL_CASES = [  # num_heads, num_kv_heads, head_dim, block_size, dtype, bits
    (28, 4, 64, 16, torch.float32, 8),
    (8, 2, 128, 64, torch.bfloat16, 8),
    (9, 3, 64, 16, torch.bfloat16, 4),
]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype,bits", PREFILL_CASES)
def test_prefill_quantized_mixed_batch(num_heads, num_kv_heads, head_dim, block_size, dtype, bits, device, paged_kv):
    # A fresh prompt ending mid-block, a decode row, an empty chunk, and a chunk after 17 cached tokens.
    _prefill([21, 1, 0, 30], [0, 40, 5, 17], num_heads, num_kv_heads, head_dim, block_size, dtype, bits, device,
             paged_kv)


def test_prefill_int8_batch_invariant_mode(device, paged_kv):
    _prefill([21, 1, 0, 30], [0, 40, 5, 17], 28, 4, 64, 16, torch.bfloat16, 8, device, paged_kv,
             batch_invariant=True)


def test_prefill_int8_batch_invariant_rows_do_not_depend_on_chunking(device, paged_kv):
    """Deterministic mode with int8: the last 23 rows of a 150-token prompt have the same bits as one chunk,
    as 127 cached + 23 new tokens (a prefix-cache hit), or beside another request."""
    kc, vc, ks, vs, tables, _ = _quantized(paged_kv([150], 4, 64, 16, torch.bfloat16, device), 8)
    q = torch.randn(150, 28, 64).to(torch.bfloat16).to(device)

    def attend(q_rows, qsl, seq_lens, table_rows, max_len):
        return paged_prefill_attention(q_rows, kc, vc, torch.tensor(qsl, dtype=torch.int32, device=device),
                                       torch.tensor(seq_lens, dtype=torch.int32, device=device), table_rows,
                                       0.125, max_len, batch_invariant=True, k_scale=ks, v_scale=vs)

    whole = attend(q, [0, 150], [150], tables, 150)[127:]
    chunk = attend(q[127:].contiguous(), [0, 23], [150], tables, 23)
    mixed = attend(torch.cat([q[:5], q[127:]]), [0, 5, 28], [5, 150], tables.repeat(2, 1), 23)[5:]
    assert torch.equal(whole, chunk) and torch.equal(whole, mixed)


@pytest.mark.gpu
def test_kv_int8_gpu_realistic(paged_kv):
    """Qwen2.5-7B heads at a few thousand tokens, natively."""
    seq_lens = [4000, 1, 777, 2048]
    kc, vc, ks, vs, tables, lens = _quantized(paged_kv(seq_lens, 4, 128, 64, torch.bfloat16, "cuda"), 8)
    q = torch.randn(4, 28, 128, device="cuda", dtype=torch.bfloat16)
    ref = decode_attention_ref(q.float(), kc, vc, tables, lens, 0.088, max(seq_lens), ks, vs)
    out = paged_decode_attention(q, kc, vc, tables, lens, 0.088, k_scale=ks, v_scale=vs)
    torch.testing.assert_close(out.float(), ref, **tolerance(torch.bfloat16))
    _write(4096, 4, 128, 64, torch.bfloat16, 8, "cuda", skip_every=97)
