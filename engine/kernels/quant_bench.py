"""GPU microbenchmark of the weight-only quantized linears: `python3 -m engine.kernels.quant_bench --out FILE.json`.

For Qwen2.5-7B's four linear shapes (qkv 4608x3584 with bias, o 3584x3584, gate_up 37888x3584, down
3584x18944) and M in {1, 16, 64, 256} it times w4a16_linear (AWQ layout, G=128), w8a16_linear and the
peer, bf16 F.linear (cuBLAS), and reports microseconds per call, GB/s of weight bytes read (packed
weight + scales + zeros: what each format must stream at least), the fraction of the measured copy
bandwidth, TFLOP/s (2*M*N*K) and the speed-up over bf16.

Timing, as bench.py does it: the calls are captured in one CUDA graph (decode runs graphs, and the
launch gaps of eager calls would dominate 2-20 us kernels), cycling through enough copies of the
weights (>= 256 MB per round, 5x the H200's 50 MB L2) that every call reads its weight from HBM;
x stays the same (it is small and lives in L2 in a real model too). CUDA events around 5 replays,
median per call. Split-K's partial buffers and reduce kernel are inside the graph, as in the engine.
Each shape is checked against the torch reference once per format and path before it is timed.
Kernels know tensors only: nothing here builds layers. Without a CUDA device it writes a note and
exits 0. Finishes in about a minute (compiles included) on an H200; a deadline skips what is left.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

SHAPES = [("qkv_proj", 4608, 3584, True), ("o_proj", 3584, 3584, False), ("gate_up_proj", 37888, 3584, False),
          ("down_proj", 3584, 18944, False)]
MS = (1, 16, 64, 256)
GROUP = 128
DTYPE = torch.bfloat16
ROUND_BYTES = 256e6  # weight bytes per graph round: several times the L2, so each call starts cold


def _graph_time_us(fns, calls: int = 60) -> float:
    """Median microseconds per call of the closures, run round-robin inside one CUDA graph."""
    from .timing import graph_time_ms

    return graph_time_ms(fns, calls, replays=5) * 1e3


def _copy_gb_s() -> float:
    """Device-to-device copy bandwidth (bytes read + written), bench.py's reference figure."""
    import triton.testing

    src = torch.empty(1 << 28, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    return 2 * src.numel() * 2 / ms / 1e6


def _weights(kind: str, n: int, k: int, gen: torch.Generator):
    """One copy of random weights in the format (speed does not depend on the values)."""
    if kind == "w4a16":
        qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device="cuda", generator=gen)
        qzeros = torch.randint(-2**31, 2**31 - 1, (k // GROUP, n // 8), dtype=torch.int32, device="cuda",
                               generator=gen)
        scales = (torch.rand(k // GROUP, n, device="cuda", generator=gen) * 0.01 + 0.001).half()
        return qweight, qzeros, scales
    if kind == "w8a16":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
        return q, torch.rand(n, device="cuda", generator=gen) * 0.01 + 0.001
    return (torch.randn(n, k, device="cuda", dtype=DTYPE, generator=gen) * 0.02,)


def _nbytes(ws) -> int:
    return sum(t.numel() * t.element_size() for t in ws)


def _call(kind: str, x, ws, bias):
    import torch.nn.functional as F

    from .quant_gemm import w4a16_linear, w8a16_linear

    if kind == "w4a16":
        return lambda: w4a16_linear(x, *ws, GROUP, bias)
    if kind == "w8a16":
        return lambda: w8a16_linear(x, *ws, bias)
    return lambda: F.linear(x, ws[0], bias)


def _check(kind: str, x, ws, bias) -> float:
    """Max |kernel - reference| over max |reference| (0 for the peer): a wrong result is not timed as fast."""
    from .quant_gemm import w4a16_linear_ref, w8a16_linear_ref

    if kind == "bf16":
        return 0.0
    y = _call(kind, x, ws, bias)().float()
    ref = (w4a16_linear_ref(x.float(), *ws, GROUP, bias) if kind == "w4a16"
           else w8a16_linear_ref(x.float(), *ws, bias)).float()
    return ((y - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def _config(kind: str, m: int, n: int, k: int) -> str | None:
    from . import quant_gemm as qg

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    if kind == "w4a16":
        fn = qg.w4a16_decode_config if m <= qg.DECODE_MAX_M else qg.w4a16_prefill_config
        return str(tuple(fn(m, n, k, GROUP, sms)))
    if kind == "w8a16":
        fn = qg.w8a16_decode_config if m <= qg.DECODE_MAX_M else qg.w8a16_prefill_config
        return str(tuple(fn(m, n, k, sms)))
    return None


def run(deadline_s: float = 100.0) -> dict:
    import triton

    t_start = time.monotonic()
    name = torch.cuda.get_device_name()
    copy = _copy_gb_s()
    print(f"{name}, torch {torch.__version__}, triton {triton.__version__}; copy {copy:.0f} GB/s (read + write)",
          flush=True)
    rows, notes = [], []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, n, k, has_bias in SHAPES:
        bias = torch.randn(n, device="cuda", dtype=DTYPE, generator=gen) if has_bias else None
        for kind in ("bf16", "w8a16", "w4a16"):
            if time.monotonic() - t_start > deadline_s:
                notes.append(f"deadline {deadline_s:.0f} s reached: skipped {shape} {kind} and after")
                break
            one = _weights(kind, n, k, gen)
            nbytes = _nbytes(one)
            copies = [one] + [_weights(kind, n, k, gen) for _ in range(max(1, min(63, int(ROUND_BYTES // nbytes))))]
            for m in MS:
                x = torch.randn(m, k, device="cuda", dtype=DTYPE, generator=gen)
                row = {"shape": shape, "n": n, "k": k, "m": m, "kernel": kind, "weight_bytes": nbytes,
                       "config": _config(kind, m, n, k)}
                try:
                    if m in (1, 16, 64):  # GEMV, one-tile decode GEMM, prefill GEMM
                        row["rel_err"] = _check(kind, x, one, bias)
                    us = _graph_time_us([_call(kind, x, ws, bias) for ws in copies])
                except Exception as exc:  # noqa: BLE001 - a config the compiler refuses must not end the run
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    rows.append(row)
                    print(f"{shape:<13} {kind:<6} M={m:<4} FAILED {row['error']}", flush=True)
                    continue
                row.update(us=us, gb_s=nbytes / us / 1e3, tflop_s=2 * m * n * k / us / 1e6)
                row["frac_copy"] = row["gb_s"] / copy
                peer = next((r for r in rows if r["shape"] == shape and r["m"] == m and r["kernel"] == "bf16"
                             and "us" in r), None)
                if peer is not None and kind != "bf16":
                    row["speedup_vs_bf16"] = peer["us"] / us
                rows.append(row)
                print(f"{shape:<13} {kind:<6} M={m:<4} {us:8.1f} us {row['gb_s']:7.0f} GB/s "
                      f"({row['frac_copy']:4.0%} of copy) {row['tflop_s']:6.1f} TFLOP/s"
                      + (f"  {row['speedup_vs_bf16']:.2f}x bf16" if "speedup_vs_bf16" in row else "")
                      + (f"  err {row['rel_err']:.1e}" if "rel_err" in row else ""), flush=True)
            del copies, one
            torch.cuda.empty_cache()
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__, "git_commit": _git_commit(),
            "copy_gb_s": copy, "dtype": str(DTYPE), "group_size": GROUP,
            "timing": "CUDA graph of round-robin calls over weight copies (>= 256 MB a round: cold L2), "
                      "CUDA events, median of 5 replays, per call",
            "elapsed_s": time.monotonic() - t_start, "rows": rows, "notes": notes}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m engine.kernels.quant_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="FILE.json", required=True, help="where to write the rows as JSON")
    parser.add_argument("--deadline", type=float, default=100.0,
                        help="seconds after which the remaining shapes are skipped")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("quant_bench: no CUDA device here; this benchmark runs on a GPU machine. Nothing measured.")
        result = {"device": None, "rows": [], "notes": ["no CUDA device: nothing measured"]}
    else:
        torch.manual_seed(0)
        result = run(args.deadline)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
