"""RMSNorm, with the residual add fused in: `norm(x, residual)` returns (normed, x + residual).

Computed in fp32 and cast back, as transformers does, so fp32 outputs match it exactly. With
kernels on, one Triton kernel does the add and the norm, in place (the residual stream and the
layer output are never needed again).
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, *, use_kernels: bool = False):
        super().__init__()
        self.use_kernels = use_kernels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if self.use_kernels:
            from ..kernels.norm import fused_add_rms_norm, rms_norm

            if residual is None:
                shape = x.shape
                return rms_norm(x.reshape(-1, shape[-1]), self.weight, self.eps).view(shape)
            return fused_add_rms_norm(x, residual, self.weight, self.eps)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
