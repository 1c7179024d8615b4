"""SiLU-and-mul of the gated MLP: out = silu(gate) * up over the merged [gate | up] projection.

Rounding follows the torch path (`F.silu(gate) * up` in the input dtype): silu is computed in fp32
and rounded to the input dtype before the multiply, so bf16 results match it bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr,
                         EARLY_LAUNCH: tl.constexpr):
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2I] ([gate | up], contiguous last dim) -> out [T, I] in x's dtype."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [T, 2I] with a contiguous last dim, got {tuple(x.shape)}")
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)
    elif out.shape != (num_tokens, inter) or out.stride(-1) != 1:
        raise ValueError(f"out must be [{num_tokens}, {inter}] with a contiguous last dim, got {tuple(out.shape)}")
    if num_tokens == 0:
        return out
    # 1024 elements per program: 8 per thread at 4 warps, 16-byte loads of bf16.
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(inter, block))](
        x, out, x.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4, **launch_options(out))
    return out
