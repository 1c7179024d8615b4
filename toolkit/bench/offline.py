"""Offline benchmark: the engine without HTTP on a fixed token workload, beside peers in the same run.

Workloads are token-id prompts with fixed output lengths (EOS ignored), so every system measured
produces exactly the same number of tokens. The engine is warmed up first; timings start after.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from ..report.schema import Run
from . import roofline
from .cpu_time import CpuAccount
from .metrics import RequestRecord, summarize


@dataclass
class OfflineWorkload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]
    mode: str = "throughput"  # throughput | ttft | shared-prefix
    params: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "num_requests": len(self.prompts),
                "prompt_tokens": sum(map(len, self.prompts)), "output_tokens": sum(self.output_lens),
                **self.params}


# name -> (num requests, input length range, output length range, mode); ranges are inclusive.
WORKLOADS = {
    "mixed": (16, (32, 256), (16, 128), "throughput"),  # CPU: engine vs transformers generate
    "decode-b1": (1, (128, 128), (256, 256), "throughput"),  # target (a)
    "throughput": (256, (100, 1024), (512, 512), "throughput"),  # target (b)
    "long-context": (1, (32000, 32000), (256, 256), "throughput"),  # target (c)
    "ttft": (1, (1024, 1024), (1, 1), "ttft"),  # target (d)
    "shared-prefix": (64, (64, 64), (1, 1), "shared-prefix"),  # target (e): 1024 shared + 64 distinct
}
SHARED_PREFIX_LEN = 1024


def _random_ids(rng: random.Random, n: int, low: int, high: int) -> list[int]:
    return [rng.randrange(low, high) for _ in range(n)]


def build_workload(name: str, vocab_size: int, *, seed: int = 0, num_requests: int | None = None,
                   input_len: tuple[int, int] | None = None, output_len: tuple[int, int] | None = None,
                   max_len: int | None = None) -> OfflineWorkload:
    """Random token prompts (ids from 100 up: clear of special tokens) of the named shape."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    n, in_range, out_range, mode = WORKLOADS[name]
    n = num_requests or n
    in_range, out_range = input_len or in_range, output_len or out_range
    rng = random.Random(seed)
    high = min(vocab_size, 49152)
    prefix = _random_ids(rng, SHARED_PREFIX_LEN, 100, high) if mode == "shared-prefix" else []
    prompts, outputs = [], []
    for _ in range(n):
        length = rng.randint(*in_range)
        out = rng.randint(*out_range)
        if max_len is not None:  # keep prompt + output within the session
            length = min(length, max_len - len(prefix) - out)
        prompts.append(prefix + _random_ids(rng, length, 100, high))
        outputs.append(out)
    params = {"seed": seed, "input_len": list(in_range), "output_len": list(out_range)}
    if prefix:
        params["shared_prefix_len"] = len(prefix)
    return OfflineWorkload(name, prompts, outputs, mode, params)


def _gen(max_new_tokens: int):
    from engine import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)


def sync_device(device) -> None:
    """Wait for queued GPU work so a timer reads what the device did (no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_requests(engine, prompts: list[list[int]], output_lens: list[int], label: str = "measure"
                 ) -> tuple[list[RequestRecord], float, list]:
    """Submit all at once and step to completion; per-request TTFT, ITL and E2E from step times."""
    from rich.progress import Progress

    requests = [engine.make_request(p, _gen(n)) for p, n in zip(prompts, output_lens)]
    records = {r.request_id: RequestRecord(i, 0.0, r.num_prompt_tokens) for i, r in enumerate(requests)}
    last_time: dict[str, float] = {}
    # The bar is redrawn by its own thread; the loop only bumps a counter every ~0.2 s.
    progress = Progress(transient=True)
    task = progress.add_task(f"{label}: output tokens", total=sum(output_lens))
    shown = 0.0
    sync_device(engine.runner.device)
    progress.start()
    start = time.perf_counter()
    for r in requests:
        engine.add(r)
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter() - start
        if now - shown > 0.2:
            progress.update(task, completed=sum(rec.output_tokens for rec in records.values()))
            shown = now
        for out in outputs:
            rec = records[out.request_id]
            if rec.ttft_s is None:
                rec.ttft_s = now
            else:
                rec.itl_s.append(now - last_time[out.request_id])
            last_time[out.request_id] = now
            rec.output_tokens = out.num_output_tokens
            if out.finished:
                rec.e2e_s = now
                if out.error:
                    rec.error = out.error
    sync_device(engine.runner.device)
    duration = time.perf_counter() - start
    progress.stop()
    return list(records.values()), duration, requests


def warm_up(engine, workload: OfflineWorkload) -> None:
    """Exercise the paths the measurement uses (prefill sizes, decode batch sizes, graphs)."""
    n = min(len(workload.prompts), 8)
    run_requests(engine, [p[:256] for p in workload.prompts[:n]], [min(8, o) for o in workload.output_lens[:n]],
                 label="warm-up")


def _engine_run(label: str, engine, model_name: str, workload: OfflineWorkload, records, duration, extra) -> Run:
    config = {k: v for k, v in asdict(engine.config).items()}
    config["max_batch_size"] = engine.scheduler.max_batch_size
    config["num_kv_blocks"] = engine.kv.num_blocks
    return Run(label=label, target="engine", model=model_name, workload=workload.describe(),
               load={"num_requests": len(workload.prompts), "arrival": "all at once"}, config=config,
               summary=summarize(records, duration, extra=extra)).with_records(records)


def bench_engine(engine, model_name: str, workload: OfflineWorkload, device_name: str, repeats: int = 1) -> list[Run]:
    """Measure the engine on the workload; shared-prefix runs with and without prefix caching.

    With repeats > 1 the throughput workload runs that many times and the fastest run is kept
    (best-of-N, as timeit does: other load on the machine only ever slows a run down).
    """
    costs = roofline.ModelCosts.from_engine(engine)
    if workload.mode == "ttft":
        return [_bench_ttft(engine, model_name, workload, costs, device_name)]
    if workload.mode == "shared-prefix":
        return _bench_shared_prefix(engine, model_name, workload, costs, device_name)
    warm_up(engine, workload)

    def measured():
        account = CpuAccount.start()
        records, duration, _ = run_requests(engine, workload.prompts, workload.output_lens)
        return records, duration, account.figures(sum(r.output_tokens for r in records))
    records, duration, cpu = min((measured() for _ in range(repeats)), key=lambda run: run[1])
    output_tokens = sum(r.output_tokens for r in records)
    extra = {}
    if len(workload.prompts) == 1:  # batch-1 decode: bandwidth-bound, show how close to the limit
        rec = records[0]
        decode_time = rec.e2e_s - rec.ttft_s
        tok_s = (rec.output_tokens - 1) / decode_time
        avg_context = rec.prompt_tokens + rec.output_tokens / 2
        extra = {"decode_tokens_per_s": tok_s, **roofline.decode_figures(costs, tok_s, 1, avg_context, device_name)}
    else:
        extra = {"gemm_tflops": costs.flops_per_token * (sum(r.prompt_tokens for r in records) + output_tokens)
                 / duration / 1e12}
    extra["num_preemptions"] = engine.stats().num_preemptions
    extra.update(cpu)  # cpu_s, output_tokens_per_cpu_s, steal_fraction (bench/cpu_time.py)
    return [_engine_run("opsctl engine", engine, model_name, workload, records, duration, extra)]


def _bench_ttft(engine, model_name, workload, costs, device_name, repeats: int = 10) -> Run:
    """TTFT of one prompt on an idle engine: the median of `repeats` runs after warm-up."""
    prompt = workload.prompts[0]
    for _ in range(3):
        run_requests(engine, [prompt], [1])
    samples = []
    for _ in range(repeats):
        recs, duration, _ = run_requests(engine, [prompt], [1])
        samples.append(recs[0])
    samples.sort(key=lambda r: r.ttft_s)
    median = samples[len(samples) // 2]
    extra = {"ttft_ms_median": median.ttft_s * 1000, "repeats": repeats,
             **roofline.prefill_figures(costs, len(prompt), median.ttft_s, device_name)}
    return _engine_run("opsctl engine", engine, model_name, workload, samples, sum(r.e2e_s for r in samples), extra)


def _bench_shared_prefix(engine, model_name, workload, costs, device_name) -> list[Run]:
    """Total prefill time of requests sharing a prefix, prefix cache off vs on; outputs must match."""
    runs, outputs, times = [], {}, {}
    for caching in (False, True):
        engine.kv.enable_prefix_caching = caching
        engine.kv.reset_prefix_cache()
        warm_up(engine, workload)
        engine.kv.reset_prefix_cache()
        queries, hits = engine.kv.stats.queries, engine.kv.stats.hits
        records, duration, requests = run_requests(engine, workload.prompts, workload.output_lens)
        outputs[caching] = [r.output_token_ids for r in requests]
        times[caching] = duration
        queried = engine.kv.stats.queries - queries
        extra = {"prefix_caching": caching, "prefill_seconds": duration,
                 "prefix_cache_hit_rate": (engine.kv.stats.hits - hits) / queried if queried else 0.0}
        label = "opsctl engine, prefix cache " + ("on" if caching else "off")
        runs.append(_engine_run(label, engine, model_name, workload, records, duration, extra))
    speedup = times[False] / times[True]
    differing = sum(a != b for a, b in zip(outputs[False], outputs[True]))
    runs[1].summary.extra.update(speedup_vs_off=speedup, outputs_identical=not differing,
                                 requests_with_different_outputs=differing)
    return runs
