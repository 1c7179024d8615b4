"""The CUDA C++ W8A16 path: int8 weights (one scale an output column, engine/quant/int8.py) repacked once into
the tensor cores' fragment order and multiplied by the AWQ path's kernels (engine/kernels/cuda/w4_mma.cu, their
`I8` variants; engine/kernels/w4_mma.py owns the build): up to 32 rows the few-row mma.sync kernel, 33-128 rows
on Hopper the warpgroup kernel, more rows the layout dequantized in column chunks for cuBLAS.

Why: at 64 rows the Triton W8A16 GEMM dequantizes each tile through shared memory and runs the int8 model at
0.92x the bf16 one (issue 13); lab 10 (ci/kernel_lab/w8_wgmma_lab.py, H200, 64 rows) times Qwen2.5-7B's four
linears at 130 µs a layer here against 156 for the Triton kernels and 135 for bf16 cuBLAS. Each thread's 16-byte
copy is its A fragments for two k steps, and two LOP3 and one packed subtract turn a pair of int8 codes into an
exact bf16 pair (q = l - 128 s: the low seven bits and the sign each put in the mantissa of 128), so the weights
go from memory to the tensor cores without a dequantized tile; the scale multiplies the fp32 sums.

The layout, for W [N, K] int8: stripes s of 64 output columns, k duos kd of 32 (two k steps kk1 of 16), tiles j
of 16 columns, lanes (g = lane // 4, t = lane % 4): qw word [s, kd, j, lane, c = 2 kk1 + r] holds, in byte
2 e + h, the code of column n = 64 s + 16 j + 8 h + g at k = 32 kd + 16 kk1 + 8 r + 2 t + e. A lane's 16-byte
load is its tile's fragments for two k steps; a 128-k group is four such loads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quant_gemm import _dense_product, _locks, _num_sms
from .w4_mma import STRIPE, extension, has_wgmma, launch_config, wgmma_config

DUO_K = 32  # the k extent of one 16-byte load (two k steps of 16)
K_MULTIPLE = 128  # the kernel walks K in groups of 128
FEW_ROWS = 32  # rows the few-row (mma.sync) kernel takes a launch
MAX_ROWS = 128  # rows the warpgroup kernel takes (Hopper); more: dequantized column chunks and cuBLAS


def dtype_unsupported(dtype: str) -> str | None:
    """Why a model running in `dtype` ("bfloat16", "float16", ...) cannot take the kernels (None: it can),
    ending the sentence "the CUDA W8A16 kernel ...": the engine's refusal and the tuner's pruning say the same."""
    return None if dtype == "bfloat16" else f"runs bf16 models (this one runs in {dtype})"


def unsupported(n: int, k: int) -> str | None:
    """Why a linear of N outputs and K inputs cannot take the kernel (None: it can)."""
    if n % STRIPE or k % K_MULTIPLE:
        return f"needs N ({n}) divisible by {STRIPE} and K ({k}) by {K_MULTIPLE}"
    return None


def repack(qweight: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] -> int32 [N/64, K/32, 4, 32, 4] in the kernel's fragment order (same device)."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(f"repack: int8 codes [N, K], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape
    why = unsupported(n, k)
    if why:
        raise ValueError(f"repack: the CUDA W8A16 kernel {why}")
    c = qweight.view(n // STRIPE, 4, 2, 8, k // DUO_K, 2, 2, 4, 2)  # s, j, h, g, kd, kk1, r, t, e
    c = c.permute(0, 4, 1, 3, 7, 5, 6, 8, 2)  # s, kd, j, g, t, kk1, r, e, h: byte 2 e + h of word (kk1, r)
    words = c.contiguous().view(n // STRIPE, k // DUO_K, 4, 32, 4, 4)  # the last dim: a word's four bytes
    return words.view(torch.int32).view(n // STRIPE, k // DUO_K, 4, 32, 4)


def unpack(qw: torch.Tensor) -> torch.Tensor:
    """repack's inverse: the int8 codes [N, K]."""
    s, kd = qw.shape[:2]
    c = qw.contiguous().view(torch.int8).view(s, kd, 4, 8, 4, 2, 2, 2, 2)  # s, kd, j, g, t, kk1, r, e, h
    return c.permute(0, 2, 8, 3, 1, 5, 6, 4, 7).reshape(s * STRIPE, kd * DUO_K)


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, out_ptr, K, stripe0, UNITS: tl.constexpr):
    """out[n - 64 stripe0, k] = q[n, k] * s[n] (fp32, one rounding) for one stripe and UNITS k duos a program:
    each word's four bytes go to their (row, k) by the layout's definition (module docstring)."""
    s = stripe0 + tl.program_id(0)
    kd = tl.program_id(1) * UNITS + tl.arange(0, UNITS)[:, None]  # [UNITS, 1]
    w = tl.arange(0, 512)[None, :]  # word of a unit: ((j * 8 + g) * 4 + t) * 4 + c
    c, t, g, j = w & 3, (w >> 2) & 3, (w >> 4) & 7, w >> 7
    words = tl.load(qw_ptr + (s.to(tl.int64) * (K // 32) + kd) * 512 + w)
    k0 = 32 * kd + 16 * (c >> 1) + 8 * (c & 1) + 2 * t
    for b in tl.static_range(4):  # byte 2 e + h: row g + 8 h, k + e; (word << (24 - 8 b)) >> 24: the signed code
        n = 16 * j + 8 * (b & 1) + g
        code = ((words << (24 - 8 * b)) >> 24).to(tl.float32)
        scale = tl.load(s_ptr + 64 * s + n)
        row = 64 * tl.program_id(0) + n
        tl.store(out_ptr + row.to(tl.int64) * K + k0 + (b >> 1), (code * scale).to(out_ptr.dtype.element_ty))


def dequantize_into(qw: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, stripe0: int = 0) -> torch.Tensor:
    """Rows [64 stripe0, 64 stripe0 + out.shape[0]) of W = q * s (fp32 products, one rounding to out's dtype)
    into out [rows, K], straight from the layout (the dense path's column chunks)."""
    rows, k = out.shape
    units = 4 if k % 128 == 0 else 1
    _dequant_kernel[(rows // STRIPE, k // DUO_K // units)](qw, scales, out, k, stripe0, UNITS=units, num_warps=4)
    return out


def launch_few(x, qw, scales, bias, out, config: tuple | None = None, part: torch.Tensor | None = None,
               gated: bool = False) -> None:
    """One launch of the few-row kernel (mma.sync) for x's <= 32 rows into out. config: (warps, min blocks,
    pipelined, splits), default the AWQ kernel's choice for the shape without its pipelined blocks
    (w4_mma.launch_config); part: split-K partials (default: made here). gated: qw is a gate_up with its rows
    in w4_mma.gate_up_order and out [M, N / 2] takes silu(gate) * up (the kernel's epilogue)."""
    m, k = x.shape
    n = qw.shape[0] * STRIPE
    warps, min_blocks, pipe, splits = config or launch_config(m, n, k, _num_sms(x.device), pipelined=False)
    if part is None:
        part = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32, device=x.device)
    extension().w8_mma(x, qw, scales, bias, out, part, _locks(x.device), splits, warps, min_blocks, pipe, gated)


def wgmma_config_int8(m: int, n: int, k: int, num_sms: int) -> tuple[int, int, int]:
    """(warpgroups side by side, splits, warpgroups on alternate groups) for 33-128 rows: the AWQ kernel's choice
    (w4_mma.wgmma_config) but one warpgroup a block across up to 64 rows, where lab 10 (H200) measured gate_up
    at 59.0 µs against 66.0 with two side by side (int8 groups fill twice the shared memory)."""
    _, _, nwg, splits, kwg = wgmma_config(m, n, k, num_sms)
    return (1 if m <= 64 else nwg), splits, kwg


def launch(x, qw, scales, bias, out, config: tuple | None = None, part: torch.Tensor | None = None) -> None:
    """One launch of the warpgroup kernel for x's 33-128 rows into out. config: (warpgroups side by side,
    splits, warpgroups on alternate groups), default wgmma_config_int8's; part: split-K partials."""
    m, k = x.shape
    n = out.shape[1]
    nwg, splits, kwg = config or wgmma_config_int8(m, n, k, _num_sms(x.device))
    if part is None:
        part = torch.empty(splits * m * n if splits > 1 else 1, dtype=torch.float32, device=x.device)
    extension().w8_wgmma(x, qw, scales, bias, out, part, _locks(x.device), splits, nwg, kwg)


def w8_mma_linear(x: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor,
                  bias: torch.Tensor | None = None, config: tuple | None = None, gated: bool = False) -> torch.Tensor:
    """x [M, K] bf16 @ (q * scales[:, None])^T (+ bias) -> [M, N] bf16; qw in repack's layout, scales fp32 [N].
    Up to 32 rows the few-row kernel, 33-128 on Hopper the warpgroup kernel (config: its variant, for the lab
    and tests), without it up to 64 rows in 32-row launches; more rows dequantize column chunks for cuBLAS.
    gated: a gate_up whose rows (and scales, bias) are in w4_mma.gate_up_order; the result is silu(gate) * up
    [M, N / 2], from the few-row kernel's epilogue up to 32 rows, from the activation kernel after more."""
    m, k = x.shape
    n = qw.shape[0] * STRIPE
    if x.dtype != torch.bfloat16 or x.device.type != "cuda" or x.stride(1) != 1:
        raise ValueError(f"w8_mma_linear: x must be bf16 on a CUDA device with contiguous rows "
                         f"(got {x.dtype} on {x.device})")
    if qw.shape[1] * DUO_K != k or qw.device != x.device or scales.shape != (n,) or scales.dtype != torch.float32:
        raise ValueError(f"w8_mma_linear: weights {tuple(qw.shape)} / scales {tuple(scales.shape)} "
                         f"{scales.dtype} do not fit x [{m}, {k}]")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"w8_mma_linear: bias must be {x.dtype} [{n}]")
    if gated and m <= FEW_ROWS:
        out = torch.empty(m, n // 2, dtype=x.dtype, device=x.device)
        if m:
            launch_few(x, qw, scales, bias, out, gated=True)
        return out
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if m <= FEW_ROWS:
        launch_few(x, qw, scales, bias, out)
    elif m <= MAX_ROWS and has_wgmma():
        launch(x, qw, scales, bias, out, config)
    elif m <= 2 * FEW_ROWS:
        for r0 in range(0, m, FEW_ROWS):
            launch_few(x[r0:r0 + FEW_ROWS], qw, scales, bias, out[r0:r0 + FEW_ROWS])
    else:
        def write_chunk(n0: int, nc: int, buf: torch.Tensor) -> None:
            dequantize_into(qw, scales, buf, n0 // STRIPE)

        _dense_product(x, bias, out, k, write_chunk, k_major=False)
    if gated:
        from .activation import silu_and_mul

        return silu_and_mul(out, chunk=STRIPE // 2)
    return out
