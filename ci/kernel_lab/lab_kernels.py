"""Lab variants: a streaming ceiling of the W4A16 GEMV's access pattern, and a swapped-operand AWQ GEMM."""
import triton
import triton.language as tl
from engine.kernels.int4_unpack import awq_codes_minus_zeros
from engine.kernels.quant_kernels import (_k_range, _reduce_if_last, _tile_ids, _store_tile, _gemv_nibble_rows,
                                          _gemv_nibble_group, _gemv_nibble_store, w8_word_products)
from engine.kernels.int4_unpack import X_SHIFT
from engine.kernels.matmul import _dot


@triton.jit
def gemv_stream(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, N, K, group_size,
                steps_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SLABS: tl.constexpr):
    # the same loads as _w4a16_gemv_kernel (words, x, zeros, 8 scale columns), one XOR per word
    BN8: tl.constexpr = BLOCK_N // 8
    STEP: tl.constexpr = SLABS * BLOCK_K
    n8 = N // 8
    cols8 = tl.program_id(0) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    slab = tl.arange(0, SLABS)
    acc = tl.zeros([SLABS, BN8], tl.int32)
    accf = tl.zeros([SLABS, BN8], tl.float32)
    t0, t1 = _k_range(tl.cdiv(K, STEP), steps_per_split)
    for t in range(t0, t1):
        k0 = t * STEP + slab * BLOCK_K
        ok = k0 < K
        mask = ok[:, None] & col8_mask[None, :]
        rows = qw_ptr + k0.to(tl.int64)[:, None] * n8 + cols8[None, :]
        for r in tl.static_range(BLOCK_K):
            p = tl.load(rows + r * n8, mask=mask, other=0)
            xr = tl.load(x_ptr + k0 + r, mask=ok, other=0.0).to(tl.float32)
            acc ^= p
            accf += xr[:, None]
        g = k0 // group_size
        zw = tl.load(qz_ptr + g[:, None] * n8 + cols8[None, :], mask=mask, other=0)
        acc ^= zw
        s_row = s_ptr + g[:, None] * N + cols8[None, :] * 8
        for j in tl.static_range(8):
            accf += tl.load(s_row + j, mask=mask, other=0.0).to(tl.float32)
    y = tl.sum(acc.to(tl.float32) + accf, axis=0)
    out = out_ptr + tl.program_id(1).to(tl.int64) * N if PARTIAL else out_ptr
    tl.store(out + cols8 * 8, y.to(out.dtype.element_ty), mask=col8_mask)


@triton.jit
def w4_gemm_swapped(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K, group_size,
                    stride_xm, tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                    FUSED_REDUCE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                    UPCAST: tl.constexpr, IEEE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                    ASM: tl.constexpr):
    # out^T [BN, BM] = (code - zero)^T [BN, BK] @ x^T [BK, BM], scale per K tile
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
    x_cols = x_ptr + rows.to(tl.int64)[None, :] * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    t0, t1 = _k_range(K // BLOCK_K, tiles_per_split)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        g = k0 // group_size
        xt = tl.load(x_cols + (k0 + ks)[:, None], mask=row_mask[None, :], other=0.0)
        p = tl.load(qw_ptr + (k0 + ks).to(tl.int64)[:, None] * n8 + cols8[None, :], mask=col8_mask[None, :],
                    other=0)
        zw = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
        s = tl.load(s_ptr + g * N + cols, mask=col_mask, other=0.0).to(tl.float32)
        w = awq_codes_minus_zeros(p, zw, x_ptr.dtype.element_ty, EMULATE_BF16, ASM)
        acc += _dot(tl.trans(w), xt, tl.zeros([BLOCK_N, BLOCK_M], tl.float32), UPCAST, IEEE) * s[:, None]
    _store_tile(tl.trans(acc), bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL,
                FUSED_REDUCE)


@triton.jit
def _w8_step(acc, acc_x, p, x_ptr, c, c_mask):
    xk = x_ptr + 4 * c
    x0 = tl.load(xk, mask=c_mask, other=0.0).to(tl.float32)
    x1 = tl.load(xk + 1, mask=c_mask, other=0.0).to(tl.float32)
    x2 = tl.load(xk + 2, mask=c_mask, other=0.0).to(tl.float32)
    x3 = tl.load(xk + 3, mask=c_mask, other=0.0).to(tl.float32)
    return w8_word_products(acc, acc_x, p, x0, x1, x2, x3)


@triton.jit
def w8_gemv_pf(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, N, K, KW, steps_per_split,
               HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # _w8a16_gemv_kernel with the next K step's words loaded while this one computes
    BKW: tl.constexpr = BLOCK_K // 4
    UNDO: tl.constexpr = 2.0 ** (149 - 64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    words = tl.arange(0, BKW)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * KW
    acc = tl.zeros([BLOCK_N, BKW], tl.float32)
    acc_x = tl.zeros([BKW], tl.float32)
    t0, t1 = _k_range(tl.cdiv(KW, BKW), steps_per_split)
    end = tl.minimum(KW, t1 * BKW)
    c = t0 * BKW + words
    p = tl.load(w_rows + c[None, :], mask=row_mask[:, None] & (c < end)[None, :], other=0)
    for t in range(t0, t1):
        cn = c + BKW
        pn = tl.load(w_rows + cn[None, :], mask=row_mask[:, None] & (cn < end)[None, :], other=0)
        acc, acc_x = _w8_step(acc, acc_x, p, x_ptr, c, c < KW)
        p = pn
        c = cn
    y = UNDO * tl.sum(acc, axis=1) - 128.0 * tl.sum(acc_x, axis=0)
    y *= tl.load(s_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(1).to(tl.int64) * N + rows, y, mask=row_mask)
        if FUSED_REDUCE:
            _reduce_if_last(out_ptr, lock_ptr, bias_ptr, final_ptr, rows, row_mask, N, N, HAS_BIAS)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def gemv_var(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, N, n8, K, group_size,
             steps_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SLABS: tl.constexpr, TILED: tl.constexpr,
             STREAM: tl.constexpr):
    # engine's _w4a16_gemv_kernel with n8 passed in (divisibility known to the compiler) and, with TILED,
    # qweight repacked tile-major: [N / BLOCK_N, K, BLOCK_N / 8], so a program's rows are one contiguous run.
    # STREAM: the same loads, one XOR per word (the access pattern's ceiling).
    BN8: tl.constexpr = BLOCK_N // 8
    STEP: tl.constexpr = SLABS * BLOCK_K
    X_SCALE: tl.constexpr = 2.0 ** X_SHIFT
    cols8 = tl.program_id(0) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    slab = tl.arange(0, SLABS)
    zero = tl.zeros([SLABS, BN8], tl.float32)
    a0, a1, a2, a3, a4, a5, a6, a7 = zero, zero, zero, zero, zero, zero, zero, zero
    accx = tl.zeros([SLABS, BN8], tl.int32)
    t0, t1 = _k_range(tl.cdiv(K, STEP), steps_per_split)
    for t in range(t0, t1):
        k0 = t * STEP + slab * BLOCK_K
        ok = k0 < K
        mask = ok[:, None] & col8_mask[None, :]
        if TILED:
            rows = (qw_ptr + tl.program_id(0).to(tl.int64) * K * BN8 + k0.to(tl.int64)[:, None] * BN8
                    + tl.arange(0, BN8)[None, :])
            rstride = BN8
        else:
            rows = qw_ptr + k0.to(tl.int64)[:, None] * n8 + cols8[None, :]
            rstride = n8
        P0, P1, P2, P3, P4, P5, P6, P7 = zero, zero, zero, zero, zero, zero, zero, zero
        sx = tl.zeros([SLABS], tl.float32)
        for r in tl.static_range(BLOCK_K):
            p = tl.load(rows + r * rstride, mask=mask, other=0)
            xr = tl.load(x_ptr + k0 + r, mask=ok, other=0.0).to(tl.float32) * X_SCALE
            sx += xr
            if STREAM:
                accx ^= p
            else:
                xb = xr[:, None]
                p_hi = p >> 12
                P0 = _gemv_nibble_rows(P0, p, p_hi, xb, 0)
                P1 = _gemv_nibble_rows(P1, p, p_hi, xb, 1)
                P2 = _gemv_nibble_rows(P2, p, p_hi, xb, 2)
                P3 = _gemv_nibble_rows(P3, p, p_hi, xb, 3)
                P4 = _gemv_nibble_rows(P4, p, p_hi, xb, 4)
                P5 = _gemv_nibble_rows(P5, p, p_hi, xb, 5)
                P6 = _gemv_nibble_rows(P6, p, p_hi, xb, 6)
                P7 = _gemv_nibble_rows(P7, p, p_hi, xb, 7)
        g = k0 // group_size
        zw = tl.load(qz_ptr + g[:, None] * n8 + cols8[None, :], mask=mask, other=0)
        zw_hi = zw >> 12
        s_row = s_ptr + g[:, None] * N + cols8[None, :] * 8
        sxb = sx[:, None]
        a0 = _gemv_nibble_group(a0, P0, zw, zw_hi, sxb, s_row, mask, 0)
        a1 = _gemv_nibble_group(a1, P1, zw, zw_hi, sxb, s_row, mask, 1)
        a2 = _gemv_nibble_group(a2, P2, zw, zw_hi, sxb, s_row, mask, 2)
        a3 = _gemv_nibble_group(a3, P3, zw, zw_hi, sxb, s_row, mask, 3)
        a4 = _gemv_nibble_group(a4, P4, zw, zw_hi, sxb, s_row, mask, 4)
        a5 = _gemv_nibble_group(a5, P5, zw, zw_hi, sxb, s_row, mask, 5)
        a6 = _gemv_nibble_group(a6, P6, zw, zw_hi, sxb, s_row, mask, 6)
        a7 = _gemv_nibble_group(a7, P7, zw, zw_hi, sxb, s_row, mask, 7)
    if STREAM:
        a0 += accx.to(tl.float32)
    out = out_ptr + tl.program_id(1).to(tl.int64) * N if PARTIAL else out_ptr
    _gemv_nibble_store(a0, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 0)
    _gemv_nibble_store(a1, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 1)
    _gemv_nibble_store(a2, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 2)
    _gemv_nibble_store(a3, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 3)
    _gemv_nibble_store(a4, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 4)
    _gemv_nibble_store(a5, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 5)
    _gemv_nibble_store(a6, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 6)
    _gemv_nibble_store(a7, bias_ptr, out, cols8, col8_mask, HAS_BIAS, PARTIAL, 7)
    if FUSED_REDUCE:
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        _reduce_if_last(out_ptr, lock_ptr, bias_ptr, final_ptr, cols, cols < N, N, N, HAS_BIAS)
