"""Lab 6: the dense-weight dequantize of the prefill path, Triton (AWQ layout) against CUDA (repacked).

For each Qwen2.5-7B linear, the time to write the whole bf16 weight from its int4 form, and the effective
bandwidth (int4 + scales read, bf16 written) against the H200's; the engine's CUDA-graph timer, weights
copied so every call reads HBM. Prints JSON; run on the GPU machine:

    python3 ci/kernel_lab/dequant_lab.py > lab6.json
"""
from __future__ import annotations

import json
import sys

import torch

from engine.kernels import w4_mma
from engine.kernels.int4_unpack import awq_dequantize
from engine.kernels.timing import graph_time_ms
from engine.quant.int4_pack import pack_awq

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
GROUP = 128


def main() -> int:
    dev = torch.device("cuda")
    rows = []
    for name, (n, k) in SHAPES.items():
        qweight, qzeros, scales = pack_awq(torch.randn(n, k, device=dev) * 0.02, GROUP)
        scales = scales.to(torch.bfloat16)
        qw, sz = w4_mma.repack(qweight, qzeros, scales, GROUP)
        copies = max(2, (256 << 20) // (qweight.numel() * 4))
        awq = [(qweight.clone(), qzeros.clone(), scales.clone()) for _ in range(copies)]
        rep = [(qw.clone(), sz.clone()) for _ in range(copies)]
        out_t = torch.empty(k, n, dtype=torch.bfloat16, device=dev)
        out_c = torch.empty(n, k, dtype=torch.bfloat16, device=dev)
        ext = w4_mma.extension()
        tri = graph_time_ms([lambda a=a: awq_dequantize(*a, GROUP, torch.bfloat16, out=out_t) for a in awq], 4 * copies)
        cud = graph_time_ms([lambda r=r: ext.w4_dequant(r[0], r[1], out_c, GROUP, True, 0) for r in rep], 4 * copies)
        same = (out_t.t().float() - out_c.float()).abs().max().item()  # 0.0: the same roundings
        moved = qweight.numel() * 4 + scales.numel() * 2 + qzeros.numel() * 4 + n * k * 2
        for kind, ms in (("triton_awq_layout", tri), ("cuda_repacked", cud)):
            rows.append({"shape": name, "n": n, "k": k, "kernel": kind, "us": ms * 1000,
                         "gb_s": moved / ms / 1e6, "frac_4800": moved / ms / 1e6 / 4800, "max_abs_diff": same})
            print(f"{name:8s} {kind:18s} {ms * 1000:8.1f} us {moved / ms / 1e6:7.0f} GB/s max|diff|={same}",
                  file=sys.stderr)
    print(json.dumps({"device": torch.cuda.get_device_name(0), "copy_gb_s": None, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
