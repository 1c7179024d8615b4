"""Lab 5: a W4A16 kernel for a few rows (M <= 16) on the tensor cores with the int4 weights as the MMA's
register operand, in CUDA C++ (w4_mma.cu), against the shipped Triton GEMV / GEMM and bf16 cuBLAS.

Why CUDA C++: the Triton GEMV spends 3.1 instructions a weight (lab 1/2: one LOP3 + one FFMA a weight plus
addressing), and Triton gives no way to load packed weights straight into an MMA fragment. Here each
thread's 16-byte load is exactly its A fragments of four 16x16 tiles (mma.sync.m16n8k16, output columns as
the MMA's rows, x's rows as its columns), one LOP3 per two weights makes the bf16 pair (128 + q), and zero
and scale are applied once per group: about 1.4 instructions a weight in the loop (sm_90 SASS, compiled
without a GPU).

The layout (`repack`): for a linear W [N, K] with AWQ's qweight [K, N/8], stripes of 64 output columns,
k16 steps, lanes (g = lane // 4, t = lane % 4), four tiles j of 16 columns: word [s, kk, lane, j] holds the
codes of columns n = 64 s + 16 j + 8 h + g at k = 16 kk + 8 a + 2 t + b in bits 16 b + 8 a + 4 h. Zeros and
scales: sz [s, group, j, g, h] = scale's 16 bits | bf16(zero) << 16.

Usage: python3 ci/kernel_lab/w4_mma.py OUT.json [M ...]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import sys
import time

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from engine.quant.int4_pack import unpack_columns  # noqa: E402

STRIPE = 64
SHAPES = [("qkv", 4608, 3584), ("o", 3584, 3584), ("gate_up", 37888, 3584), ("down", 3584, 18944)]
G = 128
VARIANTS = ((4, 1, True), (4, 4, True), (4, 4, False), (8, 1, True), (8, 2, False))  # warps, min blocks/SM, pipelined
VARIANTS_MANY_ROWS = ((4, 1, True), (4, 1, False), (8, 1, False))  # M > 16: the dequantize-in-16-bit step
_SHIFTS = None


def _shifts(device) -> torch.Tensor:
    a, b, h = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(2), indexing="ij")
    return (16 * b + 8 * a + 4 * h).to(device=device, dtype=torch.int64)  # [a, b, h]


def repack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int):
    """AWQ (qweight [K, N/8], qzeros [K/G, N/8], scales [K/G, N] 16-bit) -> (qw int32 [N/64, K/16, 32, 4],
    sz int32 [N/64, K/G, 4, 8, 2]) in the kernel's fragment order."""
    codes = unpack_columns(qweight).to(torch.int64)  # [K, N]
    k, n = codes.shape
    if n % STRIPE or k % group_size or group_size % 16:
        raise ValueError(f"w4_mma: N ({n}) must divide by {STRIPE}, K ({k}) by the group ({group_size}), the group by 16")
    c = codes.view(k // 16, 2, 4, 2, n // STRIPE, 4, 2, 8)  # kk, a, t, b, s, j, h, g
    c = c.permute(4, 0, 7, 2, 5, 1, 3, 6)  # s, kk, g, t, j, a, b, h
    words = (c << _shifts(c.device)).sum(dim=(-3, -2, -1))  # [s, kk, g, t, j]
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    qw = words.reshape(n // STRIPE, k // 16, 32, 4).contiguous()
    zeros = unpack_columns(qzeros).to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    sbits = scales.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    word = (zeros.to(torch.int64) << 16) | sbits.to(torch.int64)
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # [K/G, N]
    sz = word.view(k // group_size, n // STRIPE, 4, 2, 8).permute(1, 0, 2, 4, 3).contiguous()
    return qw, sz


def unpack_repacked(qw: torch.Tensor) -> torch.Tensor:
    """The inverse of repack's weight half: qw [N/64, K/16, 32, 4] -> codes [K, N] (int64)."""
    s, kk = qw.shape[:2]
    w = (qw.to(torch.int64) & 0xFFFFFFFF).view(s, kk, 8, 4, 4)  # s, kk, g, t, j
    codes = (w[..., None, None, None] >> _shifts(qw.device)) & 0xF  # s, kk, g, t, j, a, b, h
    return codes.permute(1, 5, 3, 6, 0, 4, 7, 2).reshape(kk * 16, s * STRIPE)


def emulate(x: torch.Tensor, qw: torch.Tensor, sz: torch.Tensor, group_size: int, scale_dtype=torch.bfloat16,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel's arithmetic in torch (fp32): per group, sum_k x (128 + q) and sum_k x from the MMAs, then
    s * (acc - (128 + z) * xsum) added up over the groups; the output cast to x's dtype."""
    codes = unpack_repacked(qw).float()  # [K, N]
    k, n = codes.shape
    word = (sz.to(torch.int64) & 0xFFFFFFFF).permute(1, 0, 2, 4, 3).reshape(k // group_size, n)
    scale = (word & 0xFFFF).to(torch.int16).view(scale_dtype).float()
    zero = ((word >> 16) & 0xFFFF).to(torch.int16).view(torch.bfloat16).float()
    xf = x.float().view(x.shape[0], k // group_size, group_size)
    acc = torch.einsum("mgk,gkn->mgn", xf, 128 + codes.view(k // group_size, group_size, n))
    xsum = xf.sum(-1)  # [M, K/G]
    y = (scale * (acc - (128 + zero) * xsum[..., None])).sum(1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


_EXT = None


def build():
    """Compile w4_mma.cu with torch's cpp_extension for this GPU (once a process; cached on disk)."""
    global _EXT
    if _EXT is None:
        from torch.utils.cpp_extension import load_inline

        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
        src = (HERE / "w4_mma.cu").read_text()
        t0 = time.time()
        _EXT = load_inline("w4_mma_lab", cpp_sources="", cuda_sources="#define W4MMA_TORCH_BINDING\n" + src,
                           extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)
        print(f"built w4_mma in {time.time() - t0:.1f} s", flush=True)
    return _EXT


_LOCKS: dict = {}


def w4_mma_linear(x, qw, sz, group_size, bias=None, splits=1, warps=4, part=None, min_blocks=1, pipe=True):
    m, k = x.shape
    n = qw.shape[0] * STRIPE
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if part is None:
        part = torch.empty(max(splits, 1) * m * n if splits > 1 else 1, dtype=torch.float32, device=x.device)
    locks = _LOCKS.get(x.device)
    if locks is None:
        locks = _LOCKS[x.device] = torch.zeros(4096, dtype=torch.int32, device=x.device)
    build().w4_mma(x, qw, sz, bias, out, part, locks, group_size, sz.dtype == torch.int32, splits, warps,
                      min_blocks, pipe)
    return out


def main(out: str, ms: list[int]) -> None:
    import torch.nn.functional as F

    import gemm_lab as gl
    from engine.kernels.quant_gemm import w4a16_linear, w4a16_linear_ref
    from engine.kernels.timing import graph_time_ms

    build()
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)

    def record(shape, m, name, fns, nbytes, y=None, ref=None, extra=None):
        row = {"shape": shape, "m": m, "kernel": name, **(extra or {})}
        try:
            if ref is not None:
                row["rel_err"] = ((y().float() - ref).abs().max() / ref.abs().max()).item()
                if row["rel_err"] > 2e-2:
                    raise AssertionError(f"rel_err {row['rel_err']:.3g}")
            us = graph_time_ms(fns, 60) * 1e3
            row.update(us=us, gb_s=nbytes / us / 1e3)
            print(f"{shape:8} m={m:<3} {name:28} {us:8.2f} us {row['gb_s']:6.0f} GB/s err {row.get('rel_err', 0):.1e}",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{shape:8} m={m:<3} {name:28} FAILED {row['error'][:200]}", flush=True)
        rows.append(row)
        json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": rows}, open(out, "w"), indent=1)

    for shape, n, k in SHAPES:
        copies, nbytes = gl.awq_copies(n, k, gen)
        packed = [repack(qw, qz, s, G) for qw, qz, s in copies]
        pbytes = sum(t.numel() * t.element_size() for t in packed[0])
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
                 for _ in range(max(2, int(256e6 // (n * k * 2))))]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            qw0, qz0, s0 = copies[0]
            ref = w4a16_linear_ref(x, qw0, qz0, s0, G).float()
            record(shape, m, "bf16 F.linear", [lambda w=w: F.linear(x, w) for w in dense], n * k * 2)
            record(shape, m, "shipped w4a16_linear", [lambda c=c: w4a16_linear(x, *c, G) for c in copies], nbytes,
                   y=lambda: w4a16_linear(x, *copies[0], G), ref=ref)
            groups = k // G
            for warps, min_blocks, pipe in (VARIANTS if m <= 16 else VARIANTS_MANY_ROWS):
                for splits in sorted({d for d in range(1, groups + 1) if groups % d == 0}):
                    blocks = n // STRIPE * splits
                    if blocks < 66 or blocks > 132 * 40 or groups // splits < 2:
                        continue
                    part = torch.empty(splits * m * n, dtype=torch.float32, device="cuda")
                    kw = dict(splits=splits, warps=warps, part=part, min_blocks=min_blocks, pipe=pipe)
                    record(shape, m, f"w4_mma w{warps} b{min_blocks} {'pipe' if pipe else 'flat'} s{splits}",
                           [lambda p=p, kw=kw: w4_mma_linear(x, *p, G, **kw) for p in packed],
                           pbytes, y=lambda kw=kw: w4_mma_linear(x, *packed[0], G, **kw),
                           ref=ref, extra={"warps": warps, "splits": splits, "min_blocks": min_blocks, "pipe": pipe})
        del copies, packed, dense
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]] or [1, 2, 4, 8, 16])
