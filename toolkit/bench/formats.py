"""Weight and KV-cache formats side by side in one run, the 16-bit engine as the peer of every figure.

    python3 -m toolkit.bench.formats preset:qwen2.5-7b --out reports/formats

Each format's engine is loaded once and runs, after the usual warm-up, the offline workloads that
answer the quantization issue's questions: decode-b1 (batch-1 decode: bandwidth-bound, where 4-bit
weights should approach 3x), throughput at 64 requests (is a quantized engine slower once GEMMs are
compute-bound?), and throughput at 256 requests for the KV formats (does an int8 KV cache, holding
twice the tokens, raise throughput?). Results are ordinary offline results (one result.json per
workload, one run per format, `opsctl report` reads them) plus summary.json with each figure's ratio
to the 16-bit engine's in the same run.
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

# Each quantized entry names its kernels: the engine's default (auto) takes the CUDA ones on Hopper, the
# Triton ones elsewhere, and a figure must say which it measured (the LM head is 16-bit unless named).
WEIGHT_FORMATS = {"bf16": {}, "int8": {"model_format": "int8", "w8_kernel": "triton"},
                  "awq": {"model_format": "awq", "w4_kernel": "triton"},
                  "awq-cuda": {"model_format": "awq", "w4_kernel": "cuda"},  # the CUDA tensor-core W4A16 kernel
                  "int8-cuda": {"model_format": "int8", "w8_kernel": "cuda"},  # its int8 variants
                  # and with the LM head in int8 too (--lm-head-int8 on), through the same build's W8A16 kernel
                  "awq-cuda-head8": {"model_format": "awq", "w4_kernel": "cuda", "lm_head_int8": "on"},
                  "int8-cuda-head8": {"model_format": "int8", "w8_kernel": "cuda", "lm_head_int8": "on"}}
KV_FORMATS = {"kv16": {}, "kv8": {"quant_policy": 8}}
WEIGHT_WORKLOADS = (("decode-b1", None), ("throughput", 64))
KV_WORKLOAD = ("throughput", 256)
OUTPUT_LEN: tuple[int, int] | None = None  # None: each workload's own; tests shorten it


def _key(workload: str, num_requests: int | None) -> str:
    return workload if num_requests is None else f"{workload}-{num_requests}"


def run(model: str, out_dir: Path, weight_formats: list[str], kv: bool, kv_only: bool = False,
        common: dict | None = None) -> dict:
    """kv_only: the KV comparison alone (the 16-bit engine and the int8-KV one at 256 requests).
    common: engine settings every format shares (an emulated card's gpu_memory_gb, max_batch_size), so
    the formats differ in their format alone."""
    common = dict(common or {})
    import torch

    from engine.config import EngineConfig
    from engine.engine import LLMEngine

    from ..report.schema import BenchResult
    from ..system_info import command_line, device_info, git_commit, versions
    from .offline import bench_engine, build_workload
    from .report_table import write_requests_csv

    dev = device_info()
    results: dict[str, BenchResult] = {}
    summary: dict[str, dict] = {}

    def measure(label: str, changes: dict, workloads) -> None:
        engine = LLMEngine(model, EngineConfig(**common, **changes))
        print(f"{label}: {engine.source.name}, weights {engine.runner.weight_bytes / 2**30:.2f} GiB, "
              f"{engine.kv.num_blocks} KV blocks", flush=True)
        for workload, n in workloads:
            key = _key(workload, n)
            work = build_workload(workload, engine.vocab_size, num_requests=n, max_len=engine.session_len,
                                  output_len=OUTPUT_LEN)
            for r in bench_engine(engine, engine.source.name, work, dev.get("name", "")):
                r.label = f"opsctl engine, {label}"
                result = results.setdefault(key, BenchResult(run_id=f"formats-{key}", kind="offline",
                                                             command=command_line(), git_commit=git_commit(),
                                                             device=dev, versions=versions()))
                result.runs.append(r)
                tok_s = r.summary.output_throughput
                summary.setdefault(key, {})[label] = {"output_tok_s": tok_s, "num_kv_blocks": engine.kv.num_blocks,
                                                      "weight_gib": engine.runner.weight_bytes / 2**30,
                                                      **{k: v for k, v in r.summary.extra.items()
                                                         if k in ("decode_tokens_per_s", "achieved_gbs",
                                                                  "fraction_of_bandwidth")}}
                print(f"  {key}: {tok_s:,.1f} output tok/s", flush=True)
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    for name in (["bf16"] if kv_only else weight_formats):
        extra = [KV_WORKLOAD] if kv and name == "bf16" else []  # the 16-bit engine is the KV peer too
        measure(name, WEIGHT_FORMATS[name], ([] if kv_only else list(WEIGHT_WORKLOADS)) + extra)
    if kv:
        measure("bf16 weights, int8 KV", KV_FORMATS["kv8"], [KV_WORKLOAD])
    for key, rows in summary.items():  # each figure against the 16-bit engine of the same run
        base = rows.get("bf16", {}).get("output_tok_s")
        for row in rows.values():
            row["ratio_to_bf16"] = row["output_tok_s"] / base if base else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, result in results.items():
        folder = out_dir / key
        write_requests_csv(result, folder)
        result.write(folder / "result.json")
    (out_dir / "summary.json").write_text(json.dumps({"device": dev, "model": model, "settings": common,
                                                      "figures": summary}, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--formats", default="bf16,int8,awq", help="Weight formats, bf16 first (the peer).")
    parser.add_argument("--no-kv", action="store_true", help="Leave out the int8 KV-cache comparison.")
    parser.add_argument("--kv-only", action="store_true",
                        help="Only the int8 KV-cache comparison (bf16 weights, 16-bit and int8 cache, 256 requests).")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="Emulate a smaller card: every engine uses at most this much GPU memory (GiB).")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="Every engine's batch cap (default: the engine's own for the card or cap).")
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in WEIGHT_FORMATS]
    if bad or not formats or formats[0] != "bf16":
        parser.error(f"--formats: bf16 first, then any of {', '.join(WEIGHT_FORMATS)}")
    if args.kv_only and args.no_kv:
        parser.error("--kv-only and --no-kv exclude each other")
    common = {k: v for k, v in (("gpu_memory_gb", args.gpu_memory_gb), ("max_batch_size", args.max_batch_size))
              if v is not None}
    summary = run(args.model, args.out, formats, not args.no_kv, args.kv_only, common)
    for key, rows in summary.items():
        for label, row in rows.items():
            ratio = row["ratio_to_bf16"]
            print(f"{key:16s} {label:22s} {row['output_tok_s']:10,.1f} tok/s"
                  + (f"  {ratio:.2f}x bf16" if ratio else ""))


if __name__ == "__main__":
    main()
