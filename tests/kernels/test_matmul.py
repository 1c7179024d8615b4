"""matmul_invariant (the batch-invariant GEMM) against F.linear on odd shapes (masked M, N and K tails,
bias, fp32 / bf16 / fp16), and bitwise batch invariance: a row's result must not change with M or
with its position in the batch (which tile and which row of the tile it lands in)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.matmul import _BLOCK_K, _BLOCK_N, matmul_invariant

from .conftest import tolerance


def _operands(m: int, n: int, k: int, bias: bool, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    return x, w, b


@pytest.mark.parametrize("m,n,k,bias,dtype", [
    (1, 37, 100, True, torch.float32),
    (3, 160, 200, False, torch.float32),
    (65, 130, 17, True, torch.float32),
    (1, 160, 200, False, torch.bfloat16),
    (3, 37, 100, True, torch.bfloat16),
    (65, 130, 130, True, torch.bfloat16),
    (3, 20, 70, True, torch.float16),
])
def test_matmul_matches_linear(m, n, k, bias, dtype, device):
    assert k % _BLOCK_K or n % _BLOCK_N  # every case has a masked tail in K or N
    x, w, b = _operands(m, n, k, bias, dtype, device, seed=m * 1000 + n + k)
    ref = F.linear(x.float(), w.float(), b.float() if bias else None).to(dtype)
    y = matmul_invariant(x, w, b)
    assert y.shape == (m, n) and y.dtype == dtype
    torch.testing.assert_close(y, ref, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matmul_rows_bitwise_independent_of_batch(dtype, device):
    x, w, b = _operands(67, 150, 130, True, dtype, device, seed=7)
    full = matmul_invariant(x, w, b)                # 2 row tiles, row i at tile row i % 64
    first5 = matmul_invariant(x[:5], w, b)
    shifted = matmul_invariant(x[3:], w, b)          # every row lands at another row of the tile
    for i in (0, 2, 4):
        one = matmul_invariant(x[i:i + 1], w, b)[0]
        assert torch.equal(one, first5[i]), i
        assert torch.equal(one, full[i]), i
    for i in (3, 40, 63, 64, 66):
        one = matmul_invariant(x[i:i + 1], w, b)[0]
        assert torch.equal(one, full[i]), i
        assert torch.equal(one, shifted[i - 3]), i
    torch.testing.assert_close(full, F.linear(x.float(), w.float(), b.float()).to(dtype), **tolerance(dtype))


def test_matmul_empty_out_and_errors(device):
    x, w, b = _operands(3, 40, 24, True, torch.float32, device)
    empty = matmul_invariant(x[:0], w, b)
    assert empty.shape == (0, 40) and empty.dtype == torch.float32

    out = torch.full((3, 40), float("nan"), device=device)
    assert matmul_invariant(x, w, b, out=out) is out
    torch.testing.assert_close(out, F.linear(x, w, b), **tolerance(torch.float32))
    # K == 0: an empty sum, so the bias alone.
    assert torch.equal(matmul_invariant(x[:, :0], w[:, :0], b), b.expand(3, 40))

    with pytest.raises(ValueError, match="K=24"):
        matmul_invariant(x, w[:, :20])
    with pytest.raises(ValueError, match=r"x \[M, K\]"):
        matmul_invariant(x[0], w)
    with pytest.raises(ValueError, match="dtype"):
        matmul_invariant(x, w.to(torch.bfloat16))
    with pytest.raises(ValueError, match="bias"):
        matmul_invariant(x, w, b[:39])
    with pytest.raises(ValueError, match="out"):
        matmul_invariant(x, w, out=torch.empty(3, 41, device=device))
    with pytest.raises(ValueError, match="out"):
        matmul_invariant(x, w, out=torch.empty(3, 40, dtype=torch.bfloat16, device=device))
    with pytest.raises(ValueError, match="contiguous"):
        matmul_invariant(x, w.t().contiguous().t())


@pytest.mark.gpu
def test_matmul_gpu_batch_invariance_qwen_qkv():
    # Qwen2.5-7B's qkv projection. Whole batches and slices at offsets that are not multiples of the
    # 64-row tile must reproduce the M=2048 rows bit for bit.
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, k = 4608, 3584
    w = (torch.randn(n, k, generator=gen, device="cuda") / k ** 0.5).to(torch.bfloat16)
    b = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16)
    x = torch.randn(2048, k, generator=gen, device="cuda").to(torch.bfloat16)
    full = matmul_invariant(x, w, b)
    torch.testing.assert_close(full, F.linear(x.float(), w.float(), b.float()).to(torch.bfloat16),
                               **tolerance(torch.bfloat16))
    for m in (1, 7, 300):
        assert torch.equal(matmul_invariant(x[:m], w, b), full[:m]), m
    for start, m in ((1000, 1), (100, 7), (1701, 300)):
        assert torch.equal(matmul_invariant(x[start:start + m], w, b), full[start:start + m]), (start, m)
    assert torch.equal(matmul_invariant(x, w, b), full)  # run to run
