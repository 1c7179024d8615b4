"""Lab 7: AWQ W4A16 at 33-256 rows on Hopper's warpgroup MMA (w4_mma.cu's w4_wgmma_kernel) against bf16 cuBLAS,
the Triton AWQ kernels and the shipped CUDA path (32-row mma.sync launches up to 64 rows, dense dequantize +
cuBLAS beyond), on Qwen2.5-7B's four linear shapes.

Every wgmma configuration is checked against the AWQ reference first (rel_err: max |diff| / max |ref|); the
engine's CUDA-graph timer over >= 256 MB of weight copies (every call reads HBM), median of 7 replays. Prints
JSON; run on the GPU machine:

    python3 ci/kernel_lab/wgmma_lab.py [M ...] > lab7.json     (row counts; default 33 64 128 256)
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from engine.kernels import w4_mma
from engine.kernels.quant_gemm import w4a16_linear, w4a16_linear_ref
from engine.kernels.timing import graph_time_ms
from engine.quant.int4_pack import pack_awq

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
ROWS = (33, 64, 128, 256)
SWEEP_ROWS = (64, 128)
GROUP = w4_mma.GROUP


def configs(m: int, n: int, k: int):
    groups = k // GROUP
    splits = [d for d in range(1, groups + 1) if groups % d == 0 and groups // d >= 4][:5]
    for bn, sp, nwg, kwg in ((64, 1, 1, 1), (64, 1, 2, 1), (64, 2, 1, 1), (64, 2, 2, 1), (128, 1, 1, 1),
                             (128, 1, 2, 1), (64, 1, 1, 2)):
        if (n // 64) % (sp * nwg) or (bn == 128 and m <= 64):
            continue
        for s in splits:
            if groups // s % kwg == 0:
                yield bn, sp, nwg, s, kwg


def main() -> int:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    row_counts = [int(a) for a in sys.argv[1:]] or list(ROWS)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    assert w4_mma.has_wgmma(), "this build has no sm_90a code"
    rows = []

    def record(shape, m, kernel, us, err=None, config=None, n=0, k=0):
        w_bytes = n * k // 2 + n * k // GROUP * 4 if kernel != "bf16" else n * k * 2
        row = {"shape": shape, "m": m, "kernel": kernel, "us": us, "config": config, "rel_err": err,
               "tflops": 2 * m * n * k / us / 1e6, "weight_tb_s": w_bytes / us / 1e6}
        rows.append(row)
        print(f"{shape:8s} m={m:3d} {kernel:10s} {str(config):18s} {us:8.2f} us "
              f"{row['tflops']:6.0f} TFLOP/s err={err}", file=sys.stderr, flush=True)

    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev) * 0.02
        qweight, qzeros, scales = pack_awq(w, GROUP)
        scales = scales.to(torch.bfloat16)
        qw, sz = w4_mma.repack(qweight, qzeros, scales, GROUP)
        copies = max(2, (256 << 20) // (qweight.numel() * 4))
        rep = [(qw.clone(), sz.clone()) for _ in range(copies)]
        awq = [(qweight.clone(), qzeros.clone(), scales.clone()) for _ in range(copies)]
        wb = w.to(torch.bfloat16)
        dense = [wb.clone() for _ in range(max(2, (256 << 20) // wb.numel() // 2))]
        del w
        for m in row_counts:
            x = torch.randn(m, k, device=dev).to(torch.bfloat16)
            out = torch.empty(m, n, dtype=torch.bfloat16, device=dev)
            ref = w4a16_linear_ref(x, qweight, qzeros, scales, GROUP).float()
            scale = ref.abs().max().item()
            calls = 4 * copies
            us = graph_time_ms([lambda d=d: F.linear(x, d) for d in dense], 4 * len(dense)) * 1000
            record(name, m, "bf16", us, None, None, n, k)
            us = graph_time_ms([lambda a=a: w4a16_linear(x, *a, GROUP) for a in awq], calls) * 1000
            record(name, m, "triton", us, None, None, n, k)
            # "shipped": the CUDA path before the warpgroup kernel (32-row launches, or dense + cuBLAS)
            w4_mma.few_rows_or_dense(x, qw, sz, None, out, True)
            err = (out.float() - ref).abs().max().item() / scale
            us = graph_time_ms([lambda r=r: w4_mma.few_rows_or_dense(x, r[0], r[1], None, out, True) for r in rep],
                               calls) * 1000
            record(name, m, "shipped", us, err, None, n, k)
            default = w4_mma.wgmma_config(m, n, k, sms)
            sweep = list(configs(m, n, k)) if m in SWEEP_ROWS else []
            if default not in sweep:
                sweep.append(default)
            parts = torch.empty(max(c[3] for c in sweep) * m * n, dtype=torch.float32, device=dev)
            for cfg in sweep:
                out.zero_()
                w4_mma.launch_wgmma(x, qw, sz, None, out, True, cfg, parts)
                err = (out.float() - ref).abs().max().item() / scale
                if err > 2e-2:
                    record(name, m, "wgmma", float("nan"), err, list(cfg), n, k)
                    continue
                us = graph_time_ms([lambda r=r, c=cfg: w4_mma.launch_wgmma(x, r[0], r[1], None, out, True, c, parts)
                                    for r in rep], calls) * 1000
                record(name, m, "wgmma*" if cfg == default else "wgmma", us, err, list(cfg), n, k)
        del rep, awq, dense
        torch.cuda.empty_cache()
    print(json.dumps({"device": torch.cuda.get_device_name(0), "sms": sms, "copy_gb_s": None, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
