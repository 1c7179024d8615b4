"""Lab 17: decode attention's KV split count at batch 1, timed inside the engine's own decode step.

`decode_num_splits` picks the splits from shapes only (CUDA-graph safe): at batch 1 with Qwen2.5-7B's 4 KV
heads that is 64 splits whatever the context, because the block table can hold a full session. At a short
context most of them are empty (384 tokens: 6 tiles of 64, so 58 of each KV head's 64 programs have nothing to
read; until 2026-12-06 they wrote zero partials that the reduce merged). This lab times the batch-1 decode step (graph replay and LM head, as lab 16)
with the split count forced to each of --splits at each of --contexts, the default (None: the kernel's own
choice) re-timed between, to see what the empty splits cost and where fewer splits start to lose. With
--other-kernel every arm is timed with this tree's kernel and with another decode_attention.py's (an A / B of
a kernel change in one process and one engine load).

    python3 ci/kernel_lab/decode_splits.py --formats bf16,awq-cuda --out $OUT/decode_splits.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_row_configs import free_memory, stamped_log, step_us  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:qwen2.5-7b")
    parser.add_argument("--formats", default="bf16,awq-cuda")
    parser.add_argument("--contexts", default="384,2048,8192")
    parser.add_argument("--splits", default="32,16,8,4,2,1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--other-kernel", type=Path, default=None,
                        help="Another decode_attention.py (e.g. the tree before a change): each arm is then timed "
                             "with this tree's kernels and with that file's, alternately, in one process.")
    args = parser.parse_args()

    from engine.config import EngineConfig
    from engine.engine import LLMEngine
    from engine.kernels import decode_attention as da
    from toolkit.bench.formats import WEIGHT_FORMATS

    default_splits = da.decode_num_splits
    forced: dict = {"splits": None, "seen": set()}

    def choose(batch, num_kv_heads, max_blocks, block_size, head_dim, device="cuda"):
        auto = default_splits(batch, num_kv_heads, max_blocks, block_size, head_dim, device)
        if batch == 1:
            forced["seen"].add(auto)
            if forced["splits"] is not None:
                return forced["splits"]
        return auto

    da.decode_num_splits = choose
    kernels = {"this": da.paged_decode_attention}
    if args.other_kernel:  # loaded as a sibling module, so its relative imports find this tree's engine.kernels
        import importlib.util

        spec = importlib.util.spec_from_file_location("engine.kernels._other_decode_attention", args.other_kernel)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        other.decode_num_splits = choose
        kernels["other"] = other.paged_decode_attention
    report: dict = {"model": args.model, "results": []}
    log = stamped_log()

    for fmt in [f for f in args.formats.split(",") if f]:
        engine = LLMEngine(args.model, EngineConfig(**WEIGHT_FORMATS[fmt]))
        runner = engine.runner
        result = {"format": fmt, "arms": []}
        report["results"].append(result)
        for context in (int(c) for c in args.contexts.split(",")):
            for splits in [None] + [int(s) for s in args.splits.split(",") if s] + [None]:
                for name, kernel in kernels.items():
                    da.paged_decode_attention = kernel  # what the attention layer imports at each call
                    forced["splits"] = splits
                    us = step_us(runner, context, args.reps, args.iters)
                    result["arms"].append({"context": context, "splits": splits, "kernel": name, "step_us": us})
                    log(f"{fmt} context {context:6d} splits {'auto' if splits is None else splits:>4} "
                        f"{name:5s}: {us:8.1f} us")
                    args.out.write_text(json.dumps(report, indent=1))
                da.paged_decode_attention = kernels["this"]
        result["auto_splits_at_batch_1"] = sorted(forced["seen"])
        log(f"{fmt}: the default's batch-1 split counts {result['auto_splits_at_batch_1']}")
        forced["splits"] = None
        del engine, runner
        free_memory()
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
