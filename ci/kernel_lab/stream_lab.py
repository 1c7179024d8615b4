"""Lab 13: the stream-K few-row kernel (engine/kernels/cuda/w4_mma.cu, w4_stream_kernel) against the engine's
few-row kernel at Qwen2.5-7B's four linear shapes (and its head in int8), 1 / 4 / 8 rows, int4 (AWQ g128) and
int8 weights.
Why: in the batch-1 AWQ decode step on an H200 the four linears of a layer take 54 µs (profile with early launch
off, reports/examples/h200/int8-head/), 45% of the 4.8 TB/s read limit; lab 11 found them not waiting for HBM
(an L2-hot read is 3-13% faster) and lab 5 found gate_up at 66%, down at 52%: a grid of whole stripes leaves the
last wave part-empty (gate_up: 592 blocks on 264 slots) and each warp holds one or two groups of loads in its
registers. The stream-K kernel gives every warp of a persistent grid an equal contiguous run of (stripe, group)
units and streams it through a cp.async ring in shared memory (STAGES - 1 units in flight a warp, no registers).
Every row is checked against the dequantized weight first (rel_err); timed over enough copies that every call
reads HBM (engine/kernels/timing.graph_time_ms: one CUDA graph, median of 7 replays).

    python3 ci/kernel_lab/stream_lab.py > lab13.json      (on the GPU machine; JSON on stdout, rows on stderr)

Written 2026-12-05 and compiled for sm_90a without a GPU (128 registers, no spills); not yet run: no device
machine could be started for the rest of that session. `ci/kernel_lab/stream_run.sh` runs it, the kernel's GPU
tests and the engine A / B (OPSCTL_W4_STREAM=0 / 1) in one device call of ~7 minutes.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944),
          "head": (152064, 3584)}
PEAK_TB_S = 4.8  # H200 HBM3e
SMEM_PER_SM = 227 * 1024
UNIT_BYTES = {"int4": 4096 + 256, "int8": 8192}


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def _copies(tensors, nbytes: int) -> list:
    """Clones of the weights (>= 256 MB together, at least 2) so that every timed call reads HBM."""
    return [tensors] + [tuple(t.clone() for t in tensors) for _ in range(max(1, int(256e6 // nbytes)))]


def shape_rows(name: str, n: int, k: int, fmt: str, rows: list[int], dev) -> list[dict]:
    from engine.kernels import w4_mma, w8_mma
    from engine.kernels.timing import graph_time_ms
    from engine.quant.int4_pack import dequantize_awq, pack_awq
    from engine.quant.int8 import quantize_per_channel

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    w = (torch.randn(n, k, device=dev) * (2 / k ** 0.5)).to(torch.bfloat16)
    if fmt == "int8":
        q8, s8 = quantize_per_channel(w)
        weights, ref_w = (w8_mma.repack(q8), s8), q8.float() * s8[:, None]
        engine = lambda x, c: w8_mma.w8_mma_linear(x, *c)  # noqa: E731
        variants = w4_mma.STREAM_VARIANTS_INT8

        def stream(x, c, cfg, part):
            out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
            w8_mma.launch_stream(x, *c, None, out, cfg, part)
            return out
    else:
        qweight, qzeros, scales = pack_awq(w.float(), w4_mma.GROUP)
        ref_w = dequantize_awq(qweight, qzeros, scales, w4_mma.GROUP).float()
        weights = w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), w4_mma.GROUP)
        engine = lambda x, c: w4_mma.w4_mma_linear(x, *c, torch.bfloat16)  # noqa: E731
        variants = w4_mma.STREAM_VARIANTS

        def stream(x, c, cfg, part):
            out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
            w4_mma.launch_stream(x, *c, None, out, True, cfg, part)
            return out
    del w
    size = _nbytes(*weights)
    copies = _copies(weights, size)
    out = []

    def record(m, kernel, fn, x, ref):
        row = {"shape": name, "format": fmt, "rows": m, "kernel": kernel, "mb": round(size / 2**20, 2)}
        try:
            row["rel_err"] = _rel_err(fn(copies[0]), ref)
            if row["rel_err"] > 1e-2:
                raise AssertionError(f"rel_err {row['rel_err']:.3g}")
            if "stream" in kernel:  # deterministic: the same bits twice
                row["same_bits"] = bool(torch.equal(fn(copies[0]), fn(copies[0])))
            us = graph_time_ms([lambda c=c: fn(c) for c in copies], 64) * 1e3
            row.update(us=us, tb_s=size / (us * 1e-6) / 1e12)
            row["fraction_of_peak"] = row["tb_s"] / PEAK_TB_S
        except Exception as e:  # noqa: BLE001 - a failing variant is a result, the lab goes on
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    units = n // w4_mma.STRIPE * (k // w4_mma.GROUP)
    for m in rows:
        x = torch.randn(m, k, device=dev).to(torch.bfloat16)
        ref = x.float() @ ref_w.t()
        record(m, "engine few-row", lambda c: engine(x, c), x, ref)
        for warps, stages in variants:
            smem = warps * stages * UNIT_BYTES[fmt]
            for per_sm in (1, 2, 3, 4):
                if per_sm * smem > SMEM_PER_SM or per_sm * warps > 16:
                    continue
                blocks = w4_mma.stream_blocks(n, k, warps, per_sm, sms)
                if per_sm > 1 and blocks * warps >= units:
                    continue  # the grid is already capped by the units
                cfg = (warps, stages, blocks)
                part = w4_mma.stream_part(m, n, warps, blocks, dev)
                record(m, f"stream w{warps} s{stages} b{blocks}", lambda c, cfg=cfg, part=part: stream(x, c, cfg, part),
                       x, ref)
    locks = w4_mma._locks(dev)
    if int(locks.abs().sum()) != 0:
        print(json.dumps({"shape": name, "format": fmt, "error": "split counters left non-zero"}), file=sys.stderr)
    del copies
    torch.cuda.empty_cache()
    return out


def layer_rows(fmt: str, rows: list[int], dev) -> list[dict]:
    """A decoder layer's four linears back to back (qkv, o, gate_up, down), the engine's few-row kernel against the
    stream kernel at its default config (w4_mma.stream_config): early launch overlaps a kernel's start with the
    one before, which a persistent grid of large blocks may not allow, so the sum of the shapes is not the
    answer alone."""
    from engine.kernels import w4_mma, w8_mma
    from engine.kernels.timing import graph_time_ms
    from engine.quant.int4_pack import pack_awq
    from engine.quant.int8 import quantize_per_channel

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    layer = []
    for name in ("qkv", "o", "gate_up", "down"):
        n, k = SHAPES[name]
        w = (torch.randn(n, k, device=dev) * (2 / k ** 0.5)).to(torch.bfloat16)
        if fmt == "int8":
            q8, s8 = quantize_per_channel(w)
            layer.append((n, k, (w8_mma.repack(q8), s8)))
        else:
            qweight, qzeros, scales = pack_awq(w.float(), w4_mma.GROUP)
            layer.append((n, k, w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), w4_mma.GROUP)))
        del w
    size = sum(_nbytes(*ws) for _, _, ws in layer)
    copies = [layer] + [[(n, k, tuple(t.clone() for t in ws)) for n, k, ws in layer]
                        for _ in range(max(1, int(256e6 // size)))]

    def few(x, n, k, ws):
        return w8_mma.w8_mma_linear(x, *ws) if fmt == "int8" else w4_mma.w4_mma_linear(x, *ws, torch.bfloat16)

    def stream(x, n, k, ws):
        out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
        cfg = w4_mma.stream_config(n, k, sms, int8=fmt == "int8")
        if fmt == "int8":
            w8_mma.launch_stream(x, *ws, None, out, cfg)
        else:
            w4_mma.launch_stream(x, *ws, None, out, True, cfg)
        return out

    out = []
    for m in rows:
        xs = {k: torch.randn(m, k, device=dev).to(torch.bfloat16) for k in {k for _, k, _ in layer}}
        for kernel, fn in (("engine few-row", few), ("stream default", stream)):
            def run_layer(lay, fn=fn):
                for n, k, ws in lay:
                    fn(xs[k], n, k, ws)
            us = graph_time_ms([lambda lay=lay: run_layer(lay) for lay in copies], 32) * 1e3
            row = {"shape": "layer (qkv, o, gate_up, down)", "format": fmt, "rows": m, "kernel": kernel,
                   "mb": round(size / 2**20, 2), "us": us, "tb_s": size / (us * 1e-6) / 1e12}
            row["fraction_of_peak"] = row["tb_s"] / PEAK_TB_S
            out.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    del copies
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--formats", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("lab 13 needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(dev), "peak_tb_s": PEAK_TB_S, "rows": []}
    for fmt in args.formats:
        for name in args.shapes:
            if name == "head" and fmt == "int4":
                continue  # the head is int8 (--lm-head-int8)
            result["rows"] += shape_rows(name, *SHAPES[name], fmt, args.rows, dev)
        result["rows"] += layer_rows(fmt, args.rows, dev)
    # the best stream variant per (format, shape, rows) against the engine's kernel
    best = {}
    for r in result["rows"]:
        if "us" not in r:
            continue
        key = (r["format"], r["shape"], r["rows"], "stream" if "stream" in r["kernel"] else "engine")
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    summary = []
    for (fmt, shape, m, kind), r in sorted(best.items()):
        if kind == "stream" and (fmt, shape, m, "engine") in best:
            e = best[(fmt, shape, m, "engine")]
            summary.append({"format": fmt, "shape": shape, "rows": m, "engine_us": round(e["us"], 2),
                            "stream_us": round(r["us"], 2), "stream_kernel": r["kernel"],
                            "speedup": round(e["us"] / r["us"], 3),
                            "stream_fraction_of_peak": round(r["fraction_of_peak"], 3)})
            print(f"{fmt} {shape:8} m={m}: engine {e['us']:7.2f} us, {r['kernel']:22} {r['us']:7.2f} us "
                  f"({e['us'] / r['us']:.2f}x, {r['fraction_of_peak']:.0%} of peak)", file=sys.stderr, flush=True)
    result["summary"] = summary
    json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
