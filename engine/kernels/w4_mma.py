"""The CUDA C++ W4A16 path (engine/kernels/cuda/w4_mma.cu): AWQ weights repacked once into the tensor cores'
fragment order, multiplied with the int4 weights as the MMA's register operand.

Why CUDA C++ next to the Triton kernels: Triton cannot load packed weights straight into an MMA fragment,
so its batch-1 GEMV spends ~3.1 instructions a weight and its tensor-core GEMM round-trips every
dequantized tile through shared memory (reports/examples/h200/kernel-lab-*). Here one 16-byte load is a
thread's A fragments of a 16x16 tile for four k steps, one LOP3 makes two bf16 weights (128 + q), and up to
16 rows zero and scale are applied once per group in fp32: on an H200 the batch-1 linears of Qwen2.5-7B take
49 µs a layer against 66 µs for the Triton GEMV, 2-32 rows run 1.5-2.9x faster than the Triton GEMM
(kernel-lab-w4mma/README.md), and on Hopper 33-128 rows take a warpgroup-MMA kernel that at 64 rows runs a
layer's linears in 137 µs against bf16's 143 and Triton's 190 (kernel-lab-wgmma/README.md).

This file owns the layout (`repack`, its inverse and the torch reference of the kernel's arithmetic), the
build (torch's cpp_extension, on first use, cached on disk; needs nvcc; sm_90a code on Hopper), the launch
choices and the checks. On 9.0+ GPUs the kernels are launched early (programmatic dependent launch,
engine/kernels/pdl.py): they load their first weights while the kernel before them finishes, and wait for it
before they read x. Rows: up to 32 one launch; 33 to WGMMA_MAX_ROWS on Hopper one warpgroup-kernel
launch, elsewhere up to CHUNK_MAX_ROWS in 32-row launches (each re-reads the weight); more (prefill)
dequantize the layout to a dense bf16 weight in column chunks and multiply with cuBLAS. A gated MLP's gate_up
repacked in gate_up_order (awq_in_gate_up_order first) gets silu(gate) * up from the few-row kernel's epilogue
(`gated`), one kernel less a decode layer (+1.7% AWQ tok/s at batch 1 on an H100:
reports/examples/h100/fused-silu-2026-12-05). (A stream-K variant for 1-8 rows, lab 13, ran 0.62-0.94x this
kernel's speed at every shape on an H100 and was removed after 7a66088: reports/examples/h100/quant-b1-2026-12-05.)

The layout, for a linear W [N, K] (AWQ qweight [K, N/8]): stripes s of 64 output columns, k steps of 16 in
quads kq of four (kk = 4 kq + c), tiles j of 16 columns, lanes (g = lane // 4, t = lane % 4): qw word
[s, kq, j, lane, c] holds the code of column n = 64 s + 16 j + 8 h + g at k = 16 kk + 8 a + 2 t + b in bits
16 b + 8 a + 4 h; sz [s, group, j, g, h] = the scale's 16 bits (fp16 or bf16) | bf16(zero) << 16. A lane's
16-byte load is one tile's fragments for four k steps: the few-row kernel loads a group's eight (all four
tiles) at once, and the warpgroup kernel's warp j loads only its tile's, which wgmma takes from registers.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import torch

from ..quant.int4_pack import PACK, unpack_columns
from . import pdl
from .quant_gemm import _dense_product, _locks, _num_sms

STRIPE = 64  # output columns a block takes (four 16-row MMA tiles)
QUAD_K = 64  # the k extent of one 16-byte load (four k steps of 16)
GROUP = 128  # the one group size the kernel is built for (AutoAWQ's and LMDeploy's default)
MAX_ROWS = 32  # rows one launch takes
CHUNK_MAX_ROWS = 64  # without the warpgroup kernel, up to this many rows 32-row launches; more: dense + cuBLAS
WGMMA_MAX_ROWS = 128  # on Hopper, 33 to this many rows take the warpgroup-MMA kernel (one launch)
SOURCE = Path(__file__).parent / "cuda" / "w4_mma.cu"


def _shifts(device) -> torch.Tensor:
    a, b, h = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    return (16 * b + 8 * a + 4 * h).to(device=device, dtype=torch.int64)  # [a, b, h]


def unsupported(group_size: int, dtype: str) -> str | None:
    """Why a model cannot take the kernel (None: it can), ending the sentence "the CUDA AWQ kernel ...": the
    engine's refusal (--w4-kernel cuda) and the tuner's pruning say the same. dtype: what the model runs in
    ("bfloat16", "float16", ...)."""
    if dtype != "bfloat16":
        return f"runs bf16 models (this one runs in {dtype})"
    if group_size != GROUP:
        return f"is built for group size {GROUP} (this checkpoint's is {group_size})"
    return None


def shape_unsupported(n: int, k: int, group_size: int) -> str | None:
    """Why a linear of N outputs and K inputs cannot take the kernel (None: it can), ending the sentence "the
    CUDA W4A16 kernel ..."."""
    if group_size != GROUP:
        return f"is built for group size {GROUP}, not {group_size}"
    if n % STRIPE or k % group_size:
        return f"needs N ({n}) divisible by {STRIPE} and K ({k}) by the group size ({group_size})"
    return None


def repack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int):
    """AWQ (qweight [K, N/8], qzeros [K/G, N/8], scales [K/G, N] fp16/bf16) -> (qw int32 [N/64, K/64, 4, 32, 4],
    sz int32 [N/64, K/G, 4, 8, 2]) in the kernel's fragment order (on the tensors' device)."""
    if scales.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"repack: scales must be fp16 or bf16, not {scales.dtype}")
    codes = unpack_columns(qweight).to(torch.int64)  # [K, N]
    k, n = codes.shape
    if n % STRIPE or k % group_size or k % QUAD_K or group_size % 16:
        raise ValueError(f"repack: N ({n}) must divide by {STRIPE}, K ({k}) by the group ({group_size}) and by "
                         f"{QUAD_K}, the group by 16")
    c = codes.view(k // QUAD_K, 4, 2, 4, 2, n // STRIPE, 4, 2, 8)  # kq, c, a, t, b, s, j, h, g
    c = c.permute(5, 0, 6, 8, 3, 1, 2, 4, 7)  # s, kq, j, g, t, c, a, b, h
    words = (c << _shifts(c.device)).sum(dim=(-3, -2, -1))  # [s, kq, j, g, t, c]
    qw = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).reshape(n // STRIPE, k // QUAD_K, 4, 32, 4)
    zeros = unpack_columns(qzeros).to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    sbits = scales.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    word = (zeros << 16) | sbits
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # [K/G, N]
    sz = word.view(k // group_size, n // STRIPE, 4, 2, 8).permute(1, 0, 2, 4, 3).contiguous()
    return qw.contiguous(), sz


def unpack_repacked(qw: torch.Tensor) -> torch.Tensor:
    """repack's weight half back to codes [K, N] (int64)."""
    s, kq = qw.shape[:2]
    w = (qw.to(torch.int64) & 0xFFFFFFFF).view(s, kq, 4, 8, 4, 4)  # s, kq, j, g, t, c
    codes = (w[..., None, None, None] >> _shifts(qw.device)) & 0xF  # s, kq, j, g, t, c, a, b, h
    return codes.permute(1, 5, 6, 4, 7, 0, 2, 8, 3).reshape(kq * QUAD_K, s * STRIPE)


def scales_zeros(sz: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """repack's (scale, zero) half back to fp32 [K/G, N] each."""
    s, groups = sz.shape[:2]
    word = (sz.to(torch.int64) & 0xFFFFFFFF).permute(1, 0, 2, 4, 3).reshape(groups, s * STRIPE)
    scale = (word & 0xFFFF).to(torch.int16).view(scale_dtype).float()
    zero = ((word >> 16) & 0xFFFF).to(torch.int16).view(torch.bfloat16).float()
    return scale, zero


def dequantize(qw: torch.Tensor, sz: torch.Tensor, group_size: int, scale_dtype: torch.dtype) -> torch.Tensor:
    """The repacked layout back to W [N, K] in fp32: (code - zero) * scale."""
    codes = unpack_repacked(qw).float()  # [K, N]
    scale, zero = scales_zeros(sz, scale_dtype)
    w = (codes - zero.repeat_interleave(group_size, 0)) * scale.repeat_interleave(group_size, 0)
    return w.t().contiguous()


def w4_mma_ref(x: torch.Tensor, qw: torch.Tensor, sz: torch.Tensor, group_size: int, scale_dtype: torch.dtype,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel's arithmetic (up to 16 rows) in torch, fp32: per group sum_k x (128 + q) and sum_k x, then
    s * (acc - (128 + z) * xsum) summed over the groups, bias, one cast to x's dtype."""
    codes = unpack_repacked(qw).float()  # [K, N]
    k, n = codes.shape
    scale, zero = scales_zeros(sz, scale_dtype)
    xf = x.float().view(x.shape[0], k // group_size, group_size)
    acc = torch.einsum("mgk,gkn->mgn", xf, 128 + codes.view(k // group_size, group_size, n))
    y = (scale * (acc - (128 + zero) * xf.sum(-1)[..., None])).sum(1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def gate_up_order(n: int) -> torch.Tensor:
    """The interleaved gate_up layout's columns: new column 64 s + 32 h + c is old column h * n / 2 + 32 s + c
    (stripe s holds gate columns 32 s .. 32 s + 31, then the same up columns), so one block's epilogue has both
    halves of 32 outputs of silu(gate) * up. n: the merged [gate | up] width, a multiple of STRIPE."""
    if n % STRIPE:
        raise ValueError(f"gate_up_order: N ({n}) must divide by {STRIPE}")
    s, h, c = torch.meshgrid(torch.arange(n // STRIPE), torch.arange(2), torch.arange(STRIPE // 2), indexing="ij")
    return (h * (n // 2) + (STRIPE // 2) * s + c).flatten()


def awq_in_gate_up_order(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor):
    """AWQ tensors of a merged [gate | up] weight (qweight [K, N/8], qzeros [K/G, N/8], scales [K/G, N]) with
    their output columns in gate_up_order, for repack: the order moves 32-column chunks whole, so each int32 of
    eight packed columns moves whole too (the int8 path permutes its rows the same way before its repack)."""
    order = gate_up_order(scales.shape[1]).to(scales.device)
    words = order.view(-1, PACK)[:, 0] // PACK
    return qweight[:, words], qzeros[:, words], scales[:, order]


# ----------------------------------------------------------------------------------------- build

_LOCK = threading.Lock()
_EXT = None


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on `device` (None: it can, once built)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "the CUDA W4A16 kernel needs a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the CUDA W4A16 kernel needs compute capability 8.0 or newer (bf16 mma.sync)"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None or not (shutil.which("nvcc")
                                               or Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()):
        return "the CUDA W4A16 kernel is built on first use and needs nvcc (a CUDA toolkit; set CUDA_HOME)"
    if not cpp_extension.is_ninja_available():
        return "the CUDA W4A16 kernel is built on first use and needs ninja (pip install ninja)"
    return None


def extension():
    """The compiled module (built once per source version, cached by torch under TORCH_EXTENSIONS_DIR)."""
    global _EXT
    with _LOCK:
        if _EXT is None:
            from torch.utils.cpp_extension import load_inline

            _EXT = load_inline("opsctl_w4_mma", cpp_sources="",
                               cuda_sources="#define W4MMA_TORCH_BINDING\n" + SOURCE.read_text(),
                               extra_cuda_cflags=["-O3", "-std=c++17", *_arch_flags()], verbose=False)
    return _EXT


def _arch_flags() -> list[str]:
    """Code for this GPU only; on Hopper (9.0) the arch-specific sm_90a, whose wgmma the many-row kernel
    needs (W4MMA_SM90A compiles it in). Flags naming an arch stop torch from adding its own."""
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) == (9, 0):
        return ["-gencode=arch=compute_90a,code=sm_90a", "-DW4MMA_SM90A"]
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


def set_early_launch(attribute: bool, signal: bool | None = None) -> None:
    """Switch programmatic dependent launch (engine/kernels/pdl.py) for A / B timing and the race check: the
    kernels' launch attribute, and the Triton kernels' early launch (their wait and signal; default: the same)."""
    pdl.set_enabled(attribute if signal is None else signal)
    extension().set_pdl(attribute)


_HAS_WGMMA: bool | None = None


def has_wgmma() -> bool:
    """Whether the built kernel carries the warpgroup-MMA path (Hopper, sm_90a); asked of the build once, not
    on every linear call."""
    global _HAS_WGMMA
    if _HAS_WGMMA is None:
        _HAS_WGMMA = bool(extension().has_wgmma())
    return _HAS_WGMMA


# ----------------------------------------------------------------------------------------- launch

def launch_config(m: int, n: int, k: int, num_sms: int, pipelined: bool = True) -> tuple[int, int, bool, int]:
    """(warps, min blocks an SM, pipelined, splits) for m <= 32 rows, from lab 5's sweeps on an H200: from two
    rows on, layers of at least half as many stripes as SMs (gate_up, qkv) run one block a stripe; narrower ones
    (o, down), and every layer at one row, split K until about 1.5 (<= 16 rows) or 0.5 (more rows) waves of
    blocks, keeping >= 4 groups a split.
    qkv's 72 stripes on 132 SMs ran fastest unsplit at 1-16 rows in both formats in the labs, one kernel at a
    time (lab 5d, AWQ: 1 row 6.93 µs against 7.70 in 4 splits, 16 rows 11.24 against 14.69; lab 10c, int8:
    8.78 against 9.39, 10.76 against 13.56), while o's 56 ran best in 4 (5.96 µs against 6.26 in 2). In the
    engine, where each kernel is launched early behind the one before, the decode step (H200, Qwen2.5-7B, 512
    tokens of context; reports/examples/h200/early-launch) took AWQ at 8 and 16 rows 2.69 / 3.84 ms unsplit
    against 2.99 / 4.11, int8 3.49 / 4.06 against 3.59 / 4.16, but AWQ at one row 2.27 against 2.18 ms.
    One row of AWQ weights (pipelined: the int8 build has no pipelined blocks, w8_mma passes False) takes the
    pipelined blocks where the engine measured them faster (`_one_row_pipelined`), one row of int8 weights the flat
    blocks that lab 10 timed faster (`_one_row_flat`)."""
    stripes, groups = n // STRIPE, k // GROUP
    if m == 1:
        choice = (_one_row_pipelined if pipelined else _one_row_flat)(stripes, groups, num_sms)
        if choice is not None:
            return choice
    target = (1.5 if m <= 16 else 0.5) * num_sms
    splits = 1
    for d in range(1, groups + 1) if m == 1 or 2 * stripes < num_sms else ():
        if groups % d or groups // d < 4:
            continue
        splits = d
        if stripes * d >= target:
            break
    if m <= 16:
        return 8, 2, False, splits
    return (4 if splits == 1 and stripes >= 2 * num_sms else 8), 1, False, splits


def _one_row_flat(stripes: int, groups: int, num_sms: int) -> tuple[int, int, bool, int] | None:
    """One row of int8 weights (the flat blocks), or None for launch_config's general one: layers of half to two
    waves of stripes with short K (qkv) take 4-warp blocks in splits of 4 groups: lab 10 timed Qwen2.5-7B's qkv
    at 6.84 µs there against 9.39 in the general choice's 8-warp blocks in 4 splits on an H200 (10c), 8.31 against
    10.86 on an H100 (10d: reports/examples/h100/int8-qkv-2026-12-05); every other shape's general choice was
    within 1.5% of the best block in both labs."""
    if num_sms <= 2 * stripes < 4 * num_sms and groups <= 32:
        return 4, 1, False, _splits_of_four_groups(groups)
    return None


def _splits_of_four_groups(groups: int) -> int:
    """The most K splits that divide the groups evenly with at least four groups a split (the one-row choices')."""
    return max(d for d in range(1, groups + 1) if groups % d == 0 and groups // d >= 4)


def _one_row_pipelined(stripes: int, groups: int, num_sms: int) -> tuple[int, int, bool, int] | None:
    """One row's pipelined choice, or None for launch_config's general one. Three shape classes, Qwen2.5-7B's
    (reports/examples/h100/quant-b1-2026-12-05, reports/examples/h200/quant-b1-gateup-2026-12-05): one 8-warp
    block a stripe, unsplit, for layers of half to two waves of stripes (qkv: 6.80 µs against 8.09 in 4 flat
    splits on an H100, 6.80 against 7.70 on an H200, lab 5); one 4-warp block a stripe, unsplit, for wide layers of
    at least two waves (gate_up); 4-warp blocks in splits of 4 groups for narrow layers of short K (o: 5.90
    against 5.96 on the H100, 5.91 against 5.98 on the H200). Narrow layers of long K (down) keep the flat
    4-split, best on both cards. In the engine (bf16 the peer, same lease), batch-1 AWQ on the H100 went from
    407 tok/s (5 runs, 399-417) to 427 (qkv alone, 2 runs), 432 (qkv and o, 1 run) and 439 (with gate_up, 3 runs,
    432-447; this default: 443, 5 runs, 438-446, reports/examples/h100/quant-b1-staged-2026-12-05); on the H200
    from 497 (qkv and o, 3 runs, 493-504) to 506 (with gate_up, 3 runs, 505.6-506.2), although
    gate_up alone in the lab reads 23.5 µs pipelined against 21.5 flat there (lab 5d): the lab times one
    kernel after another of the same shape, the engine a layer's chain under early launch."""
    if num_sms <= 2 * stripes < 4 * num_sms:
        return 8, 1, True, 1
    if 2 * stripes >= 4 * num_sms:
        return 4, 1, True, 1
    if 2 * stripes < num_sms and groups <= 32:
        return 4, 1, True, _splits_of_four_groups(groups)
    return None


def launch(x, qw, sz, bias, out, scale_bf16: bool, config: tuple | None = None,
           part: torch.Tensor | None = None, gated: bool = False) -> None:
    """One launch of the kernel for x's <= 32 rows into out. config: (warps, min blocks, pipelined, splits),
    default launch_config's (the lab passes others); part: the split-K partials' buffer (default: made here).
    The split counters are the Triton kernels' (quant_gemm._locks: 65,536 a device, reset by each launch's
    last block, one stream at a time), as is the SM count (quant_gemm._num_sms, cached). gated: qw is an
    gate_up repacked in gate_up_order and out [M, N / 2] takes silu(gate) * up."""
    m, k = x.shape
    n = qw.shape[0] * STRIPE
    warps, min_blocks, pipe, splits = config or launch_config(m, n, k, _num_sms(x.device))
    if part is None:
        part = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32, device=x.device)
    extension().w4_mma(x, qw, sz, bias, out, part, _locks(x.device), GROUP, scale_bf16, splits, warps, min_blocks,
                       pipe, gated)


def wgmma_config(m: int, n: int, k: int, num_sms: int) -> tuple[int, int, int, int, int]:
    """(rows a block, stripes a warpgroup, warpgroups a block side by side, splits, warpgroups on alternate
    groups) for the warpgroup kernel, from lab 7's sweeps on an H200 (kernel-lab-wgmma/): 64-row blocks at
    every row count (more rows: more row tiles); two warpgroups side by side only where the stripes fill two
    blocks an SM (gate_up); K split only for long K, into the fewest splits of <= 40 groups a row tile (down:
    four at 64 rows, two at 128); two warpgroups on alternate groups where the blocks are fewer than the SMs
    (qkv at 64 rows, o at 64 and 128), so that each SM runs eight warps without a split-K reduction."""
    stripes, groups, row_tiles = n // STRIPE, k // GROUP, -(-m // 64)
    nwg = 2 if stripes % 2 == 0 and stripes >= 4 * num_sms else 1
    splits = next(d for d in range(1, groups + 1) if groups % d == 0 and groups // d <= 40 * row_tiles)
    blocks = stripes * splits * row_tiles
    kwg = 2 if nwg == 1 and blocks < num_sms and groups // splits % 2 == 0 else 1
    return 64, 1, nwg, splits, kwg


def launch_wgmma(x, qw, sz, bias, out, scale_bf16: bool, config: tuple | None = None,
                 part: torch.Tensor | None = None) -> None:
    """One launch of the warpgroup kernel for all of x's rows. config: (rows a block, stripes a warpgroup,
    warpgroups a block side by side, splits, warpgroups on alternate groups), default wgmma_config's; part and
    the split counters as in `launch`."""
    m, k = x.shape
    n = out.shape[1]
    bn, sp, nwg, splits, kwg = config or wgmma_config(m, n, k, _num_sms(x.device))
    if part is None:
        part = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32, device=x.device)
    extension().w4_wgmma(x, qw, sz, bias, out, part, _locks(x.device), GROUP, scale_bf16, splits, bn, sp, nwg, kwg)


def w4_mma_linear(x: torch.Tensor, qw: torch.Tensor, sz: torch.Tensor, scale_dtype: torch.dtype,
                  bias: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """x [M, K] bf16 @ W^T (+ bias) -> [M, N] bf16, W in repack's layout with group size GROUP.
    gated: W is the gated MLP's gate_up repacked in gate_up_order (bias too) and the result is
    silu(gate) * up [M, N / 2]: computed in the kernel's epilogue up to MAX_ROWS rows (one kernel less a layer
    of decode), by the activation kernel after the product for more."""
    m, k = x.shape
    n = qw.shape[0] * STRIPE
    if x.dtype != torch.bfloat16 or x.device.type != "cuda" or x.stride(1) != 1:
        raise ValueError(f"w4_mma_linear: x must be bf16 on a CUDA device with contiguous rows "
                         f"(got {x.dtype} on {x.device})")
    if qw.shape[1] * QUAD_K != k or sz.shape[:2] != (qw.shape[0], k // GROUP) or qw.device != x.device:
        raise ValueError(f"w4_mma_linear: weights {tuple(qw.shape)} / {tuple(sz.shape)} do not fit x [{m}, {k}]")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"w4_mma_linear: bias must be {x.dtype} [{n}]")
    scale_bf16 = scale_dtype == torch.bfloat16
    if gated and m <= MAX_ROWS:
        out = torch.empty(m, n // 2, dtype=x.dtype, device=x.device)
        if m:
            launch(x, qw, sz, bias, out, scale_bf16, gated=True)
        return out
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if MAX_ROWS < m <= WGMMA_MAX_ROWS and has_wgmma():
        launch_wgmma(x, qw, sz, bias, out, scale_bf16)
    else:
        few_rows_or_dense(x, qw, sz, bias, out, scale_bf16)
    if gated:
        from .activation import silu_and_mul

        return silu_and_mul(out, chunk=STRIPE // 2)
    return out


def few_rows_or_dense(x, qw, sz, bias, out, scale_bf16: bool) -> torch.Tensor:
    """The path without the warpgroup kernel, into out: up to CHUNK_MAX_ROWS rows in 32-row launches, more
    through the dense dequantized weight and cuBLAS (lab 7 times it as the earlier CUDA path)."""
    m, k = x.shape
    if m <= CHUNK_MAX_ROWS:
        for r0 in range(0, m, MAX_ROWS):
            launch(x[r0:r0 + MAX_ROWS], qw, sz, bias, out[r0:r0 + MAX_ROWS], scale_bf16)
        return out

    def write_chunk(n0: int, nc: int, buf: torch.Tensor) -> None:
        extension().w4_dequant(qw, sz, buf, GROUP, scale_bf16, n0 // STRIPE)

    return _dense_product(x, bias, out, k, write_chunk, k_major=False)
