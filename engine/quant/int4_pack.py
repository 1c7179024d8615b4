"""Group-wise int4 weights in AutoAWQ's "GEMM" layout: quantize, pack, unpack, dequantize.

The one definition of the format that the AWQ calibration writes, the loader reads and the W4A16
kernels (engine/kernels/quant_gemm.py) compute with. For a linear y = x W^T with W [N, K] (out, in)
and group size G along K:

    qweight int32 [K, N/8]     eight 4-bit codes of columns n..n+7 of row k, in the interleaved order
                               AWQ_ORDER (code of column n + AWQ_ORDER[i] sits in bits 4i..4i+3)
    qzeros  int32 [K/G, N/8]   the zero points (0..15), packed the same way
    scales  fp16  [K/G, N]     the step of each group and output column

    W[n, k] ~= (code[k, n] - zero[k // G, n]) * scale[k // G, n]

Rounding is asymmetric min/max per group (AutoAWQ's zero_point=True), codes clamped to 0..15.
"""
from __future__ import annotations

import torch

PACK = 8  # 4-bit codes per int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # column offset stored in nibble i
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble holding column offset j


def quantize_groups(weight: torch.Tensor, group_size: int, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric quantization of W [N, K] per (output column, group of G inputs).

    Returns (codes uint8-valued int32 [N, K], zeros int32 [N, K/G], scales float32 [N, K/G]).
    """
    n, k = weight.shape
    check_group_size(k, group_size)
    max_code = 2**bits - 1
    w = weight.float().reshape(n, k // group_size, group_size)
    w_max = w.amax(dim=-1)
    w_min = w.amin(dim=-1)
    scales = ((w_max - w_min).clamp(min=1e-5) / max_code)
    zeros = (-torch.round(w_min / scales)).clamp(0, max_code)
    codes = (torch.round(w / scales[..., None]) + zeros[..., None]).clamp(0, max_code)
    return codes.reshape(n, k).to(torch.int32), zeros.to(torch.int32), scales


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"the input size {in_features} is not divisible by the group size {group_size}")


def pack_columns(codes_kn: torch.Tensor) -> torch.Tensor:
    """int32 codes [R, N] (0..15) -> int32 [R, N/8] in AWQ's interleaved nibble order."""
    r, n = codes_kn.shape
    if n % PACK:
        raise ValueError(f"the output size {n} is not a multiple of {PACK}")
    c = codes_kn.to(torch.int64).reshape(r, n // PACK, PACK)
    packed = torch.zeros(r, n // PACK, dtype=torch.int64, device=codes_kn.device)
    for nibble, column in enumerate(AWQ_ORDER):
        packed |= (c[..., column] & 0xF) << (4 * nibble)
    # int64 -> int32 keeping the bit pattern (values >= 2^31 become negative, as in AutoAWQ's files)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_columns(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] in AWQ order -> int32 codes [R, N] (0..15)."""
    r, n8 = packed.shape
    p = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty(r, n8, PACK, dtype=torch.int32, device=packed.device)
    for nibble, column in enumerate(AWQ_ORDER):
        out[..., column] = ((p >> (4 * nibble)) & 0xF).to(torch.int32)
    return out.reshape(r, n8 * PACK)


def pack_awq(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [N, K] -> (qweight [K, N/8], qzeros [K/G, N/8], scales fp16 [K/G, N]) by round-to-nearest."""
    codes, zeros, scales = quantize_groups(weight, group_size)
    return (pack_columns(codes.t().contiguous()), pack_columns(zeros.t().contiguous()),
            scales.t().contiguous().to(torch.float16))


def pack_awq_codes(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [N, K], zeros [N, K/G] and scales [N, K/G] chosen elsewhere (AWQ's search) -> the layout."""
    return (pack_columns(codes.t().contiguous()), pack_columns(zeros.t().contiguous()),
            scales.t().contiguous().to(torch.float16))


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """The layout back to W [N, K] in float32: (code - zero) * scale."""
    codes = unpack_columns(qweight).float()  # [K, N]
    zeros = unpack_columns(qzeros).float()  # [K/G, N]
    k = codes.shape[0]
    check_group_size(k, group_size)
    s = scales.float().repeat_interleave(group_size, dim=0)
    z = zeros.repeat_interleave(group_size, dim=0)
    return ((codes - z) * s).t().contiguous()
