"""Weight-only quantized linear layers: W4A16 (AutoAWQ GEMM layout) and W8A16 (int8 per output channel).

This file owns the kernels, their launchers (`w4a16_linear`, `w8a16_linear`), their torch references
and the int8 quantizer the loader uses for bf16 checkpoints. The int4 format itself is defined once in
engine/quant/int4_pack.py: qweight int32 [K, N/8] (nibble i of a word holds column 8c + AWQ_ORDER[i]),
qzeros int32 [K/G, N/8] packed alike, scales [K/G, N], W[n, k] = (code - zero) * scale.

Two paths per format, chosen by M (rows of x) in the launcher:
- decode (M <= DECODE_MAX_M): the weight must stream at the HBM read limit, so the work per weight
  byte is what matters. M == 1 runs a CUDA-core GEMV (no tensor cores, no layout change through shared memory);
  2 <= M <= 16 runs the tensor-core GEMM with one 16-row tile, because M FMAs per weight on CUDA cores
  would outrun the ALU budget (an H200 streams ~8e12 int4 weights/s, ~4 thread-instructions per
  weight at 132 SMs x 128 lanes x 1.98 GHz). Columns alone give too few programs for 132 SMs on most
  shapes (qkv at 256 columns a program: 18), so K is split too: each split writes fp32 partials and
  a second tiny kernel sums them, adds the bias and casts (deterministic, no zeroing, no atomics).
- prefill (M > 16): tiled GEMM; each K tile of the packed weight is dequantized in registers to
  x.dtype and fed to tl.dot with an fp32 accumulator; split-K only when the tiles underfill the SMs.

Cheap dequantization (the decode path is ALU-bound otherwise):
- int -> float via the exponent trick instead of I2F (a quarter-rate or slower conversion on sm_80 /
  sm_90 per the CUDA guide's throughput table): OR-ing a code 0..255 into 0x4B000000 gives the float
  2^23 + code exactly, so one LOP3 and one FADD replace the conversion (FasterTransformer/LMDeploy use
  the fp16 version of this trick, 0x6400).
- Every K tile lies inside one quantization group (BLOCK_K divides G), so a tile loads one scale and
  zero row; the GEMV factors them out: sum_k x_k (q_kn - z_n) s_n = s_n (sum_k x_k q_kn - z_n sum_k x_k),
  leaving shift, LOP3, FADD and one FMA per weight.
- The packed word is unpacked as a [BLOCK_K, BLOCK_N/8, 8] tensor with per-lane shifts
  4 * AWQ_REVERSE_ORDER (0, 16, 4, 20, 8, 24, 12, 28), so column 8c + j comes out in place: the row-major
  reshape to [BLOCK_K, BLOCK_N] is then the natural column order, with no permutation.
W8A16 needs no per-weight scale at all: the scale is per output column, applied to the fp32 sum.

Everything is CUDA-graph safe: shapes and configs are host integers, no value is read on the host.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from engine.quant.int4_pack import dequantize_awq

from .matmul import _dot  # acc + a @ b in fp32, with the interpreter's bf16 workaround

DECODE_MAX_M = 16  # rows up to which the decode configs (GEMV / one 16-row tile + split-K) apply
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class TileConfig(NamedTuple):
    """One launch's tiling. block_m == 1 selects the CUDA-core GEMV kernel (M must then be 1)."""
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _awq_shifts():
    """Bit offset of column offset j (0..7) inside a packed word: 4 * AWQ_REVERSE_ORDER[j]."""
    j = tl.arange(0, 8)
    return (j // 2) * 4 + (j % 2) * 16


@triton.jit
def _unpack_codes_f32(p, shifts):
    """int32 [R, C] packed words -> float32 [R, C, 8] codes 0..15, column 8c + j at [.., c, j]."""
    bits = ((p[:, :, None] >> shifts[None, None, :]) & 0xF) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _int8_to_f32(w):
    """int8 -> float32 without I2F: -128..127 + 128 lands in the mantissa of 2^23."""
    return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _k_tile_range(num_k_tiles, tiles_per_split):
    """This split's K tiles [t0, t1): axis 1 of the grid is the split."""
    t0 = tl.program_id(1) * tiles_per_split
    return t0, tl.minimum(t0 + tiles_per_split, num_k_tiles)


@triton.jit
def _w4a16_gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, N, K, group_size, tiles_per_split,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    # One row of x. Program (pid_n, pid_k) owns BLOCK_N output columns and a run of K tiles; each K-row
    # of its packed tile is BLOCK_N / 2 contiguous bytes (128 at BLOCK_N = 256: whole cache lines).
    BN8: tl.constexpr = BLOCK_N // 8
    n8 = N // 8
    cols8 = tl.program_id(0) * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    cols = cols8[:, None] * 8 + tl.arange(0, 8)[None, :]  # [BN8, 8] output columns
    shifts = _awq_shifts()
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BN8, 8], tl.float32)
    t0, t1 = _k_tile_range(K // BLOCK_K, tiles_per_split)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        g = k0 // group_size
        x = tl.load(x_ptr + k0 + ks).to(tl.float32)
        p = tl.load(qw_ptr + (k0 + ks).to(tl.int64)[:, None] * n8 + cols8[None, :], mask=col8_mask[None, :],
                    other=0)
        q = _unpack_codes_f32(p, shifts)  # [BLOCK_K, BN8, 8]
        dot = tl.sum(q * x[:, None, None], axis=0)  # sum_k x_k q_kn: zero and scale factored out
        zp = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
        z = ((zp[:, None] >> shifts[None, :]) & 0xF).to(tl.float32)
        s = tl.load(s_ptr + g * N + cols, mask=col8_mask[:, None], other=0.0).to(tl.float32)
        acc += s * (dot - z * tl.sum(x, axis=0))
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(1).to(tl.int64) * N + cols, acc, mask=col8_mask[:, None])
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col8_mask[:, None], other=0.0).to(tl.float32)
        tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=col8_mask[:, None])


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
def _w4a16_gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, bias_ptr, out_ptr, M, N, K, group_size, stride_xm,
                       tiles_per_split, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       UPCAST: tl.constexpr, IEEE: tl.constexpr):
    BN8: tl.constexpr = BLOCK_N // 8
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    n8 = N // 8
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    cols8 = pid_n * BN8 + tl.arange(0, BN8)
    col8_mask = cols8 < n8
    shifts = _awq_shifts()
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    t0, t1 = _k_tile_range(K // BLOCK_K, tiles_per_split)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        g = k0 // group_size  # BLOCK_K divides the group size: one scale/zero row per tile
        a = tl.load(x_rows + (k0 + ks)[None, :], mask=row_mask[:, None], other=0.0)
        p = tl.load(qw_ptr + (k0 + ks).to(tl.int64)[:, None] * n8 + cols8[None, :], mask=col8_mask[None, :],
                    other=0)
        zp = tl.load(qz_ptr + g * n8 + cols8, mask=col8_mask, other=0)
        z = ((zp[:, None] >> shifts[None, :]) & 0xF).to(tl.float32)
        s = tl.load(s_ptr + g * N + cols8[:, None] * 8 + tl.arange(0, 8)[None, :], mask=col8_mask[:, None],
                    other=0.0).to(tl.float32)
        w = (_unpack_codes_f32(p, shifts) - z[None, :, :]) * s[None, :, :]  # exact (q - z), one rounding
        w = tl.reshape(w, (BLOCK_K, BLOCK_N)).to(x_ptr.dtype.element_ty)
        acc = _dot(a, w, acc, UPCAST, IEEE)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _store_tile(acc, bias_ptr, out_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL)


@triton.jit
def _store_tile(acc, bias_ptr, out_ptr, rows, cols, M, N, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr):
    """Final tile (bias in fp32, one cast) into out [M, N], or raw fp32 partials into [split, M, N]."""
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if PARTIAL:
        tl.store(out_ptr + tl.program_id(1).to(tl.int64) * M * N + offs, acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w8a16_gemv_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, N, K, HAS_BIAS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    # gemv.py's scheme on int8: BLOCK_N whole rows of W [N, K] (contiguous in K), an elementwise fp32
    # [BLOCK_N, BLOCK_K] accumulator, one reduction at the end; rows are plentiful, so no split-K.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptr + k + cols)
            w = tl.load(w_rows + k + cols[None, :], mask=row_mask[:, None], other=0)
        else:
            k_mask = k + cols < K
            x = tl.load(x_ptr + k + cols, mask=k_mask, other=0.0)
            w = tl.load(w_rows + k + cols[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0)
        acc += _int8_to_f32(w) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, 1) * tl.load(s_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _w8a16_gemm_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, tiles_per_split,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                       UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * K  # W^T tile addressing: each column is a run of K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    t0, t1 = _k_tile_range(tl.cdiv(K, BLOCK_K), tiles_per_split)
    for t in range(t0, t1):
        k = t * BLOCK_K + ks
        k_mask = k < K
        a = tl.load(x_rows + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_cols + k[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0)
        # int8 codes are exact in fp16/bf16: the scale waits for the fp32 sum
        acc = _dot(a, _int8_to_f32(w).to(x_ptr.dtype.element_ty), acc, UPCAST, IEEE)
    acc *= tl.load(s_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    _store_tile(acc, bias_ptr, out_ptr, rows, cols, M, N, HAS_BIAS, PARTIAL)


@triton.jit
def _splitk_reduce_kernel(part_ptr, bias_ptr, out_ptr, MN, N, num_splits, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
    """out[M, N] = sum over splits of partials [S, M, N] (+ bias), one cast: the split-K epilogue."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros([BLOCK], tl.float32)
    part = part_ptr + offs
    for _ in range(num_splits):  # a fixed order: the sum does not depend on which split finished first
        acc += tl.load(part, mask=mask, other=0.0)
        part += MN
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------- configs

def _pow2_divisor(group_size: int, cap: int) -> int:
    """Largest power of two <= cap that divides the group size: a K tile never straddles two groups."""
    b = cap
    while group_size % b:
        b //= 2
    return b


def _split_k(tiles: int, k_tiles: int, num_sms: int, target_waves: float, cap: int) -> int:
    """K splits so that tiles * splits reaches target_waves x SMs, at most cap and k_tiles."""
    want = -(-int(target_waves * num_sms) // max(tiles, 1))
    return max(1, min(want, cap, k_tiles))


def w4a16_decode_config(m: int, n: int, k: int, group_size: int, num_sms: int) -> TileConfig:
    """Tiles for M <= 16 (NOT YET MEASURED: from public practice, to be swept on the H200).

    M == 1: GEMV with 256 columns a program, so each K-row read is 128 contiguous bytes (a full line,
    as gemv.py reads), 32-deep K tiles (a [32, 32, 8] fp32
    unpack is 64 values per thread at 4 warps), 4 stages to keep ~16 KB of loads in flight per
    program, and split-K up to ~2 programs per SM (Marlin/TurboMind also split K for skinny shapes).
    2..16: one 16-row tensor-core tile (the smallest tl.dot accepts), 128 columns, K tiles of 64.
    """
    if m == 1:
        block_n = min(256, max(16, triton.next_power_of_2(n)))
        block_k = _pow2_divisor(group_size, 32)
        tiles = triton.cdiv(n, block_n)
        return TileConfig(1, block_n, block_k, _split_k(tiles, k // block_k, num_sms, 2.0, 32), 4, 4)
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    block_k = _pow2_divisor(group_size, 64)
    tiles = triton.cdiv(n, block_n)
    return TileConfig(16, block_n, block_k, _split_k(tiles, k // block_k, num_sms, 2.0, 32), 4, 4)


def w4a16_prefill_config(m: int, n: int, k: int, group_size: int, num_sms: int) -> TileConfig:
    """Tiles for M > 16 (NOT YET MEASURED: Triton's matmul tutorial / vLLM awq_triton tile sizes).

    64-128 x 128 output tiles with 64-deep K steps (at most the group size), 4 warps up to 64 rows and
    8 beyond, 3 stages (x tile 16 KB + packed tile 4 KB per stage at 128 rows). Split-K (<= 4) only
    when the tiles fill less than one wave of SMs, as at M = 64 with N = 3584 (28 tiles).
    """
    block_m = 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    block_k = _pow2_divisor(group_size, 64)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = _split_k(tiles, k // block_k, num_sms, 1.0, 4)
    return TileConfig(block_m, block_n, block_k, split, 4 if block_m <= 64 else 8, 3)


def w8a16_decode_config(m: int, n: int, k: int, num_sms: int) -> TileConfig:
    """Tiles for M <= 16 (NOT YET MEASURED: derived from gemv.py's H100 sweep, in bytes).

    M == 1: gemv.py's best bf16 tiles were 4 rows x 512 (1 KB a row); int8 reads the same 1 KB runs
    with 1024-wide K tiles. Rows alone give N / 4 programs (>= 896 at Qwen2.5-7B), so no split-K.
    2..16: one 16-row tensor-core tile, 64 columns of 128-byte K runs, split-K to ~2 programs per SM.
    """
    if m == 1:
        return TileConfig(1, 4, min(1024, max(16, triton.next_power_of_2(k))), 1, 4, 3)
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = 128
    tiles = triton.cdiv(n, block_n)
    return TileConfig(16, block_n, block_k, _split_k(tiles, triton.cdiv(k, block_k), num_sms, 2.0, 32), 4, 4)


def w8a16_prefill_config(m: int, n: int, k: int, num_sms: int) -> TileConfig:
    """Tiles for M > 16 (NOT YET MEASURED: the bf16 tiles of matmul.py / Triton's tutorial; int8 B
    halves the weight tile's shared memory). Split-K (<= 4) only below one wave of tiles."""
    block_m = 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = _split_k(tiles, triton.cdiv(k, 64), num_sms, 1.0, 4)
    return TileConfig(block_m, block_n, 64, split, 4 if block_m <= 64 else 8, 3)


@functools.lru_cache(maxsize=None)
def _sms(device_type: str, index: int) -> int:
    # the CPU interpreter gets 4: small, so that the small test shapes exercise split-K too
    return torch.cuda.get_device_properties(index).multi_processor_count if device_type == "cuda" else 4


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _sms(device.type, device.index or 0)


# ----------------------------------------------------------------------------------------- launchers

def _splits(k_tiles: int, split_k: int) -> tuple[int, int]:
    """(splits, K tiles per split) with no empty split."""
    per = -(-k_tiles // max(1, min(split_k, k_tiles)))
    return -(-k_tiles // per), per


def _launch(kernel, weights: tuple, dims: tuple, x, bias, out, cfg: TileConfig, k_tiles: int) -> torch.Tensor:
    """Launch a GEMV (block_m == 1) or GEMM kernel as kernel(x, *weights, bias, dst, *dims, [stride_xm],
    tiles_per_split); with split-K, dst is fp32 partials [S, M, N] and the reduce kernel finishes out."""
    m, n = out.shape
    splits, per = _splits(k_tiles, cfg.split_k)
    dst = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    b = bias if bias is not None else out  # never read without HAS_BIAS
    common = dict(HAS_BIAS=bias is not None, PARTIAL=splits > 1, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.block_m == 1:
        kernel[(triton.cdiv(n, cfg.block_n), splits)](x, *weights, b, dst, *dims, per, **common)
    else:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), splits)
        kernel[grid](x, *weights, b, dst, *dims, x.stride(0), per, BLOCK_M=cfg.block_m, GROUP_M=8,
                     UPCAST=x.device.type != "cuda" and x.dtype != torch.float32, IEEE=x.dtype == torch.float32,
                     **common)
    if splits > 1:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](dst, b, out, m * n, n, splits,
                                                            HAS_BIAS=bias is not None, BLOCK=block)
    return out


def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None, *,
                 config: TileConfig | None = None) -> torch.Tensor:
    """x [M, K] @ dequant(W)^T (+ bias [N]) -> [M, N] in x.dtype, fp32 accumulation.

    qweight int32 [K, N/8], qzeros int32 [K/G, N/8] (AWQ order), scales fp16/bf16/fp32 [K/G, N]; x
    fp16/bf16/fp32, last dim contiguous; bias any float [N]. group_size G divides K and is a multiple
    of 16. config: tiles for tests and benchmark sweeps (default: the decode / prefill config for M).
    """
    m, k, n = _check_w4(x, qweight, qzeros, scales, group_size, bias)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0 or k == 0:
        return _empty_product(out, bias)
    pick = w4a16_decode_config if m <= DECODE_MAX_M else w4a16_prefill_config
    cfg = config or pick(m, n, k, group_size, _num_sms(x.device))
    if group_size % cfg.block_k or (cfg.block_m == 1) != (m == 1):
        raise ValueError(f"config {cfg} does not fit M={m}, group size {group_size} (block_k must divide it; "
                         "block_m == 1 exactly when M == 1)")
    gemv = cfg.block_m == 1
    return _launch(_w4a16_gemv_kernel if gemv else _w4a16_gemm_kernel, (qweight, qzeros, scales),
                   (n, k, group_size) if gemv else (m, n, k, group_size), x, bias, out, cfg, k // cfg.block_k)


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 *, config: TileConfig | None = None) -> torch.Tensor:
    """x [M, K] @ (qweight * scales[:, None])^T (+ bias [N]) -> [M, N] in x.dtype, fp32 accumulation.

    qweight int8 [N, K] (symmetric, per output channel), scales fp32 or x.dtype [N]; x fp16/bf16/fp32,
    last dim contiguous; bias any float [N]. config: tiles for tests and benchmark sweeps.
    """
    m, k, n = _check_w8(x, qweight, scales, bias)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0 or k == 0:
        return _empty_product(out, bias)
    pick = w8a16_decode_config if m <= DECODE_MAX_M else w8a16_prefill_config
    cfg = config or pick(m, n, k, _num_sms(x.device))
    if (cfg.block_m == 1) != (m == 1):
        raise ValueError(f"config {cfg} does not fit M={m} (block_m == 1 exactly when M == 1)")
    if cfg.block_m == 1:  # rows are plentiful at M = 1: no split-K, its own launch
        _w8a16_gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
            x, qweight, scales, bias if bias is not None else out, out, n, k, HAS_BIAS=bias is not None,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, EVEN_K=k % cfg.block_k == 0, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        return out
    return _launch(_w8a16_gemm_kernel, (qweight, scales), (m, n, k), x, bias, out, cfg,
                   triton.cdiv(k, cfg.block_k))


def _empty_product(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # K == 0 is an empty sum: the bias (or 0), without launching kernels on empty tensors.
    if bias is not None and out.numel():
        return out.copy_(bias.expand_as(out))
    return out.zero_()


# ----------------------------------------------------------------------------------------- checks

def _check_x_bias(name: str, x: torch.Tensor, bias: torch.Tensor | None, n: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}: x must be [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name}: x must be one of {_FLOATS}, got {x.dtype}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"{name}: x must be contiguous in its last dim")
    if bias is not None:
        if bias.shape != (n,) or bias.dtype not in _FLOATS or bias.device != x.device:
            raise ValueError(f"{name}: bias must be a float [{n}] on {x.device}, got {tuple(bias.shape)} "
                             f"{bias.dtype} on {bias.device}")
        if n > 1 and bias.stride(0) != 1:
            raise ValueError(f"{name}: bias must be contiguous")


def _check_w4(x, qweight, qzeros, scales, group_size, bias) -> tuple[int, int, int]:
    for t, label, dtypes in ((qweight, "qweight", (torch.int32,)), (qzeros, "qzeros", (torch.int32,)),
                             (scales, "scales", _FLOATS)):
        if t.dim() != 2 or t.dtype not in dtypes or not t.is_contiguous():
            raise ValueError(f"w4a16_linear: {label} must be a contiguous 2-D {' or '.join(map(str, dtypes))}, "
                             f"got {tuple(t.shape)} {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"w4a16_linear: {label} is on {t.device}, x on {x.device}")
    k, n8 = qweight.shape
    n = scales.shape[1]
    _check_x_bias("w4a16_linear", x, bias, n)
    if x.shape[1] != k:
        raise ValueError(f"w4a16_linear: x has K={x.shape[1]} but qweight is {tuple(qweight.shape)} ([K, N/8])")
    if n != 8 * n8 or n % 8:
        raise ValueError(f"w4a16_linear: scales have N={n} columns, qweight packs {8 * n8} "
                         "(N must be a multiple of 8, eight 4-bit columns per int32)")
    if not isinstance(group_size, int) or group_size <= 0 or k % group_size or group_size % 16:
        raise ValueError(f"w4a16_linear: group size {group_size} must be a positive multiple of 16 dividing "
                         f"K={k}")
    if qzeros.shape != (k // group_size, n8) or scales.shape != (k // group_size, n):
        raise ValueError(f"w4a16_linear: with K={k}, N={n}, G={group_size} expected qzeros "
                         f"[{k // group_size}, {n8}] and scales [{k // group_size}, {n}], got "
                         f"{tuple(qzeros.shape)} and {tuple(scales.shape)}")
    return x.shape[0], k, n


def _check_w8(x, qweight, scales, bias) -> tuple[int, int, int]:
    if qweight.dim() != 2 or qweight.dtype != torch.int8 or not qweight.is_contiguous():
        raise ValueError(f"w8a16_linear: qweight must be a contiguous int8 [N, K], got {tuple(qweight.shape)} "
                         f"{qweight.dtype}")
    n, k = qweight.shape
    _check_x_bias("w8a16_linear", x, bias, n)
    if x.shape[1] != k:
        raise ValueError(f"w8a16_linear: x has K={x.shape[1]} but qweight is {tuple(qweight.shape)} ([N, K])")
    if scales.shape != (n,) or scales.dtype not in (torch.float32, x.dtype) or not scales.is_contiguous():
        raise ValueError(f"w8a16_linear: scales must be a contiguous [{n}] float32 or {x.dtype}, got "
                         f"{tuple(scales.shape)} {scales.dtype}")
    if qweight.device != x.device or scales.device != x.device:
        raise ValueError(f"w8a16_linear: qweight and scales must be on x's device {x.device}")
    return x.shape[0], k, n


# ----------------------------------------------------------------------------------------- references

def w4a16_linear_ref(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                     group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The torch reference: dequantize_awq (fp32 [N, K]), fp32 matmul, bias, one cast to x.dtype."""
    y = x.float() @ dequantize_awq(qweight, qzeros, scales, group_size).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w8a16_linear_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """The torch reference: (q * s[:, None]) in fp32, fp32 matmul, bias, one cast to x.dtype."""
    y = x.float() @ (qweight.float() * scales.float()[:, None]).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
