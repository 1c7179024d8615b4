"""Output tokens/s of the HTTP server against the plain engine, same engine, same workload, same concurrency.

    python -m toolkit.bench.http_vs_offline --model preset:qwen2.5-7b --concurrency 64 \\
        --input-len 512 --output-len 256 --max-batch-size 64 --out reports/http_vs_offline.json

1. The plain engine (the reference): N requests of random prompt ids (input-len tokens each,
   ignore_eos, greedy, output-len new tokens) added at once to an LLMEngine whose max_batch_size is
   the concurrency, stepped to the end by the offline harness of `opsctl bench offline`
   (offline.run_requests): nothing added per step that a server would not do.
2. The closed loop: the same requests through LLMEngine.step(), a new one added as soon as one
   finishes, so C are always in flight (what the HTTP clients do, without HTTP).
3. HTTP: the real app on a real uvicorn server (a thread of this process), driven by C concurrent
   streaming /v1/completions clients in separate processes (one per 64 clients, started together
   after their warm-up, so the load generator is not the bottleneck), same prompts, closed loop.
   --backend process (the default, as `opsctl serve` runs) puts the engine in its own process
   (ProcessEngine, same config, loaded after the offline engine is freed); --backend thread wraps
   the offline engine in a thread of the server's process (ThreadedEngine); --backend both
   measures the two in one run.
Every run is warmed up first (C short requests). The JSON holds the figures, HTTP over the plain
engine (goal >= 0.95) and over the closed loop, the CPU use of the API and client processes, the
device, versions and git commit.

Random-weight presets decode every greedy token to text (engine/models/presets.py), so the server
sends one event per token as with a real model; --per-token-events additionally asks for logprobs=0
on every path, which forces one event per token whatever the model (at the cost of a log-softmax
per step on every path alike).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

from .metrics import latency_stats


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset:NAME, an HF directory, a .gguf (default: embedded)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-requests", type=int, default=None, help="default: 4 x concurrency")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cache-max-entry-count", type=float, default=0.8)
    p.add_argument("--cache-block-seq-len", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-prefill-token-num", type=int, default=8192)
    p.add_argument("--session-len", type=int, default=None, help="default: input-len + output-len + 64")
    p.add_argument("--eager", action="store_true")
    p.add_argument("--backend", choices=("process", "thread", "both"), default="process",
                   help="where the server's engine runs (default: its own process, as opsctl serve)")
    p.add_argument("--per-token-events", dest="per_token_events", action="store_true",
                   help="ask for logprobs=0 on every path (one SSE event per token whatever the model)")
    p.add_argument("--no-per-token-events", dest="per_token_events", action="store_false",
                   help="the default: no logprobs")
    p.set_defaults(per_token_events=False)
    p.add_argument("--client-procs", type=int, default=None,
                   help="load-generator processes (default: one per 64 clients)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    # Internal: the load-generator subprocess.
    p.add_argument("--client-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-name", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    # Ids below the shared tokenizer's size and above its special tokens; distinct prompts, so the
    # (off by default) prefix cache would not help either path.
    rng = random.Random(seed)
    return [[rng.randrange(100, 49000) for _ in range(length)] for _ in range(n)]


# -- offline --------------------------------------------------------------------------------------
def run_offline(engine, prompts: list[list[int]], gen, concurrency: int) -> dict:
    next_index, in_flight, tokens, finished = 0, 0, 0, 0
    start = time.perf_counter()
    while next_index < len(prompts) or engine.has_unfinished():
        while in_flight < concurrency and next_index < len(prompts):
            engine.add_request(prompts[next_index], gen)
            next_index += 1
            in_flight += 1
        for out in engine.step():
            if out.finished:
                in_flight -= 1
                finished += 1
                tokens += out.num_output_tokens
    elapsed = time.perf_counter() - start
    return {"requests": finished, "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 1)}


# -- HTTP load generator (runs in its own process) -------------------------------------------------
async def _client_run(url: str, model: str, prompts: list[list[int]], concurrency: int, output_len: int,
                      per_token_events: bool) -> dict:
    import httpx

    queue = list(reversed(prompts))
    tokens, events, errors, ttfts = 0, 0, [], []

    async def worker(client):
        nonlocal tokens, events
        while queue:
            prompt = queue.pop()
            body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            if per_token_events:
                body["logprobs"] = 0
            sent = time.perf_counter()
            first = None
            try:
                async with client.stream("POST", "/v1/completions", json=body) as resp:
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code}: {(await resp.aread())[:200]!r}")
                        continue
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            break
                        events += 1
                        if first is None:
                            first = time.perf_counter() - sent
                        if '"usage":null' in line:
                            continue
                        data = json.loads(line[6:])
                        if "error" in data:
                            errors.append(str(data["error"]))
                        elif data.get("usage") and not data.get("choices"):
                            tokens += data["usage"]["completion_tokens"]
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            if first is not None:
                ttfts.append(first)

    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ttft = latency_stats(ttfts)
    return {"requests": len(prompts), "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 1), "sse_events": events, "errors": errors[:10],
            "num_errors": len(errors), "ttft_p50_s": round(ttft.p50, 4) if ttft else None,
            "ttft_p99_s": round(ttft.p99, 4) if ttft else None}


def client_main(args) -> None:
    """One load-generator process: warm up, say "ready", wait for "go" on stdin, measure, print JSON."""
    with open(args.prompts_file) as f:
        work = json.load(f)
    warm = asyncio.run(_client_run(args.client_url, args.model_name, work["warmup"], args.concurrency, 16,
                                   args.per_token_events))
    if warm["num_errors"]:
        print(json.dumps({"error": f"warm-up failed: {warm['errors']}"}), flush=True)
        return
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    result = asyncio.run(_client_run(args.client_url, args.model_name, work["prompts"], args.concurrency,
                                     args.output_len, args.per_token_events))
    result.update(started=started, ended=time.time())
    print(json.dumps(result), flush=True)


def _split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def _drive(url: str, args, model_name: str, prompts, warmup, procs: int) -> dict:
    """`procs` client processes, each with its share of the prompts and of the concurrency, started
    together once all have warmed up; their figures merged over the common window."""
    files, clients = [], []
    shares = [args.concurrency // procs + (i < args.concurrency % procs) for i in range(procs)]
    try:
        for i, (part, warm, share) in enumerate(zip(_split(prompts, procs), _split(warmup, procs), shares)):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump({"prompts": part, "warmup": warm}, f)
                files.append(f.name)
            cmd = [sys.executable, "-m", "toolkit.bench.http_vs_offline", "--client-url", url,
                   "--prompts-file", f.name, "--model-name", model_name,
                   "--concurrency", str(share), "--output-len", str(args.output_len)]
            if not args.per_token_events:
                cmd.append("--no-per-token-events")
            clients.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True))
        for c in clients:
            line = c.stdout.readline().strip()
            if line != "ready":
                err = c.stderr.read()[-2000:] if c.poll() is not None else ""
                raise RuntimeError(f"load generator failed to warm up: {line[:500]} {err}")
        for c in clients:
            c.stdin.write("go\n")
            c.stdin.flush()
        outs = []
        for c in clients:
            out, err = c.communicate()
            if c.returncode != 0:
                raise RuntimeError(f"load generator failed: {err[-2000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        for name in files:
            os.unlink(name)
    bad = [o["error"] for o in outs if "error" in o]
    if bad:
        return {"error": bad[0]}
    elapsed = max(o["ended"] for o in outs) - min(o["started"] for o in outs)
    tokens = sum(o["output_tokens"] for o in outs)
    return {"requests": sum(o["requests"] for o in outs), "output_tokens": tokens, "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(tokens / elapsed, 1), "sse_events": sum(o["sse_events"] for o in outs),
            "num_errors": sum(o["num_errors"] for o in outs), "errors": [e for o in outs for e in o["errors"]][:10],
            "client_processes": procs,
            "ttft_p50_s_per_client": [o["ttft_p50_s"] for o in outs], "ttft_p99_s": max(
                (o["ttft_p99_s"] or 0) for o in outs)}


# -- HTTP server in this process ------------------------------------------------------------------
def run_http(aengine, args, prompts, warmup) -> dict:
    """Serve `aengine` on a real socket, drive it from the load-generator process, then shut it down."""
    import uvicorn

    from engine.server.app import build_app
    from engine.server.launcher import run_event_loop

    before = aengine.stats()
    app = build_app(aengine)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    # On uvloop, as `opsctl serve` runs it.
    thread = threading.Thread(target=lambda: run_event_loop(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        import resource

        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        result = _drive(url, args, aengine.source.name, prompts, warmup, args.client_procs)
        wall = time.perf_counter() - wall_before
        if "error" in result:
            raise RuntimeError(result["error"])
        result["engine"] = _engine_delta(before, aengine.stats())
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU per wall second of the two Python processes around the engine (1.0 = one core busy):
        # near 1.0 means that process, not the engine, sets the pace.
        result["api_process_cpu"] = round((time.process_time() - cpu_before) / wall, 3)
        result["client_process_cpu_each"] = round((children.ru_utime + children.ru_stime - children_before.ru_utime
                                              - children_before.ru_stime) / wall / args.client_procs, 3)
    finally:
        server.should_exit = True
        thread.join(30)
        asyncio.run(aengine.shutdown(timeout=5))
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _engine_delta(before, after) -> dict:
    """Engine steps and time inside step() over a run (warm-up included): where the wall time went."""
    steps = after.num_steps - before.num_steps
    busy = after.step_time_s - before.step_time_s
    return {"steps": steps, "step_time_s": round(busy, 3),
            "mean_step_ms": round(1e3 * busy / steps, 3) if steps else None,
            "generation_tokens": after.generation_tokens_total - before.generation_tokens_total}


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


def main(argv=None) -> int:
    args = _parse(argv)
    if args.client_url:
        client_main(args)
        return 0
    from engine import EngineConfig, GenerationConfig
    from engine.engine import LLMEngine

    n = args.num_requests or 4 * args.concurrency
    args.client_procs = args.client_procs or max(1, -(-args.concurrency // 64))
    session_len = args.session_len or args.input_len + args.output_len + 64
    config = EngineConfig(device=args.device, dtype=args.dtype, cache_max_entry_count=args.cache_max_entry_count,
                          cache_block_seq_len=args.cache_block_seq_len, max_batch_size=args.max_batch_size,
                          max_prefill_token_num=args.max_prefill_token_num, session_len=session_len,
                          eager_mode=args.eager)
    print(f"loading {args.model or 'the embedded default model'} ...", flush=True)
    engine = LLMEngine(args.model, config)
    prompts = _prompts(n, args.input_len, args.seed)
    warmup = _prompts(args.concurrency, args.input_len, args.seed + 1)
    logprobs = 0 if args.per_token_events else None
    gen = GenerationConfig(max_new_tokens=args.output_len, ignore_eos=True, logprobs=logprobs)

    print(f"offline: warm-up, then {n} requests at concurrency {args.concurrency} ...", flush=True)
    before = engine.stats()
    run_offline(engine, warmup, gen.replace(max_new_tokens=16), args.concurrency)
    offline = run_offline(engine, prompts, gen, args.concurrency)
    offline["engine"] = _engine_delta(before, engine.stats())
    print(f"offline: {offline['output_tok_s']} output tok/s", flush=True)
    # The plain engine: every request added at once, the scheduler admits them as slots free
    # (the offline harness of `opsctl bench offline`); with --max-batch-size = concurrency the
    # same load the closed loop and the HTTP clients keep up.
    from .offline import run_requests

    before = engine.stats()
    records, seconds, _ = run_requests(engine, prompts, [args.output_len] * len(prompts), label="plain engine")
    plain_tokens = sum(r.output_tokens for r in records)
    plain = {"requests": len(records), "output_tokens": plain_tokens, "elapsed_s": round(seconds, 3),
             "output_tok_s": round(plain_tokens / seconds, 1), "engine": _engine_delta(before, engine.stats())}
    print(f"plain engine: {plain['output_tok_s']} output tok/s", flush=True)

    env = _environment(engine)
    engine_info = {"max_batch_size": engine.scheduler.max_batch_size, "num_kv_blocks": engine.stats().num_blocks,
                   "dtype": str(engine.runner.dtype)}
    runs = {}
    for backend in (("thread", "process") if args.backend == "both" else (args.backend,)):
        print(f"http ({backend}): warm-up, then {n} streaming requests from {args.concurrency} clients ...",
              flush=True)
        if backend == "thread":
            from engine.async_engine import ThreadedEngine

            aengine = ThreadedEngine(engine)
        else:
            # Drop every reference to the offline engine (the thread backend's included) so its GPU
            # memory is free before the engine process loads the same model.
            source, engine, aengine = engine.source, None, None
            aengine = _process_engine(source, config)
        http = runs[backend] = run_http(aengine, args, prompts, warmup)
        aengine = None
        http["ratio_http_over_offline"] = (round(http["output_tok_s"] / offline["output_tok_s"], 4)
                                           if offline["output_tok_s"] else None)
        http["ratio_http_over_plain"] = round(http["output_tok_s"] / plain["output_tok_s"], 4)
        print(f"http ({backend}): {http['output_tok_s']} output tok/s ({http['num_errors']} errors, "
              f"{http['sse_events']} SSE events), {http['ratio_http_over_offline']} of offline", flush=True)
    http = runs.get("process") or runs["thread"]
    ratio = http["ratio_http_over_offline"]
    result = {
        "benchmark": "http_vs_offline", **env,
        "config": {"model": args.model or "SmolLM2-135M-Instruct", "concurrency": args.concurrency,
                   "input_len": args.input_len, "output_len": args.output_len, "num_requests": n,
                   "per_token_events": args.per_token_events, "session_len": session_len,
                   "cache_block_seq_len": args.cache_block_seq_len, "eager": args.eager, **engine_info,
                   "backend": "process" if "process" in runs else "thread"},
        "plain_engine": plain, "offline": offline, "http": http, "ratio_http_over_offline": ratio,
        "ratio_http_over_plain": http["ratio_http_over_plain"], "goal": 0.95,
    }
    if len(runs) > 1:
        result["http_thread"] = runs["thread"]
    print(f"HTTP reached {http['ratio_http_over_plain']:.1%} of the plain engine's output tok/s (goal 95%) "
          f"and {ratio:.1%} of the closed loop's", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}", flush=True)
    return 0 if not any(r["num_errors"] for r in runs.values()) else 1


def _process_engine(source, config):
    """Start the same config in its own process, once the offline engine's GPU memory is released."""
    import gc

    import torch

    from engine.engine_process import ProcessEngine

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ProcessEngine.start(source, config)


if __name__ == "__main__":
    sys.exit(main())
