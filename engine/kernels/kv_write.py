"""Writing this step's K/V into the paged cache (the `write_kv` kernel), and the quantized cache format.

One program per token copies its [Hkv, D] rows of k and v to `slot_mapping[token]`; a slot of -1
marks a padding row of a captured CUDA graph and is skipped, so graph replays never scribble over
block 0.

Quantized caches (EngineConfig.quant_policy 8 or 4, LMDeploy's online KV quantization): each
(token, kv head) row of D values is stored as unsigned codes with its own fp32 (scale, offset),
asymmetric min-max, computed here when the token is written: scale = (max - min) / qmax,
code = floor((x - min) / scale + 0.5), x ~ code * scale + min, within half a step of x.
- 8 bits: k_cache [num_blocks, block_size, Hkv, D] uint8, codes 0..255.
- 4 bits: k_cache [num_blocks, block_size, Hkv, D // 2] uint8, dims 2j and 2j+1 in the low and high
  nibble of byte j (LMDeploy packs two values a byte the same way).
- k_scale [num_blocks, block_size, Hkv, 2] fp32: (scale, offset = the row's min); same for V. The
  scales are indexed by the same slot as the codes, so a block's scales travel with the block (prefix
  caching, preemption). fp32, not the model dtype: a bf16 scale is off by up to 2^-9, which at code
  255 alone is half a step of error.
`load_kv_codes` is the read side the attention kernels share; `kv_code_plane` the int8 decode kernel's
faster one (one byte of every 32-bit word of codes at a time, two codes per PRMT on the GPU).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options
from .rotary import check_rotary, rotate_token, token_tables


@triton.jit
def load_kv_codes(row_ptr, mask, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, KV_BITS: tl.constexpr,
                  MASKED: tl.constexpr):
    """[BLOCK_N, HEAD_DIM] codes (0..2^KV_BITS-1) of the rows starting at row_ptr [BLOCK_N]."""
    if KV_BITS == 8 or HEAD_DIM < 32:
        d = tl.arange(0, HEAD_DIM)
        if KV_BITS == 8:
            offsets = d
        else:
            # head_dim 16: each byte read for both its dims, then shifted. join + reshape below fed tl.dot
            # wrong values at this size on an H200 (triton 3.6); this gather is 5-10x slower at 128.
            offsets = d // 2
        if MASKED:
            codes = tl.load(row_ptr[:, None] + offsets[None, :], mask=mask[:, None], other=0)
        else:
            codes = tl.load(row_ptr[:, None] + offsets[None, :])
        if KV_BITS == 4:
            codes = (codes >> ((d % 2) * 4).to(tl.uint8)[None, :]) & 15
    else:
        d = tl.arange(0, HEAD_DIM // 2)
        if MASKED:
            packed = tl.load(row_ptr[:, None] + d[None, :], mask=mask[:, None], other=0)
        else:
            packed = tl.load(row_ptr[:, None] + d[None, :])
        codes = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_N, HEAD_DIM))
    return codes


@triton.jit
def _prmt_1024_plus(words, SEL: tl.constexpr):
    # pack=2: words $1, $2; PRMT brings byte J of each to the low byte of a 16-bit half (SEL), the mask and
    # fp16 1024.0's exponent bits (0x64) make the fp16 pair (1024 + code, 1024 + code'), exact
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; prmt.b32 t, $1, $2, " + SEL + "; and.b32 t, t, 0x00FF00FF; or.b32 $0, t, 0x64006400; }",
        "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)


@triton.jit
def kv_code_plane(words, J: tl.constexpr, DTYPE: tl.constexpr, ASM: tl.constexpr):
    """Byte J of the int32 words [R, C] of an 8-bit cache (dim 4c + J of each row) as DTYPE [R, C].

    ASM (GPU, DTYPE fp16): 1024 + code, from one PRMT and one LOP3 per two codes (a cast from uint8 is an
    I2F each, a quarter-rate instruction: the int8 decode kernel was slower than the 16-bit one
    reading half the bytes); the caller takes 1024 * sum(other operand) back out of its fp32 sums.
    Otherwise the code itself (shift, mask, cast)."""
    if ASM:
        # the selector's nibbles: result byte 0 <- byte J of $1, byte 2 <- byte J of $2 (source bytes 4..7)
        if J == 0:
            return _prmt_1024_plus(words, "0x0400")
        elif J == 1:
            return _prmt_1024_plus(words, "0x0501")
        elif J == 2:
            return _prmt_1024_plus(words, "0x0602")
        else:
            return _prmt_1024_plus(words, "0x0703")
    return ((words >> (8 * J)) & 0xFF).to(DTYPE)


@triton.jit
def _row_range(x, ok):
    return tl.min(tl.where(ok, x, float("inf")), 1), tl.max(tl.where(ok, x, float("-inf")), 1)


@triton.jit
def _codes(x, lo, scale, QMAX: tl.constexpr):
    """floor((x - min) / scale + 0.5) clamped to [0, QMAX]; a constant row (scale 0) gets code 0, exact."""
    t = (x - lo[:, None]) / tl.where(scale > 0, scale, 1.0)[:, None]
    return tl.minimum(tl.maximum(tl.floor(t + 0.5), 0.0), QMAX).to(tl.uint8)


@triton.jit
def _store_quantized(src_rows, dst_rows, scale_dst, row_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     KV_BITS: tl.constexpr):
    """Quantize the [BLOCK_H, HEAD_DIM] rows at src_rows ([BLOCK_H, 1] pointers) into codes at dst_rows and
    (scale, min) at scale_dst [BLOCK_H]; rows with row_ok False (padding heads, skipped slots) are untouched."""
    if KV_BITS == 8:
        d = tl.arange(0, BLOCK_D)[None, :]
        ok = row_ok[:, None] & (d < HEAD_DIM)
        x = tl.load(src_rows + d, mask=ok).to(tl.float32)
        lo, hi = _row_range(x, ok)
    else:
        # Dims 2j and 2j+1 as two tiles sharing the row's range, packed into the nibbles of byte j.
        j = tl.arange(0, BLOCK_D // 2)[None, :]
        ok = row_ok[:, None] & (j < HEAD_DIM // 2)
        x = tl.load(src_rows + 2 * j, mask=ok).to(tl.float32)
        x_odd = tl.load(src_rows + 2 * j + 1, mask=ok).to(tl.float32)
        lo, hi = _row_range(x, ok)
        lo_odd, hi_odd = _row_range(x_odd, ok)
        lo, hi = tl.minimum(lo, lo_odd), tl.maximum(hi, hi_odd)
    lo = tl.where(row_ok, lo, 0.0)  # padding rows: finite, never stored
    hi = tl.where(row_ok, hi, 0.0)
    scale = (hi - lo) / ((1 << KV_BITS) - 1)
    if KV_BITS == 8:
        tl.store(dst_rows + d, _codes(x, lo, scale, 255), mask=ok)
    else:
        tl.store(dst_rows + j, _codes(x, lo, scale, 15) | (_codes(x_odd, lo, scale, 15) << 4), mask=ok)
    tl.store(scale_dst, scale, mask=row_ok)
    tl.store(scale_dst + 1, lo, mask=row_ok)


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                     stride_sb, stride_ss, stride_sh,
                     q_ptr, positions_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_cos, stride_sin, num_heads,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, KV_BITS: tl.constexpr, EARLY_LAUNCH: tl.constexpr,
                     ROTATE: tl.constexpr, HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0)
    # The slot mapping and positions are the host's, the rotary tables constant: read before the early-launch
    # wait (engine/kernels/pdl.py); q, k and v are the kernel before's output, read after it.
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)  # int32 slot mappings work too
    if ROTATE:
        c1, c2, s1, s2 = token_tables(positions_ptr, cos_ptr, sin_ptr, token.to(tl.int64), stride_cos, stride_sin,
                                      HALF, BLOCK_HALF)
    enter(EARLY_LAUNCH)
    if ROTATE:
        # rotary.py's rotation of this token first (q and k in place), then the barrier: every thread's
        # rotated k is in memory before any thread reads it back below to write (or quantize) it.
        rotate_token(q_ptr, k_ptr, c1, c2, s1, s2, token.to(tl.int64), stride_qt, stride_qh, stride_kt, stride_kh,
                     num_heads, NUM_KV_HEADS, HALF, BLOCK_QH, BLOCK_H, BLOCK_HALF)
        tl.debug_barrier()
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    if KV_BITS == 0:
        # Masking instead of an early return keeps the kernel branch-free; a skipped row costs one load.
        # The slot test is broadcast to a tile first: the interpreter turns `scalar_bool & tile` into ints.
        valid = (tl.zeros([BLOCK_H, BLOCK_D], tl.int64) + slot) >= 0
        mask = valid & (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
        slot = tl.maximum(slot, 0)
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        k = tl.load(k_ptr + token.to(tl.int64) * stride_kt + heads * stride_kh + dims, mask=mask)
        v = tl.load(v_ptr + token.to(tl.int64) * stride_vt + heads * stride_vh + dims, mask=mask)
        k_dst = k_cache_ptr + block * stride_kcb + offset * stride_kcs + heads * stride_kch + dims
        v_dst = v_cache_ptr + block * stride_vcb + offset * stride_vcs + heads * stride_vch + dims
        tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)
    else:
        h = tl.arange(0, BLOCK_H)
        row_ok = ((tl.zeros([BLOCK_H], tl.int64) + slot) >= 0) & (h < NUM_KV_HEADS)
        slot = tl.maximum(slot, 0)
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        s_off = block * stride_sb + offset * stride_ss + h * stride_sh
        _store_quantized(k_ptr + token.to(tl.int64) * stride_kt + heads * stride_kh,
                         k_cache_ptr + block * stride_kcb + offset * stride_kcs + heads * stride_kch,
                         k_scale_ptr + s_off, row_ok, HEAD_DIM, BLOCK_D, KV_BITS)
        _store_quantized(v_ptr + token.to(tl.int64) * stride_vt + heads * stride_vh,
                         v_cache_ptr + block * stride_vcb + offset * stride_vcs + heads * stride_vch,
                         v_scale_ptr + s_off, row_ok, HEAD_DIM, BLOCK_D, KV_BITS)


def kv_bits(k_cache: torch.Tensor, head_dim: int) -> int:
    """0 for a cache in the model's dtype, else the code width the uint8 cache's last dim implies (8 or 4)."""
    if k_cache.dtype != torch.uint8:
        return 0
    return 8 * k_cache.shape[-1] // head_dim


def check_kv_scales(k_cache: torch.Tensor, k_scale, v_scale, head_dim: int) -> int:
    """The cache's code width (0, 8, 4), after checking that scales come with a quantized cache only."""
    bits = kv_bits(k_cache, head_dim)
    if bits and (bits not in (4, 8) or bits * head_dim != 8 * k_cache.shape[-1]):
        raise ValueError(f"a uint8 cache's last dim must be head_dim ({head_dim}) or head_dim // 2, "
                         f"got {k_cache.shape[-1]}")
    if (k_scale is None) != (bits == 0) or (v_scale is None) != (bits == 0):
        raise ValueError("k_scale and v_scale come with a uint8 (quantized) cache and only with one")
    if bits:
        want = (*k_cache.shape[:3], 2)
        if k_scale.shape != want or v_scale.shape != want or k_scale.stride() != v_scale.stride():
            raise ValueError(f"k_scale and v_scale must be {want} with equal strides, "
                             f"got {tuple(k_scale.shape)} and {tuple(v_scale.shape)}")
        if k_scale.dtype != torch.float32 or v_scale.dtype != torch.float32 or k_scale.stride(-1) != 1:
            raise ValueError("k_scale and v_scale must be fp32 with a contiguous last dim")
    return bits


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
             v_scale: torch.Tensor | None = None, rotary: tuple | None = None) -> None:
    """Store k, v [T, Hkv, D] into k_cache, v_cache [num_blocks, block_size, Hkv, D] at slot_mapping [T].

    slot_mapping is int64 (int32 works too): block * block_size + offset; slots < 0 are skipped.
    k and v may be strided views (e.g. slices of a fused qkv output) with a contiguous last dim.
    Quantized caches (uint8, last dim D or D // 2, see the module docstring) take k_scale, v_scale
    [num_blocks, block_size, Hkv, 2] fp32: each row is quantized here and its (scale, min) stored.
    rotary: (q, positions, cos, sin) as rotary.apply_rotary takes them: q and k are rotated in place first, in
    the same kernel (one launch a layer fewer than apply_rotary then write_kv; the cache gets the rotated k).
    """
    if rotary is not None:
        q, positions, cos, sin = rotary
        check_rotary(q, k, positions, cos, sin)
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"k and v must be [T, Hkv, D] of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    num_tokens, num_kv_heads, head_dim = k.shape
    bits = check_kv_scales(k_cache, k_scale, v_scale, head_dim)
    width = head_dim * bits // 8 if bits else head_dim
    if k_cache.dim() != 4 or k_cache.shape[2:] != (num_kv_heads, width) or v_cache.shape != k_cache.shape:
        raise ValueError(f"caches must be [num_blocks, block_size, {num_kv_heads}, {width}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if bits == 4 and head_dim % 2:
        raise ValueError(f"4-bit caches need an even head_dim, got {head_dim}")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping must be [{num_tokens}], got {tuple(slot_mapping.shape)}")
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    if num_tokens == 0:
        return
    scale_strides = k_scale.stride()[:3] if bits else (0, 0, 0)
    if rotary is None:  # unused pointers and sizes
        rope = (k, slot_mapping, k, k, 0, 0, 0, 0, 0)
        rope_sizes = dict(HALF=1, BLOCK_QH=1, BLOCK_HALF=1)
    else:
        rope = (q, positions, cos, sin, q.stride(0), q.stride(1), cos.stride(0), sin.stride(0), q.shape[1])
        half = cos.shape[-1] // 2
        rope_sizes = dict(HALF=half, BLOCK_QH=triton.next_power_of_2(q.shape[1]),
                          BLOCK_HALF=triton.next_power_of_2(half))
    width = num_kv_heads * head_dim if rotary is None else max(num_kv_heads * head_dim, q.shape[1] * head_dim // 2)
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k_scale if bits else k_cache, v_scale if bits else v_cache,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), *scale_strides, *rope,
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        KV_BITS=bits, ROTATE=rotary is not None, **rope_sizes, num_warps=4 if width >= 1024 else 1,
        **launch_options(k_cache))
