"""Lab 12: what would an 8- or 4-bit output head buy at batch 1?

Why: in the batch-1 AWQ decode step on an H200 (2.11 ms, reports/examples/h200/pending-ab-2026-12-05) the
bf16 lm_head (Qwen2.5-7B: 152,064 x 3,584, 1.09 GB) takes 0.24 ms, ~11% of the step, and every weight format
keeps it in 16 bits (as AutoAWQ and LMDeploy do). Read at the int8 or int4 kernels' speed it would take
roughly half or a quarter of that. This lab times the head alone before anything is built: µs per call and
TB/s (a fraction of the H200's 4.8 TB/s) for the bf16 path the engine takes (engine/layers/linear_method.linear:
the Triton GEMV at one row, cuBLAS above), the CUDA W8A16 kernel with per-row int8 codes and the CUDA W4A16
kernel with round-to-nearest int4 groups of 128, at 1, 8 and 64 rows, for Qwen2.5-7B's and Llama-3-8B's heads.
Each head is larger than L2, so one copy is read from HBM on every call. Random weights (speed only); each
quantized output is checked against its own dequantized weight first (rel_err).

    python3 ci/kernel_lab/head_lab.py > lab12.json          (on the GPU machine; JSON on stdout)

Written 2026-12-05, not yet run (no device time was left). `ci/kernel_lab/head_run.sh` runs it with the engine's
A / B of --lm-head-int8 in one device call.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

HEADS = {"qwen2.5-7b": (152064, 3584), "llama-3-8b": (128256, 4096)}
PEAK_TB_S = 4.8  # H200 HBM3e


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def head_rows(name: str, n: int, k: int, rows: list[int], dev) -> list[dict]:
    from engine.kernels import w4_mma, w8_mma
    from engine.kernels.timing import graph_time_ms
    from engine.layers.linear_method import linear
    from engine.quant.int4_pack import dequantize_awq, pack_awq
    from engine.quant.int8 import quantize_per_channel

    w = (torch.randn(n, k, device=dev) * (2 / k ** 0.5)).to(torch.bfloat16)
    q8, s8 = quantize_per_channel(w)
    qw8 = w8_mma.repack(q8)
    w8_ref = (q8.float() * s8[:, None])
    qweight, qzeros, scales = pack_awq(w.float(), w4_mma.GROUP)
    w4_ref = dequantize_awq(qweight, qzeros, scales, w4_mma.GROUP)
    qw4, sz4 = w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), w4_mma.GROUP)
    del q8, qweight, qzeros
    formats = {
        "bf16": (lambda x: linear(x, w, None, use_kernels=True, batch_invariant=False), _nbytes(w), None),
        "int8": (lambda x: w8_mma.w8_mma_linear(x, qw8, s8), _nbytes(qw8, s8), w8_ref),
        "int4": (lambda x: w4_mma.w4_mma_linear(x, qw4, sz4, torch.bfloat16), _nbytes(qw4, sz4), w4_ref),
    }
    out = []
    for m in rows:
        x = torch.randn(m, k, device=dev).to(torch.bfloat16)
        for fmt, (fn, size, ref_w) in formats.items():
            row = {"head": name, "rows": m, "format": fmt, "mb": round(size / 2**20, 1)}
            if ref_w is not None:
                row["rel_err"] = _rel_err(fn(x), x.float() @ ref_w.t())
            us = graph_time_ms([lambda: fn(x)], 16) * 1000
            row["us"] = us
            row["tb_s"] = size / (us * 1e-6) / 1e12
            row["fraction_of_peak"] = row["tb_s"] / PEAK_TB_S
            out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("lab 12 needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(dev), "peak_tb_s": PEAK_TB_S, "rows": []}
    for name in args.heads:
        n, k = HEADS[name]
        result["rows"] += head_rows(name, n, k, args.rows, dev)
        torch.cuda.empty_cache()
    json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
