"""The Triton kernels of the weight-only quantized linears (W4A16 AWQ layout, W8A16 per-channel int8).

This file owns the kernel bodies only; engine/kernels/quant_gemm.py owns their launchers, tile configs,
the path dispatch and the torch references, and engine/kernels/int4_unpack.py the int4 bit tricks and
the AWQ dequantize-to-dense kernel. Every kernel writes either the final [M, N] output (bias added in
fp32, one cast) or, with split-K, raw fp32 partials [S, M, N] that are summed in a fixed order by split
index (deterministic: no floating-point atomics, no zeroing). Who sums them is the launcher's choice:
`_splitk_reduce_kernel`, a second launch, or, with FUSED_REDUCE, the last split of each output tile
itself (`_reduce_if_last`: an arrival counter per tile, as CUTLASS's serial split-K does), which saves
the second kernel's launch and ramp, ~2 us on 2-20 us decode GEMVs. All accumulation is fp32.

Why the shapes of work are what they are (H200: 132 SMs, ~4.8 TB/s, 64 INT32 and 128 FP32 lanes per SM
per clock): streaming int4 at the HBM limit is ~37 weights per SM per clock, so the batch-1 GEMV can
spend about 3.5 issue slots per weight, of which at most ~1.7 integer ones. `_w4a16_gemv_kernel` does
one LOP3 and one FFMA per weight plus a shift per word (int4_unpack.awq_code_f32); the int8 GEMV does
1.5 integer ops and one FFMA per weight by the same subnormal trick on 32-bit words of four codes.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .int4_unpack import X_SHIFT, awq_code_f32, awq_codes_minus_zeros, awq_column
from .matmul import _dot  # acc + a @ b in fp32, with the interpreter's bf16 workaround


@triton.jit
def _k_range(num_steps, steps_per_split):
    """This split's K steps [t0, t1): axis 1 of the grid is the split."""
    t0 = tl.program_id(1) * steps_per_split
    return t0, tl.minimum(t0 + steps_per_split, num_steps)


@triton.jit
def _sum_splits(part, MN, num_splits, mask):
    """sum over s < num_splits of part[s * MN] (fp32), in one fixed order: eight splits' loads in flight at
    a time and summed pairwise, then added to the running sum. A plain loop of dependent load-adds costs
    an L2 round trip per split (~0.3 us: 17 us of down_proj's 57 splits at batch 1)."""
    stride = tl.zeros([], tl.int64) + MN  # 64-bit: S * M * N may pass 2^31 (and MN == 1 arrives as a constexpr)
    acc = tl.load(part, mask=mask, other=0.0, cache_modifier=".cg")
    split = tl.zeros_like(mask.to(tl.int32))  # the split index as a tensor: masks must be tensors
    for s0 in range(1, num_splits, 8):
        p = part + s0 * stride
        split = split * 0 + s0
        v0 = tl.load(p, mask=mask, other=0.0, cache_modifier=".cg")
        v1 = tl.load(p + stride, mask=mask & (split + 1 < num_splits), other=0.0, cache_modifier=".cg")
        v2 = tl.load(p + 2 * stride, mask=mask & (split + 2 < num_splits), other=0.0, cache_modifier=".cg")
        v3 = tl.load(p + 3 * stride, mask=mask & (split + 3 < num_splits), other=0.0, cache_modifier=".cg")
        v4 = tl.load(p + 4 * stride, mask=mask & (split + 4 < num_splits), other=0.0, cache_modifier=".cg")
        v5 = tl.load(p + 5 * stride, mask=mask & (split + 5 < num_splits), other=0.0, cache_modifier=".cg")
        v6 = tl.load(p + 6 * stride, mask=mask & (split + 6 < num_splits), other=0.0, cache_modifier=".cg")
        v7 = tl.load(p + 7 * stride, mask=mask & (split + 7 < num_splits), other=0.0, cache_modifier=".cg")
        acc += ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))
    return acc


@triton.jit
def _reduce_if_last(part_ptr, lock_ptr, bias_ptr, final_ptr, offs, mask, MN, N, HAS_BIAS: tl.constexpr):
    """Called by every split after it stored its partials at part_ptr + split * MN + offs: the split that
    arrives last at this tile's counter (lock_ptr[program_id(0)]) sums all of them in split order, adds
    the bias, writes final_ptr + offs and puts the counter back to 0 for the next call (a CUDA graph
    replays the kernel with the same counters). The barrier orders every thread's partial stores before
    the counter moves (the release is cumulative); the last split's acquire orders its loads after all
    of them, and the loads go to L2 (.cg): another SM's partials are never in this SM's L1."""
    tl.debug_barrier()
    arrived = tl.atomic_add(lock_ptr + tl.program_id(0), 1, sem="acq_rel")
    if arrived == tl.num_programs(1) - 1:
        acc = _sum_splits(part_ptr + offs, MN, tl.num_programs(1), mask)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
        tl.store(final_ptr + offs, acc.to(final_ptr.dtype.element_ty), mask=mask)
        tl.atomic_xchg(lock_ptr + tl.program_id(0), 0, sem="relaxed")


# ----------------------------------------------------------------------------------------- W4A16

@triton.jit
def _gemv_nibble_rows(P, p, p_hi, xb, NIB: tl.constexpr):
    # one FFMA per weight: the code comes out of a single AND (awq_code_f32)
    return P + awq_code_f32(p, p_hi, NIB) * xb


@triton.jit
def _gemv_nibble_group(acc, P, zw, zw_hi, sx, s_row, mask, NIB: tl.constexpr):
    """acc += s * sum_k x_k (q_k - z) for nibble NIB of each slab: P = sum_k x'_k q_k 2^(lsb-149) and
    sx = sum_k x'_k (x' = x * 2^X_SHIFT), so the power of two goes back out with the scale."""
    LSB: tl.constexpr = 4 * NIB - 12 * (NIB // 5)  # the nibble's bit position (int4_unpack.awq_code_f32)
    UNDO: tl.constexpr = 2.0 ** (149 - X_SHIFT - LSB)
    s = tl.load(s_row + awq_column(NIB), mask=mask, other=0.0).to(tl.float32)
    return acc + (s * UNDO) * (P - awq_code_f32(zw, zw_hi, NIB) * sx)


@triton.jit
def _gemv_nibble_store(acc, bias_ptr, out_ptr, cols8, col8_mask, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                       NIB: tl.constexpr):
    y = tl.sum(acc, axis=0)  # across the slabs (warps): once per program
    cols = cols8 * 8 + awq_column(NIB)
    if PARTIAL:
        tl.store(out_ptr + cols, y, mask=col8_mask)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=col8_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + cols, y.to(out_ptr.dtype.element_ty), mask=col8_mask)


@triton.jit
def _w4a16_gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, N, K, group_size,
                       steps_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SLABS: tl.constexpr):
    # x [1, K] @ W^T on CUDA cores. Program (pid_n, pid_k) owns BLOCK_N columns; a K step is SLABS slabs
    # of BLOCK_K rows, one slab per warp (a [SLABS, BLOCK_N / 8] tile puts the words of a row on the
    # lanes, 8-16 contiguous bytes each, and the slabs on the warps), so every row is summed inside its
    # thread: eight nibble accumulators, in AWQ's nibble order, per word, and no cross-thread traffic
    # until the one reduction over the slabs at the end. The rows of a slab are loaded one by one
    # (static unroll) so the sum over them is a plain FFMA chain. BLOCK_K divides the group size, so a
    # slab has one scale and zero row: its zero and scale are applied once per slab, in fp32.
    BN8: tl.constexpr = BLOCK_N // 8
    STEP: tl.constexpr = SLABS * BLOCK_K
    X_SCALE: tl.constexpr = 2.0 ** X_SHIFT
    n8 = N // 8
    cols8 = tl.program_id(0) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    slab = tl.arange(0, SLABS)
    zero = tl.zeros([SLABS, BN8], tl.float32)
    a0, a1, a2, a3, a4, a5, a6, a7 = zero, zero, zero, zero, zero, zero, zero, zero
    t0, t1 = _k_range(tl.cdiv(K, STEP), steps_per_split)
    for t in range(t0, t1):
        k0 = t * STEP + slab * BLOCK_K  # first row of each slab
        ok = k0 < K  # slabs are whole or absent: BLOCK_K | group size | K
        mask = ok[:, None] & col8_mask[None, :]
        rows = qw_ptr + k0.to(tl.int64)[:, None] * n8 + cols8[None, :]
        P0, P1, P2, P3, P4, P5, P6, P7 = zero, zero, zero, zero, zero, zero, zero, zero
        sx = tl.zeros([SLABS], tl.float32)
        for r in tl.static_range(BLOCK_K):
            p = tl.load(rows + r * n8, mask=mask, other=0)
            xr = tl.load(x_ptr + k0 + r, mask=ok, other=0.0).to(tl.float32) * X_SCALE
            sx += xr
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


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program_id(0), GROUP_M row tiles at a time so a weight tile serves them from L2."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % size_m, (pid % in_group) // size_m


@triton.jit
def _store_tile(acc, bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS: tl.constexpr,
                PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr):
    """Final tile (bias in fp32, one cast) into out [M, N], or raw fp32 partials into [split, M, N] (and,
    with FUSED_REDUCE, the last split of the tile sums them into final [M, N])."""
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(1).to(tl.int64) * M * N + offs, acc, mask=mask)
        if FUSED_REDUCE:
            _reduce_if_last(out_ptr, lock_ptr, bias_ptr, final_ptr, offs, mask, M * N, N, HAS_BIAS)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w4a16_gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K, group_size,
                       stride_xm, tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                       FUSED_REDUCE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       UPCAST: tl.constexpr, IEEE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                       ASM: tl.constexpr):
    # Tensor-core tiles. The weight operand is code - zero, an exact small integer in x's dtype (a shift,
    # a LOP3 and a packed subtract per two weights); the scale multiplies the fp32 product of the K tile,
    # which lies in one quantization group (BLOCK_K divides the group size). So the weights are never
    # rounded, and no per-weight multiply is spent on the scale.
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
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    t0, t1 = _k_range(K // BLOCK_K, tiles_per_split)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        g = k0 // group_size
        a = tl.load(x_rows + (k0 + ks)[None, :], mask=row_mask[:, None], other=0.0)
        p = tl.load(qw_ptr + (k0 + ks).to(tl.int64)[:, None] * n8 + cols8[None, :], mask=col8_mask[None, :],
                    other=0)
        zw = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
        s = tl.load(s_ptr + g * N + cols, mask=col_mask, other=0.0).to(tl.float32)
        w = awq_codes_minus_zeros(p, zw, x_ptr.dtype.element_ty, EMULATE_BF16, ASM)
        acc += _dot(a, w, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), UPCAST, IEEE) * s[None, :]
    _store_tile(acc, bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL, FUSED_REDUCE)


# ----------------------------------------------------------------------------------------- W8A16

@triton.jit
def _w8a16_gemv_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, N, K, KW, steps_per_split,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # x [1, K] @ (q * s)^T on CUDA cores, W read as int32 words of four codes (w_ptr: [N, KW = K / 4]):
    # w8_word_products' byte planes, one LOP3 per weight, one shift per two, one XOR per four, then the FFMA.
    # Elementwise fp32 accumulator [BLOCK_N, BLOCK_K / 4], reduced once at the end; the scale is per
    # output row, applied to the sum: y = s * (2^(149 - X_SHIFT) * sum x u - 128 * sum x).
    BKW: tl.constexpr = BLOCK_K // 4
    UNDO: tl.constexpr = 2.0 ** (149 - X_SHIFT)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    words = tl.arange(0, BKW)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * KW
    acc = tl.zeros([BLOCK_N, BKW], tl.float32)
    acc_x = tl.zeros([BKW], tl.float32)
    t0, t1 = _k_range(tl.cdiv(KW, BKW), steps_per_split)
    for t in range(t0, t1):
        c = t * BKW + words
        c_mask = c < KW
        p = tl.load(w_rows + c[None, :], mask=row_mask[:, None] & c_mask[None, :], other=0)
        xk = x_ptr + 4 * c  # four strided loads: x is small and stays in L1 / L2
        x0 = tl.load(xk, mask=c_mask, other=0.0).to(tl.float32)
        x1 = tl.load(xk + 1, mask=c_mask, other=0.0).to(tl.float32)
        x2 = tl.load(xk + 2, mask=c_mask, other=0.0).to(tl.float32)
        x3 = tl.load(xk + 3, mask=c_mask, other=0.0).to(tl.float32)
        acc, acc_x = w8_word_products(acc, acc_x, p, x0, x1, x2, x3)
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
def w8_word_products(acc, acc_x, p, x0, x1, x2, x3):
    """One K step of the W8A16 GEMV: p [rows, words] holds four int8 codes a word (byte b is K element 4 c + b),
    x0..x3 [words] the matching x. XOR 0x80 per byte makes each code u = q + 128, and a byte masked in place is
    an fp32 subnormal u * 2^(8b - 149) (bytes 2, 3 from word >> 16), so x pre-scaled per byte position gives
    every product the same 2^(X_SHIFT - 149); acc_x gathers sum x for the - 128 sum x term."""
    X_LO: tl.constexpr = 2.0 ** X_SHIFT  # bytes 0 and 2 (bits 0..7 of the word or of word >> 16)
    X_HI: tl.constexpr = 2.0 ** (X_SHIFT - 8)  # bytes 1 and 3 (bits 8..15)
    u = p ^ -2139062144  # 0x80808080 as an int32
    u_hi = u >> 16
    acc_x += (x0 + x1) + (x2 + x3)
    acc += (u & 0xFF).to(tl.float32, bitcast=True) * (x0 * X_LO)[None, :]
    acc += (u & 0xFF00).to(tl.float32, bitcast=True) * (x1 * X_HI)[None, :]
    acc += (u_hi & 0xFF).to(tl.float32, bitcast=True) * (x2 * X_LO)[None, :]
    acc += (u_hi & 0xFF00).to(tl.float32, bitcast=True) * (x3 * X_HI)[None, :]
    return acc, acc_x


@triton.jit
def _int8_to_f32(w):
    """int8 -> float32 without I2F: -128..127 + 128 lands in the mantissa of 2^23."""
    return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _w8a16_gemm_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K, stride_xm,
                       tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, FUSED_REDUCE: tl.constexpr,
                       BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       UPCAST: tl.constexpr, IEEE: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * K  # W^T tile addressing: each column is a run of K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    t0, t1 = _k_range(tl.cdiv(K, BLOCK_K), tiles_per_split)
    for t in range(t0, t1):
        k = t * BLOCK_K + ks
        if EVEN_K:  # no K mask: fewer selects per loaded element
            a = tl.load(x_rows + k[None, :], mask=row_mask[:, None], other=0.0)
            w = tl.load(w_cols + k[:, None], mask=col_mask[None, :], other=0)
        else:
            k_mask = k < K
            a = tl.load(x_rows + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_cols + k[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0)
        # int8 codes are exact in fp16/bf16: the scale waits for the fp32 sum
        acc = _dot(a, _int8_to_f32(w).to(x_ptr.dtype.element_ty), acc, UPCAST, IEEE)
    acc *= tl.load(s_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    _store_tile(acc, bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL, FUSED_REDUCE)


@triton.jit
def _w8a16_gemm_swapped_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, final_ptr, lock_ptr, M, N, K, stride_xm,
                               tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                               FUSED_REDUCE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                               EVEN_K: tl.constexpr):
    # The same product with the operands swapped: out^T [BLOCK_N, BLOCK_M] = W [BLOCK_N, BLOCK_K] @ x^T.
    # The weight tile, dequantized in registers, is the MMA's first operand, which Hopper's wgmma reads
    # from registers; only the second (x^T, a few token columns) must sit in shared memory. With W as
    # the second operand (_w8a16_gemm_kernel) every dequantized tile takes a round trip through shared
    # memory first. The tokens are the MMA's N (16..64 here), so small M wastes no 64-row M tile either.
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # tokens
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output features
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_cols = x_ptr + rows.to(tl.int64)[None, :] * stride_xm  # x^T tile addressing: a run of K per token
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    t0, t1 = _k_range(tl.cdiv(K, BLOCK_K), tiles_per_split)
    for t in range(t0, t1):
        k = t * BLOCK_K + ks
        if EVEN_K:
            w = tl.load(w_rows + k[None, :], mask=col_mask[:, None], other=0)
            xt = tl.load(x_cols + k[:, None], mask=row_mask[None, :], other=0.0)
        else:
            k_mask = k < K
            w = tl.load(w_rows + k[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0)
            xt = tl.load(x_cols + k[:, None], mask=k_mask[:, None] & row_mask[None, :], other=0.0)
        acc = _dot(_int8_to_f32(w).to(x_ptr.dtype.element_ty), xt, acc, UPCAST, IEEE)
    acc *= tl.load(s_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[:, None]
    _store_tile(tl.trans(acc), bias_ptr, out_ptr, final_ptr, lock_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL,
                FUSED_REDUCE)


@triton.jit
def _w8_dequant_kernel(w_ptr, s_ptr, out_ptr, K, n_start, n_count, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out [n_count, K] (x's dtype) = q * s for rows n_start ..: one rounding from fp32. Memory-bound."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < n_count)[:, None] & (cols < K)[None, :]
    w = tl.load(w_ptr + (n_start + rows).to(tl.int64)[:, None] * K + cols[None, :], mask=mask, other=0)
    s = tl.load(s_ptr + n_start + rows, mask=rows < n_count, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :],
             (_int8_to_f32(w) * s[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _splitk_reduce_kernel(part_ptr, bias_ptr, out_ptr, MN, N, num_splits, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
    """out[M, N] = sum over splits of partials [S, M, N] (+ bias), one cast: the split-K epilogue."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = _sum_splits(part_ptr + offs, MN, num_splits, mask)  # the order _reduce_if_last sums in, too
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
