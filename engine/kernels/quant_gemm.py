"""Weight-only quantized linear layers: W4A16 (AutoAWQ GEMM layout) and W8A16 (int8 per output channel).

This file owns the launchers (`w4a16_linear`, `w8a16_linear`): which path runs for which M, the tile
configs, split-K, input checks, and the torch references; the kernels live in quant_kernels.py and
the int4 bit tricks and the AWQ dequantize-to-dense kernel in int4_unpack.py. The int4 format itself
is defined once in engine/quant/int4_pack.py: qweight int32 [K, N/8] (nibble i of a word holds column
8c + AWQ_ORDER[i]), qzeros int32 [K/G, N/8] packed alike, scales [K/G, N], W[n, k] = (code - zero) * scale.

Three paths per format, picked from M (rows of x) unless a caller forces one with path=:
- 'gemv' (M == 1): decode at batch 1 must stream the weight at the HBM limit, and what limits it is the
  ALU work per weight, so this is a CUDA-core kernel built around a one-LOP3-per-weight unpack (see
  quant_kernels.py / int4_unpack.py). Columns alone give too few programs for 132 SMs (qkv at 512
  columns a program: 9), so K is split: each split writes fp32 partials, and the last split of each
  column tile to finish sums them in a fixed order, adds the bias and casts (TileConfig.fused_reduce;
  a second tiny kernel did this before, and costs a launch on a 2-20 us call).
- 'gemm' (2 <= M <= W4_FUSED_MAX_M / W8_FUSED_MAX_M): tensor-core tiles with the weight dequantized in
  registers: for int4 the operand is code - zero (exact in fp16/bf16) and the group scale multiplies the
  fp32 product of each K tile; for int8 the codes, with the row scale after the sum. M <= DECODE_MAX_M
  uses one 16-row tile and split-K to fill the SMs; larger M the prefill tiles. For int8 a tiles file may
  pick the swapped-operand variant (TileConfig.swap_ab) where a sweep measured it faster.
- 'dequant_cublas' (larger M): the product is compute-bound there, where cuBLAS beats a Triton kernel
  that also dequantizes, so one Triton kernel writes the dense weight in x's dtype (a column chunk of at
  most DENSE_CHUNK_BYTES at a time) and torch.mm / addmm multiplies it.
The thresholds and configs are reasoned from a roofline (int4 stops being memory-bound near M = 50 on an
H200, bf16 near M = 200); engine/kernels/quant_bench.py times every path per shape, and its --sweep
writes the fastest per shape and M into the device's tiles file (engine/kernels/quant_tiles.py), which
overrides them where it has an entry.

Everything on the fused paths is CUDA-graph safe: shapes and configs are host integers, no value is read
on the host, and the split-K arrival counters (one int32 per output tile, per device) are made on the
first call and left at 0 by every call. The dense path allocates its chunk buffer per call (fine inside
a graph capture too).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton

from engine.quant.int4_pack import dequantize_awq

from . import inline_ptx_ok
from . import quant_kernels as qk
from . import quant_tiles
from .int4_unpack import awq_dequantize

DECODE_MAX_M = 16  # rows up to which the 'gemm' path uses one 16-row tile + split-K
W4_FUSED_MAX_M = 256  # rows up to which w4a16_linear runs a fused kernel; above: dequant + cuBLAS
W8_FUSED_MAX_M = 256  # the same for w8a16_linear
# The 'dequant_cublas' path's dense weight buffer, at most (column chunks). A prefill step runs eagerly, and
# each chunk costs the host a dequantize launch and a matmul: at 64 MB Qwen2.5-7B took ten chunks a layer and
# a mixed step (16 decodes + a 512-token prompt, H200) 39.7 ms against 16.9 ms on the GPU; at 256 MB five
# and 26.5 ms (reports/examples/h200/prefill-awq/). 256 MB fits the 20% of free memory the KV cache leaves.
DENSE_CHUNK_BYTES = 256 << 20
PATHS = ("gemv", "gemm", "dequant_cublas")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class TileConfig(NamedTuple):
    """One launch's tiling. block_m == 1 selects the CUDA-core GEMV kernel (M must then be 1); there,
    block_k is the rows of one slab (one slab per warp and K step) for int4, the K elements of a step
    for int8. block_m >= 16 selects the tensor-core kernel (any M). fused_reduce: with split-K, the
    last split of each tile sums the partials (quant_kernels._reduce_if_last) instead of a second
    kernel launch; same sums in the same order either way. swap_ab (int8 only): the tensor-core kernel
    with the operands swapped, out^T = W x^T (quant_kernels._w8a16_gemm_swapped_kernel), so the
    dequantized weight is the MMA operand Hopper reads from registers and block_m (the tokens) its N.
    Not a default anywhere: a sweep offers it, and a device's tiles file picks it where it measured
    faster. (AWQ packs eight output features per word, so its tile comes out K-major: the int4 kernel
    needs a repacked weight for this.)"""
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    fused_reduce: bool = False
    swap_ab: bool = False


# ----------------------------------------------------------------------------------------- configs

def _pow2_divisor(group_size: int, cap: int) -> int:
    """Largest power of two <= cap that divides the group size: a K tile never straddles two groups."""
    b = cap
    while group_size % b:
        b //= 2
    return b


def _split_k(tiles: int, k_steps: int, num_sms: int, target_waves: float, cap: int) -> int:
    """K splits so that tiles * splits reaches target_waves x SMs, at most cap and k_steps."""
    want = -(-int(target_waves * num_sms) // max(tiles, 1))
    return max(1, min(want, cap, k_steps))


def _gemv_block_n(n: int) -> int:
    # 512 columns = 64 words a row: 2 words (8 bytes) per lane of a warp, and a multiple of every
    # Qwen2.5 / Llama width (3584, 4608, 18944, 37888: no masked lanes); 1024 (16 bytes a lane, 10% fewer
    # instructions per weight in the SASS) where it divides N.
    if n % 1024 == 0:
        return 1024
    return 512 if n >= 512 else max(16, triton.next_power_of_2(n))


SMALL_WEIGHTS = 1 << 25  # N * K up to which a batch-1 GEMV is latency-bound (qkv, o of a 7B: 13-17 M)


def w4a16_decode_config(m: int, n: int, k: int, group_size: int, num_sms: int) -> TileConfig:
    """Tiles for M <= 16, where a device has no measured entry (quant_tiles). The pattern is the one the
    H200 sweep chose (reports/examples/h200/quant-cd82086), reasoned into rules:

    M == 1: the GEMV with 8 warps = 8 slabs (wider K steps: more loads in flight per program), 512 or
    1024 columns (_gemv_block_n). Small weights (N * K <= SMALL_WEIGHTS): 32-row slabs and about one
    wave of programs (qkv: 9 x 14), each doing one 256-row step: the call is bound by latency, and one
    step per program is the shortest path. Large weights: 16-row slabs (16 in 128 registers: no
    spills at 8 warps) and about two waves (down: 7 x 38, gate_up: 37 x 8).
    2..16: one 16-row tensor-core tile of 64 columns, 128-row K tiles, 3 stages, split-K to ~4 waves
    (qkv: 72 x 8; the fused split-K sum makes many splits cheap).
    """
    if m == 1:
        block_n = _gemv_block_n(n)
        small = n * k <= SMALL_WEIGHTS
        block_k = _pow2_divisor(group_size, 32 if small else 16)
        steps = -(-k // (8 * block_k))
        waves = 1.0 if small else 2.0
        return TileConfig(1, block_n, block_k, _split_k(triton.cdiv(n, block_n), steps, num_sms, waves, steps), 8, 1,
                          True)
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = _pow2_divisor(group_size, 128)
    tiles = triton.cdiv(n, block_n)
    return TileConfig(16, block_n, block_k, _split_k(tiles, k // block_k, num_sms, 4.0, 32), 4, 3, True)


def w4a16_prefill_config(m: int, n: int, k: int, group_size: int, num_sms: int) -> TileConfig:
    """Tiles for 16 < M <= W4_FUSED_MAX_M without a measured entry.

    Up to 64 rows (measured on the H200): 64 x 64 tiles of 128-row K, 4 warps, 3 stages, split-K to ~4
    waves (a 7B's qkv has 72 such tiles). Beyond: Triton's matmul tutorial sizes, 128 x 128 tiles, 8
    warps, 64-row K tiles (the scale costs one FFMA per output element and K tile, which at 64-deep
    tiles and 64 rows was as much as the dequantization itself: sm_90 SASS, 6.1 -> 4.5 instructions per
    weight, so deeper K tiles while the tile is small), split-K (<= 4) only below one wave.
    """
    if m <= 64:
        block_n = min(64, max(16, triton.next_power_of_2(n)))
        block_k = _pow2_divisor(group_size, 128)
        tiles = triton.cdiv(m, 64) * triton.cdiv(n, block_n)
        return TileConfig(64, block_n, block_k, _split_k(tiles, k // block_k, num_sms, 4.0, 16), 4, 3, True)
    block_m = 128
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    block_k = _pow2_divisor(group_size, 64)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = _split_k(tiles, k // block_k, num_sms, 1.0, 4)
    return TileConfig(block_m, block_n, block_k, split, 8, 3, True)


def w8a16_decode_config(m: int, n: int, k: int, num_sms: int) -> TileConfig:
    """Tiles for M <= 16 without a measured entry (the H200 sweep's pattern).

    M == 1 (K a multiple of 4): the word GEMV, 512 K (128 words) a step, 32 rows a program below 8192
    rows and 16 above (gate_up has enough rows to fill the SMs without split-K), 4 warps, split-K to
    about 3 waves (o: 112 x 4).
    2..16 (and M == 1 with K not a multiple of 4): one 16-row tensor-core tile, 64 columns of 128-byte K
    runs, 3 stages, split-K to ~4 waves.
    """
    if m == 1 and k % 4 == 0:
        block_k = 512
        block_n = 32 if n < 8192 else 16
        steps = triton.cdiv(k, block_k)
        return TileConfig(1, block_n, block_k, _split_k(triton.cdiv(n, block_n), steps, num_sms, 3.0, steps), 4, 1,
                          True)
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    block_k = 128
    tiles = triton.cdiv(n, block_n)
    return TileConfig(16, block_n, block_k, _split_k(tiles, triton.cdiv(k, block_k), num_sms, 4.0, 32), 4, 3, True)


def w8a16_prefill_config(m: int, n: int, k: int, num_sms: int) -> TileConfig:
    """Tiles for 16 < M <= W8_FUSED_MAX_M without a measured entry: up to 64 rows, 64 x 64 tiles of
    128-byte K runs and split-K to ~2 waves (the H200 sweep's pattern); beyond, the bf16 tiles of
    matmul.py / Triton's tutorial (int8 B halves the weight tile's shared memory), split-K (<= 4) only
    below one wave."""
    if m <= 64:
        block_n = min(64, max(16, triton.next_power_of_2(n)))
        tiles = triton.cdiv(m, 64) * triton.cdiv(n, block_n)
        return TileConfig(64, block_n, 128, _split_k(tiles, triton.cdiv(k, 128), num_sms, 2.0, 16), 4, 3, True)
    block_n = min(128, max(16, triton.next_power_of_2(n)))
    tiles = triton.cdiv(m, 128) * triton.cdiv(n, block_n)
    split = _split_k(tiles, triton.cdiv(k, 64), num_sms, 1.0, 4)
    return TileConfig(128, block_n, 64, split, 8, 3, True)


def w4a16_path(m: int) -> str:
    """The path w4a16_linear takes for M rows by default."""
    return "gemv" if m == 1 else "gemm" if m <= W4_FUSED_MAX_M else "dequant_cublas"


def w8a16_path(m: int, k: int) -> str:
    """The path w8a16_linear takes for M rows by default (the GEMV reads K in 4-byte words)."""
    return "gemv" if m == 1 and k % 4 == 0 else "gemm" if m <= W8_FUSED_MAX_M else "dequant_cublas"


@functools.lru_cache(maxsize=None)
def _sms(device_type: str, index: int) -> int:
    # the CPU interpreter gets 4: small, so that the small test shapes exercise split-K too
    return torch.cuda.get_device_properties(index).multi_processor_count if device_type == "cuda" else 4


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _sms(device.type, device.index or 0)


# ----------------------------------------------------------------------------------------- launchers

def _splits(k_steps: int, split_k: int) -> tuple[int, int]:
    """(splits, K steps per split) with no empty split."""
    per = -(-k_steps // max(1, min(split_k, k_steps)))
    return -(-k_steps // per), per


_LOCKS = 1 << 16  # arrival counters per device for the fused split-K reduction: one per output tile


@functools.lru_cache(maxsize=None)
def _locks_of(device_type: str, index: int) -> torch.Tensor:
    return torch.zeros(_LOCKS, dtype=torch.int32, device=torch.device(device_type, index))


def _locks(device: torch.device) -> torch.Tensor:
    """The device's tile counters, all 0 between calls (the last split of a tile resets its own). Made on
    the first call, which the engine makes eagerly (warm-up) before it captures CUDA graphs; one stream
    per device runs these kernels at a time, so one set of counters serves every layer."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _locks_of(device.type, device.index or 0)


def _launch(kernel, weights: tuple, dims: tuple, x, bias, out, cfg: TileConfig, k_steps: int,
            **constexprs) -> torch.Tensor:
    """Launch a GEMV (block_m == 1) or GEMM kernel as kernel(x, *weights, bias, dst, final, locks, *dims,
    [stride_xm], steps_per_split); with split-K, dst is fp32 partials [S, M, N] that either the kernel's
    last split per tile (cfg.fused_reduce) or the reduce kernel sums into out."""
    m, n = out.shape
    splits, per = _splits(k_steps, cfg.split_k)
    dst = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    gemv = cfg.block_m == 1
    grid = ((triton.cdiv(n, cfg.block_n) if gemv else triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)),
            splits)
    fused = cfg.fused_reduce and splits > 1 and grid[0] <= _LOCKS
    locks = _locks(x.device) if fused else out  # never touched unless FUSED_REDUCE
    b = bias if bias is not None else out  # never read without HAS_BIAS
    common = dict(HAS_BIAS=bias is not None, PARTIAL=splits > 1, FUSED_REDUCE=fused, BLOCK_N=cfg.block_n,
                  BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **constexprs)
    if gemv:
        kernel[grid](x, *weights, b, dst, out, locks, *dims, per, **common)
    else:
        kernel[grid](x, *weights, b, dst, out, locks, *dims, x.stride(0), per, BLOCK_M=cfg.block_m, GROUP_M=8,
                     UPCAST=x.device.type != "cuda" and x.dtype != torch.float32, IEEE=x.dtype == torch.float32,
                     **common)
    if splits > 1 and not fused:
        block = 1024
        qk._splitk_reduce_kernel[(triton.cdiv(m * n, block),)](dst, b, out, m * n, n, splits,
                                                               HAS_BIAS=bias is not None, BLOCK=block)
    return out


def _inline_asm(x: torch.Tensor) -> bool:
    """Inline PTX (int4_unpack's packed subtract) only where it can run: CUDA, not Triton's interpreter,
    and for bf16 sm_90 or newer (sub.bf16x2 is an sm_90 instruction; sub.f16x2 runs everywhere)."""
    if not inline_ptx_ok(x.device):
        return False
    return x.dtype == torch.float16 or (x.dtype == torch.bfloat16 and _capability(x.device) >= (9, 0))


@functools.lru_cache(maxsize=None)
def _capability_of(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _capability(device: torch.device) -> tuple[int, int]:
    return _capability_of(device.index if device.index is not None else torch.cuda.current_device())


def _pick(path: str | None, default: str, config: TileConfig | None, m: int, name: str) -> str:
    """The path to run: an explicit one, the config's kernel, or the default for M; checks they agree."""
    if path is None:
        path = default if config is None else "gemv" if config.block_m == 1 else "gemm"
    if path not in PATHS:
        raise ValueError(f"{name}: path must be one of {PATHS}, got {path!r}")
    if config is not None and (path == "dequant_cublas" or (config.block_m == 1) != (path == "gemv") or
                               (path == "gemv" and m != 1)):
        raise ValueError(f"{name}: config {config} does not fit the {path!r} path with M={m} (block_m == 1 "
                         "selects the GEMV, M must then be 1; block_m >= 16 the tensor-core kernel)")
    if path == "gemv" and m != 1:
        raise ValueError(f"{name}: the 'gemv' path takes M == 1, got M={m}")
    if config is not None and config.swap_ab and config.block_m == 1:
        raise ValueError(f"{name}: config {config}: swap_ab is a tensor-core tiling (block_m >= 16)")
    return path


def _dense_product(x: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, k: int, write_chunk,
                   k_major: bool) -> torch.Tensor:
    """out = x @ W^T (+ bias) through cuBLAS, W dequantized DENSE_CHUNK_BYTES of columns at a time:
    write_chunk(n0, nc, buf) fills buf with W^T[:, n0:n0+nc] ([K, nc], k_major) or W[n0:n0+nc] ([nc, K])."""
    n = out.shape[1]
    # equal chunks of whole 128-column tiles (not full chunks and a sliver: each chunk costs two launches)
    chunks = max(1, -(-n * k * x.element_size() // DENSE_CHUNK_BYTES))
    per = min(n, -(-n // chunks) + 127 & ~127)
    buf = torch.empty(per * k, dtype=x.dtype, device=x.device)
    for n0 in range(0, n, per):
        nc = min(per, n - n0)
        w = buf[:nc * k].view((k, nc) if k_major else (nc, k))
        write_chunk(n0, nc, w)
        rhs = w if k_major else w.t()
        dst = out if nc == n else out[:, n0:n0 + nc]  # cuBLAS writes a column slice with ldc = N
        if bias is None:
            torch.mm(x, rhs, out=dst)
        else:
            torch.addmm(bias[n0:n0 + nc].to(x.dtype), x, rhs, out=dst)
    return out


def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None, *, config: TileConfig | None = None,
                 path: str | None = None) -> torch.Tensor:
    """x [M, K] @ dequant(W)^T (+ bias [N]) -> [M, N] in x.dtype, fp32 accumulation.

    qweight int32 [K, N/8], qzeros int32 [K/G, N/8] (AWQ order), scales fp16/bf16/fp32 [K/G, N]; x
    fp16/bf16/fp32, last dim contiguous; bias any float [N]. group_size G divides K and is a multiple
    of 16. path: 'gemv' (M == 1), 'gemm' or 'dequant_cublas' (default: w4a16_path(M)); config: tiles for
    the first two, for tests and benchmark sweeps (default: the device's measured tiles for this shape
    and M, quant_tiles.lookup, else the decode / prefill config for M).
    """
    m, k, n = _check_w4(x, qweight, qzeros, scales, group_size, bias)
    if path is None and config is None:
        path, config = quant_tiles.lookup("w4a16", x.device, m, n, k, group_size) or (None, None)
    path = _pick(path, w4a16_path(m), config, m, "w4a16_linear")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0 or k == 0:
        return _empty_product(out, bias)
    if path == "dequant_cublas":
        return _dense_product(x, bias, out, k, lambda n0, nc, buf: awq_dequantize(
            qweight, qzeros, scales, group_size, x.dtype, n0, nc, out=buf), k_major=True)
    pick = w4a16_decode_config if m <= DECODE_MAX_M else w4a16_prefill_config
    cfg = config or pick(1 if path == "gemv" else max(m, 2), n, k, group_size, _num_sms(x.device))
    if group_size % cfg.block_k:
        raise ValueError(f"config {cfg} does not fit group size {group_size} (block_k must divide it)")
    if cfg.swap_ab:
        raise ValueError(f"w4a16_linear: config {cfg}: swap_ab is an int8 kernel (AWQ's packed columns "
                         "would need a repacked weight)")
    if path == "gemv":
        steps = triton.cdiv(k, cfg.num_warps * cfg.block_k)
        return _launch(qk._w4a16_gemv_kernel, (qweight, qzeros, scales), (n, k, group_size), x, bias, out, cfg,
                       steps, SLABS=cfg.num_warps)
    return _launch(qk._w4a16_gemm_kernel, (qweight, qzeros, scales), (m, n, k, group_size), x, bias, out, cfg,
                   k // cfg.block_k, EMULATE_BF16=x.device.type != "cuda" and x.dtype == torch.bfloat16,
                   ASM=_inline_asm(x))


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 *, config: TileConfig | None = None, path: str | None = None) -> torch.Tensor:
    """x [M, K] @ (qweight * scales[:, None])^T (+ bias [N]) -> [M, N] in x.dtype, fp32 accumulation.

    qweight int8 [N, K] (symmetric, per output channel), scales fp32 or x.dtype [N]; x fp16/bf16/fp32,
    last dim contiguous; bias any float [N]. path: 'gemv' (M == 1, K a multiple of 4), 'gemm' or
    'dequant_cublas' (default: the device's measured tiles, else w8a16_path(M, K) and the reasoned
    config); config: tiles for tests and benchmark sweeps.
    """
    m, k, n = _check_w8(x, qweight, scales, bias)
    if path is None and config is None:
        path, config = quant_tiles.lookup("w8a16", x.device, m, n, k) or (None, None)
    path = _pick(path, w8a16_path(m, k), config, m, "w8a16_linear")
    if path == "gemv" and k % 4:
        raise ValueError(f"w8a16_linear: the 'gemv' path reads K in 4-byte words, K={k} is not a multiple of 4")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0 or k == 0:
        return _empty_product(out, bias)
    if path == "dequant_cublas":
        def write_chunk(n0, nc, buf):
            grid = (triton.cdiv(nc, 16), triton.cdiv(k, 256))
            qk._w8_dequant_kernel[grid](qweight, scales, buf, k, n0, nc, BLOCK_N=16, BLOCK_K=256, num_warps=4)
        return _dense_product(x, bias, out, k, write_chunk, k_major=False)
    pick = w8a16_decode_config if m <= DECODE_MAX_M else w8a16_prefill_config
    cfg = config or pick(1 if path == "gemv" else max(m, 2), n, k, _num_sms(x.device))
    if path == "gemv":
        kw = k // 4
        # the int32 view reads the same bytes (little-endian: byte b of a word is K element 4c + b)
        return _launch(qk._w8a16_gemv_kernel, (qweight.view(torch.int32), scales), (n, k, kw), x, bias, out, cfg,
                       triton.cdiv(kw, cfg.block_k // 4))
    kernel = qk._w8a16_gemm_swapped_kernel if cfg.swap_ab else qk._w8a16_gemm_kernel
    return _launch(kernel, (qweight, scales), (m, n, k), x, bias, out, cfg, triton.cdiv(k, cfg.block_k),
                   EVEN_K=k % cfg.block_k == 0)


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
