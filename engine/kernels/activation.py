"""SiLU-and-mul of the gated MLP: out = silu(gate) * up over the merged gate / up projection.

Two layouts of the merged projection: [gate | up] halves (chunk 0, the checkpoint's order), or chunks of
`chunk` gate columns each followed by the same `chunk` up columns (the CUDA AWQ / int8 kernels' interleaved
gate_up, engine/kernels/w4_mma.gate_up_order, whose few-row kernel applies the activation in its own epilogue).

Rounding follows the torch path (`F.silu(gate) * up` in the input dtype): silu is computed in fp32
and rounded to the input dtype before the multiply, so bf16 results match it bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import enter, launch_options


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                         EARLY_LAUNCH: tl.constexpr):
    enter(EARLY_LAUNCH)  # engine/kernels/pdl.py
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    if CHUNK:
        gate_cols = (cols // CHUNK) * (2 * CHUNK) + cols % CHUNK
        up_cols = gate_cols + CHUNK
    else:
        gate_cols = cols
        up_cols = inter + cols
    gate = tl.load(x_ptr + row * stride_x + gate_cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + up_cols, mask=mask, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
    """x [T, 2I] -> out [T, I] in x's dtype. chunk 0: x is [gate | up]; otherwise chunks of `chunk` gate
    columns, each followed by its `chunk` up columns (I a multiple of chunk)."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [T, 2I] with a contiguous last dim, got {tuple(x.shape)}")
    num_tokens, inter = x.shape[0], x.shape[1] // 2
    if chunk < 0 or (chunk and inter % chunk):
        raise ValueError(f"chunk must be 0 or divide I ({inter}), got {chunk}")
    if out is None:
        out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)
    elif out.shape != (num_tokens, inter) or out.stride(-1) != 1:
        raise ValueError(f"out must be [{num_tokens}, {inter}] with a contiguous last dim, got {tuple(out.shape)}")
    if num_tokens == 0:
        return out
    # 1024 elements per program: 8 per thread at 4 warps, 16-byte loads of bf16.
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(inter, block))](
        x, out, x.stride(0), out.stride(0), inter, BLOCK=block, CHUNK=chunk, num_warps=4, **launch_options(out))
    return out
