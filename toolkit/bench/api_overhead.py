"""The API process's CPU cost per streamed output, without a model: the real server stack, a fake engine.

    python -m toolkit.bench.api_overhead --streams 64 --step-rate 30 --duration 15
    python -m toolkit.bench.api_overhead --profile cprofile   # cProfile of the event-loop thread
    python -m toolkit.bench.api_overhead --profile sample     # stack sampling of every thread

Three processes, as in `opsctl serve` plus a load generator:
- this one, the API process: the real app (engine.server.app.build_app) served by uvicorn as
  launcher.run_server configures it (guarded httptools protocol, asyncio.run), around the real
  ProcessEngine front (its reader thread unpickles step messages, appends ids to the mirror
  Requests and detokenizes lazily when the streams read the text);
- a fake engine process speaking ProcessEngine's pipe protocol: every `1/step_rate` s one "step"
  message with one new token (a random id in 100..49000) per running request, packed as
  engine_process._pack packs it (text None, text_end = prompt + output tokens);
- a client process: N closed-loop streaming /v1/completions clients on raw asyncio sockets
  (keep-alive, one request after another), counting SSE events.

Reported over the measured window: outputs delivered/s, SSE events per output (below 1 when the API
process falls behind and AsyncEngine.generate merges), and API-process CPU microseconds per output
(time.process_time of the whole process, and per thread from /proc/self/task/*/stat).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import threading
import time

_STATS_FIELDS = dict(num_running=0, num_waiting=0, num_blocks=1000, num_free_blocks=1000, kv_cache_usage=0.0,
                     num_preemptions=0, prefix_cache_queries=0, prefix_cache_hits=0, prompt_tokens_total=0,
                     generation_tokens_total=0, num_steps=0)


# -- the fake engine process ----------------------------------------------------------------------
def fake_engine_main(commands, events, step_rate: float, seed: int) -> None:
    from engine.engine import EngineStats

    rng = random.Random(seed)
    active: dict[str, list] = {}  # rid -> [n_prompt, n_output, max_new]
    stats = EngineStats(**_STATS_FIELDS)
    events.send(("ready", stats))
    period = 1.0 / step_rate
    next_step = time.perf_counter()
    steps = 0
    try:
        while True:
            timeout = None if not active else max(0.0, next_step - time.perf_counter())
            if commands.poll(timeout):
                while commands.poll(0):
                    cmd = commands.recv()
                    if cmd[0] == "add":
                        spec = cmd[1]
                        active[spec.request_id] = [len(spec.prompt_token_ids), 0, spec.gen.max_new_tokens]
                        if len(active) == 1 and time.perf_counter() > next_step:
                            next_step = time.perf_counter()
                    elif cmd[0] == "abort":
                        active.pop(cmd[1], None)
                    elif cmd[0] == "shutdown":
                        events.send(("stopped",))
                        return
                continue
            if not active:
                continue
            now = time.perf_counter()
            if now < next_step:
                continue
            next_step = max(next_step + period, now - period)  # fixed rate; no burst after a stall
            packed = []
            for rid, st in list(active.items()):
                st[1] += 1
                finished = st[1] >= st[2]
                packed.append((rid, [rng.randint(100, 49000)], None, finished, "length" if finished else None,
                               st[0], st[1], 0, None, None, st[0] + st[1]))
                if finished:
                    del active[rid]
            steps += 1
            stats = EngineStats(**{**_STATS_FIELDS, "num_running": len(active), "num_steps": steps})
            events.send(("step", packed, stats))
    except (EOFError, BrokenPipeError, OSError):
        return


# -- the client process ---------------------------------------------------------------------------
def client_main(port: int, streams: int, max_tokens: int, counters, stop_at: float) -> None:
    asyncio.run(_clients(port, streams, max_tokens, counters, stop_at))


async def _clients(port, streams, max_tokens, counters, stop_at):
    events_v, requests_v, errors_v = counters
    prompt = "The quick brown fox jumps over the lazy dog. " * 4

    async def one(i: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                           "ignore_eos": True}).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        while time.time() < stop_at:
            writer.write(head + body)
            buf = bytearray()
            while not (b"data: [DONE]" in buf[-64:] and buf.endswith(b"\r\n0\r\n\r\n")):
                chunk = await reader.read(65536)
                if not chunk:
                    errors_v.value += 1
                    return
                buf += chunk
                # Counted as they come (an event split between two reads is rare on loopback).
                events_v.value += chunk.count(b"data: ") - chunk.count(b"data: [DONE]")
            if not buf.startswith(b"HTTP/1.1 200"):
                errors_v.value += 1
                print(bytes(buf[:300]), file=sys.stderr)
                return
            requests_v.value += 1
        writer.close()

    await asyncio.gather(*(one(i) for i in range(streams)), return_exceptions=True)


# -- the API process (this one) -------------------------------------------------------------------
def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name of this process (utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
            name = names.get(int(tid), "other")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{name}:{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


class _Sampler:
    """A stack sampler of every thread (but itself): leaf functions and cumulative (inclusive) counts."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.leaf: dict[str, int] = {}
        self.cum: dict[str, int] = {}
        self.samples: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = threading.get_ident()
        names = {}
        while not self._stop.wait(self.interval):
            for t in threading.enumerate():
                names[t.ident] = t.name
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                tname = names.get(ident, str(ident))
                code = frame.f_code
                # Idle threads (blocked in select/recv/wait) still show a frame: count them apart.
                key = f"{tname} | {code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}:{frame.f_lineno}"
                self.leaf[key] = self.leaf.get(key, 0) + 1
                self.samples[tname] = self.samples.get(tname, 0) + 1
                seen = set()
                f = frame
                while f is not None:
                    c = f.f_code
                    k = f"{tname} | {c.co_filename.rsplit('/', 2)[-1]}:{c.co_name}"
                    if k not in seen:
                        seen.add(k)
                        self.cum[k] = self.cum.get(k, 0) + 1
                    f = f.f_back

    def report(self, top: int = 40) -> str:
        lines = [f"samples per thread: {self.samples}", "-- leaf (self) --"]
        for k, v in sorted(self.leaf.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{v:7d}  {k}")
        lines.append("-- cumulative --")
        for k, v in sorted(self.cum.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{v:7d}  {k}")
        return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--step-rate", type=float, default=30.0, help="fake engine steps per second")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--profile", choices=("none", "cprofile", "sample"), default="none")
    p.add_argument("--uvloop", action="store_true", help="run the server on uvloop (launcher uses asyncio.run)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line too")
    args = p.parse_args(argv)

    import uvicorn
    from transformers import AutoTokenizer

    from engine.engine_process import ProcessEngine
    from engine.models.presets import TOKENIZER_DIR
    from engine.request_factory import RequestFactory
    from engine.server.app import build_app
    from engine.server.connections import guarded_protocol

    ctx = mp.get_context("spawn")
    command_reader, command_writer = ctx.Pipe(duplex=False)
    event_reader, event_writer = ctx.Pipe(duplex=False)
    engine_proc = ctx.Process(target=fake_engine_main, args=(command_reader, event_writer, args.step_rate, 0),
                              name="fake-engine", daemon=True)
    engine_proc.start()
    command_reader.close()
    event_writer.close()
    ready = event_reader.recv()

    class _Source:
        name = "bench"

    class BenchEngine(ProcessEngine):
        delivered = 0

        def _deliver_step(self, outputs) -> None:
            BenchEngine.delivered += len(outputs)
            super()._deliver_step(outputs)

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    requests = RequestFactory(tok, vocab_size=49152, session_len=4096, eos_ids=frozenset({2}))
    aengine = BenchEngine(requests, _Source(), None, engine_proc, command_writer, event_reader, ready[1])
    app = build_app(aengine, model_name="bench")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", log_config=None,
                            http=guarded_protocol(max_connections=10000))
    server = uvicorn.Server(config)

    counters = (ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False))
    stop_at = time.time() + args.warmup + args.duration + 600  # the server stops the clients (terminate)
    result: dict = {}

    async def measure():
        while not server.started:
            await asyncio.sleep(0.05)
        client = ctx.Process(target=client_main, args=(port, args.streams, args.max_tokens, counters, stop_at),
                             name="bench-client", daemon=True)
        client.start()
        await asyncio.sleep(args.warmup)
        prof = sampler = None
        if args.profile == "cprofile":
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        elif args.profile == "sample":
            sampler = _Sampler()
            sampler.start()
        t0, c0, th0, ru0 = time.perf_counter(), time.process_time(), _thread_cpu(), os.times()
        d0, e0, r0 = BenchEngine.delivered, counters[0].value, counters[1].value
        await asyncio.sleep(args.duration)
        t1, c1, th1, ru1 = time.perf_counter(), time.process_time(), _thread_cpu(), os.times()
        d1, e1, r1 = BenchEngine.delivered, counters[0].value, counters[1].value
        if prof is not None:
            prof.disable()
        if sampler is not None:
            sampler.stop()
        client.terminate()
        client.join(5)
        wall, outs = t1 - t0, d1 - d0
        result.update(streams=args.streams, step_rate=args.step_rate, wall_s=round(wall, 2),
                      outputs_per_s=round(outs / wall, 1), sse_events_per_output=round((e1 - e0) / max(outs, 1), 3),
                      requests_done=r1 - r0, client_errors=counters[2].value,
                      cpu_cores=round((c1 - c0) / wall, 3), cpu_us_per_output=round(1e6 * (c1 - c0) / max(outs, 1), 1),
                      user_us_per_output=round(1e6 * (ru1.user - ru0.user) / max(outs, 1), 1),
                      system_us_per_output=round(1e6 * (ru1.system - ru0.system) / max(outs, 1), 1),
                      cpu_us_per_output_by_thread={k: round(1e6 * (v - th0.get(k, 0.0)) / max(outs, 1), 1)
                                                   for k, v in th1.items() if v - th0.get(k, 0.0) > 0.005})
        if prof is not None:
            import pstats
            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(35)
            st.sort_stats("cumulative").print_stats(45)
        if sampler is not None:
            print(sampler.report())
        server.should_exit = True

    async def serve():
        task = asyncio.ensure_future(measure())
        await server.serve(sockets=[sock])
        await task
        await aengine.shutdown(timeout=1.0)

    if args.uvloop:
        import uvloop
        uvloop.run(serve())
    else:
        asyncio.run(serve())
    engine_proc.join(5)
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
