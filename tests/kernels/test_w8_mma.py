"""The CUDA W8A16 path (engine/kernels/w8_mma.py, the `I8` kernels of engine/kernels/cuda/w4_mma.cu):
the repacked layout puts every code in the slot of the MMA fragment that multiplies it (PTX's m16n8k16 A
layout), the kernel's two-LOP3 unpacking gives every int8 code exactly, bad shapes fail before anything is
repacked; on a Hopper GPU (`-m gpu`, needs nvcc) the compiled kernels against the int8 reference at every
row count and warpgroup variant, repeat calls identical."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import w4_mma, w8_mma
from engine.kernels.quant_gemm import w8a16_linear_ref


def _int8(n: int, k: int, seed: int, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    s = torch.rand(n, generator=gen) * 0.01 + 0.001
    return q.to(device), s.to(device)


@pytest.mark.parametrize("n,k", [(64, 128), (192, 384)])
def test_repack_round_trips(n, k):
    q, _ = _int8(n, k, n + k)
    packed = w8_mma.repack(q)
    assert packed.shape == (n // 64, k // 32, 4, 32, 4) and packed.dtype == torch.int32
    assert torch.equal(w8_mma.unpack(packed), q)


def test_every_fragment_register_holds_the_codes_ptx_puts_there():
    """A fragment of m16n8k16 (bf16): lane (g, t)'s a0 holds rows g, columns 2t, 2t + 1 of the 16 x 16 tile; a1
    rows g + 8; a2, a3 columns + 8. The kernel builds a0 from bytes 0 and 2 of a k step's first word, a1 from
    bytes 1 and 3, a2 / a3 the same from the second word (i8_fragment); checked for every slot of two stripes."""
    n, k = 128, 256
    q, _ = _int8(n, k, 3)
    words = w8_mma.repack(q).view(torch.uint8).view(n // 64, k // 32, 4, 32, 4, 4).long()  # ..., word, byte
    for s in range(n // 64):
        for kd in range(k // 32):
            for j in range(4):
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    for kk1 in range(2):
                        w0, w1 = words[s, kd, j, lane, 2 * kk1], words[s, kd, j, lane, 2 * kk1 + 1]
                        regs = {(0, 0): w0[[0, 2]], (1, 0): w0[[1, 3]], (0, 8): w1[[0, 2]], (1, 8): w1[[1, 3]]}
                        for (h, dk), pair in regs.items():
                            row, col = 64 * s + 16 * j + 8 * h + g, 32 * kd + 16 * kk1 + dk + 2 * t
                            want = q[row, col:col + 2].view(torch.uint8).long()
                            assert torch.equal(pair, want), (s, kd, j, lane, kk1, h, dk)


def _bf16_value(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int32).to(torch.int16).view(torch.bfloat16).float()


def test_two_lop3_and_a_subtract_give_every_int8_code_exactly():
    """i8_pair on one lane half: (l | bf16 128) - ((b & 0x80) | bf16 128) in bf16 is the code b as a signed byte,
    for all 256 bytes (and the subtraction is exact: both operands and the result are bf16 numbers)."""
    b = torch.arange(256, dtype=torch.int64)
    low = _bf16_value((b & 0x7F) | 0x4300)
    sign = _bf16_value((b & 0x80) | 0x4300)
    assert torch.equal(low - sign, b.to(torch.uint8).view(torch.int8).float())
    assert torch.equal((low - sign).to(torch.bfloat16).float(), low - sign)


@pytest.mark.parametrize("n,k,stripe0", [(128, 256, 1), (192, 384, 0), (192, 96, 1)])
def test_the_dense_paths_dequantization_reads_the_layout(n, k, stripe0):
    """dequantize_into (the Triton kernel behind more than 128 rows), fp32 out: q * s exactly, rows from stripe0 on,
    four k duos a program (K a multiple of 128) or one."""
    from tests.kernels.conftest import DEVICE

    q, s = _int8(n, k, k)
    packed = w8_mma.repack(q) if k % 128 == 0 else _repack_any_k(q)
    out = torch.full((n - 64 * stripe0, k), float("nan"), device=DEVICE)
    w8_mma.dequantize_into(packed.to(DEVICE), s.to(DEVICE), out, stripe0)
    assert torch.equal(out.cpu(), (q.float() * s[:, None])[64 * stripe0:])


def _repack_any_k(q: torch.Tensor) -> torch.Tensor:
    """The layout for K a multiple of 32 only (repack refuses it: the matmul kernels walk 128 k a group)."""
    n, k = q.shape
    c = q.view(n // 64, 4, 2, 8, k // 32, 2, 2, 4, 2).permute(0, 4, 1, 3, 7, 5, 6, 8, 2)
    return c.contiguous().view(n // 64, k // 32, 4, 32, 4, 4).view(torch.int32).view(n // 64, k // 32, 4, 32, 4)


def test_bad_shapes_fail_before_anything_is_repacked():
    with pytest.raises(ValueError, match="divisible by 64"):
        w8_mma.repack(torch.zeros(96, 128, dtype=torch.int8))
    with pytest.raises(ValueError, match="by 128"):
        w8_mma.repack(torch.zeros(64, 96, dtype=torch.int8))
    with pytest.raises(ValueError, match="int8 codes"):
        w8_mma.repack(torch.zeros(64, 128, dtype=torch.int32))
    assert w8_mma.unsupported(3584, 18944) is None and w8_mma.unsupported(4608, 3584) is None


@pytest.mark.parametrize("m,name,expected", [
    (64, "qkv", (1, 1, 2)), (64, "o", (1, 1, 2)), (64, "gate_up", (1, 1, 1)), (64, "down", (1, 4, 1)),
    (128, "gate_up", (2, 1, 1)), (128, "down", (1, 2, 1))])
def test_warpgroup_choices_on_qwen_shapes_are_lab_10s(m, name, expected):
    """Qwen2.5-7B's linears on a 132-SM H200 as lab 10 timed them (kernel-lab-w8/): the AWQ kernel's choices but one
    warpgroup a block up to 64 rows (gate_up 59.0 µs against 66.0 with two); every choice a variant the build
    carries (w8_wgmma: (1, 1), (2, 1), (1, 2)) with each split's groups dividing by its K warpgroups."""
    n, k = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}[name]
    config = w8_mma.wgmma_config_int8(m, n, k, 132)
    assert config == expected
    nwg, splits, kwg = config
    assert (nwg, kwg) in {(1, 1), (2, 1), (1, 2)} and (k // 128) % (splits * kwg) == 0


def _gpu_ready() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    why = w4_mma.unavailable_reason(torch.device("cuda"))
    if why is None and not w4_mma.has_wgmma():
        why = "no sm_90a build (not a Hopper GPU)"
    return why


def _gpu_problem(m: int, n: int, k: int):
    """Random int8 codes and scales (repacked too), x and a bias on the GPU (seeded by m), and the reference."""
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    q, s = _int8(n, k, m, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    return q, s, w8_mma.repack(q), x, bias, w8a16_linear_ref(x, q, s, bias).float()


def _check_against_the_reference(m: int, n: int, k: int, config=None):
    """w8_mma_linear on random codes and x (with a bias) against w8a16_linear_ref, and a repeat call bit-identical;
    returns (codes, scales, repacked codes)."""
    q, s, packed, x, bias, ref = _gpu_problem(m, n, k)
    got = w8_mma.w8_mma_linear(x, packed, s, bias, config).float()
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-2
    assert torch.equal(w8_mma.w8_mma_linear(x, packed, s, bias, config).float(), got)
    return q, s, packed


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, (1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (1, 2, 2), (2, 4, 1)])
@pytest.mark.parametrize("m", [33, 64, 100, 128])
def test_every_warpgroup_variant_matches_the_int8_reference(m, config):
    """Every (warpgroups side by side, splits, warpgroups on alternate groups) variant, rows past M and a second
    row tile included, against w8a16_linear_ref (bf16 output); the same call twice gives the same bits."""
    _check_against_the_reference(m, 512, 2048, config)  # 8 stripes, 16 groups of 128


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 8, 9, 16, 17, 32, 200])
def test_few_rows_and_many_rows_match_the_int8_reference(m):
    """The few-row kernel (1-32 rows: one, two and four 8-row MMA tiles, split K) and the dense path (more than
    128 rows: column chunks dequantized for cuBLAS); repeat calls identical."""
    n, k = 640, 2048  # 10 stripes, 16 groups: split-K at every few-row count
    q, s, packed = _check_against_the_reference(m, n, k)
    if m > w8_mma.MAX_ROWS:  # the dense path's weight: q * s rounded once to bf16, as torch rounds it
        dense = w8_mma.dequantize_into(packed, s, torch.empty(n, k, device="cuda", dtype=torch.bfloat16))
        assert torch.equal(dense, (q.float() * s[:, None]).to(torch.bfloat16))


@pytest.mark.gpu
def test_a_qwen_shaped_layer_without_bias_matches_the_reference():
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    q, s = _int8(3584, 18944, 5, "cuda")  # down_proj: long K, split by the default choice
    x = torch.randn(64, 18944, device="cuda").to(torch.bfloat16)
    ref = w8a16_linear_ref(x, q, s).float()
    got = w8_mma.w8_mma_linear(x, w8_mma.repack(q), s).float()
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 9, 32, 33, 200])
@pytest.mark.parametrize("config", [None, (8, 1, False, 4)])
def test_the_gated_kernel_writes_silu_gate_times_up(m, config):
    """An int8 gate_up with its rows in w4_mma.gate_up_order (Int8Method on the CUDA kernels): up to 32 rows the
    few-row kernel's epilogue writes silu(gate) * up (unsplit by default at these shapes, through the split-K sum
    with the forced config), more rows the product then the activation kernel; against the plain kernel's output
    through the torch activation, equal up to one bf16 ulp where the exponentials differ in their last bit."""
    from engine.kernels.reference import silu_and_mul_ref

    if config is not None and m > 32:
        pytest.skip("forced configs are few-row variants")
    n = 1280
    q, s, packed, x, bias, _ = _gpu_problem(m, n, 2048)
    plain = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    w8_mma.launch_few(x, packed, s, bias, plain, config) if m <= 32 else \
        plain.copy_(w8_mma.w8_mma_linear(x, packed, s, bias))
    expected = silu_and_mul_ref(plain).float()
    order = w4_mma.gate_up_order(n).cuda()
    packed_i, s_i, bias_i = w8_mma.repack(q[order].contiguous()), s[order].contiguous(), bias[order].contiguous()
    if config is None:
        got = w8_mma.w8_mma_linear(x, packed_i, s_i, bias_i, gated=True)
    else:
        got = torch.full((m, n // 2), float("nan"), device="cuda", dtype=torch.bfloat16)
        w8_mma.launch_few(x, packed_i, s_i, bias_i, got, config, gated=True)
    assert got.shape == (m, n // 2)
    assert ((got.float() - expected).abs() <= expected.abs() * 2**-7).all()
    assert (got.float() == expected).float().mean() > 0.99
