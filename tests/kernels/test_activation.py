"""silu_and_mul against silu_and_mul_ref: odd widths, several column blocks, fp32 and bf16."""
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


@pytest.mark.gpu
def test_silu_and_mul_gpu_realistic():
    x = torch.randn(1024, 2 * 18944, device="cuda", dtype=torch.bfloat16) * 4
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **tolerance(torch.bfloat16))
