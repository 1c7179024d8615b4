"""Where a decode step's time goes: host phases (schedule, prepare + forward launch, sample + sync,
update) against GPU kernel time, with the top kernels from torch.profiler.

    python -m toolkit.bench.profile_step preset:qwen2.5-7b --batch 1 --context 128 --json out.json

A step whose wall time exceeds its GPU time by much is host-bound: the GPU idles while Python works.
With --prefill-tokens N every measured step is a mixed one, as a server runs when a request arrives:
the batch's decodes plus a new N-token prompt (admitted before the step, aborted after it, so the
batch stays the same size); its time is what a new request's TTFT and every running request's TPOT
pay for that prompt.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict


def _timed_step(engine, phases: dict, prefill_tokens: int = 0, index: int = 0) -> None:
    """engine.step() with each phase timed (same calls as LLMEngine.step, without the overlap);
    with prefill_tokens, a new prompt of that length rides along and is aborted after the step."""
    from engine.step_plan import build_step_plan

    new = None
    if prefill_tokens:  # distinct tokens per step: no prefix-cache hit
        new = engine.add_request([1000 + (index * 7 + j) % 20000 for j in range(prefill_tokens)],
                                 _generation(1))
    t0 = time.perf_counter()
    plan = engine.scheduler.schedule()
    t1 = time.perf_counter()
    result = engine.executor.run(build_step_plan(plan))  # includes the sampled-id host sync
    t2 = time.perf_counter()
    touched = engine.scheduler.update(plan, result.tokens, engine._check_stop)
    [engine._output(r, i) for r, i in touched]
    t3 = time.perf_counter()
    phases["schedule"].append(t1 - t0)
    phases["run (prepare, forward, sample, sync)"].append(t2 - t1)
    phases["update + outputs"].append(t3 - t2)
    if new is not None:
        engine.abort(new)


def _generation(max_new_tokens: int):
    from engine import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)


def profile(model: str, batch: int, context: int, steps: int, model_format: str | None = None,
            prefill_tokens: int = 0, w4_kernel: str | None = None, w8_kernel: str | None = None) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from engine import EngineConfig, GenerationConfig
    from engine.engine import LLMEngine

    fmt = {"model_format": model_format} if model_format else {}
    if w4_kernel:
        fmt["w4_kernel"] = w4_kernel
    if w8_kernel:
        fmt["w8_kernel"] = w8_kernel
    if prefill_tokens:  # the mixed steps are run one at a time (_timed_step): no step left in flight
        fmt.update(overlap="off", max_prefill_token_num=max(8192, prefill_tokens + batch))
    engine = LLMEngine(model, EngineConfig(max_batch_size=max(1, batch + bool(prefill_tokens)),
                                           session_len=max(4096, context + 2 * steps + 64, prefill_tokens + 64), **fmt))
    gen = GenerationConfig(max_new_tokens=steps * 3 + 16, ignore_eos=True)
    for i in range(batch):
        engine.add_request([100 + (i + j) % 1000 for j in range(context)], gen)
    while engine.scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens
                                          for r in engine.scheduler.running):
        engine.step()
    for i in range(steps):  # warm-up: decodes (and the mixed step's shapes, compiled once)
        if prefill_tokens and i < 3:
            _timed_step(engine, defaultdict(list), prefill_tokens, -1 - i)
        else:
            engine.step()
    phases: dict = defaultdict(list)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        _timed_step(engine, phases, prefill_tokens, i)
    wall = (time.perf_counter() - start) / steps
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            if prefill_tokens:
                _timed_step(engine, defaultdict(list), prefill_tokens, steps + i)
            else:
                engine.step()
        torch.cuda.synchronize()
    kernels: dict = defaultdict(float)
    calls: dict = defaultdict(int)
    gpu_total = 0.0
    for evt in prof.key_averages():
        t = evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
        if t > 0 and evt.device_type.name == "CUDA":
            kernels[evt.key] += t
            calls[evt.key] += evt.count
            gpu_total += t
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {
        "model": model, "model_format": model_format or "hf", "w4_kernel": w4_kernel, "w8_kernel": w8_kernel,
        "batch": batch,
        "context": context, "prefill_tokens": prefill_tokens, "steps": steps,
        "device": torch.cuda.get_device_name(0),
        "wall_ms_per_step": wall * 1000, "tokens_per_s": (batch + prefill_tokens) / wall,
        "gpu_kernel_ms_per_step": gpu_total / steps / 1000,
        "host_phases_ms": {k: sum(v) / len(v) * 1000 for k, v in phases.items()},
        # the median step (with --prefill-tokens each step is timed alone: one slow step skews the mean)
        "wall_ms_median_step": statistics.median(sum(t) for t in zip(*phases.values())) * 1000,
        "top_kernels_ms_per_step": {k: v / steps / 1000 for k, v in top},
        "top_kernels_calls_per_step": {k: calls[k] / steps for k, _ in top},
    }


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model-format", help="weight format (EngineConfig.model_format: int8, awq, ...)")
    parser.add_argument("--w4-kernel", help="AWQ kernels: auto (default), triton or cuda (EngineConfig.w4_kernel)")
    parser.add_argument("--w8-kernel", help="int8 kernels: auto (default), triton or cuda (EngineConfig.w8_kernel)")
    parser.add_argument("--prefill-tokens", type=int, default=0,
                        help="every measured step also prefills a new prompt of this many tokens")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this profile measures GPU steps")
        return 0
    results = []
    for b in args.batch:
        r = profile(args.model, b, args.context, args.steps, args.model_format, args.prefill_tokens, args.w4_kernel,
                    args.w8_kernel)
        results.append(r)
        print(json.dumps(r, indent=1))
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
