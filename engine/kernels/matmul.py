"""Batch-invariant GEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), with every row bitwise independent of M.

This file owns the linear layers of the deterministic engine mode (the counterpart of vLLM's
VLLM_BATCH_INVARIANT and SGLang's --enable-deterministic-inference): a request's output must not
depend on how many other rows share its batch, nor on whether its prompt prefix came from the prefix
cache (which changes the number of prefill rows). cuBLAS cannot promise that: it picks a different
algorithm per shape (tile sizes, split-K with a separate reduction), so row i of x @ W^T changes in its
last bits with M, and those bits grow into different tokens a few hundred steps later.

What makes a row's result a function of that row alone:
- One tile configuration for every M (`_BLOCK_M`, `_BLOCK_N`, `_BLOCK_K`, `_NUM_WARPS`, `_NUM_STAGES`
  below). M is only a runtime argument and is excluded from Triton's integer specialisation, so one
  compiled kernel serves M = 1 and M = 4096 alike.
- No split-K: each program owns a whole [BLOCK_M, BLOCK_N] output tile and walks K itself, always
  from 0 upwards in BLOCK_K steps, accumulating in fp32. Every output element therefore sees the
  same sequence of tl.dot steps whatever M is; the tensor-core reduction inside one step is the same
  for every row of the tile, and masked rows (loaded as 0) never mix into other rows.
- The bias is added in fp32 after the K loop and the single cast to the output dtype comes last,
  so the rounding points do not move with M either.
The grouped (GROUP_M swizzled) program order only changes which program runs when, for L2 reuse
of W at large M; it does not change any program's arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The one configuration, for every M: changing any of these with M (autotuning, a small-M special
# case) would break batch invariance, which is the whole point of this kernel. 64 x 128 output tiles
# with 64-deep K steps are a standard bf16 H100 tile: [64, 64] x and [128, 64] W tiles are 8 + 16 KB
# per stage, so 3 stages fit comfortably in shared memory with 4 warps.
_BLOCK_M = 64
_BLOCK_N = 128
_BLOCK_K = 64
_NUM_WARPS = 4
_NUM_STAGES = 3
# Programs of GROUP_M consecutive M tiles run together over the N tiles, so a W tile loaded into L2
# serves GROUP_M row tiles before it is evicted. Scheduling only: no effect on the numerics.
_GROUP_M = 8

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b into the fp32 accumulator (decode_attention.py's helper, taking the accumulator so
    the tensor cores accumulate in place instead of a separate add after every step).

    UPCAST computes in fp32 from low-precision operands: Triton's CPU interpreter multiplies bf16
    operands as raw uint16 bits (triton 3.9), so interpreted runs upcast; products of bf16 values are
    exact in fp32, so the result matches the tensor cores' bf16 x bf16 -> fp32. IEEE keeps fp32
    inputs in full precision instead of tf32, so fp32 runs match the torch reference tightly.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


# M must not be specialised: Triton would otherwise compile a separate kernel for M == 1 (and for M
# divisible by 16), and a differently compiled kernel is exactly what this file exists to avoid.
@triton.jit(do_not_specialize=["M"])
def _matmul_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_mask = rows < M
    col_mask = cols < N
    # int64 row offsets: row * stride passes 2^31 for the logits of a long prefill (32k rows x 152064
    # vocab = 5e9 elements), and lm_head's 152064 x 3584 weight (5.4e8) is within 4x of it too.
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1]
    w_rows = w_ptr + cols.to(tl.int64)[None, :] * stride_wn  # [1, BLOCK_N]: W^T tile addressing

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # Always from 0 upwards in BLOCK_K steps: the same reduction order for every element and every M.
    # The K tail is masked to 0 on both operands, so it adds exact zeros.
    for k in range(0, K, BLOCK_K):
        k_mask = k + ks < K
        a = tl.load(x_rows + (k + ks)[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_rows + (k + ks)[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = _dot(a, b, acc, UPCAST, IEEE)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def matmul_invariant(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype; rows bitwise independent of M.

    x and weight (nn.Linear layout) must share a dtype (fp32, bf16 or fp16) and a device, and be
    contiguous in their last dim; bias [N] in the same dtype. Accumulates in fp32, adds the bias in
    fp32 and casts once. out: a preallocated [M, N] tensor in x's dtype (last dim contiguous),
    filled and returned. M may be 0.
    """
    _check(x, weight, bias, out)
    m, k = x.shape
    n = weight.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        # An empty reduction is bias (or 0); x and W hold no elements (possibly null pointers), so
        # this is filled here rather than by launching the kernel on them.
        if bias is not None:
            out.copy_(bias.expand(m, n))
        else:
            out.zero_()
        return out
    on_cpu = x.device.type != "cuda"
    grid = (triton.cdiv(m, _BLOCK_M) * triton.cdiv(n, _BLOCK_N),)
    _matmul_kernel[grid](
        x, weight, bias if bias is not None else weight, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, GROUP_M=_GROUP_M,
        UPCAST=on_cpu and x.dtype != torch.float32, IEEE=x.dtype == torch.float32,
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES)
    return out


def _check(x, weight, bias, out) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"matmul_invariant expects x [M, K] and weight [N, K], "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"x has K={k} columns but weight is {tuple(weight.shape)} (expected [N, {k}])")
    if x.dtype not in _DTYPES:
        raise ValueError(f"matmul_invariant supports {_DTYPES}, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise ValueError(f"x and weight must share a dtype, got {x.dtype} and {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"x and weight must be on one device, got {x.device} and {weight.device}")
    if k > 1 and (x.stride(1) != 1 or weight.stride(1) != 1):
        raise ValueError("matmul_invariant needs x and weight contiguous in their last dim (row-major)")
    if bias is not None:
        if bias.shape != (n,) or bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"bias must be [{n}] {x.dtype} on {x.device}, "
                             f"got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
        if n > 1 and bias.stride(0) != 1:
            raise ValueError("bias must be contiguous")
    if out is not None:
        if out.shape != (m, n) or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"out must be [{m}, {n}] {x.dtype} on {x.device}, "
                             f"got {tuple(out.shape)} {out.dtype} on {out.device}")
        if n > 1 and out.stride(1) != 1:
            raise ValueError("out must be contiguous in its last dim")
