"""Lab 13: the stream-K few-row kernel (engine/kernels/cuda/w4_mma.cu, w4_stream_kernel) against the engine's
few-row kernel at Qwen2.5-7B's four linear shapes (and its head in int8), 1 / 4 / 8 rows, int4 (AWQ g128) and
int8 weights.
Why: in the batch-1 AWQ decode step on an H200 the four linears of a layer take 54 µs (profile with early launch
off, reports/examples/h200/int8-head/), 45% of the 4.8 TB/s read limit; lab 11 found them not waiting for HBM
(an L2-hot read is 3-13% faster) and lab 5 found gate_up at 66%, down at 52%: a grid of whole stripes leaves the
last wave part-empty (gate_up: 592 blocks on 264 slots) and each warp holds one or two groups of loads in its
registers. The stream-K kernel gives every warp of a persistent grid an equal contiguous run of (stripe, group)
units and streams it through a cp.async ring in shared memory (STAGES - 1 units in flight a warp, no registers).
Every row is checked against the dequantized weight first (rel_err; a stream variant also must give the same bits
twice) and timed over enough copies that every call reads HBM (lab_rows.LabRows: one CUDA graph, median of 7
replays; the JSON rewritten after every row, so a killed lab keeps what it measured).

    python3 ci/kernel_lab/stream_lab.py lab13.json [--rows ...]     (on the GPU machine; a summary on stdout)

Written 2026-12-05 and compiled for sm_90a without a GPU (128 registers, no spills); not yet run: no device
machine could be started for the rest of that session. `ci/kernel_lab/stream_run.sh` runs it, the kernel's GPU
tests and the engine A / B (OPSCTL_W4_STREAM=0 / 1) in one device call of ~7 minutes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_rows import LabRows  # noqa: E402

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944),
          "head": (152064, 3584)}
PEAK_GB_S = 4800  # H200 HBM3e
SMEM_PER_SM = 227 * 1024
UNIT_BYTES = {"int4": 4096 + 256, "int8": 8192}


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _copies(tensors, nbytes: int) -> list:
    """Clones of the weights (>= 256 MB together, at least 2) so that every timed call reads HBM."""
    return [tensors] + [tuple(t.clone() for t in tensors) for _ in range(max(1, int(256e6 // nbytes)))]


def _same_bits_twice(fn):
    """fn's output, after checking that a second call gives the same bits (the stream kernel is deterministic)."""
    def check():
        y = fn()
        if not torch.equal(y, fn()):
            raise AssertionError("two calls gave different bits")
        return y
    return check


def _weights(n: int, k: int, fmt: str, dev):
    """Random weights in the engine's layout for `fmt` (int4: AWQ g128 repacked; int8: per-row codes repacked)
    and their dequantized [N, K] float32 reference (None if not asked)."""
    from engine.kernels import w4_mma, w8_mma
    from engine.quant.int4_pack import dequantize_awq, pack_awq
    from engine.quant.int8 import quantize_per_channel

    w = (torch.randn(n, k, device=dev) * (2 / k ** 0.5)).to(torch.bfloat16)
    if fmt == "int8":
        q8, s8 = quantize_per_channel(w)
        return (w8_mma.repack(q8), s8), q8.float() * s8[:, None]
    qweight, qzeros, scales = pack_awq(w.float(), w4_mma.GROUP)
    return (w4_mma.repack(qweight, qzeros, scales.to(torch.bfloat16), w4_mma.GROUP),
            dequantize_awq(qweight, qzeros, scales, w4_mma.GROUP).float())


def _few(fmt: str):
    """The engine's few-row path for `fmt`: (x, n, k, weights) -> out."""
    from engine.kernels import w4_mma, w8_mma

    if fmt == "int8":
        return lambda x, n, k, ws: w8_mma.w8_mma_linear(x, *ws)
    return lambda x, n, k, ws: w4_mma.w4_mma_linear(x, *ws, torch.bfloat16)


def _stream(fmt: str, sms: int):
    """The stream kernel for `fmt`: (x, n, k, weights, config=None (stream_config's), part=None) -> out."""
    from engine.kernels import w4_mma, w8_mma

    def run(x, n, k, ws, cfg=None, part=None):
        out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
        cfg = cfg or w4_mma.stream_config(n, k, sms, int8=fmt == "int8")
        if fmt == "int8":
            w8_mma.launch_stream(x, *ws, None, out, cfg, part)
        else:
            w4_mma.launch_stream(x, *ws, None, out, True, cfg, part)
        return out
    return run


def shape_rows(lab: LabRows, name: str, n: int, k: int, fmt: str, rows: list[int], dev) -> None:
    from engine.kernels import w4_mma

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    weights, ref_w = _weights(n, k, fmt, dev)
    size = _nbytes(*weights)
    copies = _copies(weights, size)
    few, stream = _few(fmt), _stream(fmt, sms)
    variants = w4_mma.STREAM_VARIANTS_INT8 if fmt == "int8" else w4_mma.STREAM_VARIANTS
    units = n // w4_mma.STRIPE * (k // w4_mma.GROUP)
    for m in rows:
        x = torch.randn(m, k, device=dev).to(torch.bfloat16)
        ref = x.float() @ ref_w.t()
        at = {"shape": name, "format": fmt, "m": m}
        lab.record(at, "engine few-row", [lambda c=c: few(x, n, k, c) for c in copies], size,
                   check=lambda: few(x, n, k, weights), ref=ref)
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
                lab.record(at, f"stream w{warps} s{stages} b{blocks}",
                           [lambda c=c, cfg=cfg, part=part: stream(x, n, k, c, cfg, part) for c in copies], size,
                           check=_same_bits_twice(lambda cfg=cfg, part=part: stream(x, n, k, weights, cfg, part)),
                           ref=ref)
    if int(w4_mma._locks(dev).abs().sum()) != 0:
        print(f"{name} {fmt}: split counters left non-zero", file=sys.stderr, flush=True)
    del copies
    torch.cuda.empty_cache()


def layer_rows(lab: LabRows, fmt: str, rows: list[int], dev) -> None:
    """A decoder layer's four linears back to back (qkv, o, gate_up, down), the engine's few-row kernel against the
    stream kernel at its default config (w4_mma.stream_config): early launch overlaps a kernel's start with the
    one before, which a persistent grid of large blocks may not allow, so the sum of the shapes is not the
    answer alone."""
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    layer = [(*SHAPES[name], _weights(*SHAPES[name], fmt, dev)[0]) for name in ("qkv", "o", "gate_up", "down")]
    size = sum(_nbytes(*ws) for _, _, ws in layer)
    copies = [layer] + [[(n, k, tuple(t.clone() for t in ws)) for n, k, ws in layer]
                        for _ in range(max(1, int(256e6 // size)))]
    for m in rows:
        xs = {k: torch.randn(m, k, device=dev).to(torch.bfloat16) for k in {k for _, k, _ in layer}}
        for kernel, fn in (("engine few-row", _few(fmt)), ("stream default", _stream(fmt, sms))):
            def run_layer(lay, fn=fn):
                for n, k, ws in lay:
                    fn(xs[k], n, k, ws)
            lab.record({"shape": "layer", "format": fmt, "m": m}, kernel,
                       [lambda lay=lay: run_layer(lay) for lay in copies], size)
    del copies
    torch.cuda.empty_cache()


def summary(rows: list[dict]) -> list[str]:
    """The best stream variant per (format, shape, m) against the engine's kernel, a line each."""
    best = {}
    for r in rows:
        if "us" in r:
            key = (r["format"], r["shape"], r["m"], "stream" if "stream" in r["kernel"] else "engine")
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = r
    lines = []
    for (fmt, shape, m, kind), r in sorted(best.items()):
        e = best.get((fmt, shape, m, "engine"))
        if kind == "stream" and e:
            lines.append(f"{fmt} {shape:8} m={m}: engine {e['us']:7.2f} us, {r['kernel']:22} {r['us']:7.2f} us "
                         f"({e['us'] / r['us']:.2f}x, {r['gb_s'] / PEAK_GB_S:.0%} of peak)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the JSON the rows go to (rewritten after every row)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--formats", nargs="+", default=["int4", "int8"], choices=["int4", "int8"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("lab 13 needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    lab = LabRows(args.out, tolerance=1e-2)
    for fmt in args.formats:
        for name in args.shapes:
            if name != "head" or fmt == "int8":  # the head is int8 (--lm-head-int8)
                shape_rows(lab, name, *SHAPES[name], fmt, args.rows, dev)
        layer_rows(lab, fmt, args.rows, dev)
    print("\n".join(summary(lab.rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
