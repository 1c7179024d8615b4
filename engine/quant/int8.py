"""Per-channel symmetric 8-bit weights: W[n, :] ~= q[n, :] * scale[n], q in -127..127.

Weight-only int8 (`--model-format int8`) quantizes 16-bit checkpoints row by row as they load; the
W8A16 kernels (engine/kernels/quant_gemm.py) and the CPU path compute with these codes and scales.
"""
from __future__ import annotations

import torch


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] (any float) -> (q int8 [N, K], scales float32 [N]): round to nearest, scale = absmax / 127,
    codes in -127..127 (so |W - q * s| <= s / 2). An all-zero row gets scale 1 and zero codes."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"int8 quantization: expected a float [N, K], got {tuple(weight.shape)} {weight.dtype}")
    w = weight.float()
    absmax = w.abs().amax(dim=1)
    scales = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_per_channel(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(q, scales) back to W [N, K] in float32."""
    return q.float() * scales.float()[:, None]
