"""gemv (one-row linear) against F.linear: odd N and K (masked tails), bias, 1-D input, every config
branch, fp32 and bf16; and the layers route only single rows through it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.gemv import gemv, gemv_config

from .conftest import tolerance


@pytest.mark.parametrize("n,k,bias,dtype", [(37, 100, True, torch.float32), (64, 512, False, torch.float32),
                                            (5, 1030, True, torch.bfloat16), (300, 8200, False, torch.bfloat16),
                                            (17000, 520, False, torch.float16)])
def test_gemv_matches_linear(n, k, bias, dtype, device):
    gen = torch.Generator().manual_seed(n + k)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    x = torch.randn(1, k, generator=gen).to(dtype).to(device)
    ref = F.linear(x.float(), w.float(), b.float() if bias else None).to(dtype)
    torch.testing.assert_close(gemv(x, w, b), ref, **tolerance(dtype))
    flat = gemv(x[0], w, b)
    assert flat.shape == (n,)
    torch.testing.assert_close(flat, ref[0], **tolerance(dtype))
    out = torch.full((1, n), float("nan"), dtype=dtype, device=device)
    assert gemv(x, w, b, out=out) is out
    torch.testing.assert_close(out, ref, **tolerance(dtype))


def test_gemv_config_branches():
    assert gemv_config(4608, 3584) == (4, 512, 4, 4)
    assert gemv_config(37888, 3584) == (8, 512, 4, 2)
    assert gemv_config(3584, 18944) == (16, 1024, 4, 2)
    assert gemv_config(10, 100)[1] == 128  # K below one tile: one power-of-two tile, masked


def test_gemv_refuses_more_than_one_row(device):
    w = torch.randn(8, 16, device=device)
    with pytest.raises(ValueError, match="one row"):
        gemv(torch.randn(2, 16, device=device), w)
    with pytest.raises(ValueError, match="one row"):
        gemv(torch.randn(1, 15, device=device), w)


def test_linear_layer_uses_gemv_for_one_row_only(device, monkeypatch):
    from engine.kernels import gemv as gemv_mod
    from engine.layers.linear import Linear
    from engine.layers.options import LayerOptions

    layer = Linear(48, 40, bias=True, options=LayerOptions(use_kernels=True, device_type="cuda")).to(device)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    calls = []
    monkeypatch.setattr(gemv_mod, "gemv", lambda *a, **kw: calls.append(a[0].shape) or gemv(*a, **kw))
    one, many = torch.randn(1, 48, device=device), torch.randn(3, 48, device=device)
    torch.testing.assert_close(layer(one), F.linear(one, layer.weight, layer.bias), **tolerance(torch.float32))
    torch.testing.assert_close(layer(many), F.linear(many, layer.weight, layer.bias))
    assert calls == [torch.Size([1, 48])]


@pytest.mark.gpu
def test_gemv_gpu_qwen_shapes():
    for n, k in ((4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(gemv(x, w), F.linear(x, w), **tolerance(torch.bfloat16))
