"""The CUDA W4A16 path (engine/kernels/w4_mma.py, engine/kernels/cuda/w4_mma.cu): the repacked layout puts every
code where the kernel's fragments expect it, the kernel's arithmetic (torch reference) and the layout's
dequantization agree with the AWQ reference, bad shapes fail clearly, launch choices stay in range; on a GPU
(`-m gpu`, needs nvcc) the compiled kernel itself against the AWQ reference at every row count and path."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import w4_mma
from engine.kernels.quant_gemm import w4a16_linear_ref
from engine.quant.int4_pack import unpack_columns
from tests.kernels.test_pdl import wrong_replays


def _awq(n: int, k: int, group: int, seed: int, scale_dtype=torch.bfloat16, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    qw = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, generator=gen)
    qz = torch.randint(-2**31, 2**31 - 1, (k // group, n // 8), dtype=torch.int32, generator=gen)
    s = (torch.rand(k // group, n, generator=gen) * 0.01 + 0.001).to(scale_dtype)
    return qw.to(device), qz.to(device), s.to(device)


@pytest.mark.parametrize("n,k,group", [(64, 128, 128), (192, 256, 64), (128, 192, 32)])
def test_repack_puts_every_code_in_its_fragment_slot(n, k, group):
    qw, qz, s = _awq(n, k, group, n + k)
    packed, sz = w4_mma.repack(qw, qz, s, group)
    assert packed.shape == (n // 64, k // 64, 4, 32, 4) and sz.shape == (n // 64, k // group, 4, 8, 2)
    assert torch.equal(w4_mma.unpack_repacked(packed), unpack_columns(qw).long())
    # One slot by hand: stripe 0, k quad 0, tile j = 3, lane 9 (g = 2, t = 1), k step c = 1: bits 20-23 (b = 1,
    # a = 0, h = 1) hold column 16 * 3 + 8 + 2 = 58 at k = 16 + 2 + 1 = 19; k step 6 is quad 1's c = 2.
    word = int(packed[0, 0, 3, 9, 1]) & 0xFFFFFFFF
    assert (word >> 20) & 0xF == int(unpack_columns(qw)[19, 58])
    word = int(packed[0, 1, 3, 9, 2]) & 0xFFFFFFFF  # bits 8-11 (b = 0, a = 1, h = 0): column 50, k = 96 + 8 + 2
    assert (word >> 8) & 0xF == int(unpack_columns(qw)[106, 50])
    # sz: the scale's bits low, the zero as a bf16 high; tile 1, g = 5, h = 1 is column 16 + 8 + 5 = 29
    got = int(sz[0, 0, 1, 5, 1]) & 0xFFFFFFFF
    assert got & 0xFFFF == int(s[0, 29].view(torch.int16)) & 0xFFFF
    zero = torch.tensor(got >> 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).item()
    assert zero == unpack_columns(qz)[0, 29]


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_the_layout_dequantizes_to_the_awq_weight(scale_dtype):
    from engine.quant.int4_pack import dequantize_awq

    qw, qz, s = _awq(128, 256, 64, 7, scale_dtype)
    packed, sz = w4_mma.repack(qw, qz, s, 64)
    assert torch.equal(w4_mma.dequantize(packed, sz, 64, scale_dtype), dequantize_awq(qw, qz, s, 64))


@pytest.mark.parametrize("m", [1, 3, 16])
def test_the_kernels_arithmetic_matches_the_awq_reference(m):
    """w4_mma_ref: per group sum_k x (128 + q) and sum_k x, then s * (acc - (128 + z) * xsum), as the MMAs and
    the epilogue do; against w4a16_linear_ref (bf16 output: fp32 sums in another order round once apart)."""
    n, k, group = 128, 256, 64
    qw, qz, s = _awq(n, k, group, m, torch.float16)
    gen = torch.Generator().manual_seed(100 + m)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    packed, sz = w4_mma.repack(qw, qz, s, group)
    ref = w4a16_linear_ref(x, qw, qz, s, group, bias).float()
    got = w4_mma.w4_mma_ref(x, packed, sz, group, torch.float16, bias).float()
    assert (got - ref).abs().max() <= 2 * ref.abs().max() * 2**-8


def test_bad_shapes_fail_before_anything_is_repacked():
    # the reasons a layer is refused (or, under auto, left on Triton) when it is built: test_weight_kernels.py
    assert "N (96) divisible by 64" in w4_mma.shape_unsupported(96, 256, 128)
    assert "group size 128, not 64" in w4_mma.shape_unsupported(128, 256, 64)
    assert w4_mma.shape_unsupported(128, 256, 128) is None
    with pytest.raises(ValueError, match="N \\(96\\) must divide by 64"):
        w4_mma.repack(torch.zeros(128, 12, dtype=torch.int32), torch.zeros(1, 12, dtype=torch.int32),
                      torch.ones(1, 96, dtype=torch.bfloat16), 128)
    with pytest.raises(ValueError, match="fp16 or bf16"):
        w4_mma.repack(torch.zeros(128, 8, dtype=torch.int32), torch.zeros(1, 8, dtype=torch.int32),
                      torch.ones(1, 64), 128)


def test_no_gpu_is_a_clear_reason():
    assert "needs a CUDA GPU" in w4_mma.unavailable_reason(torch.device("cpu"))


@pytest.mark.parametrize("m", [1, 4, 16, 17, 32])
@pytest.mark.parametrize("n,k", [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944), (128, 512)])
def test_launch_choices_are_variants_the_build_carries(m, n, k):
    warps, min_blocks, pipe, splits = w4_mma.launch_config(m, n, k, 132)
    groups = k // w4_mma.GROUP
    assert groups % splits == 0 and (groups // splits >= 4 or splits == 1)
    carried = {(8, 2, False), (8, 1, True), (4, 1, True)} if m <= 16 else {(4, 1, False), (8, 1, False)}
    assert (warps, min_blocks, pipe) in carried
    warps, min_blocks, pipe, splits = w4_mma.launch_config(m, n, k, 132, pipelined=False)  # the int8 build's
    assert groups % splits == 0 and (groups // splits >= 4 or splits == 1)
    assert (warps, min_blocks, pipe) in {(8, 2, False), (8, 1, False), (4, 1, False)}
    assert m <= 16 or min_blocks == 1


@pytest.mark.parametrize("m,n,k,splits", [
    (1, 4608, 3584, 7), (2, 4608, 3584, 1), (16, 4608, 3584, 1), (1, 3584, 3584, 4), (16, 3584, 3584, 4),
    (1, 3584, 18944, 4),
    (1, 37888, 3584, 1), (32, 3584, 3584, 2), (24, 3584, 18944, 2)])
def test_few_row_splits_on_qwen_shapes_are_the_labs_winners(m, n, k, splits):
    """Qwen2.5-7B on a 132-SM H200 (labs 5d, 10c and 10d, the engine's decode steps), the flat blocks (int8, and
    AWQ from two rows): from two rows qkv (72 stripes) unsplit, at one row in 7 (4-warp blocks); gate_up
    unsplit, o and down in 4 at up to 16 rows; more rows split less."""
    config = w4_mma.launch_config(m, n, k, 132, pipelined=False)
    assert config[3] == splits and not config[2]
    if m > 1:
        assert w4_mma.launch_config(m, n, k, 132) == config


@pytest.mark.parametrize("n,k,expected", [
    (4608, 3584, (8, 1, True, 1)), (3584, 3584, (4, 1, True, 7)), (37888, 3584, (4, 1, True, 1)),
    (3584, 18944, (8, 2, False, 4))])
def test_one_awq_row_on_qwen_shapes_takes_the_pipelined_winners(n, k, expected):
    """One row of AWQ weights (reports/examples/h100/quant-b1-2026-12-05, labs on an H100 and an H200, the engine
    on the H100; reports/examples/h200/quant-b1-gateup-2026-12-05, the engine on the H200): qkv one pipelined
    8-warp block a stripe, o pipelined 4-warp blocks in 7 splits of 4 groups, gate_up one pipelined 4-warp block a
    stripe, down the flat blocks as before."""
    assert w4_mma.launch_config(1, n, k, 132) == expected


@pytest.mark.parametrize("n,k,expected", [
    (4608, 3584, (4, 1, False, 7)), (3584, 3584, (8, 2, False, 4)), (37888, 3584, (8, 2, False, 1)),
    (3584, 18944, (8, 2, False, 4))])
def test_one_int8_row_on_qwen_shapes_takes_lab_10s_winners(n, k, expected):
    """One row of int8 weights (the flat blocks; labs 10c on an H200 and 10d on an H100,
    reports/examples/h100/int8-qkv-2026-12-05): qkv 4-warp blocks in 7 splits of 4 groups, the others the general
    choice (o and down 8-warp blocks two an SM in 4 splits, gate_up unsplit)."""
    assert w4_mma.launch_config(1, n, k, 132, pipelined=False) == expected


@pytest.mark.parametrize("m,name,expected", [
    (64, "qkv", (64, 1, 1, 1, 2)), (64, "o", (64, 1, 1, 1, 2)), (64, "gate_up", (64, 1, 2, 1, 1)),
    (64, "down", (64, 1, 1, 4, 1)), (128, "qkv", (64, 1, 1, 1, 1)), (128, "o", (64, 1, 1, 1, 2)),
    (128, "gate_up", (64, 1, 2, 1, 1)), (128, "down", (64, 1, 1, 2, 1)), (33, "o", (64, 1, 1, 1, 2))])
def test_warpgroup_choices_on_qwen_shapes_are_lab_7s_winners(m, name, expected):
    """Qwen2.5-7B's linears on a 132-SM H200, as lab 7 timed them (kernel-lab-wgmma/README.md): alternate-group
    warpgroups only while the blocks are fewer than the SMs, splits fewer as row tiles add blocks; and every
    choice is a variant the build carries with each split's groups dividing by its K warpgroups."""
    n, k = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}[name]
    config = w4_mma.wgmma_config(m, n, k, 132)
    assert config == expected
    bn, sp, nwg, splits, kwg = config
    carried = {(64, 1, 1, 1), (64, 1, 2, 1), (64, 2, 1, 1), (64, 2, 2, 1), (128, 1, 1, 1), (128, 1, 2, 1),
               (64, 1, 1, 2)}
    assert (bn, sp, nwg, kwg) in carried and (k // w4_mma.GROUP) % (splits * kwg) == 0


def test_gate_up_order_puts_each_32_gate_columns_beside_their_up_columns():
    order = w4_mma.gate_up_order(256)  # gate 0-127, up 128-255
    assert sorted(order.tolist()) == list(range(256))
    assert order[:64].tolist() == list(range(32)) + list(range(128, 160))
    assert order[64:96].tolist() == list(range(32, 64)) and order[96:128].tolist() == list(range(160, 192))
    with pytest.raises(ValueError, match="divide by 64"):
        w4_mma.gate_up_order(96)


@pytest.mark.parametrize("n,k", [(128, 128), (384, 256)])
def test_awq_in_gate_up_order_repacks_to_the_weight_in_gate_up_order(n, k):
    """awq_in_gate_up_order moves whole packed words: repacked, the result is the same weight (codes, scales and
    zeros) with its output columns in gate_up_order, which the gated epilogue and silu_and_mul(chunk=32) read."""
    qw, qz, s = _awq(n, k, 128, n + 1)
    packed, sz = w4_mma.repack(qw, qz, s, 128)
    packed_i, sz_i = w4_mma.repack(*w4_mma.awq_in_gate_up_order(qw, qz, s), 128)
    assert packed_i.shape == packed.shape and sz_i.shape == sz.shape
    weight = w4_mma.dequantize(packed, sz, 128, torch.bfloat16)  # [N, K]
    assert torch.equal(w4_mma.dequantize(packed_i, sz_i, 128, torch.bfloat16), weight[w4_mma.gate_up_order(n)])


# ---- the compiled kernel (GPU with nvcc)

def _gpu_ready():
    if not torch.cuda.is_available():
        return "no GPU"
    return w4_mma.unavailable_reason(torch.device("cuda"))


def _gpu_problem(m: int, scale_dtype, n: int = 640, k: int = 2048):
    """Random AWQ weights repacked, x and a bias on the GPU (seeded by m), and the AWQ reference output."""
    qw, qz, s = _awq(n, k, 128, m, scale_dtype, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    packed, sz = w4_mma.repack(qw, qz, s, 128)
    return x, bias, packed, sz, w4a16_linear_ref(x, qw, qz, s, 128, bias).float()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 8, 9, 16, 17, 32, 33, 64, 65, 200])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_the_compiled_kernel_matches_the_awq_reference(m, scale_dtype):
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    x, bias, packed, sz, ref = _gpu_problem(m, scale_dtype)  # 10 stripes, 16 groups: split-K on every row count
    got = w4_mma.w4_mma_linear(x, packed, sz, scale_dtype, bias).float()
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-2
    if m <= 16:  # the fold path is the torch reference's arithmetic up to summation order
        emulated = w4_mma.w4_mma_ref(x, packed, sz, 128, scale_dtype, bias).float()
        assert ((got - emulated).abs().max() / ref.abs().max()).item() < 4e-3
    # the same call again, with the split counters left by the first: identical (deterministic)
    assert torch.equal(w4_mma.w4_mma_linear(x, packed, sz, scale_dtype, bias).float(), got)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [(64, 1, 1, 1, 1), (64, 1, 2, 2, 1), (64, 2, 1, 4, 1), (64, 2, 2, 1, 1),
                                    (128, 1, 1, 2, 1), (128, 1, 2, 1, 1), (64, 1, 1, 1, 2), (64, 1, 1, 2, 2)])
@pytest.mark.parametrize("m", [33, 64, 100])
def test_every_warpgroup_variant_matches_the_awq_reference(m, config):
    """The Hopper kernel (33-128 rows) in each build variant (rows a block, stripes a warpgroup, warpgroups a
    block side by side, splits, warpgroups on alternate groups), rows past M and row tiles included, against
    the AWQ reference; repeat calls identical."""
    why = _gpu_ready() or (None if w4_mma.has_wgmma() else "no sm_90a build (not a Hopper GPU)")
    if why:
        pytest.skip(why)
    n, k = 512, 2048  # 8 stripes (every variant's column tile divides), 16 groups
    qw, qz, s = _awq(n, k, 128, m, torch.bfloat16, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    packed, sz = w4_mma.repack(qw, qz, s, 128)
    ref = w4a16_linear_ref(x, qw, qz, s, 128, bias).float()
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    w4_mma.launch_wgmma(x, packed, sz, bias, out, True, config)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 1e-2
    again = torch.empty_like(out)
    w4_mma.launch_wgmma(x, packed, sz, bias, again, True, config)
    assert torch.equal(again, out)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 16, 17, 32, 33, 80, 200])
@pytest.mark.parametrize("config", [None, (8, 2, False, 4), (4, 1, True, 2)])
def test_the_gated_kernel_writes_silu_gate_times_up(m, config):
    """gate_up repacked in gate_up_order (AWQMethod on the CUDA kernel): up to 32 rows the kernel's epilogue writes
    silu(gate) * up (unsplit, and through the split-K sum with a forced config), more rows the product then the
    activation kernel. Against the plain kernel's [gate | up] output through the torch activation: the same
    bf16 rounding steps, so equal up to one ulp where the exponentials differ in their last bit."""
    from engine.kernels.reference import silu_and_mul_ref

    why = _gpu_ready()
    if why:
        pytest.skip(why)
    if config is not None and m > 16:
        pytest.skip("forced configs are few-row (<= 16 rows) variants")
    n = 1280  # 20 stripes, intermediate 640; 16 groups
    x, bias, packed, sz, _ = _gpu_problem(m, torch.bfloat16, n=n)
    plain = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    w4_mma.launch(x, packed, sz, bias, plain, True, config) if m <= 32 else \
        plain.copy_(w4_mma.w4_mma_linear(x, packed, sz, torch.bfloat16, bias))
    expected = silu_and_mul_ref(plain).float()
    packed_i, sz_i = w4_mma.repack(*w4_mma.awq_in_gate_up_order(*_awq(n, 2048, 128, m, torch.bfloat16, "cuda")), 128)
    bias_i = bias[w4_mma.gate_up_order(n).cuda()]
    if config is None:
        got = w4_mma.w4_mma_linear(x, packed_i, sz_i, torch.bfloat16, bias_i, gated=True)
    else:
        got = torch.full((m, n // 2), float("nan"), device="cuda", dtype=torch.bfloat16)
        w4_mma.launch(x, packed_i, sz_i, bias_i, got, True, config, gated=True)
    assert got.shape == (m, n // 2)
    ulp = expected.abs().clamp_min(1e-30) * 2**-7
    assert ((got.float() - expected).abs() <= ulp).all()
    assert (got.float() == expected).float().mean() > 0.99


def poisoned_x_replays(m: int, linear_attribute: bool = True, norm_signal: bool = True, poison: bool = True,
                      n: int = 4608, k: int = 3584, replays: int = 20) -> list[tuple[int, int, int]]:
    """In a CUDA graph: x poisoned with NaN, an RMSNorm writes x, w4_mma_linear reads it; each replay against the
    eager result with early launch off. linear_attribute / norm_signal: the two sides of programmatic dependent
    launch (the linear's launch attribute, the norm's early signal). Returns (replay, NaN outputs, differing
    outputs) of each wrong replay (ci/kernel_lab/pdl_check.py prints them for every combination)."""
    from engine.kernels.norm import rms_norm

    qw, qz, s = _awq(n, k, 128, m, torch.bfloat16, "cuda")
    packed, sz = w4_mma.repack(qw, qz, s, 128)
    gen = torch.Generator(device="cuda").manual_seed(m)
    src = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    weight = torch.rand(k, device="cuda", generator=gen).to(torch.bfloat16)
    x = torch.empty(m, k, device="cuda", dtype=torch.bfloat16)
    try:
        w4_mma.set_early_launch(False)
        expected = w4_mma.w4_mma_linear(rms_norm(src, weight, 1e-6, out=x), packed, sz, torch.bfloat16).clone()
        w4_mma.set_early_launch(linear_attribute, norm_signal)

        def chain():
            if poison:
                x.fill_(float("nan"))
            rms_norm(src, weight, 1e-6, out=x)
            return w4_mma.w4_mma_linear(x, packed, sz, torch.bfloat16)

        return wrong_replays(chain, expected, replays)
    finally:
        w4_mma.set_early_launch(True)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 24, 64])
def test_an_early_launched_linear_reads_the_norms_output_not_what_was_there(m):
    """Programmatic dependent launch (engine/kernels/pdl.py): in a CUDA graph, x is poisoned with NaN, an RMSNorm
    writes it and signals early, the linear starts early and must wait before reading x. Every replay equals the
    eager result without early launch, bit for bit (a linear that read x before its wait would see NaN or a
    half-written x: the first version did, at 1 row, 20 replays of 20)."""
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    assert poisoned_x_replays(m) == []
