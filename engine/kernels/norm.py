"""RMSNorm kernels: `rms_norm` and `fused_add_rms_norm` (residual add + norm in one pass over the row).

One program per row with the whole row in registers (BLOCK = next_power_of_2(N), N <= 8192 here):
the row is read once and written once, where the torch path reads it ~4 times. Rounding follows
`engine.layers.norm.RMSNorm` exactly: the residual add is rounded to the input dtype, the
normalisation runs in fp32 and is cast back before the weight multiply.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options

_MAX_N = 65536


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
                     stride_x, stride_r, stride_o, stride_ro, n_cols, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, EARLY_LAUNCH: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    # The weight is no kernel's output: read before the early-launch wait, while the kernel before finishes.
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        # Round the sum to the input dtype as `x + residual` does in torch; the norm reads the rounded sum.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, x.to(residual_out_ptr.dtype.element_ty), mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, 0) / n_cols + eps)
    normed = (xf * inv_rms).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (weight * normed).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x, residual, weight, eps, out, residual_out) -> None:
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return
    block = triton.next_power_of_2(n_cols)
    # ~8-16 elements per thread keeps the row in registers without spilling (4096 cols -> 8 warps).
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    has_residual = residual is not None
    _rms_norm_kernel[(n_rows,)](
        x, residual if has_residual else x, weight, out, residual_out if has_residual else out,
        x.stride(0), residual.stride(0) if has_residual else 0, out.stride(0),
        residual_out.stride(0) if has_residual else 0, n_cols, eps,
        HAS_RESIDUAL=has_residual, BLOCK=block, num_warps=num_warps, **launch_options(out))


def _check_2d(name: str, t: torch.Tensor, shape: tuple[int, int]) -> None:
    if t.shape != shape or t.stride(-1) != 1:
        raise ValueError(f"{name} must be {shape} with a contiguous last dim, got {tuple(t.shape)}")


def _check_common(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.shape != (x.shape[1],) or not weight.is_contiguous():
        raise ValueError(f"expected x [T, N] and a contiguous weight [N], "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] > _MAX_N:
        raise ValueError(f"rows of {x.shape[1]} elements exceed the one-program-per-row limit {_MAX_N}")
    if x.stride(-1) != 1:
        raise ValueError("x must be contiguous in its last dim")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """weight * normalise(x): x [T, N], weight [N] -> out [T, N] in x's dtype (out may be x itself)."""
    _check_common(x, weight)
    if out is None:
        out = torch.empty_like(x)
    else:
        _check_2d("out", out, tuple(x.shape))
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *,
                       out: torch.Tensor | None = None, residual_out: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * normalise(x + residual), x + residual) for x, residual [T, N], weight [N].

    IN PLACE by default, as vLLM's kernel: the new residual is written into `residual` and the normed
    output into `x`, and both are returned; the decoder layer's residual stream needs no allocation.
    Pass `out` / `residual_out` ([T, N]) to write elsewhere and keep the inputs.
    """
    _check_common(x, weight)
    _check_2d("residual", residual, tuple(x.shape))
    out = x if out is None else out
    residual_out = residual if residual_out is None else residual_out
    _check_2d("out", out, tuple(x.shape))
    _check_2d("residual_out", residual_out, tuple(x.shape))
    _launch(x, residual, weight, eps, out, residual_out)
    return out, residual_out
