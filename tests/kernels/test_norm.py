"""rms_norm / fused_add_rms_norm against their references: odd widths, fp32 and bf16, in-place semantics."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.norm import fused_add_rms_norm, rms_norm
from engine.kernels.reference import fused_add_rms_norm_ref, rms_norm_ref

from .conftest import one_ulp, tolerance


def _inputs(rows, cols, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=gen) * 3).to(dtype).to(device)
    residual = torch.randn(rows, cols, generator=gen).to(dtype).to(device)
    weight = (1 + 0.1 * torch.randn(cols, generator=gen)).to(dtype).to(device)
    return x, residual, weight


@pytest.mark.parametrize("rows,cols,dtype", [(7, 100, torch.float32), (5, 3584, torch.bfloat16),
                                             (3, 8192, torch.float32), (4, 896, torch.float16)])
def test_rms_norm(rows, cols, dtype, device):
    x, _, weight = _inputs(rows, cols, dtype, device)
    out = rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(out, rms_norm_ref(x, weight, 1e-6), **tolerance(dtype))
    # out= into a poisoned buffer writes every element.
    buf = torch.full_like(x, float("nan"))
    assert rms_norm(x, weight, 1e-6, out=buf) is buf
    torch.testing.assert_close(buf, out, atol=0, rtol=0)


@pytest.mark.parametrize("rows,cols,dtype", [(7, 100, torch.float32), (5, 3584, torch.bfloat16),
                                             (2, 8192, torch.bfloat16)])
def test_fused_add_rms_norm_in_place(rows, cols, dtype, device):
    x, residual, weight = _inputs(rows, cols, dtype, device, seed=1)
    ref_out, ref_res = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    out, new_res = fused_add_rms_norm(x, residual, weight, 1e-5)
    assert out.data_ptr() == x.data_ptr() and new_res.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(new_res, ref_res, **one_ulp(dtype))  # the add is rounded to the input dtype
    torch.testing.assert_close(out, ref_out, **tolerance(dtype))


def test_fused_add_rms_norm_out_of_place(device):
    x, residual, weight = _inputs(6, 130, torch.bfloat16, device, seed=2)
    x0, r0 = x.clone(), residual.clone()
    out, res = torch.empty_like(x), torch.empty_like(x)
    fused_add_rms_norm(x, residual, weight, 1e-6, out=out, residual_out=res)
    assert torch.equal(x, x0) and torch.equal(residual, r0)
    ref_out, ref_res = fused_add_rms_norm_ref(x0, r0, weight, 1e-6)
    torch.testing.assert_close(res, ref_res, **one_ulp(torch.bfloat16))
    torch.testing.assert_close(out, ref_out, **tolerance(torch.bfloat16))


@pytest.mark.gpu
def test_norms_gpu_realistic():
    for cols in (3584, 4096):
        x, residual, weight = _inputs(1024, cols, torch.bfloat16, "cuda", seed=3)
        torch.testing.assert_close(rms_norm(x, weight, 1e-6), rms_norm_ref(x, weight, 1e-6),
                                   **tolerance(torch.bfloat16))
        ref_out, ref_res = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
        out, res = fused_add_rms_norm(x, residual, weight, 1e-6)
        torch.testing.assert_close(res, ref_res, atol=0, rtol=0)
        torch.testing.assert_close(out, ref_out, **tolerance(torch.bfloat16))
