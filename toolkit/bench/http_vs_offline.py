"""Output tokens/s of `opsctl serve` under `opsctl bench --url` against the plain engine: same prompts, same sampling.

    python -m toolkit.bench.http_vs_offline --model preset:qwen2.5-7b --concurrency 64 \\
        --input-len 512 --output-len 256 --out reports/http_vs_offline.json

1. The prompts are the bench's own: `opsctl bench --dataset random` (workloads.build_workload) with the
   served model's tokenizer, the seed and the lengths given, warm-up + N of them. The plain engine gets
   each text tokenized as the server tokenizes it (the engine's RequestFactory), so both run exactly
   the same token ids; after the HTTP run the bench's plan (raw/plan-0.json) and the server's
   usage.prompt_tokens of every request are checked against them.
2. The plain engine (the reference, "offline"): the N measured requests added at once to an LLMEngine
   whose max_batch_size is the concurrency and stepped to the end by the harness of `opsctl bench
   offline` (offline.run_requests): greedy, EOS ignored, nothing added per step that a server would not
   do. It is warmed up first with the harness's own warm-up and the requests the HTTP run warms up
   with. Then it is freed (and the CUDA cache emptied) before the server loads the same model.
3. HTTP: `python -m toolkit serve` in its own process (serve_subprocess.py) with the same EngineConfig
   (EngineConfig.to_flags()), driven by `opsctl bench --url`'s load generator (load_runner.run_http_bench:
   Locust, closed loop of C users, streaming /v1/completions with ignore_eos and temperature 0, the
   warm-up requests first, throughput over the steady window when all C users were busy). --backend
   thread serves with --no-engine-process (the engine in a thread of the API process); both runs both.
The JSON holds both figures, HTTP over the plain engine (goal >= 0.95), the bench's result folder and
its client figures (Locust processes' CPU, whether the load generator was saturated), the CPU of the
server's API and engine processes over the measured window, device, versions and git commit.
Exit code 0 when every request succeeded, the prompts were identical and both produced every token
asked for; 1 otherwise; 130 when interrupted.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import re
import shlex
import signal
import sys
from pathlib import Path

from .serve_subprocess import CpuSampler, ServeError, ServeProcess

GOAL = 0.95
SERVE_FLAGS = ["--log-level", "warning", "--shutdown-timeout", "5"]  # nothing is in flight when it is stopped


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset:NAME, an HF directory, a .gguf (default: embedded)")
    p.add_argument("--concurrency", type=int, default=64, help="HTTP users, and the plain engine's max_batch_size")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-requests", type=int, default=None, help="measured requests (default: 4 x concurrency)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up requests (default: min(concurrency, 4))")
    p.add_argument("--seed", type=int, default=0, help="seed of the bench's random prompts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cache-max-entry-count", type=float, default=0.8)
    p.add_argument("--cache-block-seq-len", type=int, default=64)
    p.add_argument("--max-prefill-token-num", type=int, default=8192)
    p.add_argument("--session-len", type=int, default=None, help="default: input-len + output-len + 64")
    p.add_argument("--eager", action="store_true")
    p.add_argument("--backend", choices=("process", "thread", "both"), default="process",
                   help="where the server's engine runs (default: its own process, as opsctl serve runs it)")
    p.add_argument("--client-processes", type=int, default=None,
                   help="Locust processes (default: the bench's choice, one per 64 users)")
    p.add_argument("--serve-timeout", type=float, default=600.0, help="seconds the server may take to come up")
    p.add_argument("--bench-dir", default=None, help="where the bench's result folders go (default: --out's folder, "
                                                     "else reports)")
    p.add_argument("--bench-run-id", default=None, help="the bench's result folder (default: http-vs-offline-<time>; "
                                                        "-thread is added to the thread backend's with --backend both)")
    p.add_argument("--out", default=None, help="write the result JSON here")
    return p.parse_args(argv)


# -- the prompts -----------------------------------------------------------------------------------

def bench_items(tokenizer_path: str, count: int, input_len: int, output_len: int, seed: int) -> list:
    """The WorkItems `opsctl bench --dataset random` builds for these arguments (its first rung's items)."""
    from .workloads import build_workload, find_tokenizer, load_tokenizer

    tok = load_tokenizer(find_tokenizer(tokenizer_path))
    items, _ = build_workload("random", tok, count, input_len=(input_len, input_len),
                              output_len=(output_len, output_len), default_output_len=(output_len, output_len),
                              seed=seed)
    return items


# -- the plain engine ------------------------------------------------------------------------------

def run_plain(engine, prompts: list[list[int]], output_lens: list[int], warm_prompts: list[list[int]],
              warm_lens: list[int]) -> dict:
    """The offline harness on the measured requests, after its warm-up and the HTTP run's warm-up requests."""
    from .metrics import latency_stats
    from .offline import OfflineWorkload, run_requests, warm_up

    warm_up(engine, OfflineWorkload("http_vs_offline", prompts, output_lens))
    if warm_prompts:  # the server sees these full-length requests before its measurement: so does the engine
        run_requests(engine, warm_prompts, warm_lens, label="warm-up")
    before = engine.stats()
    records, seconds, _ = run_requests(engine, prompts, output_lens, label="plain engine")
    after = engine.stats()
    done = [r for r in records if not r.error]
    tokens = sum(r.output_tokens for r in done)
    ttft = latency_stats(r.ttft_s for r in done)
    steps, busy = after.num_steps - before.num_steps, after.step_time_s - before.step_time_s
    return {"requests": len(records), "num_errors": len(records) - len(done),
            "errors": [r.error for r in records if r.error][:10], "output_tokens": tokens,
            "elapsed_s": round(seconds, 3), "output_tok_s": round(tokens / seconds, 1),
            "ttft_p50_s": round(ttft.p50, 4) if ttft else None, "ttft_p99_s": round(ttft.p99, 4) if ttft else None,
            "engine": {"steps": steps, "step_time_s": round(busy, 3),
                       "mean_step_ms": round(1e3 * busy / steps, 3) if steps else None,
                       "generation_tokens": after.generation_tokens_total - before.generation_tokens_total,
                       "preemptions": after.num_preemptions - before.num_preemptions}}


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- HTTP ------------------------------------------------------------------------------------------

_METRIC = re.compile(r"^(opsctl:[a-z_]+)\{[^}]*\} (\S+)$", re.M)


def _server_counters(url: str) -> dict[str, float]:
    """The engine's counters from the server's /metrics (steps, tokens, preemptions, KV blocks); {} when
    the server does not answer (it died: the bench's records say how)."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {name: float(value) for name, value in _METRIC.findall(text)}


def _engine_counters(before: dict[str, float], after: dict[str, float]) -> dict | None:
    names = ("num_engine_steps", "generation_tokens", "num_preemptions")
    if not all(f"opsctl:{n}_total" in before and f"opsctl:{n}_total" in after for n in names):
        return None
    grew = {n: int(after[f"opsctl:{n}_total"] - before[f"opsctl:{n}_total"]) for n in names}
    return {"steps": grew["num_engine_steps"], "generation_tokens": grew["generation_tokens"],
            "preemptions": grew["num_preemptions"], "num_kv_blocks": int(after.get("opsctl:kv_cache_num_blocks", 0)),
            "includes_warmup": True}  # /metrics counts the warm-up requests too


def run_http(args, backend: str, config, tokenizer_path: str, items: list, prompts: list[list[int]],
             warmup: int, run_id: str) -> dict:
    """Serve the model with `config` in an `opsctl serve` subprocess, run the bench against it, stop it."""
    from .load_runner import HttpBenchOptions, run_http_bench

    bench_root = Path(args.bench_dir)
    (bench_root / run_id).mkdir(parents=True, exist_ok=True)
    flags = config.replace(engine_process=backend == "process").to_flags() + SERVE_FLAGS
    server = ServeProcess(args.model, flags, bench_root / run_id / "serve.log")
    try:
        url = server.wait_ready(args.serve_timeout)
        print(f"http ({backend}): {url}, pids {server.pids}", flush=True)
        before = _server_counters(url)
        opts = HttpBenchOptions(
            url=url, endpoint="completions", dataset="random", input_len=(args.input_len, args.input_len),
            output_len=(args.output_len, args.output_len), num_requests=len(prompts) - warmup,
            concurrency=[args.concurrency], warmup=warmup, seed=args.seed, run_id=run_id, output_dir=bench_root,
            ignore_eos=True, temperature=0.0, tokenizer=tokenizer_path, client_processes=args.client_processes)
        with CpuSampler(server.pids) as cpu:
            result, bench_dir = run_http_bench(opts)
        after = _server_counters(url)
    finally:
        stopped = server.stop()
    run = result.runs[0]
    if run.summary.extra.get("interrupted"):
        raise KeyboardInterrupt
    http = _http_figures(run, bench_dir, items, prompts, warmup, cpu)
    http["engine"] = _engine_counters(before, after)
    http.update(bench_dir=str(bench_dir), bench_notes=result.notes,
                server={"command": shlex.join(server.command), "log": str(server.log_path), "pids": server.pids,
                        **stopped})
    return http


def _http_figures(run, bench_dir: Path, items: list, prompts: list[list[int]], warmup: int, cpu: CpuSampler) -> dict:
    """The bench run's figures, its token counts from its per-request files, and the identity checks."""
    s, extra = run.summary, run.summary.extra
    with open(bench_dir / run.requests_file, newline="") as f:
        rows = list(csv.DictReader(f))
    plan = json.loads((bench_dir / "raw" / "plan-0.json").read_text())
    raw = [json.loads(line) for line in (bench_dir / run.config["raw_records"]).read_text().splitlines()
           if line.strip()]
    measured = [r for r in raw if not r.get("warmup") and r.get("start_s") is not None]
    ok = [r for r in rows if not r["error"]]
    tokens = sum(_int(r["output_tokens"]) for r in ok)
    # Row i is measured request i, i.e. bench item warmup + i: its server-side prompt length must be
    # the plain engine's (the server's usage.prompt_tokens, as the bench recorded it).
    differing = sum(_int(r["prompt_tokens"]) != len(prompts[warmup + _int(r["index"])]) for r in ok)
    sent = [(it["prompt"], it["max_tokens"]) for it in plan["items"]]
    events = sum(int(r.get("chunks") or 0) for r in measured if not r.get("error"))
    busy = _server_cpu(cpu, plan["origin"], measured, extra.get("throughput_window_s"))
    clients = extra.get("client_cpu") or []
    return {
        "requests": s.num_requests, "num_errors": s.num_errors, "errors": [r["error"] for r in rows if r["error"]][:10],
        "output_tokens": tokens, "elapsed_s": round(s.duration_s, 3), "output_tok_s": round(s.output_throughput, 1),
        "throughput_window": "steady" if "throughput_window_s" in extra else "whole run",
        "whole_run_output_tok_s": round(extra["whole_run"]["output_throughput"], 1) if "whole_run" in extra else None,
        "sse_events": events, "one_event_per_token": events == tokens,
        "ttft_p50_s": round(s.ttft.p50, 4) if s.ttft else None, "ttft_p99_s": round(s.ttft.p99, 4) if s.ttft else None,
        "tpot_p50_s": round(s.tpot.p50, 5) if s.tpot else None,
        "prompts_identical": sent == [(it.prompt, it.max_tokens) for it in items] and not differing,
        "requests_with_other_prompt_tokens": differing,
        "api_process_cpu": busy.get("api"), "engine_process_cpu": busy.get("engine"),
        "client_processes": extra.get("client_processes"), "client_cpu": clients,
        "client_process_cpu": max((c["busy"] for c in clients if c.get("users")), default=None),
        "client_saturated": extra.get("client_saturated"),
    }


def _server_cpu(cpu: CpuSampler, origin: float, measured: list[dict], window: list[float] | None) -> dict:
    """Cores the server's processes used over the throughput window (else first send to last finish).

    Record times are seconds after the plan's origin, a time.monotonic() reading like CpuSampler's;
    the bench's window is in seconds after the first measured send."""
    if not measured:
        return {}
    first = min(r["start_s"] for r in measured)
    if window is None:
        window = [0.0, max(r["start_s"] + (r.get("e2e_s") or 0.0) for r in measured) - first]
    return cpu.busy(origin + first + window[0], origin + first + window[1])


def _int(cell: str) -> int:
    return int(float(cell))  # pandas writes an int column with a missing value as floats


# -- main ------------------------------------------------------------------------------------------

def _environment(engine) -> dict:
    import torch

    from ..system_info import git_commit, versions

    device = engine.runner.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "versions": versions(), "git_commit": git_commit(),
            "http_impl": "httptools" if _has("httptools") else "h11", "uvloop": _has("uvloop")}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. `timeout`) stops the server and Locust as Ctrl-C does


def main(argv=None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def _main(args) -> int:
    from engine import EngineConfig
    from engine.engine import LLMEngine

    from ..report.schema import new_run_id
    from .load_runner import BenchError

    c, n = args.concurrency, args.num_requests or 4 * args.concurrency
    warmup = args.warmup if args.warmup is not None else min(c, 4)
    session_len = args.session_len or args.input_len + args.output_len + 64
    args.bench_dir = args.bench_dir or (os.path.dirname(os.path.abspath(args.out)) if args.out else "reports")
    config = EngineConfig(device=args.device, dtype=args.dtype, cache_max_entry_count=args.cache_max_entry_count,
                          cache_block_seq_len=args.cache_block_seq_len, max_batch_size=c,
                          max_prefill_token_num=args.max_prefill_token_num, session_len=session_len,
                          eager_mode=args.eager)
    print(f"loading {args.model or 'the embedded default model'} ...", flush=True)
    engine = LLMEngine(args.model, config)
    tokenizer_path = engine.source.tokenizer_path
    items = bench_items(tokenizer_path, warmup + n, args.input_len, args.output_len, args.seed)
    prompts = [engine.tokenize_prompt(it.prompt) for it in items]
    lens = [it.max_tokens for it in items]
    print(f"plain engine: warm-up, then {n} requests at once, max_batch_size {c} ...", flush=True)
    plain = run_plain(engine, prompts[warmup:], lens[warmup:], prompts[:warmup], lens[:warmup])
    print(f"plain engine: {plain['output_tok_s']} output tok/s", flush=True)
    env = _environment(engine)
    engine_info = {"max_batch_size": engine.scheduler.max_batch_size, "num_kv_blocks": engine.stats().num_blocks,
                   "dtype": str(engine.runner.dtype)}
    model_name = engine.source.name
    del engine  # its weights, KV cache and graphs must be gone before the server loads the same model
    _free_device_memory()

    backends = ("thread", "process") if args.backend == "both" else (args.backend,)
    base_id = args.bench_run_id or new_run_id("http-vs-offline")
    runs = {}
    for backend in backends:
        run_id = base_id + ("-thread" if backend == "thread" and len(backends) > 1 else "")
        print(f"http ({backend}): opsctl serve + opsctl bench --url, {c} users, warm-up {warmup}, then {n} "
              "streaming requests ...", flush=True)
        try:
            http = runs[backend] = run_http(args, backend, config, tokenizer_path, items, prompts, warmup, run_id)
        except (ServeError, BenchError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        # The plain engine is the offline reference now: both names carry the one ratio. Its figure spans
        # its whole run (all requests added at once, to the last token), so the HTTP figure set against it
        # does too (first send to last token, ramp and drain included); the bench's steady window (every
        # user busy) measures a closed loop whose arrivals interleave prefill with decode, a different
        # load from the plain engine's waves: its ratio is kept beside, not as the answer.
        whole = http.get("whole_run_output_tok_s") or http["output_tok_s"]
        http["ratio_http_over_plain"] = http["ratio_http_over_offline"] = round(whole / plain["output_tok_s"], 4)
        http["ratio_steady_window_over_plain"] = round(http["output_tok_s"] / plain["output_tok_s"], 4)
        print(f"http ({backend}): {http['output_tok_s']} output tok/s, {http['num_errors']} errors, "
              f"{http['sse_events']} SSE events, client saturated: {http['client_saturated']}; "
              f"{http['ratio_http_over_plain']:.1%} of the plain engine over the whole run "
              f"({http['ratio_steady_window_over_plain']:.1%} in the steady window); bench folder {http['bench_dir']}",
              flush=True)

    http = runs.get("process") or runs["thread"]
    result = {
        "benchmark": "http_vs_offline", **env,
        "config": {"model": model_name, "concurrency": c, "input_len": args.input_len, "output_len": args.output_len,
                   "num_requests": n, "warmup": warmup, "seed": args.seed, "session_len": session_len,
                   "cache_block_seq_len": args.cache_block_seq_len, "eager": args.eager, **engine_info,
                   "backend": "process" if "process" in runs else "thread", "endpoint": "/v1/completions",
                   "temperature": 0, "ignore_eos": True, "prompts": "opsctl bench --dataset random",
                   "tokenizer": tokenizer_path},
        "plain_engine": plain, "http": http, "ratio_http_over_plain": http["ratio_http_over_plain"],
        "ratio_http_over_offline": http["ratio_http_over_offline"], "goal": GOAL,
    }
    if len(runs) > 1:
        result["http_thread"] = runs["thread"]
    print(f"HTTP reached {http['ratio_http_over_plain']:.1%} of the plain engine's output tok/s "
          f"(goal {GOAL:.0%})", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}", flush=True)
    return 0 if _complete(plain, runs.values(), n * args.output_len) else 1


def _complete(plain: dict, https, expected_tokens: int) -> bool:
    """Every request succeeded, on identical prompts, and every path produced every token asked for."""
    problems = [f"plain engine: {plain['num_errors']} errors"] if plain["num_errors"] else []
    if plain["output_tokens"] != expected_tokens:
        problems.append(f"plain engine: {plain['output_tokens']} output tokens of {expected_tokens}")
    for http in https:
        if http["num_errors"]:
            problems.append(f"http: {http['num_errors']} errors, first {http['errors'][:1]}")
        if http["output_tokens"] != expected_tokens:
            problems.append(f"http: {http['output_tokens']} output tokens of {expected_tokens}")
        if not http["prompts_identical"]:
            problems.append(f"http: prompts differ from the plain engine's "
                            f"({http['requests_with_other_prompt_tokens']} requests of other lengths)")
        if http["server"]["left_running"]:
            problems.append(f"http: server processes left running: {http['server']['left_running']}")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr, flush=True)
    return not problems


if __name__ == "__main__":
    sys.exit(main())
