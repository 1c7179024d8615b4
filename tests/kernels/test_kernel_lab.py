"""The kernel lab's variants (ci/kernel_lab/: experiments timed on a GPU against the shipped W4A16 / W8A16
kernels, results in reports/examples/h200/gemv-lab-*) compute the same products as the torch references,
so a lab figure is never the speed of a wrong kernel: the register-prefetching int4 GEMVs (8 and 16 rows a
slab), the int4 GEMV on a tile-major repacked qweight, the swapped-operand AWQ GEMM, the prefetching
int8 GEMV and gemm_kernels.py's W4A16 tiles (scale folded into the weight, swapped, pointer increments,
clamped rows), on small odd shapes with split-K (interpreter on the CPU, natively on a GPU); and lab 11's
L2 prefetch reads exactly the words it is given; lab 16 swaps in only the launch choices it names."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from engine.kernels import quant_gemm as qg
from engine.kernels.quant_gemm import TileConfig

from .conftest import DEVICE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci" / "kernel_lab"))
import gen_prefetch  # noqa: E402,F401  (writes _gemv_pf.py)
import _gemv_pf as pf  # noqa: E402
import gemm_kernels as gk  # noqa: E402
import lab_kernels as lk  # noqa: E402
from gemv_lab2 import tile_major  # noqa: E402

G = 32


def _awq(n: int, k: int, gen: torch.Generator):
    qw = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, generator=gen)
    qz = torch.randint(-2**31, 2**31 - 1, (k // G, n // 8), dtype=torch.int32, generator=gen)
    s = torch.rand(k // G, n, generator=gen) * 0.01 + 0.001
    return qw.to(DEVICE), qz.to(DEVICE), s.to(DEVICE)


def _rel_err(y, ref) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.mark.parametrize("kernel,cfg", [
    ("pf8", TileConfig(1, 64, 8, 2, 2, 1, True)),
    ("pf16", TileConfig(1, 64, 16, 3, 2, 1, True)),
    ("tiled", TileConfig(1, 64, 16, 2, 2, 1, True)),
    ("n8arg", TileConfig(1, 32, 8, 3, 4, 1, True)),
])
def test_lab_int4_gemvs_match_the_reference(kernel, cfg):
    gen = torch.Generator().manual_seed(0)
    n, k = 128, 640  # 640 rows: the last K step of a split is partial
    qw, qz, s = _awq(n, k, gen)
    x = torch.randn(1, k, generator=gen).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(DEVICE)
    ref = qg.w4a16_linear_ref(x, qw, qz, s, G, bias)
    out = torch.empty(1, n, device=DEVICE)
    steps = -(-k // (cfg.num_warps * cfg.block_k))
    if kernel.startswith("pf"):
        fn = pf.gemv_pf8 if kernel == "pf8" else pf.gemv_pf16
        y = qg._launch(fn, (qw, qz, s), (n, k, G), x, bias, out, cfg, steps, SLABS=cfg.num_warps)
    else:
        tiled = kernel == "tiled"
        w = tile_major(qw, cfg.block_n) if tiled else qw
        y = qg._launch(lk.gemv_var, (w, qz, s), (n, n // 8, k, G), x, bias, out, cfg, steps, SLABS=cfg.num_warps,
                       TILED=tiled, STREAM=False)
    assert _rel_err(y, ref) < 1e-5


def test_lab_swapped_awq_gemm_matches_the_reference():
    gen = torch.Generator().manual_seed(1)
    n, k, m = 96, 256, 5
    qw, qz, s = _awq(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    cfg = TileConfig(16, 32, 32, 2, 4, 1, True)
    out = torch.empty(m, n, device=DEVICE)
    y = qg._launch(lk.w4_gemm_swapped, (qw, qz, s), (m, n, k, G), x, None, out, cfg, k // cfg.block_k,
                   EMULATE_BF16=False, ASM=False)
    assert _rel_err(y, qg.w4a16_linear_ref(x, qw, qz, s, G)) < 1e-5


@pytest.mark.parametrize("cfg", [TileConfig(1, 16, 64, 2, 4, 1, True), TileConfig(1, 32, 128, 1, 4, 1, True)])
def test_lab_prefetching_int8_gemv_matches_the_reference(cfg):
    gen = torch.Generator().manual_seed(2)
    n, k = 40, 1024
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen).to(DEVICE)
    s = (torch.rand(n, generator=gen) * 0.01).to(DEVICE)
    x = torch.randn(1, k, generator=gen).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(DEVICE)
    out = torch.empty(1, n, device=DEVICE)
    kw = k // 4
    y = qg._launch(lk.w8_gemv_pf, (q.view(torch.int32), s), (n, k, kw), x, bias, out, cfg, -(-kw // (cfg.block_k // 4)))
    assert _rel_err(y, qg.w8a16_linear_ref(x, q, s, bias)) < 1e-5


@pytest.mark.parametrize("fold,swap,inc,clamp", [(True, False, True, True), (True, True, True, True),
                                                  (False, False, True, True), (False, True, False, False),
                                                  (True, False, False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lab_awq_gemm_variants_match_the_reference(fold, swap, inc, clamp, dtype):
    gen = torch.Generator().manual_seed(3)
    n, k, m = 128, 256, 5  # 5 rows of a 16-row tile: the clamped rows must not reach the output
    qw, qz, s = _awq(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(DEVICE)
    cfg = TileConfig(16, 32, 32, 3, 4, 1, True)  # 8 K steps over 3 splits: uneven splits
    s = s.to(dtype)  # FOLD rounds the scale to x's dtype: the reference gets the same scales
    xd = x.to(dtype)
    out = torch.empty(m, n, device=DEVICE, dtype=dtype)
    y = qg._launch(gk.w4_gemm_lab, (qw, qz, s), (m, n, k), xd, bias, out, cfg, k // cfg.block_k, GROUP=G,
                   EMULATE_BF16=dtype == torch.bfloat16 and DEVICE == "cpu", ASM=qg._inline_asm(xd), FOLD=fold,
                   SWAP=swap, INC=inc, CLAMP=clamp)
    # bf16: the weight rounded once (FOLD) and x in bf16 against the fp32 reference of the same bf16 inputs
    assert _rel_err(y, qg.w4a16_linear_ref(xd.float(), qw, qz, s.float(), G, bias)) < (1e-5 if dtype == torch.float32
                                                                                          else 1e-2)


@pytest.mark.parametrize("m,rows,cfg", [(1, 2, TileConfig(1, 64, 16, 3, 2, 1, True)),
                                        (3, 4, TileConfig(1, 64, 16, 3, 2, 1, True)),
                                        (2, 2, TileConfig(1, 32, 8, 1, 4, 1, False)),
                                        (4, 4, TileConfig(1, 64, 8, 2, 4, 1, False))])
def test_lab_awq_gemv_rows_matches_the_reference(m, rows, cfg):
    gen = torch.Generator().manual_seed(4)
    n, k = 128, 640  # 640 rows: the last K step of a split is partial
    qw, qz, s = _awq(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(DEVICE)
    out = torch.empty(m, n, device=DEVICE)
    steps = -(-k // (cfg.num_warps * cfg.block_k))
    y = qg._launch(gk.w4_gemv_rows, (qw, qz, s), (m, n, k, G, x.stride(0)), x, bias, out, cfg, steps,
                   SLABS=cfg.num_warps, ROWS=rows)
    assert _rel_err(y, qg.w4a16_linear_ref(x, qw, qz, s, G, bias)) < 1e-5


@pytest.mark.parametrize("variant", ["planes", "prmt", "cast"])
@pytest.mark.parametrize("splits", [1, 3])
def test_lab_int8_kv_decode_attention_matches_the_reference(variant, splits):
    """attn_lab.py's launches of the int8-KV decode kernels (the engine's byte planes and codes cast one by
    one, attn_kernels.py's PRMT variant) against the torch reference on a shuffled paged cache: GQA 7
    (padded to 16 rows), uneven lengths, one and several splits."""
    from attn_lab import lab_decode
    from engine.kernels.reference import decode_attention_ref

    gen = torch.Generator().manual_seed(5)
    batch, heads, kv_heads, dim, bs = 3, 14, 2, 32, 16
    lens = torch.tensor([5, 70, 33], dtype=torch.int32)
    max_blocks = 5
    tables = torch.randperm(batch * max_blocks + 1, generator=gen)[:batch * max_blocks].view(batch, max_blocks)
    nblocks = batch * max_blocks + 1
    k8 = torch.randint(0, 256, (nblocks, bs, kv_heads, dim), dtype=torch.uint8, generator=gen)
    v8 = torch.randint(0, 256, (nblocks, bs, kv_heads, dim), dtype=torch.uint8, generator=gen)
    ks = torch.stack((torch.rand(nblocks, bs, kv_heads, generator=gen) * 0.02 + 0.01,
                      -torch.rand(nblocks, bs, kv_heads, generator=gen)), -1).contiguous()
    vs = torch.stack((torch.rand(nblocks, bs, kv_heads, generator=gen) * 0.02 + 0.01,
                      -torch.rand(nblocks, bs, kv_heads, generator=gen)), -1).contiguous()
    q = (torch.randn(batch, heads, dim, generator=gen) * 3).to(torch.bfloat16)
    args = [t.to(DEVICE) for t in (q, k8, v8, tables.to(torch.int32).contiguous(), lens)]
    ks, vs = ks.to(DEVICE), vs.to(DEVICE)
    y = lab_decode(*args, dim ** -0.5, ks, vs, variant, block_n=32, num_splits=splits)
    ref = decode_attention_ref(args[0].float(), *args[1:], dim ** -0.5, int(lens.max()), k_scale=ks, v_scale=vs)
    # the bf16 output's rounding dominates (the interpreter truncates casts: up to 2^-8 relative), plus the
    # cast kernel's V in bf16; q and p * v_scale pass through fp16 (2^-11) in the other two
    assert _rel_err(y, ref) < 1.5e-2


def test_lab11_prefetch_reads_every_word_it_is_given(device):
    """Lab 11's L2 prefetch (ci/kernel_lab/l2_prefetch_lab.py) must read the bytes it is asked for, no fewer: each
    program's stored xor is that of the words at its blocks (a range cut short, or blocks skipped, changes it)."""
    import functools

    from l2_prefetch_lab import _prefetch_kernel, prefetch

    gen = torch.Generator().manual_seed(11)
    words = torch.randint(-2**31, 2**31 - 1, (3 * 64 + 5,), dtype=torch.int32, generator=gen)
    sink = torch.zeros(4, dtype=torch.int32, device=device)
    _prefetch_kernel[(3,)](words.to(device), words.numel(), sink, BLOCK=64)
    expected = []
    for pid in range(3):
        acc = torch.zeros(64, dtype=torch.int32)
        for start in range(pid * 64, words.numel(), 3 * 64):
            block = words[start:start + 64]
            acc[:block.numel()] ^= block
        expected.append(functools.reduce(lambda a, b: a ^ b, acc.tolist()))
    assert sink[:3].cpu().tolist() == expected
    # the wrapper takes bytes: a prefix of 10 words is words [0, 10)
    sink.zero_()
    prefetch([(words.to(device), 40)], sink, programs=1)
    assert sink[0].item() == functools.reduce(lambda a, b: a ^ b, words[:10].tolist())


def test_lab16_overrides_only_one_row_calls_of_its_shape_and_kernel():
    import one_row_configs as orc

    from engine.kernels import w4_mma

    choices = orc.Choices(w4_mma.launch_config)
    key = (4608, 3584, True)
    choices.override = {key: (4, 1, True, 2)}
    assert choices(1, 4608, 3584, 132) == (4, 1, True, 2)
    assert choices(2, 4608, 3584, 132) == w4_mma.launch_config(2, 4608, 3584, 132)  # more rows: untouched
    assert choices(1, 4608, 3584, 132, pipelined=False) == w4_mma.launch_config(1, 4608, 3584, 132, False)
    assert choices.seen == {key: w4_mma.launch_config(1, 4608, 3584, 132),
                            (4608, 3584, False): w4_mma.launch_config(1, 4608, 3584, 132, False)}


@pytest.mark.parametrize("groups", [28, 148, 7, 64])
def test_lab16_splits_each_hold_work_and_four_groups(groups):
    import one_row_configs as orc

    for s in orc.split_choices(groups):
        per = -(-groups // s)  # the kernel's groups a split (the last one takes the rest)
        assert per >= 4 and (s - 1) * per < groups, (groups, s)
    assert orc.split_choices(groups)[0] == 1


def test_lab16_arms_are_built_variants_without_the_default():
    import one_row_configs as orc

    default = (8, 2, False, 4)
    arms = orc.arms_for((3584, 18944, False), default, int8=True)
    assert default not in arms and len(arms) == len(set(arms))
    assert {a[:3] for a in arms} == set(orc.INT8_VARIANTS)
    assert {a[:3] for a in orc.arms_for((4608, 3584, True), (8, 1, True, 1), int8=False)} == set(orc.AWQ_VARIANTS)
    assert max(a[3] for a in orc.arms_for((37888, 3584, True), (4, 1, True, 1), int8=False)) == 2  # wide: <= 2
