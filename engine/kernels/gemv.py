"""GEMV for one token: y[1, N] = x[1, K] @ W[N, K]^T (+ bias), the linear layers of batch-1 decode.

At batch 1 every linear layer is a matrix-vector product that must stream its whole weight from HBM,
so the only figure that matters is bandwidth. cuBLAS picks GEMM kernels for M=1 that read
Qwen2.5-7B's qkv (4608 x 3584) and o_proj (3584 x 3584) weights at only ~2.3 TB/s of the H100's
3.0 (profile_step, committed), partly through a split-K pass plus a separate reduce kernel.

This kernel gives each program BLOCK_N whole rows of W: it walks K in BLOCK_K steps, multiplies each
[BLOCK_N, BLOCK_K] weight tile by the matching slice of x into an fp32 [BLOCK_N, BLOCK_K] accumulator
(elementwise FMAs, no cross-thread reduction inside the loop), and reduces once at the end. Rows are
contiguous in K, so each tile is BLOCK_N runs of BLOCK_K * 2 bytes: full 128-byte lines, and the
software pipeline (num_stages) keeps several tiles in flight per SM. No split-K, so no second kernel
and no atomics; small N uses small BLOCK_N so that every SM still gets rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, N, K, stride_wn,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 EARLY_LAUNCH: tl.constexpr):
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_mask = rows < N
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptr + k + cols)
            w = tl.load(w_rows + k + cols[None, :], mask=row_mask[:, None], other=0.0)
        else:
            k_mask = k + cols < K
            x = tl.load(x_ptr + k + cols, mask=k_mask, other=0.0)
            w = tl.load(w_rows + k + cols[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_mask)


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an N x K weight.

    From `python -m engine.kernels.bench --only gemv --sweep` on an H100 (Qwen2.5-7B, bf16, cold L2),
    best against cuBLAS F.linear: qkv 4608x3584 (4, 512, 4, 4) 13.3 vs 14.5 us; o_proj 3584x3584
    (4, 512, 4, 4) 10.9 vs 11.7 us; gate_up 37888x3584 (8, 512, 4, 2) 89.0 vs 101.1 us; down
    3584x18944 (16, 1024, 4, 2) 47.7 vs 53.3 us (2.85 TB/s); lm_head 152064x3584 (4, 512, 4, 4)
    346.8 vs 379.2 us (3.14 TB/s of reads).
    """
    if k < 512:
        return 4, triton.next_power_of_2(k), 4, 2
    if k >= 8192:
        return 16, 1024, 4, 2
    if 16384 <= n < 65536:
        return 8, 512, 4, 2
    return 4, 512, 4, 4


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
         out: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x [1, K] (or [K]) @ weight[N, K]^T (+ bias [N]) -> [1, N] (or [N]) in x's dtype; fp32 accumulation."""
    squeeze = x.dim() == 1
    x2 = x.reshape(1, -1) if squeeze else x
    if x2.shape[0] != 1 or x2.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv takes one row x [1, {weight.shape[1]}], got {tuple(x.shape)}")
    if weight.stride(1) != 1 or not x2.is_contiguous():
        raise ValueError("gemv needs a row-major weight and a contiguous x")
    n, k = weight.shape
    if out is None:
        out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_k, num_warps, num_stages = config or gemv_config(n, k)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x2, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        num_warps=num_warps, num_stages=num_stages, **launch_options(out))
    return out.view(n) if squeeze else out
