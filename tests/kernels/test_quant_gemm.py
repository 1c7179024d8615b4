"""W4A16 (AWQ layout) and W8A16 linear kernels against their torch references (engine/kernels/quant_gemm.py):
every path ('gemv' M = 1, 'gemm' with the one-tile split-K and the prefill tiles, 'dequant_cublas') by
default dispatch and forced, split-K on and off, odd N and K, group sizes 32/64/128, bias, fp16/bf16/fp32;
the dispatch thresholds; the AWQ nibble order on every path; the int8 quantizer; bad input. The GPU
tests (H100/H200) also cover the inline-PTX subtract that the interpreter cannot run."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import quant_gemm
from engine.kernels.quant_gemm import (TileConfig, w4a16_decode_config, w4a16_linear, w4a16_linear_ref, w4a16_path,
                                       w4a16_prefill_config, w8a16_decode_config, w8a16_linear, w8a16_linear_ref,
                                       w8a16_path, w8a16_prefill_config)
from engine.quant.int4_pack import AWQ_ORDER, pack_awq, pack_columns, quantize_groups
from engine.quant.int8 import quantize_per_channel as int8_quantize_per_channel


def _assert_matches(y: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype) -> None:
    """y (dtype) against the fp32 reference: the dequantized weight and the output are each rounded to
    dtype once (the interpreter truncates: up to one ulp each), so allow 2 eps of the output's scale;
    fp32 differs only in summation order."""
    assert y.dtype == dtype and y.shape == ref32.shape
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    scale = ref32.abs().max().item()
    torch.testing.assert_close(y.float(), ref32, rtol=tol, atol=tol * scale)


def _w4_case(m, n, k, g, dtype, bias, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    qweight, qzeros, scales = (t.to(device) for t in pack_awq(w, g))
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    return x, qweight, qzeros, scales, b


# (M, N, K, G, dtype, bias): every M path, N = 8 * odd, K = G * odd, each dtype and group size
W4_CASES = [(1, 24, 96, 32, torch.bfloat16, True), (1, 72, 384, 128, torch.float16, False),
            (1, 40, 192, 64, torch.float32, True),
            (3, 24, 192, 64, torch.float16, True), (3, 72, 96, 32, torch.bfloat16, False),
            (17, 72, 384, 128, torch.bfloat16, True), (17, 24, 96, 32, torch.float32, False),
            (40, 24, 192, 64, torch.bfloat16, False), (40, 72, 384, 128, torch.float16, True)]


@pytest.mark.parametrize("m,n,k,g,dtype,bias", W4_CASES)
def test_w4a16_matches_reference(m, n, k, g, dtype, bias, device):
    x, qweight, qzeros, scales, b = _w4_case(m, n, k, g, dtype, bias, device, seed=m + n + k)
    y = w4a16_linear(x, qweight, qzeros, scales, g, b)
    ref32 = w4a16_linear_ref(x.float(), qweight, qzeros, scales, g, b.float() if bias else None)
    _assert_matches(y, ref32, dtype)
    assert w4a16_linear_ref(x, qweight, qzeros, scales, g, b).dtype == dtype


# (path, M, N, K, G, dtype, bias): each path forced, off its default M range too (the benchmark times them
# side by side), on N = 8 * odd and K = G * odd
W4_PATH_CASES = [("gemv", 1, 40, 96, 32, torch.bfloat16, True), ("gemv", 1, 24, 320, 64, torch.float16, False),
                 ("gemm", 1, 72, 384, 128, torch.bfloat16, True), ("gemm", 5, 40, 192, 64, torch.float16, False),
                 ("gemm", 33, 24, 96, 32, torch.bfloat16, False),
                 ("dequant_cublas", 1, 24, 96, 32, torch.float32, True),
                 ("dequant_cublas", 7, 72, 384, 128, torch.bfloat16, True),
                 ("dequant_cublas", 20, 40, 192, 64, torch.float16, False)]


@pytest.mark.parametrize("path,m,n,k,g,dtype,bias", W4_PATH_CASES)
def test_w4a16_paths_match_reference(path, m, n, k, g, dtype, bias, device):
    x, qweight, qzeros, scales, b = _w4_case(m, n, k, g, dtype, bias, device, seed=n + k)
    y = w4a16_linear(x, qweight, qzeros, scales, g, b, path=path)
    _assert_matches(y, w4a16_linear_ref(x.float(), qweight, qzeros, scales, g, b.float() if bias else None), dtype)


def test_dispatch_thresholds(device, monkeypatch):
    assert w4a16_path(1) == "gemv" and w4a16_path(2) == "gemm"
    assert w4a16_path(quant_gemm.W4_FUSED_MAX_M) == "gemm"
    assert w4a16_path(quant_gemm.W4_FUSED_MAX_M + 1) == "dequant_cublas"
    assert w8a16_path(1, 64) == "gemv" and w8a16_path(1, 66) == "gemm" and w8a16_path(2, 64) == "gemm"
    assert w8a16_path(quant_gemm.W8_FUSED_MAX_M, 64) == "gemm"
    assert w8a16_path(quant_gemm.W8_FUSED_MAX_M + 1, 64) == "dequant_cublas"
    # the launchers follow the module constants: lower them so that small M reaches the dense path, and
    # the chunk size so that the dense weight comes in three column chunks
    monkeypatch.setattr(quant_gemm, "W4_FUSED_MAX_M", 2)
    monkeypatch.setattr(quant_gemm, "W8_FUSED_MAX_M", 2)
    monkeypatch.setattr(quant_gemm, "DENSE_CHUNK_BYTES", 128 * 64 * 2)
    calls = []
    real = quant_gemm._dense_product
    monkeypatch.setattr(quant_gemm, "_dense_product", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x, qweight, qzeros, scales, b = _w4_case(3, 264, 64, 32, torch.bfloat16, True, device, seed=5)
    _assert_matches(w4a16_linear(x, qweight, qzeros, scales, 32, b),
                    w4a16_linear_ref(x.float(), qweight, qzeros, scales, 32, b.float()), torch.bfloat16)
    _assert_matches(w4a16_linear(x[:2], qweight, qzeros, scales, 32, b),
                    w4a16_linear_ref(x[:2].float(), qweight, qzeros, scales, 32, b.float()), torch.bfloat16)
    assert len(calls) == 1  # M = 3 went dense, M = 2 did not
    q8, s8 = int8_quantize_per_channel(torch.randn(264, 64, generator=torch.Generator().manual_seed(1)))
    q8, s8 = q8.to(device), s8.to(device)
    _assert_matches(w8a16_linear(x, q8, s8, b), w8a16_linear_ref(x.float(), q8, s8, b.float()), torch.bfloat16)
    assert len(calls) == 2


@pytest.mark.parametrize("m,block_m", [(1, 1), (3, 16), (40, 32)])
@pytest.mark.parametrize("split_k", [1, 2, 5])
def test_w4a16_split_k_and_tiles(m, block_m, split_k, device):
    # explicit tiles: no split, an even split and one with uneven K runs (5 splits of 6 tiles), and an N
    # tile narrower than N so several column programs share the work
    x, qweight, qzeros, scales, b = _w4_case(m, 40, 192, 32, torch.bfloat16, True, device, seed=split_k)
    cfg = TileConfig(block_m, 16, 32, split_k, 4, 2)
    ref32 = w4a16_linear_ref(x.float(), qweight, qzeros, scales, 32, b.float())
    _assert_matches(w4a16_linear(x, qweight, qzeros, scales, 32, b, config=cfg), ref32, torch.bfloat16)


@pytest.mark.parametrize("kind,m,block_m", [("w4", 1, 1), ("w4", 3, 16), ("w4", 40, 32), ("w8", 1, 1),
                                             ("w8", 3, 16), ("w8", 40, 32)])
def test_fused_split_k_reduction_equals_the_reduce_kernel(kind, m, block_m, device):
    # The last split of each tile sums the partials (TileConfig.fused_reduce) in the same order as the
    # second kernel would: bit-identical outputs, on every call (each tile's arrival counter is back at 0
    # afterwards, or the next call would never find its last split and leave the output unwritten).
    from engine.kernels.quant_gemm import _locks

    x, qweight, qzeros, scales, b = _w4_case(m, 40, 192, 32, torch.bfloat16, True, device, seed=m)
    q8, s8 = int8_quantize_per_channel(torch.randn(40, 192, generator=torch.Generator().manual_seed(m)))
    q8, s8 = q8.to(device), s8.to(device)
    block_k = 32 if kind == "w4" or block_m > 1 else 64
    def run(fused: bool) -> torch.Tensor:
        cfg = TileConfig(block_m, 16, block_k, 3, 2 if kind == "w4" and block_m == 1 else 4, 2, fused)
        if kind == "w4":
            return w4a16_linear(x, qweight, qzeros, scales, 32, b, config=cfg)
        return w8a16_linear(x, q8, s8, b, config=cfg)
    want = run(False)
    for _ in range(3):
        torch.testing.assert_close(run(True), want, rtol=0, atol=0)
        assert int(_locks(x.device).abs().sum()) == 0


def _pack_plain(codes_kn: torch.Tensor) -> torch.Tensor:
    """The wrong layout: nibble i holds column 8c + i (no AWQ interleave)."""
    r, n = codes_kn.shape
    c = codes_kn.to(torch.int64).reshape(r, n // 8, 8)
    packed = sum((c[..., i] & 0xF) << (4 * i) for i in range(8))
    return torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32)


@pytest.mark.parametrize("m,path", [(1, "gemv"), (3, "gemm"), (17, "gemm"), (2, "dequant_cublas")])
def test_w4a16_reads_awq_nibble_order(m, path, device):
    assert AWQ_ORDER != tuple(range(8))
    n, k, g = 24, 64, 32
    gen = torch.Generator().manual_seed(7)
    # every column its own spread (so its own scale): codes and zeros moved to the wrong column of a
    # word meet another column's scale, which cannot go unnoticed
    w = torch.randn(n, k, generator=gen) * (0.1 + 0.3 * torch.arange(n, dtype=torch.float32))[:, None]
    codes, zeros, scales = quantize_groups(w, g)  # [N, K], [N, K/G], [N, K/G]
    s16 = scales.to(torch.float16)
    w_deq = (codes - zeros.repeat_interleave(g, 1)) * s16.float().repeat_interleave(g, 1)
    x = torch.randn(m, k, generator=gen)
    truth = (x @ w_deq.t()).to(device)
    s = s16.t().contiguous().to(device)
    awq = [pack_columns(t.t().contiguous()).to(device) for t in (codes, zeros)]
    plain = [_pack_plain(t.t().contiguous()).to(device) for t in (codes, zeros)]
    y_awq = w4a16_linear(x.to(device), awq[0], awq[1], s, g, path=path)
    y_plain = w4a16_linear(x.to(device), plain[0], plain[1], s, g, path=path)
    _assert_matches(y_awq, truth, torch.float32)
    assert (y_plain - truth).abs().max() > 0.1 * truth.abs().max()


# (M, N, K, dtype, bias, scales in fp32?)
W8_CASES = [(1, 24, 100, torch.bfloat16, True, True), (1, 72, 1100, torch.float16, False, False),
            (1, 40, 96, torch.float32, True, True),
            (3, 72, 130, torch.bfloat16, False, True), (3, 24, 64, torch.float16, True, False),
            (17, 24, 200, torch.bfloat16, True, False), (17, 72, 96, torch.float32, False, True),
            (40, 72, 72, torch.float16, False, True), (40, 24, 300, torch.bfloat16, True, True)]


@pytest.mark.parametrize("m,n,k,dtype,bias,fp32_scales", W8_CASES)
def test_w8a16_matches_reference(m, n, k, dtype, bias, fp32_scales, device):
    gen = torch.Generator().manual_seed(m * n + k)
    qweight, scales = int8_quantize_per_channel(torch.randn(n, k, generator=gen) / k ** 0.5)
    scales = scales if fp32_scales else scales.to(dtype)
    qweight, scales = qweight.to(device), scales.to(device)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    ref32 = w8a16_linear_ref(x.float(), qweight, scales, b.float() if bias else None)
    _assert_matches(w8a16_linear(x, qweight, scales, b), ref32, dtype)
    # the tensor-core kernel without split-K and with an uneven one, both operand orders (swap_ab: out^T
    # = W x^T, the tokens as the MMA's N), fused split-K sum and the second kernel
    for split in (1, 3):
        for swap in (False, True):
            cfg = TileConfig(16 if m <= 16 else 32, 16, 32, split, 4, 2, split == 3, swap)
            _assert_matches(w8a16_linear(x, qweight, scales, b, config=cfg), ref32, dtype)


@pytest.mark.parametrize("path,m,n,k,dtype", [("gemv", 1, 40, 100, torch.bfloat16),
                                               ("gemv", 1, 24, 2052, torch.float16),
                                               ("gemm", 1, 24, 130, torch.bfloat16),
                                               ("dequant_cublas", 1, 40, 100, torch.float32),
                                               ("dequant_cublas", 9, 72, 130, torch.bfloat16)])
def test_w8a16_paths_match_reference(path, m, n, k, dtype, device):
    # K = 2052: the GEMV's split-K over 1024-wide steps with a partial last step; K = 130: no 4-byte words
    gen = torch.Generator().manual_seed(n + k)
    qweight, scales = (t.to(device) for t in int8_quantize_per_channel(torch.randn(n, k, generator=gen) / k ** 0.5))
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device)
    _assert_matches(w8a16_linear(x, qweight, scales, b, path=path),
                    w8a16_linear_ref(x.float(), qweight, scales, b.float()), dtype)


def test_w8a16_extreme_codes(device):
    # -127, 127 and 0 survive the int8 -> float conversion exactly, in both kernels
    q = torch.tensor([[-127, 127, 0, 1, -1, 5, -5, 100]] * 8, dtype=torch.int8).t().contiguous().to(device)
    s = torch.ones(8, device=device)
    for m, path in ((1, "gemv"), (1, "gemm"), (20, "gemm"), (3, "dequant_cublas")):
        x = torch.eye(8, device=device)[:1].expand(m, 8).contiguous()
        torch.testing.assert_close(w8a16_linear(x, q, s, path=path), w8a16_linear_ref(x, q, s), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_quantizer_error_within_half_a_step(dtype):
    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(33, 257, generator=gen) * torch.logspace(-3, 1, 33)[:, None]).to(dtype)
    w[5] = 0.0
    q, s = int8_quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dtype == torch.float32 and s.shape == (33,)
    assert q.abs().max() <= 127 and q.abs().amax(dim=1)[torch.arange(33) != 5].min() == 127
    err = (w.float() - q.float() * s[:, None]).abs().amax(dim=1)
    # exact ties (w / s = -63.5) sit at s / 2; q * s itself rounds in fp32, hence the last term
    assert (err <= s / 2 + 1e-6 * w.float().abs().amax(dim=1)).all()
    assert (q[5] == 0).all() and s[5] == 1.0


def test_empty_and_k0(device):
    x = torch.zeros(0, 64, device=device)
    qweight, qzeros, scales = (t.to(device) for t in pack_awq(torch.randn(16, 64), 32))
    assert w4a16_linear(x, qweight, qzeros, scales, 32).shape == (0, 16)
    b = torch.randn(5, device=device)
    y = w8a16_linear(torch.zeros(3, 0, device=device), torch.zeros(5, 0, dtype=torch.int8, device=device),
                     torch.ones(5, device=device), b)
    torch.testing.assert_close(y, b.expand(3, 5))


def test_bad_inputs_raise(device):
    x = torch.randn(2, 64, device=device)
    qw, qz, s = (t.to(device) for t in pack_awq(torch.randn(16, 64), 32))
    bad_w4 = [((x[None], qw, qz, s, 32), "x must be"), ((x.to(torch.int32), qw, qz, s, 32), "x must be one of"),
              ((x.t().contiguous().t(), qw, qz, s, 32), "contiguous"),
              ((x[:, :32], qw, qz, s, 32), "K=32"), ((x, qw.to(torch.int64), qz, s, 32), "qweight"),
              ((x, qw, qz, s[:, :8].contiguous(), 32), "multiple of 8"), ((x, qw, qz, s, 24), "group size"),
              ((x, qw, qz, s, 48), "group size"), ((x, qw, qz, s, 16), "expected qzeros"),
              ((x, qw, qz[:1], s, 32), "expected qzeros")]
    for args, match in bad_w4:
        with pytest.raises(ValueError, match=match):
            w4a16_linear(*args)
    with pytest.raises(ValueError, match="bias"):
        w4a16_linear(x, qw, qz, s, 32, torch.randn(15, device=device))
    with pytest.raises(ValueError, match="config"):
        w4a16_linear(x, qw, qz, s, 32, config=TileConfig(1, 16, 32, 1, 4, 2))  # GEMV tiles for 2 rows
    with pytest.raises(ValueError, match="config"):
        w4a16_linear(x, qw, qz, s, 32, config=TileConfig(16, 16, 64, 1, 4, 2))  # K tile straddles groups
    with pytest.raises(ValueError, match="path must be one of"):
        w4a16_linear(x, qw, qz, s, 32, path="cublas")
    with pytest.raises(ValueError, match="'gemv' path takes M == 1"):
        w4a16_linear(x, qw, qz, s, 32, path="gemv")
    with pytest.raises(ValueError, match="config"):
        w4a16_linear(x, qw, qz, s, 32, config=TileConfig(16, 16, 32, 1, 4, 2), path="dequant_cublas")
    q8, s8 = int8_quantize_per_channel(torch.randn(16, 64))
    q8, s8 = q8.to(device), s8.to(device)
    with pytest.raises(ValueError, match="multiple of 4"):
        w8a16_linear(x[:1, :62].contiguous(), q8[:, :62].contiguous(), s8, path="gemv")
    with pytest.raises(ValueError, match="swap_ab is an int8 kernel"):
        w4a16_linear(x, qw, qz, s, 32, config=TileConfig(16, 16, 32, 1, 4, 2, False, True))
    with pytest.raises(ValueError, match="swap_ab is a tensor-core tiling"):
        w8a16_linear(x[:1], q8, s8, config=TileConfig(1, 16, 512, 1, 4, 1, False, True))
    for args, match in [((x, q8.to(torch.int32), s8), "int8"), ((x, q8, s8[:8]), "scales"),
                        ((x, q8, s8.to(torch.float16)), "scales"), ((x[:, :10], q8, s8), "K=10")]:
        with pytest.raises(ValueError, match=match):
            w8a16_linear(*args)
    with pytest.raises(ValueError, match="float"):
        int8_quantize_per_channel(q8)


QWEN = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
        ("down", 3584, 18944, False)]


def test_configs_at_qwen_shapes():
    for _, n, k, _ in QWEN:
        for m in (1, 2, 16, 17, 64, 256):
            for g in (32, 64, 128):
                cfg = (w4a16_decode_config if m <= 16 else w4a16_prefill_config)(m, n, k, g, 132)
                assert g % cfg.block_k == 0 and cfg.block_n % 16 == 0 and (cfg.block_m == 1) == (m == 1)
                steps = -(-k // (cfg.num_warps * cfg.block_k)) if m == 1 else k // cfg.block_k
                assert 1 <= cfg.split_k <= steps
            cfg8 = (w8a16_decode_config if m <= 16 else w8a16_prefill_config)(m, n, k, 132)
            assert (cfg8.block_m == 1) == (m == 1) and cfg8.split_k >= 1
    # batch 1 (the H200 sweep's pattern): 512 columns a program on the widths that 1024 does not divide (no
    # masked lanes), 1024 on gate_up; 8 warps; small weights one wave of one-step programs, large ones ~2 waves
    cfg = w4a16_decode_config(1, 4608, 3584, 128, 132)
    assert (cfg.block_n, cfg.block_k, cfg.num_warps, cfg.split_k) == (512, 32, 8, 14)  # 3584 / (8 * 32)
    assert w4a16_decode_config(1, 37888, 3584, 128, 132)[1:5] == (1024, 16, 8, 8)  # 37 x 8 programs
    assert w4a16_decode_config(1, 3584, 18944, 128, 132)[1:5] == (512, 16, 38, 8)  # 7 x 38 programs
    assert all(c.fused_reduce for c in (cfg, w4a16_decode_config(16, 4608, 3584, 128, 132),
                                        w8a16_decode_config(1, 4608, 3584, 132)))
    assert w4a16_decode_config(16, 4608, 3584, 128, 132)[:4] == (16, 64, 128, 8)  # 72 tiles x 8: ~4 waves
    assert w8a16_decode_config(1, 3584, 3584, 132)[1:4] == (32, 512, 4)
    assert w4a16_prefill_config(64, 4608, 3584, 128, 132)[:3] == (64, 64, 128)
    assert w4a16_prefill_config(256, 37888, 3584, 128, 132).split_k == 1
    # a K tile never straddles a group, in the tensor-core kernel too
    assert w4a16_decode_config(8, 4608, 3584, 32, 132).block_k == 32
    assert w8a16_decode_config(1, 4608, 3583, 132).block_m == 16  # no 4-byte words: the tensor-core tile


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_qwen_shapes(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _, n, k, has_bias in QWEN:
        w = torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5
        qweight, qzeros, scales = pack_awq(w, 128)
        q8, s8 = int8_quantize_per_channel(w)
        del w
        b = torch.randn(n, device="cuda", generator=gen).to(dtype) if has_bias else None
        for m in (1, 5, 16, 64, 256, 1024):
            x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
            bf = b.float() if has_bias else None
            _assert_matches(w4a16_linear(x, qweight, qzeros, scales, 128, b),
                            w4a16_linear_ref(x.float(), qweight, qzeros, scales, 128, bf), dtype)
            _assert_matches(w8a16_linear(x, q8, s8, b), w8a16_linear_ref(x.float(), q8, s8, bf), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,g,n,k", [(torch.bfloat16, 32, 1032, 32 * 37), (torch.bfloat16, 64, 296, 64 * 11),
                                         (torch.bfloat16, 128, 4616, 128 * 7), (torch.float16, 64, 1032, 64 * 23)])
def test_gpu_every_path_matches_reference(dtype, g, n, k):
    # The native kernels, inline-PTX subtract included (the interpreter runs without it), on odd N = 8 *
    # odd and K = G * odd, every M class: the GEMV (1), the one-tile split-K GEMM (3, 16), the prefill
    # tiles (64, 300 forced) and the dense path (300 by default, 3 and 64 forced)
    gen = torch.Generator(device="cuda").manual_seed(g + n)
    w = torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5
    qweight, qzeros, scales = pack_awq(w, g)
    q8, s8 = int8_quantize_per_channel(w)
    b = torch.randn(n, device="cuda", generator=gen).to(dtype)
    for m in (1, 3, 16, 64, 300):
        x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
        ref4 = w4a16_linear_ref(x.float(), qweight, qzeros, scales, g, b.float())
        ref8 = w8a16_linear_ref(x.float(), q8, s8, b.float())
        paths = [None, "gemm", "dequant_cublas"] + (["gemv"] if m == 1 else [])
        for path in paths:
            _assert_matches(w4a16_linear(x, qweight, qzeros, scales, g, b, path=path), ref4, dtype)
            _assert_matches(w8a16_linear(x, q8, s8, b, path=path), ref8, dtype)
        # split-K forced on the tensor-core kernel (the defaults split only below one wave of tiles)
        cfg = TileConfig(16 if m <= 16 else 64, 64, g if g < 128 else 64, 3, 4, 3)
        _assert_matches(w4a16_linear(x, qweight, qzeros, scales, g, b, config=cfg), ref4, dtype)
        # int8 with the operands swapped (registers-A wgmma on Hopper), split-K fused and not
        for split, fused in ((1, False), (3, True), (3, False)):
            cfg = TileConfig(16 if m <= 16 else 64, 64, 128, split, 4, 3, fused, True)
            _assert_matches(w8a16_linear(x, q8, s8, b, config=cfg), ref8, dtype)


@pytest.mark.gpu
def test_gpu_decode_is_graph_capturable():
    n, k = 4608, 3584
    qweight, qzeros, scales = pack_awq(torch.randn(n, k, device="cuda") / k ** 0.5, 128)
    q8, s8 = int8_quantize_per_channel(torch.randn(n, k, device="cuda"))
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    expected = (w4a16_linear(x, qweight, qzeros, scales, 128), w8a16_linear(x, q8, s8))  # compiles outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = (w4a16_linear(x, qweight, qzeros, scales, 128), w8a16_linear(x, q8, s8))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_fused_split_k_under_graph_replays():
    # Many splits racing for each tile's counter, replayed in one CUDA graph 200 times with inputs that
    # change between replays: every replay must equal the two-kernel sum exactly (a missing barrier or
    # a stale L1 line would show up as a wrong or unwritten tile now and then, not every time).
    gen = torch.Generator(device="cuda").manual_seed(3)
    n, k = 3584, 18944
    qweight, qzeros, scales = pack_awq(torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5, 128)
    q8, s8 = int8_quantize_per_channel(torch.randn(n, k, device="cuda", generator=gen))
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    cfgs = {"w4": (TileConfig(1, 512, 32, 37, 4, 1, True), TileConfig(1, 512, 32, 37, 4, 1, False)),
            "w8": (TileConfig(1, 16, 1024, 19, 4, 1, True), TileConfig(1, 16, 1024, 19, 4, 1, False)),
            "w4 M=16": (TileConfig(16, 128, 128, 16, 4, 3, True), TileConfig(16, 128, 128, 16, 4, 3, False))}
    xs = {"w4": x, "w8": x, "w4 M=16": torch.randn(16, k, device="cuda", dtype=torch.bfloat16, generator=gen)}

    def call(name, fused):
        cfg = cfgs[name][0 if fused else 1]
        if name.startswith("w4"):
            return w4a16_linear(xs[name], qweight, qzeros, scales, 128, config=cfg)
        return w8a16_linear(xs[name], q8, s8, config=cfg)
    for name in cfgs:
        call(name, True)  # compiles and makes the counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = {name: call(name, True) for name in cfgs}
    for _ in range(200):
        for name in cfgs:
            xs[name].normal_(generator=gen)
        graph.replay()
        for name in cfgs:
            torch.testing.assert_close(outs[name], call(name, False), rtol=0, atol=0)
