"""Lab variants of the W4A16 tensor-core kernel (M = 2..64): what keeps it from the read limit; and the
batch-1 GEMV extended to a few rows (w4_gemv_rows), the CUDA-core alternative for M = 2..4.

The shipped `_w4a16_gemm_kernel` multiplies each K tile's product by the group scale (acc += dot(a, w) * s),
so every step waits for its MMA before the next can start (sm_90: one `warp_group_dot_wait 0` a step), and
recomputes 64-bit addresses every step. Switches, all computing the same product:
- FOLD: the scale goes into the weight before the MMA, w = (code - zero) * s rounded once to x's dtype
  (the dense path's numbers), so the MMA accumulates in place: acc = dot(a, w, acc).
- SWAP: out^T = W x^T, the dequantized weight as the MMA's first operand (wgmma reads it from registers).
- INC: pointers advanced by one K tile a step instead of recomputed.
- XCA: x through L1 (cp.async.ca): at M = 64 each 64-column tile of int4 weights reads 4x its own bytes of
  x, and from L2 unless the tiles that share an SM share them in L1.
- CLAMP: no load masks in the loop: rows past M read row M - 1 (their results are never stored), and N
  must be a multiple of BLOCK_N (every Qwen2.5 / Llama width is).
The group size is a constexpr (GROUP): a runtime one costs an integer division a step.
"""
import triton
import triton.language as tl

from engine.kernels.int4_unpack import X_SHIFT, awq_code_f32, awq_codes_minus_zeros, awq_column
from engine.kernels.matmul import _dot
from engine.kernels.quant_kernels import _k_range, _reduce_if_last, _store_tile, _tile_ids


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
                GROUP: tl.constexpr, XCA: tl.constexpr = False):
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
        if CLAMP and XCA:
            a = tl.load(x_tile, cache_modifier=".ca")
            p = tl.load(q_tile)
            zw = tl.load(qz_ptr + g * n8 + cols8)
            s = tl.load(s_ptr + g * N + cols)
        elif CLAMP:
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


# ------------------------------------------------------------------ the batch-1 GEMV for a few rows (M = 2..4)

@triton.jit
def _rows_nibble(P, p, p_hi, xb, NIB: tl.constexpr):
    # the code of each weight is unpacked once (one AND) and used by every row: one FFMA a weight a row
    return P + awq_code_f32(p, p_hi, NIB)[None, :, :] * xb


@triton.jit
def _rows_group(acc, P, zw, zw_hi, sx, s_row, mask, NIB: tl.constexpr):
    LSB: tl.constexpr = 4 * NIB - 12 * (NIB // 5)
    UNDO: tl.constexpr = 2.0 ** (149 - X_SHIFT - LSB)
    s = tl.load(s_row + awq_column(NIB), mask=mask, other=0.0).to(tl.float32)
    return acc + (s * UNDO)[None, :, :] * (P - awq_code_f32(zw, zw_hi, NIB)[None, :, :] * sx)


@triton.jit
def _rows_store(acc, bias_ptr, out_ptr, ri, M, N, cols8, col8_mask, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                NIB: tl.constexpr):
    y = tl.sum(acc, axis=1)  # [ROWS, BN8]: across the slabs
    cols = cols8 * 8 + awq_column(NIB)
    mask = (ri < M)[:, None] & col8_mask[None, :]
    offs = ri[:, None] * N + cols[None, :]
    if PARTIAL:
        tl.store(out_ptr + offs, y, mask=mask)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=col8_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def w4_gemv_rows(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K, group_size,
                 stride_xm, steps_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                 FUSED_REDUCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SLABS: tl.constexpr,
                 ROWS: tl.constexpr):
    """The shipped batch-1 GEMV (_w4a16_gemv_kernel) for ROWS >= M rows of x: the same loads and unpacking,
    ROWS FFMAs per weight instead of one. Accumulators [ROWS, SLABS, BLOCK_N / 8]."""
    BN8: tl.constexpr = BLOCK_N // 8
    STEP: tl.constexpr = SLABS * BLOCK_K
    X_SCALE: tl.constexpr = 2.0 ** X_SHIFT
    n8 = N // 8
    cols8 = tl.program_id(0) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    slab = tl.arange(0, SLABS)
    ri = tl.arange(0, ROWS)
    x_rows = x_ptr + tl.minimum(ri, M - 1).to(tl.int64)[:, None] * stride_xm  # rows past M: never stored
    zero = tl.zeros([ROWS, SLABS, BN8], tl.float32)
    a0, a1, a2, a3, a4, a5, a6, a7 = zero, zero, zero, zero, zero, zero, zero, zero
    t0, t1 = _k_range(tl.cdiv(K, STEP), steps_per_split)
    for t in range(t0, t1):
        k0 = t * STEP + slab * BLOCK_K
        ok = k0 < K
        mask = ok[:, None] & col8_mask[None, :]
        rows = qw_ptr + k0.to(tl.int64)[:, None] * n8 + cols8[None, :]
        P0, P1, P2, P3, P4, P5, P6, P7 = zero, zero, zero, zero, zero, zero, zero, zero
        sx = tl.zeros([ROWS, SLABS], tl.float32)
        for r in tl.static_range(BLOCK_K):
            p = tl.load(rows + r * n8, mask=mask, other=0)
            xr = tl.load(x_rows + (k0 + r)[None, :], mask=ok[None, :], other=0.0).to(tl.float32) * X_SCALE
            sx += xr
            xb = xr[:, :, None]
            p_hi = p >> 12
            P0 = _rows_nibble(P0, p, p_hi, xb, 0)
            P1 = _rows_nibble(P1, p, p_hi, xb, 1)
            P2 = _rows_nibble(P2, p, p_hi, xb, 2)
            P3 = _rows_nibble(P3, p, p_hi, xb, 3)
            P4 = _rows_nibble(P4, p, p_hi, xb, 4)
            P5 = _rows_nibble(P5, p, p_hi, xb, 5)
            P6 = _rows_nibble(P6, p, p_hi, xb, 6)
            P7 = _rows_nibble(P7, p, p_hi, xb, 7)
        g = k0 // group_size
        zw = tl.load(qz_ptr + g[:, None] * n8 + cols8[None, :], mask=mask, other=0)
        zw_hi = zw >> 12
        s_row = s_ptr + g[:, None] * N + cols8[None, :] * 8
        sxb = sx[:, :, None]
        a0 = _rows_group(a0, P0, zw, zw_hi, sxb, s_row, mask, 0)
        a1 = _rows_group(a1, P1, zw, zw_hi, sxb, s_row, mask, 1)
        a2 = _rows_group(a2, P2, zw, zw_hi, sxb, s_row, mask, 2)
        a3 = _rows_group(a3, P3, zw, zw_hi, sxb, s_row, mask, 3)
        a4 = _rows_group(a4, P4, zw, zw_hi, sxb, s_row, mask, 4)
        a5 = _rows_group(a5, P5, zw, zw_hi, sxb, s_row, mask, 5)
        a6 = _rows_group(a6, P6, zw, zw_hi, sxb, s_row, mask, 6)
        a7 = _rows_group(a7, P7, zw, zw_hi, sxb, s_row, mask, 7)
    out = out_ptr + tl.program_id(1).to(tl.int64) * M * N if PARTIAL else out_ptr
    _rows_store(a0, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 0)
    _rows_store(a1, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 1)
    _rows_store(a2, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 2)
    _rows_store(a3, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 3)
    _rows_store(a4, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 4)
    _rows_store(a5, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 5)
    _rows_store(a6, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 6)
    _rows_store(a7, bias_ptr, out, ri, M, N, cols8, col8_mask, HAS_BIAS, PARTIAL, 7)
    if FUSED_REDUCE:
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs = ri[:, None] * N + cols[None, :]
        _reduce_if_last(out_ptr, lock_ptr, bias_ptr, final_ptr, offs, (ri < M)[:, None] & (cols < N)[None, :], M * N,
                        N, HAS_BIAS)
