"""Lab 3: the W4A16 / W8A16 tensor-core kernels at M = 64 (batch-64 decode) against bf16 cuBLAS.

For each of Qwen2.5-7B's four linear shapes: bf16 F.linear (the peer), the shipped w4a16_linear /
w8a16_linear (the device's tiles file), then ci/kernel_lab/gemm_kernels.py's W4A16 variants (FOLD: scale
in the weight, in-place MMA accumulation; SWAP: the weight as the register operand; always INC + CLAMP
+ constexpr group) and the shipped int8 kernel over a grid of tiles wider than the sweep's. Every row
is checked against the torch reference before it is timed (rel_err).
Usage: python3 ci/kernel_lab/gemm_lab.py OUT.json [M ...]"""
import json
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
import gemm_kernels as gk  # noqa: E402
from engine.kernels import quant_gemm as qg  # noqa: E402
from engine.kernels.quant_gemm import TileConfig  # noqa: E402
from engine.kernels.timing import graph_time_ms  # noqa: E402

SHAPES = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
          ("down", 3584, 18944, False)]
G = 128
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 4
rows = []


def awq_weights(n, k, gen):
    """Random AWQ tensors of one [N, K] linear (qweight, qzeros, bf16 scales), group size G, on the GPU."""
    return (torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen),
            torch.randint(-2**31, 2**31 - 1, (k // G, n // 8), dtype=torch.int32, device="cuda", generator=gen),
            (torch.rand(k // G, n, device="cuda", generator=gen) * 0.01 + 0.001).to(torch.bfloat16))


def awq_copies(n, k, gen):
    """Enough copies of them (>= 256 MB, at least 2) that every timed call reads its weights from HBM, and
    the bytes of one copy."""
    copies = [awq_weights(n, k, gen) for _ in range(max(2, int(256e6 // (n * k // 2))))]
    return copies, sum(t.numel() * t.element_size() for t in copies[0])


def w4_lab(x, ws, bias, cfg, fold, swap):
    """The lab W4A16 kernel through the shipped launcher (split-K partials, fused reduction)."""
    qw, qz, s = ws
    m, k = x.shape
    n = s.shape[1]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    return qg._launch(gk.w4_gemm_lab, (qw, qz, s), (m, n, k), x, bias, out, cfg, k // cfg.block_k, GROUP=G,
                      EMULATE_BF16=x.device.type != "cuda" and x.dtype == torch.bfloat16,
                      ASM=qg._inline_asm(x), FOLD=fold, SWAP=swap, INC=True, CLAMP=True)


def splits(m, n, bm, bn, k_steps, waves=(1, 2, 4)):
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    return sorted({max(1, min(k_steps, -(-w * SMS // tiles))) for w in waves})


def record(out, shape, m, name, cfg, fns, ref=None, y=None, nbytes=0):
    row = {"shape": shape, "m": m, "kernel": f"{name} {tuple(cfg)[:6]}" if cfg else name,
           "config": list(cfg) if cfg else None}
    try:
        if ref is not None:
            row["rel_err"] = ((y().float() - ref).abs().max() / ref.abs().max()).item()
            if row["rel_err"] > 2e-2:
                raise AssertionError(f"rel_err {row['rel_err']:.3g}")
        us = graph_time_ms(fns, 60) * 1e3
        row.update(us=us, gb_s=nbytes / us / 1e3)
        print(f"{shape:8} m={m:<3} {name:10} {us:8.2f} us {row['gb_s']:6.0f} GB/s err {row.get('rel_err', 0):.1e} "
              f"{tuple(cfg) if cfg else ''}", flush=True)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{shape:8} m={m:<3} {name:10} FAILED {row['error'][:200]} {tuple(cfg) if cfg else ''}", flush=True)
    rows.append(row)
    json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": rows}, open(out, "w"), indent=1)


def main(out: str, ms: list[int]) -> None:
    t_start = time.monotonic()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, n, k, has_bias in SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        w4, nb4 = awq_copies(n, k, gen)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            ref = qg.w4a16_linear_ref(x.float(), *w4[0], G, bias).float()
            record(out, shape, m, "w4-shipped", None, [lambda ws=ws: qg.w4a16_linear(x, *ws, G, bias) for ws in w4],
                   ref, lambda: qg.w4a16_linear(x, *w4[0], G, bias), nb4)
            for fold, swap, name in ((True, False, "w4-fold"), (True, True, "w4-foldswap"), (False, False, "w4-inc")):
                for bm in ((16,) if m <= 16 else (64,)):
                    for bn in (64, 128, 256):
                        for warps, stages in ((4, 3), (4, 4), (8, 3), (8, 4)):
                            if bn == 256 and warps == 4 or bn == 64 and warps == 8:
                                continue
                            for sp in splits(m, n, bm, bn, k // 128):
                                cfg = TileConfig(bm, bn, 128, sp, warps, stages, True)
                                record(out, shape, m, name, cfg,
                                       [lambda ws=ws, c=cfg: w4_lab(x, ws, bias, c, fold, swap) for ws in w4],
                                       ref, lambda c=cfg: w4_lab(x, w4[0], bias, c, fold, swap), nb4)
        del w4
        torch.cuda.empty_cache()
        n_copies = max(2, int(256e6 // (2 * n * k)))
        wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(n_copies)]
        w8 = [(torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen),
               torch.rand(n, device="cuda", generator=gen) * 0.01 + 0.001) for _ in range(max(2, n_copies * 2))]
        nb8 = n * k + 4 * n
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            record(out, shape, m, "bf16", None, [lambda w=w: F.linear(x, w, bias) for w in wb], nbytes=2 * n * k)
            ref = qg.w8a16_linear_ref(x.float(), *w8[0], bias).float()
            record(out, shape, m, "w8-shipped", None, [lambda ws=ws: qg.w8a16_linear(x, *ws, bias) for ws in w8],
                   ref, lambda: qg.w8a16_linear(x, *w8[0], bias), nb8)
            for swap in (False, True):
                for bn in (64, 128, 256):
                    for warps, stages in ((4, 3), (4, 4), (8, 3), (8, 4)):
                        if bn == 256 and warps == 4 or bn == 64 and warps == 8:
                            continue
                        bm = 16 if m <= 16 else 64
                        for sp in splits(m, n, bm, bn, k // 128):
                            cfg = TileConfig(bm, bn, 128, sp, warps, stages, True, swap)
                            record(out, shape, m, "w8-swap" if swap else "w8", cfg,
                                   [lambda ws=ws, c=cfg: qg.w8a16_linear(x, *ws, bias, config=c) for ws in w8],
                                   ref, lambda c=cfg: qg.w8a16_linear(x, *w8[0], bias, config=c), nb8)
        del wb, w8
        torch.cuda.empty_cache()
    print("elapsed", time.monotonic() - t_start, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", [int(v) for v in sys.argv[2:]] or [64])
