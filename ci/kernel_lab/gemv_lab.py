"""Lab: times W4A16 GEMV / GEMM variants on the GPU against the shipped kernels and bf16 (same harness as
engine/kernels/quant_bench.py: CUDA graph, cold-L2 weight copies). Usage: python3 ci/kernel_lab/gemv_lab.py OUT.json [DEADLINE_S]"""
import json
from pathlib import Path
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
import gen_prefetch  # noqa: F401  (writes _gemv_pf.py)
import _gemv_pf as pf
import lab_kernels as lk
from engine.kernels import quant_gemm as qg
from engine.kernels import quant_kernels as qk
from engine.kernels.quant_gemm import TileConfig
from engine.kernels.timing import graph_time_ms

SHAPES = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
          ("down", 3584, 18944, False)]
G = 128
T0 = time.monotonic()
DEADLINE = float(sys.argv[2]) if len(sys.argv) > 2 else 400
OUT = sys.argv[1]
rows = []
SMS = torch.cuda.get_device_properties(0).multi_processor_count


def wts(n, k, gen):
    qw = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen)
    qz = torch.randint(-2**31, 2**31 - 1, (k // G, n // 8), dtype=torch.int32, device="cuda", generator=gen)
    s = (torch.rand(k // G, n, device="cuda", generator=gen) * 0.01 + 0.001).to(torch.bfloat16)
    return qw, qz, s


def launch(kernel, x, ws, bias, cfg, gemv):
    m, k = x.shape
    n = ws[2].shape[1]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if gemv:
        steps = triton.cdiv(k, cfg.num_warps * cfg.block_k)
        return qg._launch(kernel, ws, (n, k, G), x, bias, out, cfg, steps, SLABS=cfg.num_warps)
    return qg._launch(kernel, ws, (m, n, k, G), x, bias, out, cfg, k // cfg.block_k, EMULATE_BF16=False,
                      ASM=qg._inline_asm(x))


def record(shape, m, name, cfg, fn_of, copies, ref=None, nbytes=0):
    if time.monotonic() - T0 > DEADLINE:
        return
    row = {"shape": shape, "m": m, "kernel": f"{name} {tuple(cfg)[:7]}" if cfg else name,
           "config": list(cfg) if cfg else None}  # the config in the name: opsctl report shows kernel names
    try:
        if ref is not None:
            y = fn_of(copies[0])().float()
            row["rel_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
        us = graph_time_ms([fn_of(ws) for ws in copies], 60) * 1e3
        row.update(us=us, gb_s=nbytes / us / 1e3)
        print(f"{shape:8} M={m:<3} {name:14} {us:8.2f} us {row['gb_s']:6.0f} GB/s err {row.get('rel_err', 0):.1e} "
              f"{cfg}", flush=True)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{shape:8} M={m:<3} {name:14} FAILED {row['error'][:200]}", flush=True)
    rows.append(row)
    json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": rows}, open(OUT, "w"), indent=1)


def splits_for(tiles, steps, waves=(1, 2, 4)):
    return sorted({max(1, min(steps, -(-int(w * SMS) // tiles))) for w in waves})


gen = torch.Generator(device="cuda").manual_seed(0)
for phase in ("m1", "w8", "m64"):
    for shape, n, k, has_bias in SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None
        one = wts(n, k, gen)
        nb = sum(t.numel() * t.element_size() for t in one)
        copies = [one] + [wts(n, k, gen) for _ in range(max(1, int(256e6 // nb)))]
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
                 for _ in range(max(1, int(256e6 // (2 * n * k))) + 1)]
        if phase == "w8":
            q8 = [(torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen),
                   torch.rand(n, device="cuda", generator=gen) * 0.01 + 0.001) for _ in range(max(2, int(256e6 // (n * k))))]
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            ref = qg.w8a16_linear_ref(x.float(), *q8[0], bias).float()
            record(shape, 1, "w8-shipped", None, lambda ws: (lambda: qg.w8a16_linear(x, *ws, bias)), q8, ref, n * k)

            def w8(ws, c):
                out = torch.empty(1, n, dtype=x.dtype, device=x.device)
                return qg._launch(lk.w8_gemv_pf, (ws[0].view(torch.int32), ws[1]), (n, k, k // 4), x, bias, out, c,
                                  triton.cdiv(k // 4, c.block_k // 4))
            for bn in (16, 32):
                for bk in (512, 1024):
                    for sp in splits_for(triton.cdiv(n, bn), triton.cdiv(k, bk), (1, 2, 3)):
                        c = TileConfig(1, bn, bk, sp, 4, 1, True)
                        record(shape, 1, "w8-pf", c, lambda ws, c=c: (lambda: w8(ws, c)), q8, ref, n * k)
            del q8
            continue
        for m in ((1,) if phase == "m1" else (64,)):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            ref = qg.w4a16_linear_ref(x.float(), *one, G, bias).float()
            record(shape, m, "bf16", None, lambda w: (lambda: F.linear(x, w, bias)), dense, None, 2 * n * k)
            record(shape, m, "shipped", None, lambda ws: (lambda: qg.w4a16_linear(x, *ws, G, bias)), copies, ref, nb)
            if phase == "m1":
                base = qg.w4a16_decode_config(1, n, k, G, SMS)
                from engine.kernels import quant_tiles
                tiled = quant_tiles.lookup("w4a16", x.device, 1, n, k, G)
                if tiled:
                    base = tiled[1]
                record(shape, m, "stream", base, lambda ws: (lambda: launch(lk.gemv_stream, x, ws, bias, base, True)),
                       copies, None, nb)
                for st in (2, 3):
                    c = base._replace(num_stages=st)
                    record(shape, m, f"base-st{st}", c,
                           lambda ws, c=c: (lambda: launch(qk._w4a16_gemv_kernel, x, ws, bias, c, True)), copies, ref, nb)
                for R, kern in ((8, pf.gemv_pf8), (16, pf.gemv_pf16)):
                    for bn in (512, 1024):
                        if R == 16 and bn == 1024:
                            continue
                        for warps in (4, 8):
                            steps = -(-k // (warps * R))
                            for sp in splits_for(triton.cdiv(n, bn), steps):
                                c = TileConfig(1, bn, R, sp, warps, 1, True)
                                record(shape, m, f"pf{R}", c,
                                       lambda ws, c=c, kern=kern: (lambda: launch(kern, x, ws, bias, c, True)),
                                       copies, ref, nb)
            else:
                for bm in (32, 64):
                    for bn in (64, 128):
                        for bk in (64, 128):
                            for warps, st in ((4, 3), (8, 3)):
                                tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
                                for sp in splits_for(tiles, k // bk, (1, 2)):
                                    c = TileConfig(bm, bn, bk, sp, warps, st, True)
                                    record(shape, m, "w4swap", c,
                                           lambda ws, c=c: (lambda: launch(lk.w4_gemm_swapped, x, ws, bias, c, False)),
                                           copies, ref, nb)
        del copies, dense, one
        torch.cuda.empty_cache()
print("elapsed", time.monotonic() - T0)
