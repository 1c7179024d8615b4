"""Cheap unpacking of AWQ int4 weights inside Triton kernels, and the dequantize-to-dense kernel.

This file owns the bit tricks that turn AutoAWQ's packed int32 words (engine/quant/int4_pack.py:
qweight [K, N/8], nibble i of a word holds column 8c + AWQ_ORDER[i], AWQ_ORDER = 0 2 4 6 1 3 5 7) into
numbers with a few integer instructions per weight and no int -> float conversion (I2F runs at a
quarter of the FP32 rate or less on sm_80 / sm_90, and the decode GEMV is bound by the ALU, not by
HBM, if a weight costs more than ~3.5 instructions on an H200). All of it runs in the CPU interpreter
that CI tests with, except one inline-PTX subtract behind a constexpr (below). Users:
engine/kernels/quant_kernels.py and quant_gemm.py.

Two encodings:
- `awq_code_f32`, for the CUDA-core GEMV: a nibble masked in place, with nothing else in the word, IS
  an fp32 subnormal, code * 2^(lsb - 149). The product with an activation pre-scaled by 2^X_SHIFT is
  then an ordinary normal number, so one LOP3 (an AND with one immediate) and the FFMA itself do the
  whole conversion; a single shift of the word by 12 brings nibbles 5..7 below bit 20 for all three.
  FFMA without .ftz keeps subnormal inputs exact (PTX ISA, fma.f32; Triton emits fma.rn.f32), and so
  does numpy in the interpreter. The power of two comes back out in the per-group epilogue.
- `awq_codes_minus_zeros`, for tensor-core tiles and the dense dequantization: the LMDeploy /
  FasterTransformer trick. (word >> 4j) & 0x000F000F | MAGIC holds, in its two 16-bit halves, the
  fp16 (bf16) numbers 1024 + code (128 + code) of columns 2j and 2j + 1 (AWQ's interleave exists for
  exactly this: nibbles j and 4 + j are one half-word apart). Subtracting the zero point encoded the
  same way gives code - zero EXACTLY (an integer in -15..15) with one packed subtract for the pair.
  The scale is applied afterwards in fp32 (per K tile on the fp32 tl.dot result, or on the dense
  value), so the weight operand is never rounded.

On the GPU the packed subtract is one inline-PTX sub.f16x2 / sub.bf16x2 (ASM, a constexpr the
launchers set only for CUDA tensors outside the interpreter); the interpreter runs the same bit trick
with the halves subtracted separately, and, since it stores bf16 as raw uint16 and would do arithmetic
on the bits, the bf16 subtract through fp32 (EMULATE_BF16). The codes are small integers: exact either
way. tests/kernels/test_quant_gemm.py's GPU test compares the ASM path with the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Activations are multiplied by 2^X_SHIFT in the GEMV so that x * subnormal-code products are normal
# fp32 numbers: x * code * 2^(X_SHIFT + lsb - 149) stays above 2^-126 for |x| down to ~1e-13 and x * 2^64
# overflows only past |x| = 2^64 (activations are below ~1e5 in practice).
X_SHIFT = tl.constexpr(64)


@triton.jit
def awq_code_f32(p, p_hi, NIB: tl.constexpr):
    """Code of nibble NIB of int32 words p as the fp32 subnormal code * 2^(lsb - 149), lsb = 4 * NIB for
    nibbles 0..4 (masked in p) and 4 * NIB - 12 for 5..7 (masked in p_hi = p >> 12, computed once per
    word: bits 20..31 of p would reach the fp32 exponent)."""
    if NIB <= 4:
        return (p & (0xF << (4 * NIB))).to(tl.float32, bitcast=True)
    else:
        return (p_hi & (0xF << (4 * NIB - 12))).to(tl.float32, bitcast=True)


@triton.jit
def awq_column(NIB: tl.constexpr):
    """Column offset (0..7) inside a packed word that nibble NIB holds: AWQ_ORDER[NIB]."""
    return (NIB % 4) * 2 + NIB // 4


@triton.jit
def _halves(v, DTYPE: tl.constexpr, HI: tl.constexpr):
    """The low (HI=False) or high 16 bits of int32 v reinterpreted as DTYPE (fp16 / bf16)."""
    if HI:
        v = v >> 16
    return v.to(tl.int16).to(DTYPE, bitcast=True)


@triton.jit
def _pair_minus_zero(p, zw, J: tl.constexpr, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, ASM: tl.constexpr):
    """Columns 2J (lo) and 2J + 1 (hi) of words p [R, C] minus their zero points (words zw [C]), exactly,
    as two [R, C] tensors of DTYPE."""
    if DTYPE == tl.float32:
        # fp32 has room for one code per word: 2^23 + code from the mantissa, both nibbles of the pair
        lo = ((p >> (4 * J)) & 0xF) | 0x4B000000
        hi = ((p >> (4 * J + 16)) & 0xF) | 0x4B000000
        zlo = ((zw >> (4 * J)) & 0xF) | 0x4B000000
        zhi = ((zw >> (4 * J + 16)) & 0xF) | 0x4B000000
        return (lo.to(tl.float32, bitcast=True) - zlo.to(tl.float32, bitcast=True)[None, :],
                hi.to(tl.float32, bitcast=True) - zhi.to(tl.float32, bitcast=True)[None, :])
    else:
        if DTYPE == tl.float16:
            MAGIC: tl.constexpr = 0x64006400  # two fp16 1024.0: the 10 mantissa bits take the code
        else:
            MAGIC: tl.constexpr = 0x43004300  # two bf16 128.0: 7 mantissa bits, codes < 16 fit
        v = ((p >> (4 * J)) & 0x000F000F) | MAGIC
        z = (((zw >> (4 * J)) & 0x000F000F) | MAGIC)[None, :]
        if ASM:
            # One packed subtract on the 32-bit pair. Written out in plain Triton, LLVM's vectorizer pairs
            # the two halves again in small kernels but not inside the GEMM loop (sm_90 SASS: two HADD2 on
            # .H0/.H1 plus a PRMT to repack, 2.5 instructions instead of 1).
            if DTYPE == tl.float16:
                d = tl.inline_asm_elementwise("sub.f16x2 $0, $1, $2;", "=r,r,r", [v, z], dtype=tl.int32,
                                              is_pure=True, pack=1)
            else:
                d = tl.inline_asm_elementwise("sub.bf16x2 $0, $1, $2;", "=r,r,r", [v, z], dtype=tl.int32,
                                              is_pure=True, pack=1)
            return _halves(d, DTYPE, False), _halves(d, DTYPE, True)
        lo, hi = _halves(v, DTYPE, False), _halves(v, DTYPE, True)
        zlo, zhi = _halves(z, DTYPE, False), _halves(z, DTYPE, True)
        if EMULATE_BF16:
            return ((lo.to(tl.float32) - zlo.to(tl.float32)).to(DTYPE),
                    (hi.to(tl.float32) - zhi.to(tl.float32)).to(DTYPE))
        else:
            return lo - zlo, hi - zhi


@triton.jit
def awq_codes_minus_zeros(p, zw, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, ASM: tl.constexpr):
    """Packed words p [R, C] and zero words zw [C] -> code - zero as DTYPE [R, 8C], exact, column 8c + j of
    the output at [r, 8c + j] (natural order). ASM (GPU only: the interpreter cannot run inline PTX)
    does the fp16 / bf16 subtract as one sub.f16x2 / sub.bf16x2; EMULATE_BF16 (interpreter only) does
    the bf16 one through fp32."""
    lo0, hi0 = _pair_minus_zero(p, zw, 0, DTYPE, EMULATE_BF16, ASM)
    lo1, hi1 = _pair_minus_zero(p, zw, 1, DTYPE, EMULATE_BF16, ASM)
    lo2, hi2 = _pair_minus_zero(p, zw, 2, DTYPE, EMULATE_BF16, ASM)
    lo3, hi3 = _pair_minus_zero(p, zw, 3, DTYPE, EMULATE_BF16, ASM)
    # join appends a trailing axis of 2: building (j // 2, j % 2, lo/hi) in that order makes the
    # row-major flattening 8c + 4 * (j // 2) + 2 * (j % 2) + h = 8c + 2j + h, the natural column
    lo = tl.join(tl.join(lo0, lo2), tl.join(lo1, lo3))
    hi = tl.join(tl.join(hi0, hi2), tl.join(hi1, hi3))
    w = tl.join(lo, hi)  # [R, C, 2, 2, 2]
    return tl.reshape(w, (p.shape[0], 8 * p.shape[1]))


@triton.jit
def _awq_dequant_kernel(qw_ptr, qz_ptr, s_ptr, out_ptr, K, N, n_start, n_count, group_size,
                        BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # out [K, n_count] (row-major, x's dtype) = W^T for columns n_start ..: (code - zero) exactly, times
    # the scale in fp32, one rounding. Memory-bound (0.5 B read, 2 B written per weight): plain tiles.
    BN8: tl.constexpr = BLOCK_N // 8
    n8 = N // 8
    rows = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)  # BLOCK_K divides the group size
    cols8 = n_start // 8 + tl.program_id(1) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < (n_start + n_count) // 8
    row_mask = rows < K
    g = (tl.program_id(0) * BLOCK_K) // group_size
    p = tl.load(qw_ptr + rows.to(tl.int64)[:, None] * n8 + cols8[None, :],
                mask=row_mask[:, None] & col8_mask[None, :], other=0)
    zw = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
    cols = n_start + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_start + n_count
    s = tl.load(s_ptr + g * N + cols, mask=col_mask, other=0.0).to(tl.float32)
    w = awq_codes_minus_zeros(p, zw, tl.float32, False, False) * s[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * n_count + (cols - n_start)[None, :],
             w.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def awq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   dtype: torch.dtype, n_start: int = 0, n_count: int | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """W^T [K, n_count] in dtype for output columns n_start .. n_start + n_count (all by default): the
    dense weight that torch.matmul(x, W^T) multiplies, from the AWQ tensors (validated by the caller:
    quant_gemm._check_w4). n_start and n_count are multiples of 8. out: a contiguous [K, n_count]
    buffer to write into (reused across column chunks by the caller)."""
    k, n8 = qweight.shape
    n = 8 * n8
    n_count = n - n_start if n_count is None else n_count
    if n_start % 8 or n_count % 8 or not 0 <= n_start <= n_start + n_count <= n:
        raise ValueError(f"awq_dequantize: columns [{n_start}, {n_start + n_count}) must be multiples of 8 "
                         f"within N={n}")
    if out is None:
        out = torch.empty(k, n_count, dtype=dtype, device=qweight.device)
    if k == 0 or n_count == 0:
        return out
    block_k = 16 if group_size % 32 else 32  # divides the group size (a multiple of 16): one scale row a tile
    block_n = 128
    grid = (triton.cdiv(k, block_k), triton.cdiv(n_count, block_n))
    _awq_dequant_kernel[grid](qweight, qzeros, scales, out, k, n, n_start, n_count, group_size,
                              BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4)
    return out
