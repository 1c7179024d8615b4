"""SiLU-and-mul of the gated MLP: silu(gate) * up over the merged [gate | up] projection, on the Triton
kernel (use_kernels) or in torch. A linear method whose own kernel can apply it (the CUDA AWQ and int8
kernels' epilogue) does so instead (engine/layers/linear_method.py, LinearMethod.apply_silu_and_mul)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor, *, use_kernels: bool) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> [T, I]."""
    if use_kernels:
        from ..kernels.activation import silu_and_mul as kernel

        return kernel(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
