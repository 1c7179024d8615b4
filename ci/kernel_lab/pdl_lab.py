"""Lab 8: programmatic dependent launch (engine/kernels/pdl.py) for the CUDA W4A16 kernels, on and off.

Each call is what the engine runs in front of a linear and the linear: a Triton RMSNorm of x (hidden 3584; for
down, SiLU-and-mul of a [M, 2 x 18944] gate_up output), then the layer's AWQ linear through w4_mma_linear (the
engine's choices: the few-row kernel up to 32 rows, the warpgroup kernel for 33-128). With PDL the norm signals
the next kernel first thing and the linear, launched with the programmatic-serialization attribute, loads its
weights before it waits for the norm. bf16 cuBLAS after the same norm is the peer. The engine's CUDA-graph
timer over >= 256 MB of weight copies (every call reads HBM), median of 7 replays, µs per norm + linear pair.
Prints JSON; run on the GPU machine:

    python3 ci/kernel_lab/pdl_lab.py [M ...] > lab8.json     (row counts; default 1 16 64)
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from engine.kernels import w4_mma
from engine.kernels.activation import silu_and_mul
from engine.kernels.norm import rms_norm
from engine.kernels.quant_gemm import w4a16_linear_ref
from engine.kernels.timing import graph_time_ms
from engine.quant.int4_pack import pack_awq

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
GROUP = w4_mma.GROUP


def main() -> int:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    row_counts = [int(a) for a in sys.argv[1:]] or [1, 16, 64]
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev) * 0.02
        qweight, qzeros, scales = pack_awq(w, GROUP)
        qw, sz = w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), GROUP)
        copies = max(2, (256 << 20) // (qweight.numel() * 4))
        rep = [(qw.clone(), sz.clone()) for _ in range(copies)]
        wb = w.to(torch.bfloat16)
        dense = [wb.clone() for _ in range(max(2, (256 << 20) // wb.numel() // 2))]
        del w
        for m in row_counts:
            if name == "down":  # SiLU-and-mul feeds down
                src = torch.randn(m, 2 * k, device=dev).to(torch.bfloat16)
                feed = torch.empty(m, k, dtype=torch.bfloat16, device=dev)

                def before(src=src, feed=feed):
                    silu_and_mul(src, feed)
            else:  # an RMSNorm feeds the others (o's is the attention's reduction: a norm stands in)
                src = torch.randn(m, k, device=dev).to(torch.bfloat16)
                nw = torch.rand(k, device=dev).to(torch.bfloat16)
                feed = torch.empty(m, k, dtype=torch.bfloat16, device=dev)

                def before(src=src, nw=nw, feed=feed):
                    rms_norm(src, nw, 1e-6, out=feed)
            before()
            ref = w4a16_linear_ref(feed, qweight, qzeros, scales.to(torch.bfloat16), GROUP).float()
            row = {"shape": name, "m": m}
            for label, on in (("pdl_off", False), ("pdl_on", True)):
                w4_mma.set_early_launch(on)
                got = w4_mma.w4_mma_linear(feed, qw, sz, torch.bfloat16).float()
                row[f"rel_err_{label}"] = ((got - ref).abs().max() / ref.abs().max()).item()
                row[label] = graph_time_ms(
                    [lambda r=r: (before(), w4_mma.w4_mma_linear(feed, r[0], r[1], torch.bfloat16)) for r in rep],
                    4 * copies) * 1000
            w4_mma.set_early_launch(True)
            row["bf16"] = graph_time_ms([lambda d=d: (before(), F.linear(feed, d)) for d in dense],
                                        4 * len(dense)) * 1000
            row["norm_alone"] = graph_time_ms([before], 64) * 1000
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del rep, dense
        torch.cuda.empty_cache()
    print(json.dumps({"device": torch.cuda.get_device_name(0), "copy_gb_s": None, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
