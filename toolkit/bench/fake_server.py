"""A fake OpenAI-compatible server of known timing: the ground truth for measuring load generators.

    python -m toolkit.bench.fake_server --port 8000 --ttft-ms 50 --itl-ms 7 --output-len 256 --workers 4
    opsctl bench fake-server --port 8000 ...   (the same)

No model: the answer is " w0 w1 w2 ...", one precomputed SSE event per token, so a worker process
spends its time on HTTP and timers, not on making tokens. Each request waits ttft from its arrival
(its body read) to its first token, then itl between tokens, on an absolute schedule (token i is due
at arrival + ttft + i * itl, so a late wake-up does not push the later tokens back).

Endpoints: GET /v1/models; POST /v1/completions and /v1/chat/completions, streamed (one `data:`
event per token, then a finish chunk, the usage chunk when stream_options.include_usage, then
`data: [DONE]`) or not (one JSON after the whole answer's time); GET /stats (below); GET /health.
Length: min(max_tokens, --output-len) tokens (max_completion_tokens for chat too), finish_reason
"length" when max_tokens cut it, else "stop"; ignore_eos: true makes it exactly max_tokens;
without max_tokens, --output-len (default 16). Prompt tokens in usage: whitespace-separated words
of the prompt (completions: a list of token ids counts its length), for chat the words of every
message plus --chat-template-tokens (what a chat template adds: ~30 for SmolLM2's).

Workers: --workers N uvicorn processes, each with its own listening socket on the same port
(SO_REUSEPORT: the kernel spreads the connections over the workers by their addresses). Against
engines the server must never be the bottleneck: on the H200 machine's 16 cores 4 workers
streamed 93,400 token events/s to 512 users (5 ms apart, 8 Locust processes) with no timer late,
each event one precomputed bytes object and one transport write. --workers 0 serves in this
process (tests, in a thread: FakeServer(workers=0)).

What it actually did: every worker appends one JSON line per finished request to
<stats-dir>/requests-w<k>.jsonl (arrival, first and last token times on the machine's monotonic
clock, CLOCK_MONOTONIC, the same clock as time.monotonic() in any process here; tokens sent;
prompt tokens; whether the client left). GET /stats (and FakeServer.stats()) reads every worker's
file: requests, token events, actual TTFT / ITL / E2E percentiles, the events per second over the
busy span; ?requests=1 adds the per-request lines. Tests compare a load generator's figures to
these, not only to the nominal ttft / itl, since on a loaded machine the timers themselves run late.

Faults, by the worker's own request count n (1-based; per worker process):
  fail_every=k         -> n % k == 0 answers HTTP 500 with an OpenAI error body;
  close_early_every=k  -> n % k == 0 (and not failed) sends 3 tokens, then drops the connection.
Misbehaviour, for every request (a load generator must survive each):
  models_body=(bytes, content_type) -> GET /v1/models answers HTTP 200 with exactly that body;
  stream_mode="hang"       -> the completion endpoints never send headers (until the client leaves);
  stream_mode="keepalive"  -> headers, then an SSE comment `: keep-alive` every keepalive_s, forever;
  stream_mode="endless"    -> tokens every itl, forever (never a finish or [DONE]);
  stream_mode="json"       -> HTTP 200 with a whole (non-streamed) JSON completion, not SSE;
  stream_mode="malformed"  -> one good token, then `data: {"choices": [` (not JSON), then [DONE];
  stream_mode="no-done"    -> three tokens and usage, then a clean end without `data: [DONE]`;
  stream_mode="done-only"  -> `data: [DONE]` and nothing else.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MODEL = "fake-model"
STREAM_MODES = ("normal", "hang", "keepalive", "endless", "json", "malformed", "no-done", "done-only")
_START_TIMEOUT_S = 30.0


@dataclass
class FakeConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.007
    output_len: int | None = None  # answer length when max_tokens allows more (finish "stop"); None: max_tokens
    default_max_tokens: int = 16  # without max_tokens and without output_len
    model: str = MODEL
    chat_template_tokens: int = 0  # added to a chat prompt's words in usage.prompt_tokens
    fail_every: int = 0
    close_early_every: int = 0
    stream_mode: str = "normal"
    keepalive_s: float = 0.2
    models_body: tuple[bytes, str] | None = None
    stats_dir: str | None = None

    def __post_init__(self):
        if self.stream_mode not in STREAM_MODES:
            raise ValueError(f"stream_mode {self.stream_mode!r}: one of {', '.join(STREAM_MODES)}")
        if self.ttft_s < 0 or self.itl_s < 0:
            raise ValueError("ttft and itl must be >= 0")

    def public(self) -> dict:
        d = asdict(self)
        d.pop("models_body")
        return d


# -- what a request costs in tokens --------------------------------------------------------------

def _words(value) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):  # chat content parts [{"type": "text", "text": ...}] or a list of prompts
        return sum(_words(v.get("text", "") if isinstance(v, dict) else v) for v in value)
    return 0


def prompt_tokens(body: dict, chat: bool, template_tokens: int) -> int:
    """usage.prompt_tokens: whitespace words (chat: of every message, plus the template's tokens)."""
    if chat:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        return sum(_words(m.get("content")) for m in messages) + template_tokens
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)  # token ids
    return _words(prompt)


def answer_length(body: dict, cfg: FakeConfig) -> tuple[int, str]:
    """(tokens, finish_reason) for a request: min(max_tokens, output_len), 'length' when max_tokens cut it."""
    asked = body.get("max_tokens") or body.get("max_completion_tokens")
    asked = int(asked) if isinstance(asked, (int, float)) and asked > 0 else None
    if asked is not None and (body.get("ignore_eos") or cfg.output_len is None or asked <= cfg.output_len):
        return asked, "length"
    return (cfg.output_len if cfg.output_len is not None else cfg.default_max_tokens), "stop"


# -- precomputed events --------------------------------------------------------------------------

class _Events:
    """The SSE bytes of one endpoint kind: token i's event is built once and reused for every request."""

    def __init__(self, model: str, chat: bool):
        self.chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = json.dumps({"id": "fake-1", "object": obj, "created": int(time.time()), "model": model})[:-1]
        self.tokens: list[bytes] = []
        self.role = self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        self.finish = {r: self._event([self._choice("", r)]) for r in ("length", "stop")}

    def _choice(self, text: str, finish=None) -> dict:
        if self.chat:
            return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}

    def _event(self, choices: list, usage: dict | None = None) -> bytes:
        tail = {"choices": choices, **({"usage": usage} if usage is not None else {})}
        return f"data: {self._head}, {json.dumps(tail)[1:]}\n\n".encode()

    def token(self, i: int) -> bytes:
        while len(self.tokens) <= i:
            self.tokens.append(self._event([self._choice(f" w{len(self.tokens)}")]))
        return self.tokens[i]

    def usage(self, prompt: int, completion: int) -> bytes:
        return self._event([], {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion})


# -- the ASGI app --------------------------------------------------------------------------------

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class FakeApp:
    """One worker's ASGI app. Counters are this worker's; the stats file is what tests read."""

    def __init__(self, cfg: FakeConfig, worker: int = 0):
        self.cfg, self.worker = cfg, worker
        self.num_requests = 0
        self.completion_tokens_sent = 0
        self.disconnects = 0  # requests whose client went away before their end (hang, keepalive, endless...)
        self._events = {True: _Events(cfg.model, True), False: _Events(cfg.model, False)}
        self._stats = None
        if cfg.stats_dir:
            path = Path(cfg.stats_dir) / f"requests-w{worker}.jsonl"
            self._stats = open(path, "a", encoding="utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "GET" and path == "/v1/models":
            if self.cfg.models_body is not None:
                body, content_type = self.cfg.models_body
                return await _respond(send, 200, body, content_type.encode())
            return await _json(send, 200, {"object": "list", "data": [
                {"id": self.cfg.model, "object": "model", "owned_by": "opsctl-fake", "root": self.cfg.model}]})
        if method == "GET" and path == "/health":
            return await _respond(send, 200, b"ok", b"text/plain")
        if method == "GET" and path == "/stats":
            if not self.cfg.stats_dir:
                return await _json(send, 404, _error("this fake server keeps no stats (no stats dir)", 404))
            detail = b"requests=1" in scope.get("query_string", b"")
            return await _json(send, 200, read_stats(self.cfg.stats_dir, requests=detail, config=self.cfg.public()))
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return await self._complete(scope, receive, send, chat=path.endswith("chat/completions"))
        return await _json(send, 404, _error(f"no route {method} {path}", 404))

    async def _complete(self, scope, receive, send, chat: bool):
        raw = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        # When the request's first bytes were parsed (the protocol below), not when this task first ran:
        # 32 requests arriving together wait ~6 ms here for the ones before them (195 us each), and a
        # stamp taken here hid that wait from the stats (the client saw TTFT 5 ms above them).
        arrived = scope.get(_ARRIVED_KEY) or time.monotonic()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return await _json(send, 400, _error("the body is not a JSON object", 400))
        if chat and not isinstance(body.get("messages"), list):
            return await _json(send, 400, _error('"messages" must be a list', 400))
        self.num_requests += 1
        n = self.num_requests
        cfg = self.cfg
        if cfg.fail_every and n % cfg.fail_every == 0:
            return await _json(send, 500, _error(f"injected failure on request {n}", 500, "server_error"))
        rec = {"w": self.worker, "n": n, "chat": chat, "stream": bool(body.get("stream")), "arrived": arrived,
               "first": None, "last": None, "tokens": 0, "prompt_tokens": prompt_tokens(body, chat,
                                                                                       cfg.chat_template_tokens),
               "disconnected": False, "late_max_s": 0.0, "rid": _header(scope, b"x-request-id")}
        try:
            if cfg.stream_mode == "hang":
                while (await receive())["type"] != "http.disconnect":
                    pass
                rec["disconnected"] = True
            elif cfg.stream_mode == "json":
                await _json(send, 200, {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                                        "model": cfg.model, "choices": [{"index": 0, "text": "w0 w1",
                                                                         "finish_reason": "length"}]})
            elif cfg.stream_mode != "normal":
                await self._misbehave(receive, send, chat, rec)
            elif rec["stream"]:
                close_early = bool(cfg.close_early_every and n % cfg.close_early_every == 0)
                await self._stream(receive, send, chat, body, rec, close_early)
            else:
                await self._whole(send, chat, body, rec)
        finally:
            self.disconnects += rec["disconnected"]
            rec["ended"] = time.monotonic()
            if self._stats:
                self._stats.write(json.dumps(rec) + "\n")
                self._stats.flush()

    async def _stream(self, receive, send, chat: bool, body: dict, rec: dict, close_early: bool):
        events = self._events[chat]
        tokens, finish = answer_length(body, self.cfg)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        gone = _watch_disconnect(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            if chat:
                await send({"type": "http.response.body", "body": events.role, "more_body": True})
            due = rec["arrived"] + self.cfg.ttft_s
            for i in range(tokens):
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif -delay > rec["late_max_s"]:
                    rec["late_max_s"] = -delay
                if gone.done():
                    rec["disconnected"] = True
                    return
                if close_early and i == 3:
                    raise ConnectionAbortedError("injected early close")  # uvicorn drops the connection mid-body
                await send({"type": "http.response.body", "body": events.token(i), "more_body": True})
                now = time.monotonic()
                if i == 0:
                    rec["first"] = now
                rec["last"] = now
                rec["tokens"] += 1
                self.completion_tokens_sent += 1
                due += self.cfg.itl_s
            tail = events.finish[finish]
            if usage:
                tail += events.usage(rec["prompt_tokens"], tokens)
            await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})
        finally:
            gone.cancel()

    async def _whole(self, send, chat: bool, body: dict, rec: dict):
        tokens, finish = answer_length(body, self.cfg)
        wait = rec["arrived"] + self.cfg.ttft_s + max(tokens - 1, 0) * self.cfg.itl_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        text = "".join(f" w{i}" for i in range(tokens))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if chat
                  else {"index": 0, "text": text, "finish_reason": finish})
        rec["tokens"] = tokens  # no first / last token time: nothing was streamed
        self.completion_tokens_sent += tokens
        await _json(send, 200, {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                                "created": int(time.time()), "model": self.cfg.model, "choices": [choice],
                                "usage": {"prompt_tokens": rec["prompt_tokens"], "completion_tokens": tokens,
                                          "total_tokens": rec["prompt_tokens"] + tokens}})

    async def _misbehave(self, receive, send, chat: bool, rec: dict):
        events, mode = self._events[chat], self.cfg.stream_mode
        gone = _watch_disconnect(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})

            async def out(data: bytes, more: bool = True):
                await send({"type": "http.response.body", "body": data, "more_body": more})

            if mode in ("keepalive", "endless"):
                while not gone.done():
                    if mode == "keepalive":
                        await out(b": keep-alive\n\n")
                        await asyncio.sleep(self.cfg.keepalive_s)
                    else:
                        await out(events.token(0))
                        rec["tokens"] += 1
                        await asyncio.sleep(self.cfg.itl_s)
                rec["disconnected"] = True  # these two never end by themselves: the client went away
            elif mode == "malformed":
                await out(events.token(0) + b'data: {"choices": [\n\n')
                await out(b"data: [DONE]\n\n", False)
            elif mode == "no-done":
                await out(events.token(0) + events.token(1) + events.token(2) + events.usage(1, 3), False)
            elif mode == "done-only":
                await out(b"data: [DONE]\n\n", False)
        finally:
            gone.cancel()


def _watch_disconnect(receive) -> asyncio.Task:
    """A task that ends when the client goes away (uvicorn's send() to a gone client is silently dropped)."""
    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
    return asyncio.ensure_future(watch())


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")[:200]
    return None


def _error(message: str, code: int, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


async def _json(send, status: int, doc: dict):
    await _respond(send, status, json.dumps(doc).encode(), b"application/json")


async def _respond(send, status: int, body: bytes, content_type: bytes):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- stats ---------------------------------------------------------------------------------------

def read_stats(stats_dir: str | Path, *, requests: bool = False, config: dict | None = None) -> dict:
    """What every worker did, from their request files: counts, actual timing, token events per second."""
    recs = []
    for path in sorted(Path(stats_dir).glob("requests-w*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):  # a line still being written is not read
                    recs.append(json.loads(line))
    return summarize_stats(recs, requests=requests, config=config)


def summarize_stats(recs: list[dict], *, requests: bool = False, config: dict | None = None) -> dict:
    done = [r for r in recs if r.get("tokens") and not r.get("disconnected")]
    streamed = [r for r in done if r.get("first") is not None]
    ttft = [r["first"] - r["arrived"] for r in streamed]
    itl = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in streamed if r["tokens"] > 1]
    e2e = [r["ended"] - r["arrived"] for r in done]
    out = {"config": config or {}, "requests": len(recs), "completed": len(done),
           "disconnected": sum(bool(r.get("disconnected")) for r in recs),
           "token_events": sum(r.get("tokens", 0) for r in recs),
           "ttft_s": _pcts(ttft), "itl_s": _pcts(itl), "e2e_s": _pcts(e2e),
           "late_max_s": max((r.get("late_max_s", 0.0) for r in recs), default=0.0)}
    if recs:
        start, end = min(r["arrived"] for r in recs), max(r["ended"] for r in recs)
        out["span_s"] = [start, end]
        out["token_events_per_s"] = out["token_events"] / (end - start) if end > start else 0.0
    if requests:
        out["request_list"] = recs
    return out


def _pcts(values: list[float]) -> dict | None:
    if not values:
        return None
    v = sorted(values)

    def pct(p):  # linear interpolation, as numpy's default
        k = (len(v) - 1) * p
        lo = int(k)
        return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)

    return {"count": len(v), "mean": sum(v) / len(v), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "min": v[0], "max": v[-1]}


# -- serving -------------------------------------------------------------------------------------

def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


_ARRIVED_KEY = "opsctl.arrived"


def _stamping_protocol():
    """uvicorn's httptools protocol, stamping each request's arrival into its scope (None without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class StampingProtocol(HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[_ARRIVED_KEY] = time.monotonic()

    return StampingProtocol


def _uvicorn_server(app, started=None):
    import uvicorn

    class Server(uvicorn.Server):  # uvicorn handles SIGINT / SIGTERM itself (in a main thread only)
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if started:
                started()

    # backlog: a bench opens every connection at once (hundreds of users); the default 2048 is fine.
    return Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                 http=_stamping_protocol() or "auto", timeout_graceful_shutdown=1,
                                 timeout_keep_alive=30))


def _worker_main(cfg: FakeConfig, host: str, port: int, worker: int, ready) -> None:
    """One worker process: its own SO_REUSEPORT socket on the shared port, a uvicorn server on it."""
    sock = _listen_socket(host, port)
    sock.listen(2048)
    server = _uvicorn_server(FakeApp(cfg, worker), started=lambda: ready.put(worker))
    server.run(sockets=[sock])


class FakeServer:
    """The fake server on host:port (port 0: a free one), in `workers` processes (0: a thread of this one)."""

    def __init__(self, cfg: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0, workers: int = 1,
                 **overrides):
        cfg = cfg or FakeConfig()
        if overrides:
            cfg = FakeConfig(**{**asdict(cfg), **overrides})
        self._tmp = None
        if cfg.stats_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="opsctl-fake-")
            cfg.stats_dir = self._tmp.name
        Path(cfg.stats_dir).mkdir(parents=True, exist_ok=True)
        self.cfg, self.host, self.workers = cfg, host, workers
        # Held (bound, never listening) until stop: keeps the port ours while the workers bind it too.
        self._probe = _listen_socket(host, port)
        self.port = self._probe.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.app: FakeApp | None = None  # the in-process app (workers=0): its counters
        self._procs, self._thread, self._server = [], None, None

    def start(self) -> "FakeServer":
        if self.workers <= 0:
            self._probe.listen(2048)
            self.app = FakeApp(self.cfg, 0)
            self._server = _uvicorn_server(self.app)
            self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self._probe])),
                                            name=f"fake-server-{self.port}", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not self._server.started:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RuntimeError("the fake server did not start")
                time.sleep(0.01)
            return self
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process that may run threads (pytest, uvicorn)
        ready = ctx.Queue()
        for k in range(self.workers):
            p = ctx.Process(target=_worker_main, args=(self.cfg, self.host, self.port, k, ready),
                            name=f"fake-server-w{k}", daemon=True)
            p.start()
            self._procs.append(p)
        up, deadline = set(), time.monotonic() + _START_TIMEOUT_S
        while len(up) < self.workers:
            try:
                up.add(ready.get(timeout=0.2))
            except Exception:  # noqa: BLE001 - queue.Empty: check the workers are alive
                if time.monotonic() > deadline or any(not p.is_alive() for p in self._procs):
                    self.stop()
                    raise RuntimeError(f"the fake server's workers did not start ({len(up)} of {self.workers} up)")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None
        for p in self._procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        self._procs = []
        self._probe.close()

    def stats(self, *, requests: bool = False) -> dict:
        """What the workers did so far (finished requests), as GET /stats answers."""
        return read_stats(self.cfg.stats_dir, requests=requests, config=self.cfg.public())

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the command ---------------------------------------------------------------------------------

def build_parser(prog: str = "python -m toolkit.bench.fake_server") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="A fake OpenAI-compatible server of known timing (no model).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ttft-ms", type=float, default=50.0, help="arrival to first token (default 50)")
    p.add_argument("--itl-ms", type=float, default=7.0, help="between tokens (default 7)")
    p.add_argument("--output-len", type=int, default=None,
                   help="answer tokens when max_tokens allows more (default: max_tokens, 16 without it)")
    p.add_argument("--workers", type=int, default=4, help="uvicorn processes (0: this process; default 4)")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--chat-template-tokens", type=int, default=0, help="added to chat prompts' word counts")
    p.add_argument("--stats-dir", default=None, help="where the per-request files go (default: a temp dir)")
    return p


def serve_forever(cfg: FakeConfig, host: str, port: int, workers: int) -> None:
    """Serve until SIGINT / SIGTERM; print the address first (one line), then the totals when stopping."""
    server = FakeServer(cfg, host=host, port=port, workers=workers)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"fake OpenAI server on {server.url} ({max(workers, 1)} worker(s), ttft {cfg.ttft_s * 1000:g} ms, "
          f"itl {cfg.itl_s * 1000:g} ms, output {cfg.output_len or 'max_tokens'}; stats: {server.url}/stats, "
          f"{cfg.stats_dir})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        s = server.stats()
        server.stop()
        print(f"served {s['requests']} requests, {s['token_events']} token events", flush=True)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(*([prog] if prog else [])).parse_args(argv)
    try:
        cfg = FakeConfig(ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000, output_len=args.output_len,
                         model=args.model, chat_template_tokens=args.chat_template_tokens, stats_dir=args.stats_dir)
        serve_forever(cfg, args.host, args.port, args.workers)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
