"""Lab 9: the int8 (W8A16) batch-1 GEMV against the bf16 engine GEMV on the same four Qwen2.5-7B shapes.

The bf16 engine reads its weights at ~4.1 TB/s at batch 1 (engine/kernels/gemv.py: 4 rows a program, 512 K
a step, 4 stages of cp.async); the int8 GEMV at ~3.1 (16-32 rows a program, one stage, split-K). This lab
asks whether the int8 kernel's tiles are what holds it back: a grid of rows a program, K a step, stages
and splits for the shipped kernel (quant_kernels._w8a16_gemv_kernel) and for a variant here that loads x
as one contiguous [words, 4] tile instead of four strided loads, each with and without programmatic
dependent launch (launch_pdl: the next call's programs start while this one finishes; they wait for it
before reading x). Every variant is checked against the torch reference before it is timed. Timing:
engine/kernels/timing.py (one CUDA graph over >= 256 MB of weight copies, median of 7 replays).

    python3 ci/kernel_lab/w8_gemv_lab.py OUT.json [--quick]
"""
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_rows import LabRows  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels.gemv import gemv  # noqa: E402
from engine.kernels.int4_unpack import X_SHIFT  # noqa: E402
from engine.kernels.quant_gemm import TileConfig  # noqa: E402
from engine.kernels.quant_kernels import w8_word_products  # noqa: E402

SHAPES = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
          ("down", 3584, 18944, False)]


@triton.jit
def w8_gemv_x4(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, N, KW,
               HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # As _w8a16_gemv_kernel without split-K, x read as one [words, 4] tile (8 contiguous bytes a word).
    BKW: tl.constexpr = BLOCK_K // 4
    UNDO: tl.constexpr = 2.0 ** (149 - X_SHIFT)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    words = tl.arange(0, BKW)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * KW
    acc = tl.zeros([BLOCK_N, BKW], tl.float32)
    acc_x = tl.zeros([BKW], tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
    for t in range(0, KW, BKW):
        c = t + words
        c_mask = c < KW
        p = tl.load(w_rows + c[None, :], mask=row_mask[:, None] & c_mask[None, :], other=0)
        xv = tl.load(x_ptr + 4 * c[:, None] + tl.arange(0, 4)[None, :], mask=c_mask[:, None], other=0.0)
        xa, xb = tl.split(xv.to(tl.float32).reshape(BKW, 2, 2))  # [w, i]: x[4w + 2i] and x[4w + 2i + 1]
        x0, x2 = tl.split(xa)
        x1, x3 = tl.split(xb)
        acc, acc_x = w8_word_products(acc, acc_x, p, x0, x1, x2, x3)
    y = UNDO * tl.sum(acc, axis=1) - 128.0 * tl.sum(acc_x, axis=0)
    y *= tl.load(s_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_mask)


def x4(x, qw, s, bias, bn, bk, warps, stages, pdl):
    n, k = qw.shape
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    extra = {"launch_pdl": True} if pdl else {}
    w8_gemv_x4[(triton.cdiv(n, bn),)](x, qw.view(torch.int32), s, bias if bias is not None else out, out, n, k // 4,
                                      HAS_BIAS=bias is not None, BLOCK_N=bn, BLOCK_K=bk, PDL=pdl, num_warps=warps,
                                      num_stages=stages, **extra)
    return out


def main() -> None:
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv
    gen = torch.Generator(device="cuda").manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    lab = LabRows(out_path, tolerance=2e-2)

    t0 = time.monotonic()
    for shape, n, k, has_bias in SHAPES:
        at = {"shape": shape}
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        n16 = max(2, int(256e6 // (n * k * 2)))
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(n16)]
        lab.record(at, "bf16 cuBLAS F.linear", [lambda w=w: F.linear(x, w, bias) for w in dense], n * k * 2)
        lab.record(at, "bf16 engine gemv", [lambda w=w: gemv(x, w, bias) for w in dense], n * k * 2)
        del dense
        n8 = max(2, int(256e6 // (n * k)))
        qws = [(torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen),
                (torch.rand(n, device="cuda", generator=gen) * 0.01 + 0.001).to(torch.bfloat16)) for _ in range(n8)]
        nb = n * k + n * 2
        ref = qg.w8a16_linear_ref(x.float(), qws[0][0], qws[0][1].float(), bias).float()
        lab.record(at, "int8 shipped", [lambda q=q: qg.w8a16_linear(x, *q, bias) for q in qws], nb,
               lambda: qg.w8a16_linear(x, *qws[0], bias), ref)
        steps_of = lambda bk: triton.cdiv(k, bk)  # noqa: E731
        grid = [(bn, bk, 4, st) for bn in (4, 8, 16) for bk in (1024, 2048) for st in (1, 3, 4)]
        if quick:
            grid = [(4, 1024, 4, 3), (8, 1024, 4, 3)]
        for bn, bk, warps, st in grid:
            tiles = triton.cdiv(n, bn)
            for split in sorted({1, max(1, min(steps_of(bk), -(-2 * sms // tiles)))}):
                cfg = TileConfig(1, bn, bk, split, warps, st, True)
                lab.record(at, f"int8 word-gemv {tuple(cfg)[1:6]}",
                       [lambda q=q: qg.w8a16_linear(x, *q, bias, config=cfg, path="gemv") for q in qws], nb,
                       lambda: qg.w8a16_linear(x, *qws[0], bias, config=cfg, path="gemv"), ref)
            for pdl in (False, True):
                lab.record(at, f"int8 x4 bn{bn} bk{bk} w{warps} st{st}{' pdl' if pdl else ''}",
                       [lambda q=q: x4(x, *q, bias, bn, bk, warps, st, pdl) for q in qws], nb,
                       lambda: x4(x, *qws[0], bias, bn, bk, warps, st, pdl), ref)
        del qws
        torch.cuda.empty_cache()
    print(f"lab 9 done in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
