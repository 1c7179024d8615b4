"""engine/kernels/int4_unpack.py: the AWQ bit tricks are exact (code - zero in fp16 / bf16 / fp32, the
subnormal codes of the GEMV), every nibble lands on its AWQ column, and the dequantize-to-dense kernel
matches engine/quant/int4_pack.dequantize_awq on whole weights and column chunks. The GPU test runs the
inline-PTX subtract, which the interpreter cannot."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from engine.kernels.int4_unpack import X_SHIFT, awq_code_f32, awq_codes_minus_zeros, awq_column, awq_dequantize
from engine.quant.int4_pack import dequantize_awq, pack_awq, pack_columns, unpack_columns

from .conftest import DEVICE

_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _codes_minus_zeros_kernel(p_ptr, z_ptr, out_ptr, R: tl.constexpr, C: tl.constexpr, DTYPE: tl.constexpr,
                              EMULATE_BF16: tl.constexpr, ASM: tl.constexpr):
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    w = awq_codes_minus_zeros(tl.load(p_ptr + r[:, None] * C + c[None, :]), tl.load(z_ptr + c), DTYPE,
                              EMULATE_BF16, ASM)
    tl.store(out_ptr + r[:, None] * (8 * C) + tl.arange(0, 8 * C)[None, :], w)


@triton.jit
def _codes_f32_kernel(p_ptr, out_ptr, R: tl.constexpr):
    # every nibble's subnormal, scaled back by the GEMV's powers of two: the code itself, at its column
    r = tl.arange(0, R)
    p = tl.load(p_ptr + r)
    p_hi = p >> 12
    for nib in tl.static_range(8):  # the nibble's bit position in p (0..4) or p >> 12 (5..7): 4 nib - 12 (nib // 5)
        code = (awq_code_f32(p, p_hi, nib) * (2.0 ** X_SHIFT)) * (2.0 ** (149 - X_SHIFT - 4 * nib + 12 * (nib // 5)))
        tl.store(out_ptr + r * 8 + awq_column(nib), code)


def _random_words(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return pack_columns(torch.randint(0, 16, (rows, 8 * cols), generator=gen, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_codes_minus_zeros_exact(dtype, device):
    # every code against every zero point (all 16 x 16 pairs appear), sign bits set in the words
    p, z = _random_words(16, 4, 0), _random_words(1, 4, 1)[0]
    p[0, 0] = -1  # all codes 15
    z[1] = 0
    out = torch.empty(16, 32, dtype=dtype, device=device)
    _codes_minus_zeros_kernel[(1,)](p.to(device), z.to(device), out, R=16, C=4, DTYPE=_DTYPES[dtype],
                                    EMULATE_BF16=device != "cuda" and dtype == torch.bfloat16,
                                    ASM=False)
    want = (unpack_columns(p) - unpack_columns(z[None, :])).to(torch.float32)
    torch.testing.assert_close(out.float().cpu(), want, rtol=0, atol=0)


def test_code_f32_subnormals_exact(device):
    p = _random_words(64, 1, 2)[:, 0]
    p[:3] = torch.tensor([-1, 0, 0x12345678 - 2**31], dtype=torch.int32)
    out = torch.empty(64, 8, dtype=torch.float32, device=device)
    _codes_f32_kernel[(1,)](p.to(device), out, R=64)
    torch.testing.assert_close(out.cpu(), unpack_columns(p[:, None]).float(), rtol=0, atol=0)


@pytest.mark.parametrize("n,k,g", [(40, 96, 32), (72, 384, 128), (24, 192, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_matches_reference(n, k, g, dtype, device):
    gen = torch.Generator().manual_seed(n + k)
    qweight, qzeros, scales = pack_awq(torch.randn(n, k, generator=gen), g)
    want = dequantize_awq(qweight, qzeros, scales, g).t()  # W^T [K, N] fp32
    got = awq_dequantize(qweight.to(device), qzeros.to(device), scales.to(device), g, dtype)
    # one rounding of the fp32 product to dtype (the interpreter truncates: one ulp)
    tol = 0 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(got.float().cpu(), want, rtol=tol, atol=0)
    # column chunks land where they belong, into a caller's buffer
    buf = torch.empty(k, 16, dtype=dtype, device=device)
    awq_dequantize(qweight.to(device), qzeros.to(device), scales.to(device), g, dtype, 8, 16, out=buf)
    torch.testing.assert_close(buf.float().cpu(), want[:, 8:24], rtol=tol, atol=0)


def test_dequantize_rejects_bad_columns(device):
    qweight, qzeros, scales = (t.to(device) for t in pack_awq(torch.randn(16, 64), 32))
    for start, count in ((4, 8), (0, 12), (8, 16)):
        with pytest.raises(ValueError, match="multiples of 8"):
            awq_dequantize(qweight, qzeros, scales, 32, torch.float32, start, count)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="inline PTX needs the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_inline_asm_subtract_exact(dtype):
    p, z = _random_words(64, 16, 3), _random_words(1, 16, 4)[0]
    p[0, :] = -1
    out = torch.empty(64, 128, dtype=dtype, device="cuda")
    _codes_minus_zeros_kernel[(1,)](p.cuda(), z.cuda(), out, R=64, C=16, DTYPE=_DTYPES[dtype], EMULATE_BF16=False,
                                    ASM=True)
    want = (unpack_columns(p) - unpack_columns(z[None, :])).to(torch.float32)
    torch.testing.assert_close(out.float().cpu(), want, rtol=0, atol=0)
