"""Lab 2: the shipped W4A16 GEMV against (a) the same kernel with n8 passed in, (b) a tile-major repacked
qweight, and each one's streaming ceiling (same loads, no math). Usage: python3 ci/kernel_lab/gemv_lab2.py OUT.json"""
import json
from pathlib import Path
import sys
import time

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import lab_kernels as lk
from engine.kernels import quant_gemm as qg
from engine.kernels import quant_tiles
from engine.kernels.quant_gemm import TileConfig
from engine.kernels.timing import graph_time_ms

SHAPES = [("qkv", 4608, 3584, True), ("o", 3584, 3584, False), ("gate_up", 37888, 3584, False),
          ("down", 3584, 18944, False)]
G = 128
OUT = sys.argv[1] if len(sys.argv) > 1 else "/dev/null"
rows = []
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 4


def tile_major(qw, bn):
    k, n8 = qw.shape
    return qw.view(k, n8 // (bn // 8), bn // 8).permute(1, 0, 2).contiguous()


def var(x, ws, bias, cfg, tiled, stream):
    qw, qz, s = ws
    m, k = x.shape
    n = s.shape[1]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    steps = triton.cdiv(k, cfg.num_warps * cfg.block_k)
    return qg._launch(lk.gemv_var, (qw, qz, s), (n, n // 8, k, G), x, bias, out, cfg, steps, SLABS=cfg.num_warps,
                      TILED=tiled, STREAM=stream)


def record(shape, name, cfg, fns, ref=None, y=None, nbytes=0):
    row = {"shape": shape, "m": 1, "kernel": f"{name} {tuple(cfg)[:7]}" if cfg else name,
           "config": list(cfg) if cfg else None}  # the config in the name: opsctl report shows kernel names
    try:
        if ref is not None:
            row["rel_err"] = ((y().float() - ref).abs().max() / ref.abs().max()).item()
        us = graph_time_ms(fns, 60) * 1e3
        row.update(us=us, gb_s=nbytes / us / 1e3)
        print(f"{shape:8} {name:16} {us:8.2f} us {row['gb_s']:6.0f} GB/s err {row.get('rel_err', 0):.1e} {tuple(cfg) if cfg else ''}",
              flush=True)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{shape:8} {name:16} FAILED {row['error'][:200]}", flush=True)
    rows.append(row)
    json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": rows}, open(OUT, "w"), indent=1)


if __name__ == "__main__":
    T0 = time.monotonic()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, n, k, has_bias in SHAPES:
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=gen) if has_bias else None

        def wts():
            qw = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen)
            qz = torch.randint(-2**31, 2**31 - 1, (k // G, n // 8), dtype=torch.int32, device="cuda", generator=gen)
            s = (torch.rand(k // G, n, device="cuda", generator=gen) * 0.01 + 0.001).to(torch.bfloat16)
            return qw, qz, s
        copies = [wts() for _ in range(max(2, int(256e6 // (n * k // 2))))]
        nb = sum(t.numel() * t.element_size() for t in copies[0])
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        ref = qg.w4a16_linear_ref(x.float(), *copies[0], G, bias).float()
        record(shape, "shipped", None, [lambda ws=ws: qg.w4a16_linear(x, *ws, G, bias) for ws in copies], ref,
               lambda: qg.w4a16_linear(x, *copies[0], G, bias), nb)
        base = quant_tiles.lookup("w4a16", x.device, 1, n, k, G)[1]
        cfgs = [base]
        for bn in (512, 1024):
            if n % bn:
                continue
            for bk in (16, 32):
                steps = -(-k // (8 * bk))
                for w in (1, 2):
                    sp = max(1, min(steps, -(-int(w * SMS) // (n // bn))))
                    c = TileConfig(1, bn, bk, sp, 8, 1, True)
                    if c not in cfgs:
                        cfgs.append(c)
        for c in cfgs:
            tiled_copies = [(tile_major(qw, c.block_n), qz, s) for qw, qz, s in copies]
            for name, cp, tiled, stream in (("n8arg", copies, False, False), ("tiled", tiled_copies, True, False),
                                            ("stream", copies, False, True), ("stream-tiled", tiled_copies, True, True)):
                record(shape, name, c, [lambda ws=ws, c=c, t=tiled, st=stream: var(x, ws, bias, c, t, st) for ws in cp],
                       None if stream else ref, (lambda: var(x, cp[0], bias, c, tiled, stream)), nb)
            del tiled_copies
        del copies
        torch.cuda.empty_cache()
    print("elapsed", time.monotonic() - T0)
