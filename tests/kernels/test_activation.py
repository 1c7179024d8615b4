"""silu_and_mul against silu_and_mul_ref: odd widths, several column blocks, fp32 and bf16, both layouts of the
merged projection ([gate | up] halves and the CUDA AWQ kernel's interleaved chunks)."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.activation import silu_and_mul
from engine.kernels.reference import silu_and_mul_ref

from .conftest import tolerance


@pytest.mark.parametrize("rows,inter,dtype", [(7, 100, torch.float32), (3, 2500, torch.bfloat16),
                                              (5, 37, torch.float16)])
def test_silu_and_mul(rows, inter, dtype, device):
    x = (torch.randn(rows, 2 * inter) * 4).to(dtype).to(device)
    out = silu_and_mul(x)
    torch.testing.assert_close(out, silu_and_mul_ref(x), **tolerance(dtype))
    buf = torch.full((rows, inter), float("nan"), dtype=dtype, device=device)
    assert silu_and_mul(x, out=buf) is buf
    torch.testing.assert_close(buf, out, atol=0, rtol=0)


@pytest.mark.parametrize("rows,inter,chunk", [(3, 96, 32), (2, 2048, 32), (4, 20, 4)])
def test_silu_and_mul_of_interleaved_chunks(rows, inter, chunk, device):
    """x in chunks of `chunk` gate columns, each followed by its up columns: the same numbers as the halves layout
    of the same projection (x's columns put back in [gate | up] order), bit for bit."""
    halves = (torch.randn(rows, 2 * inter) * 4).to(torch.bfloat16)
    pairs = torch.stack((halves[:, :inter].view(rows, -1, chunk), halves[:, inter:].view(rows, -1, chunk)), dim=2)
    interleaved = pairs.reshape(rows, 2 * inter).to(device)
    expected = silu_and_mul_ref(halves.to(device))
    torch.testing.assert_close(silu_and_mul_ref(interleaved, chunk=chunk), expected, atol=0, rtol=0)
    torch.testing.assert_close(silu_and_mul(interleaved, chunk=chunk), silu_and_mul(halves.to(device)),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="chunk must be 0 or divide I"):
        silu_and_mul(interleaved, chunk=7)


@pytest.mark.gpu
def test_silu_and_mul_gpu_realistic():
    x = torch.randn(1024, 2 * 18944, device="cuda", dtype=torch.bfloat16) * 4
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **tolerance(torch.bfloat16))
