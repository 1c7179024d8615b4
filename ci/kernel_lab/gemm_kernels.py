"""Lab variants of the W4A16 tensor-core kernel (M = 2..64): what keeps it from the read limit.

The shipped `_w4a16_gemm_kernel` multiplies each K tile's product by the group scale (acc += dot(a, w) * s),
so every step waits for its MMA before the next can start (sm_90: one `warp_group_dot_wait 0` a step), and
recomputes 64-bit addresses every step. Switches, all computing the same product:
- FOLD: the scale goes into the weight before the MMA, w = (code - zero) * s rounded once to x's dtype
  (the dense path's numbers), so the MMA accumulates in place: acc = dot(a, w, acc).
- SWAP: out^T = W x^T, the dequantized weight as the MMA's first operand (wgmma reads it from registers).
- INC: pointers advanced by one K tile a step instead of recomputed.
- CLAMP: no load masks in the loop: rows past M read row M - 1 (their results are never stored), and N
  must be a multiple of BLOCK_N (every Qwen2.5 / Llama width is).
The group size is a constexpr (GROUP): a runtime one costs an integer division a step.
"""
import triton
import triton.language as tl

from engine.kernels.int4_unpack import awq_codes_minus_zeros
from engine.kernels.matmul import _dot
from engine.kernels.quant_kernels import _k_range, _store_tile, _tile_ids


@triton.jit
def _scaled(w, s, EMULATE_BF16: tl.constexpr):
    """w [BK, BN] (exact code - zero in x's dtype) times the scale row s [BN] (x's dtype), one rounding."""
    if EMULATE_BF16:  # the interpreter would multiply bf16 bit patterns
        return (w.to(tl.float32) * s.to(tl.float32)[None, :]).to(w.dtype)
    return w * s[None, :]


@triton.jit
def w4_gemm_lab(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K,
                stride_xm, tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                FUSED_REDUCE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                ASM: tl.constexpr, FOLD: tl.constexpr, SWAP: tl.constexpr, INC: tl.constexpr, CLAMP: tl.constexpr,
                GROUP: tl.constexpr):
    BN8: tl.constexpr = BLOCK_N // 8
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    n8 = N // 8
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    cols8 = pid_n * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    t0, t1 = _k_range(K // BLOCK_K, tiles_per_split)
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    x_rows = tl.minimum(rows, M - 1) if CLAMP else rows
    x_tile = x_ptr + x_rows.to(tl.int64)[:, None] * stride_xm + (t0 * BLOCK_K + ks)[None, :]
    q_tile = qw_ptr + (t0 * BLOCK_K + ks).to(tl.int64)[:, None] * n8 + cols8[None, :]
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        g = k0 // GROUP
        if not INC:
            x_tile = x_ptr + x_rows.to(tl.int64)[:, None] * stride_xm + (k0 + ks)[None, :]
            q_tile = qw_ptr + (k0 + ks).to(tl.int64)[:, None] * n8 + cols8[None, :]
        if CLAMP:
            a = tl.load(x_tile)
            p = tl.load(q_tile)
            zw = tl.load(qz_ptr + g * n8 + cols8)
            s = tl.load(s_ptr + g * N + cols)
        else:
            a = tl.load(x_tile, mask=row_mask[:, None], other=0.0)
            p = tl.load(q_tile, mask=col8_mask[None, :], other=0)
            zw = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
            s = tl.load(s_ptr + g * N + cols, mask=col_mask, other=0.0)
        if INC:
            x_tile += BLOCK_K
            q_tile += BLOCK_K * n8
        w = awq_codes_minus_zeros(p, zw, x_ptr.dtype.element_ty, EMULATE_BF16, ASM)
        if FOLD:
            w = _scaled(w, s.to(x_ptr.dtype.element_ty), EMULATE_BF16)
            if SWAP:
                acc = _dot(tl.trans(w), tl.trans(a), acc, UPCAST, IEEE)
            else:
                acc = _dot(a, w, acc, UPCAST, IEEE)
        else:
            s = s.to(tl.float32)
            if SWAP:
                acc += _dot(tl.trans(w), tl.trans(a), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), UPCAST, IEEE) * \
                    s[:, None]
            else:
                acc += _dot(a, w, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), UPCAST, IEEE) * s[None, :]
    if SWAP:
        _store_tile(tl.trans(acc), bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL,
                    FUSED_REDUCE)
    else:
        _store_tile(acc, bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL, FUSED_REDUCE)
