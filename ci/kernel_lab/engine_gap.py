"""Lab 18: what the engine's batch-1 decode step costs beyond its CUDA graph and LM head.

On an H100 the engine decodes at batch 1 in ~2.19 ms a token with AWQ weights and ~5.16 ms with bf16 (decode
steps only, toolkit.bench.formats), while the batch-1 graph and the LM head take ~2.07 / ~5.02 ms (labs 16 and
17): 100-140 µs a step go elsewhere, 5% of AWQ's step and 2.7% of bf16's, so they cost AWQ's ratio ~2.8%.
This lab runs one long greedy request through `engine.step()` (the engine's own loop, with its overlap of the
next launch and the last step's collection) and times, per step: the wall time, the host time of each phase
(scheduling, input preparation, graph replay, LM head and sampler launches, collection including its wait for
the GPU, bookkeeping), then the graph and head alone at the same context. A host phase near the GPU step's
length is a sync; a wait near zero means the host, not the GPU, sets the pace.

    python3 ci/kernel_lab/engine_gap.py --formats bf16 --out $OUT/engine_gap.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from one_row_configs import free_memory, stamped_log, step_us  # noqa: E402


class Timed:
    """Host time of every call of a callable, summed under a label."""

    def __init__(self, fn, label: str, totals: dict):
        self.fn, self.label, self.totals = fn, label, totals

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.label] += time.perf_counter() - t


def measure(fmt: str, args, log) -> dict:
    from engine.config import EngineConfig
    from engine.engine import LLMEngine
    from toolkit.bench.formats import WEIGHT_FORMATS
    from toolkit.bench.offline import _gen, sync_device

    engine = LLMEngine(args.model, EngineConfig(**WEIGHT_FORMATS[fmt]))
    runner = engine.runner
    totals: dict = defaultdict(float)
    engine.scheduler.schedule = Timed(engine.scheduler.schedule, "schedule", totals)
    engine.scheduler.update = Timed(engine.scheduler.update, "scheduler.update", totals)
    engine.executor.launch = Timed(engine.executor.launch, "launch (all of it)", totals)
    engine.executor.collect = Timed(engine.executor.collect, "collect (waits for the GPU)", totals)
    runner.buffers.prepare = Timed(runner.buffers.prepare, "  prepare inputs", totals)
    if runner.graphs is not None:  # (a CPU smoke run has none)
        runner.graphs.replay = Timed(runner.graphs.replay, "  graph replay", totals)
    runner.model.compute_logits = Timed(runner.model.compute_logits, "  LM head launch", totals)
    runner.sampler = Timed(runner.sampler, "  sampler launch", totals)

    prompt = [1000 + i for i in range(args.prompt)]
    request = engine.make_request(prompt, _gen(args.warmup + args.steps + 8))
    engine.add(request)
    for _ in range(args.warmup):
        engine.step()
    sync_device(runner.device)
    totals.clear()
    t = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    sync_device(runner.device)
    wall = (time.perf_counter() - t) / args.steps
    context = args.prompt + args.warmup + args.steps // 2
    result = {"format": fmt, "context_mid": context, "wall_us_per_step": wall * 1e6,
              "host_us_per_step": {k: v * 1e6 / args.steps for k, v in sorted(totals.items())}}
    while engine.has_unfinished():
        engine.step()
    if runner.graphs is not None:  # the graph and the head alone, at the measured steps' middle length
        result["graph_and_head_us"] = step_us(runner, context, 3, 60)
        result["gap_us"] = result["wall_us_per_step"] - result["graph_and_head_us"]
    log(f"{fmt}: engine {result['wall_us_per_step']:.1f} us a step, graph + head "
        f"{result.get('graph_and_head_us', 0):.1f}, gap {result.get('gap_us', 0):.1f}")
    for k, v in result["host_us_per_step"].items():
        log(f"  {k:32s} {v:8.1f} us")
    del engine, runner
    free_memory()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:qwen2.5-7b")
    parser.add_argument("--formats", default="bf16")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    log = stamped_log()

    report = {"model": args.model, "args": vars(args) | {"out": str(args.out)}, "results": []}
    for fmt in [f for f in args.formats.split(",") if f]:
        report["results"].append(measure(fmt, args, log))
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
