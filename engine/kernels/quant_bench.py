"""GPU microbenchmark of the weight-only quantized linears: `python3 -m engine.kernels.quant_bench --out FILE.json`.

For Qwen2.5-7B's four linear shapes (qkv 4608x3584 with bias, o 3584x3584, gate_up 37888x3584, down
3584x18944) and M in {1, 16, 64, 256, 1024} it times the peer, bf16 F.linear (cuBLAS), and for
w4a16_linear (AWQ layout, G=128) and w8a16_linear every path of quant_gemm: the default dispatch (row
kernel "w4a16" / "w8a16") and each other path forced (kernel "w4a16[gemm]", ...; 'gemv' only at M = 1),
so the run shows which path wins where and where quant_gemm's thresholds (W4_FUSED_MAX_M, ...) belong.
Per row: microseconds per call, GB/s of weight bytes read (packed weight + scales + zeros: what each
format must stream at least), the fraction of the measured copy bandwidth, TFLOP/s (2*M*N*K) and the
speed-up over bf16, and a "best" table per (format, shape, M). `--sweep` adds rows for a grid of alternative
tile configs of the fused paths; `--write-tiles` merges the fastest checked (path, config) per shape and M
into the device's tiles file (engine/kernels/quant_tiles.py), which the launchers then run by default (the
"default" rows show what they run); `--m` picks the rows of x.

Timing, as bench.py does it: the calls are captured in one CUDA graph (decode runs graphs, and the
launch gaps of eager calls would dominate 2-20 us kernels), cycling through enough copies of the
weights (>= 256 MB per round, 5x the H200's 50 MB L2) that every call reads its weight from HBM;
x stays the same (it is small and lives in L2 in a real model too). CUDA events around 5 replays,
median per call. Split-K's partial buffers and reduce kernel, and the dense path's dequantization, are
inside the graph, as in the engine. Each (format, path) is checked against the torch reference at
M = 1, 16 and 64 before it is timed. Kernels know tensors only: nothing here builds layers. Without a
CUDA device it writes a note and exits 0. A deadline (--deadline, default 120 s: ci/quant_gpu.sh gives
the step 150) skips what is left; the JSON is rewritten as it goes, so a killed run keeps its rows.
The full picture (every path, --sweep) takes several minutes, mostly compiling: run it by hand with
--deadline 1200.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = [("qkv_proj", 4608, 3584, True), ("o_proj", 3584, 3584, False), ("gate_up_proj", 37888, 3584, False),
          ("down_proj", 3584, 18944, False)]
MS = (1, 16, 64, 256, 1024)
CHECK_MS = (1, 16, 64)
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


def _call(kind: str, x, ws, bias, path: str | None = None, config=None):
    import torch.nn.functional as F

    from .quant_gemm import w4a16_linear, w8a16_linear

    if kind == "w4a16":
        return lambda: w4a16_linear(x, *ws, GROUP, bias, path=path, config=config)
    if kind == "w8a16":
        return lambda: w8a16_linear(x, *ws, bias, path=path, config=config)
    return lambda: F.linear(x, ws[0], bias)


def _check(kind: str, x, ws, bias, path: str | None, config=None) -> float:
    """Max |kernel - reference| over max |reference| (0 for the peer): a wrong result is not timed as fast."""
    from .quant_gemm import w4a16_linear_ref, w8a16_linear_ref

    if kind == "bf16":
        return 0.0
    y = _call(kind, x, ws, bias, path, config)().float()
    ref = (w4a16_linear_ref(x.float(), *ws, GROUP, bias) if kind == "w4a16"
           else w8a16_linear_ref(x.float(), *ws, bias)).float()
    return ((y - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def _tiled(kind: str, m: int, n: int, k: int):
    """(path, TileConfig or None) from the device's tiles file (quant_tiles), or None: what the launcher
    runs when called with neither."""
    from . import quant_tiles

    if kind == "bf16":
        return None
    return quant_tiles.lookup(kind, torch.device("cuda", torch.cuda.current_device()), m, n, k,
                              GROUP if kind == "w4a16" else 0)


def _paths(kind: str, m: int, n: int, k: int) -> list[tuple[str | None, str]]:
    """(path argument, path that runs) for the default dispatch first, then every other path forced."""
    from . import quant_gemm as qg

    if kind == "bf16":
        return [(None, "cublas")]
    tiled = _tiled(kind, m, n, k)
    default = tiled[0] if tiled else qg.w4a16_path(m) if kind == "w4a16" else qg.w8a16_path(m, k)
    others = [p for p in qg.PATHS if p != default and (p != "gemv" or m == 1)]
    return [(None, default)] + [(p, p) for p in others]


def _config(kind: str, path: str, m: int, n: int, k: int, default: bool = False):
    """The TileConfig the launcher picks for this path (None for the dense path and the peer); with
    default, the one it runs when called with neither path nor config (the tiles file's, if any)."""
    from . import quant_gemm as qg

    if kind == "bf16" or path == "dequant_cublas":
        return None
    tiled = _tiled(kind, m, n, k) if default else None
    if tiled is not None:
        return tiled[1]
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    rows = 1 if path == "gemv" else max(m, 2)
    if kind == "w4a16":
        fn = qg.w4a16_decode_config if rows <= qg.DECODE_MAX_M else qg.w4a16_prefill_config
        return fn(rows, n, k, GROUP, sms)
    fn = qg.w8a16_decode_config if rows <= qg.DECODE_MAX_M else qg.w8a16_prefill_config
    return fn(rows, n, k, sms)


def _waves_splits(tiles: int, k_steps: int, sms: int, waves=(1, 2, 3, 4, 6)) -> list[int]:
    """Split-K counts that bring tiles * splits to about each number of waves over the SMs."""
    return sorted({max(1, min(k_steps, -(-w * sms // max(tiles, 1)))) for w in waves})


def _sweep_configs(kind: str, path: str, m: int, n: int, k: int) -> list:
    """A grid of alternatives to the default tiles of a fused path (--sweep): widths, depths, warps, stages
    and split-K from one to six waves over the SMs, each with the split-K sum fused into the kernel
    (TileConfig.fused_reduce) and, at the default width, also as a second kernel; for int8 every
    tensor-core tile also with the operands swapped (TileConfig.swap_ab)."""
    import triton

    from .quant_gemm import TileConfig

    base = _config(kind, path, m, n, k)
    if base is None:
        return []
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    alts = []
    if path == "gemv" and kind == "w4a16":
        for bn in (512, 1024):
            for bk in (16, 32):
                for warps in (4, 8):
                    steps = -(-k // (warps * bk))
                    for split in _waves_splits(triton.cdiv(n, bn), steps, sms):
                        alts.append(TileConfig(1, bn, bk, split, warps, 1, True))
                        if (bn, bk, warps) == base[1:3] + (base.num_warps,):
                            alts.append(TileConfig(1, bn, bk, split, warps, 1, False))
    elif path == "gemv":
        for bn in (16, 32):
            for bk in (512, 1024, 2048):
                for warps in (4, 8):
                    steps = triton.cdiv(k, bk)
                    for split in _waves_splits(triton.cdiv(n, bn), steps, sms, (1, 2, 3, 4)):
                        alts.append(TileConfig(1, bn, bk, split, warps, 1, True))
    else:
        bk_cap = GROUP if kind == "w4a16" else 128
        for bn in (64, 128):
            for bk in sorted({64, bk_cap}):
                for warps, stages in ((4, 3), (8, 3)):
                    tiles = triton.cdiv(m, base.block_m) * triton.cdiv(n, bn)
                    for split in _waves_splits(tiles, k // bk, sms, (1, 2, 4)):
                        alts.append(TileConfig(base.block_m, bn, bk, split, warps, stages, True))
                        if kind == "w8a16":  # the swapped operands: W from registers, tokens as the MMA's N
                            alts.append(TileConfig(base.block_m, bn, bk, split, warps, stages, True, True))
    return [c for c in dict.fromkeys(alts) if c != base]


def _time_row(row: dict, kind: str, x, one, copies, bias, path, config, copy: float, rows: list) -> None:
    try:
        if row["m"] in CHECK_MS:
            row["rel_err"] = _check(kind, x, one, bias, path, config)
        us = _graph_time_us([_call(kind, x, ws, bias, path, config) for ws in copies])
    except Exception as exc:  # noqa: BLE001 - a config the compiler refuses must not end the run
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
        print(f"{row['shape']:<13} {row['kernel']:<22} M={row['m']:<5} FAILED {row['error']}", flush=True)
        return
    row.update(us=us, gb_s=row["weight_bytes"] / us / 1e3, tflop_s=2 * row["m"] * row["n"] * row["k"] / us / 1e6)
    row["frac_copy"] = row["gb_s"] / copy
    peer = next((r for r in rows if r["shape"] == row["shape"] and r["m"] == row["m"] and r["kernel"] == "bf16"
                 and "us" in r), None)
    if peer is not None and kind != "bf16":
        row["speedup_vs_bf16"] = peer["us"] / us
    rows.append(row)
    print(f"{row['shape']:<13} {row['kernel']:<22} M={row['m']:<5} {us:9.1f} us {row['gb_s']:7.0f} GB/s "
          f"({row['frac_copy']:4.0%} of copy) {row['tflop_s']:6.1f} TFLOP/s"
          + (f"  {row['speedup_vs_bf16']:.2f}x bf16" if "speedup_vs_bf16" in row else "")
          + (f"  err {row['rel_err']:.1e}" if "rel_err" in row else "")
          + (f"  {row['config']}" if row.get("sweep") else ""), flush=True)


def run(deadline_s: float = 120.0, sweep: bool = False, ms=MS, out: str | None = None) -> dict:
    """Three passes, most informative first, so that a deadline (or ci/quant_gpu.sh's timeout: the JSON is
    rewritten after every shape and format) still leaves a useful file: 1. bf16 and the default
    dispatch on every shape and M; 2. every other path forced; 3. with sweep, alternative tiles."""
    import triton

    t_start = time.monotonic()
    name = torch.cuda.get_device_name()
    copy = _copy_gb_s()
    print(f"{name}, torch {torch.__version__}, triton {triton.__version__}; copy {copy:.0f} GB/s (read + write)",
          flush=True)
    rows, notes = [], []
    result = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "git_commit": _git_commit(),
              "copy_gb_s": copy, "dtype": str(DTYPE), "group_size": GROUP, "ms": list(ms), "sweep": sweep,
              "timing": "CUDA graph of round-robin calls over weight copies (>= 256 MB a round: cold L2), "
                        "CUDA events, median of 5 replays, per call", "rows": rows, "notes": notes}
    gen = torch.Generator(device="cuda").manual_seed(0)
    passes = ["default", "forced"] + (["sweep"] if sweep else [])
    for pass_ in passes:
        for shape, n, k, has_bias in SHAPES:
            bias = torch.randn(n, device="cuda", dtype=DTYPE, generator=gen) if has_bias else None
            for kind in ("bf16", "w8a16", "w4a16") if pass_ == "default" else ("w4a16", "w8a16"):
                if time.monotonic() - t_start > deadline_s:
                    notes.append(f"deadline {deadline_s:.0f} s reached: skipped pass {pass_}, {shape} {kind} and after")
                    break
                one = _weights(kind, n, k, gen)
                nbytes = _nbytes(one)
                n_copies = max(1, min(63, int(ROUND_BYTES // nbytes)))
                copies = [one] + [_weights(kind, n, k, gen) for _ in range(n_copies)]
                for m in ms:
                    x = torch.randn(m, k, device="cuda", dtype=DTYPE, generator=gen)
                    paths = _paths(kind, m, n, k)
                    for arg, path in paths[:1] if pass_ == "default" else paths[1:] if pass_ == "forced" else paths:
                        base = {"shape": shape, "n": n, "k": k, "m": m, "path": path, "forced": arg is not None,
                                "weight_bytes": nbytes}
                        if pass_ != "sweep":
                            cfg = _config(kind, path, m, n, k, default=arg is None)
                            _time_row({**base, "kernel": kind if arg is None else f"{kind}[{path}]",
                                       "config": str(tuple(cfg)) if cfg else None, "tile": list(cfg) if cfg else None},
                                      kind, x, one, copies, bias, arg, None, copy, rows)
                            continue
                        for alt in _sweep_configs(kind, path, m, n, k):
                            if time.monotonic() - t_start > deadline_s:
                                break
                            _time_row({**base, "kernel": f"{kind}[{path}]", "forced": True, "sweep": True,
                                       "config": str(tuple(alt)), "tile": list(alt)}, kind, x, one, copies, bias,
                                      path, alt, copy, rows)
                del copies, one
                torch.cuda.empty_cache()
                result.update(elapsed_s=time.monotonic() - t_start, best=_best(rows))
                _write(out, result)
    result.update(elapsed_s=time.monotonic() - t_start, best=_best(rows))
    return result


def _write(path: str | None, result: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def _fastest(rows: list[dict], usable=lambda row: True) -> dict[tuple, dict]:
    """Per (format, N, K, M): the fastest timed row of a quantized format that `usable` accepts."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if "us" not in r or r["kernel"] == "bf16" or not usable(r):
            continue
        key = (r["kernel"].split("[")[0], r["n"], r["k"], r["m"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    return dict(sorted(best.items()))


def _best(rows: list[dict]) -> list[dict]:
    """Per (format, shape, M): the fastest path and config measured, and its speed-up over bf16."""
    return [{"kind": kind, "shape": r["shape"], "m": m, "path": r["path"], "config": r.get("config"), "us": r["us"],
             "speedup_vs_bf16": r.get("speedup_vs_bf16")} for (kind, _, _, m), r in _fastest(rows).items()]


MAX_REL_ERR = 1e-2  # a row further than this from the torch reference never becomes a tile entry


def tile_entries(rows: list[dict]) -> list[dict]:
    """Per (format, shape, M): the fastest row whose result was checked against the reference, as a
    quant_tiles entry (path and config as the launcher takes them)."""
    def runnable(r: dict) -> bool:
        return r.get("rel_err", 1.0) <= MAX_REL_ERR and (r["path"] == "dequant_cublas" or r.get("tile") is not None)

    return [{"kind": kind, "n": n, "k": k, "group_size": GROUP if kind == "w4a16" else 0, "m": m,
             "path": r["path"], "config": r.get("tile"), "us": round(r["us"], 2),
             "speedup_vs_bf16": round(r["speedup_vs_bf16"], 3) if "speedup_vs_bf16" in r else None}
            for (kind, n, k, m), r in _fastest(rows, runnable).items()]


def _git_commit() -> str | None:
    if os.environ.get("OPSCTL_GIT_COMMIT"):  # a copy of the tree without history (the GPU machine's)
        return os.environ["OPSCTL_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m engine.kernels.quant_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="FILE.json", required=True, help="where to write the rows as JSON")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds after which what is left is skipped (ci/quant_gpu.sh allows 150 in all)")
    parser.add_argument("--sweep", action="store_true", help="also time alternative tile configs of the fused paths")
    parser.add_argument("--m", type=int, nargs="+", default=list(MS), help="rows of x to time (default: %(default)s)")
    parser.add_argument("--write-tiles", nargs="?", const="device", metavar="FILE.json",
                        help="merge the fastest checked (path, tiles) per shape and M into a tiles file that the "
                             "launchers read (quant_tiles.py); without FILE, the device's file in engine/kernels/tiles")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("quant_bench: no CUDA device here; this benchmark runs on a GPU machine. Nothing measured.")
        result = {"device": None, "rows": [], "notes": ["no CUDA device: nothing measured"]}
    else:
        torch.manual_seed(0)
        result = run(args.deadline, args.sweep, tuple(args.m), args.out)
        if args.write_tiles:
            from . import quant_tiles

            name = torch.cuda.get_device_name()
            target = quant_tiles.device_file(name) if args.write_tiles == "device" else Path(args.write_tiles)
            entries = [e for e in tile_entries(result["rows"]) if e["m"] <= max(hi for _, hi in quant_tiles.BUCKETS)]
            quant_tiles.write(target, entries, name, f"quant_bench --sweep at {result.get('git_commit')}")
            print(f"wrote {len(entries)} tile entries to {target}")
    _write(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
