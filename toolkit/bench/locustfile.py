"""Locust load for OpenAI-compatible servers: streaming chat or completion requests, timed from the SSE stream.

Run by toolkit.bench.load_runner in its own process, or in several (Locust monkey-patches with gevent
at import, and one gevent process is one core):

    OPSCTL_BENCH_PLAN=plan.json [OPSCTL_BENCH_ROLE=...] python -m locust -f toolkit/bench/locustfile.py \\
        --headless -u USERS -r USERS --host http://127.0.0.1:23333 --csv PREFIX --only-summary
    roles: "local" (the default: one process), "master W" (--master --expect-workers W: no users,
    it only coordinates) and "worker K W" (--worker: worker K of W; the master hands it its users).

The plan (JSON, written by the runner) holds the prompts, the load shape and the records path:
  endpoint ("chat" | "completions"), model, items [{prompt, max_tokens, prompt_tokens}],
  num_requests (measured, after warm-up) or duration_s, warmup, request_rate (null: closed loop),
  seed, records_path, cpu_path, origin (the runner's time.monotonic() when it wrote the plan),
  timeout_s, ignore_eos, temperature (None: the server's default). The API key, if any, comes in OPSCTL_BENCH_API_KEY.

Request indices: warm-ups are 0..warmup-1, measured ones follow. Worker K of W owns the indices
i with i % W == K (one process: all), so W processes together send exactly warmup + N requests, and
with Poisson arrivals each owns every W-th arrival of the one shared schedule.

Phases, in every process:
1. Users start (all at once: -r USERS). The users that take a warm-up index send it at once; every
   other user waits at the gate.
2. The gate opens when every process has all its users running and its warm-ups finished (a
   worker tells the master, which opens every worker's gate together). Without it, warm-ups
   overlapped the first measured requests: at 64 users, 4 warm-ups beside 60 measured requests
   pushed exactly 256 of them into a fifth, nearly empty wave (the old bench read 0.79 of the
   server's rate on the H200 machine's CPU). From the gate on, closed-loop users send back to
   back (never through Locust's scheduler between two requests), and Poisson arrivals are timed
   from the gate.
3. Exactly N: a process that has written all of its indices' records is done; with duration_s,
   a process is done when the deadline (gate + duration_s) has passed and nothing is in flight. When
   every process is done the runner quits, after a 1.2 s pause so Locust's CSV (rewritten every
   second, not at exit) holds the final counts.

Per request one JSON line goes to the process's records file (times in seconds from the plan's
origin, on CLOCK_MONOTONIC, the same in every process here): index, warmup, user (process:user),
scheduled_s, start_s, ttft_s (first non-empty content), e2e_s (end of stream), itl_us (gaps between
content chunks, integer microseconds), prompt_tokens (the server's usage.prompt_tokens when it reports it, else the
workload's), workload_prompt_tokens (the local tokenizer's count), output_tokens (usage, else the
number of content chunks), usage (whether the server reported it), chunks, finish_reason, status,
error. Each request carries X-Request-Id: opsctl-<process tag>-<index>, so a server's log can be
matched to the records (the fake server records it).

Client cost, measured on this 2-core machine against toolkit.bench.fake_server (1 worker), 8 users
of 1-token answers: requests' HttpUser spent 1,060 us CPU per request (700 us of it without proxy
lookups from the environment), FastHttpUser (geventhttpclient) 270 us. A response that ends at
[DONE] before its chunked terminator was read cost a new connection each time (1,600 sockets in
TIME-WAIT after 800 requests); reading the body to its end keeps the connection. A streamed token
costs ~30 us (gevent's wake-up and recv, whatever the HTTP client), of which ~9 us are json.loads
and the shape checks: parsing stays exact (a malformed event must be caught, and a cheaper check
would save under a third), and the runner spreads users over more processes instead (load_runner).
On the H200 machine's CPU one process kept up with 64 users of a 7 ms-ITL server at 48% of a core
and was saturated (98%) at 256. Every process writes its CPU use to cpu_path (CpuMeter), so the
runner can say when the client, not the server, set the pace.

Every request has one deadline, timeout_s from its start to the end of its stream (a gevent.Timeout,
so it holds through connect, headers and every read: a server that sends a keep-alive comment every
second forever still loses the request at the deadline). Whatever the server does, the request ends
with one record; a failed one has `error` = "KIND: details", and the runner counts failures by KIND:
  no response before the timeout     no HTTP headers by the deadline
  no content before the timeout      headers (maybe keep-alive comments or empty events), no token
  stream unfinished at the timeout   tokens came, [DONE] did not, by the deadline
  HTTP <code>                        a non-200 answer (its error message after the colon)
  connection failed                  no connection (refused, reset before headers)
  not an SSE stream                  a 200 whose body has no `data:` line (e.g. a whole JSON answer)
  malformed event                    a `data:` line that is not a JSON object of the OpenAI shape
  error event in stream              a `data:` event carrying an "error"
  stream broken                      the connection failed mid-stream
  stream ended before [DONE]         the body ended cleanly without `data: [DONE]`
  no content                         [DONE] (or a finish) without a single token
  client error                       a bug on this side; the request is still recorded

Locust's own statistics get the request with its end-to-end time (not time-to-headers, which is what
Locust records for stream=True), plus "TTFT" and "TPOT" entries of type SSE; warm-up requests are
named "... (warmup)". Locust rounds these; opsctl's summaries come from the raw records.

Only the standard library, gevent and locust are imported here, so the file works on its own.
"""
from __future__ import annotations

import json
import os
import random
import resource
import time
import uuid

import gevent
import gevent.event
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.runners import MasterRunner, WorkerRunner

PLAN_ENV = "OPSCTL_BENCH_PLAN"
ROLE_ENV = "OPSCTL_BENCH_ROLE"
API_KEY_ENV = "OPSCTL_BENCH_API_KEY"  # the key stays out of the plan file, which is kept with the results
_ERROR_CHARS = 300
_CSV_SETTLE_S = 1.2  # > locust.stats.CSV_STATS_INTERVAL_SEC (1 s)
_CONNECT_TIMEOUT_S = 10.0
_READ_SLACK_S = 5.0  # the socket's own read timeout, a backstop behind the request's deadline
_BODY_HEAD = 120  # bytes of a non-SSE body quoted in its error
# Records go to the file in batches from one greenlet, not from the user between two requests. The
# gaps are integer microseconds: json.dumps of a record with 255 float gaps took 216 us here, with
# ints 35 us (plus 26 us to make them from monotonic_ns stamps), so the 64 records of a closed loop
# finishing in lockstep hold the loop ~4 ms instead of ~14 ms.
_FLUSH_EVERY_S = 0.1
_TERMINATOR_WAIT_S = 0.05  # after [DONE], how long to wait for the chunked body's end (keeps the connection)
_MIN_STEADY_S = 0.25  # a shorter gate-to-first-idle span is not a phase to measure CPU over
_NO_RESPONSE = "no response before the timeout: no HTTP response within {:g} s"
_GATE_MSG, _READY_MSG, _DONE_MSG = "opsctl_gate", "opsctl_ready", "opsctl_done"


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _role() -> tuple[str, int, int]:
    """("local", 0, 1) | ("master", 0, W) | ("worker", K, W) from OPSCTL_BENCH_ROLE."""
    parts = (os.environ.get(ROLE_ENV) or "local").split()
    if parts[0] == "master":
        return "master", 0, int(parts[1])
    if parts[0] == "worker":
        return "worker", int(parts[1]), int(parts[2])
    return "local", 0, 1


def _load_plan() -> dict | None:
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


PLAN = _load_plan()
ROLE, WORKER, WORKERS = _role()
TAG = f"{uuid.uuid4().hex[:8]}{'' if ROLE == 'local' else f'w{WORKER}'}"  # in X-Request-Id and user ids


def now() -> float:
    """Seconds since the plan's origin, on the clock every process here shares."""
    return time.monotonic() - PLAN["origin"]


class CpuMeter:
    """This process's CPU at the marks the dispatcher sets; written as JSON at the end.

    busy: user+sys CPU seconds (every thread) over wall seconds. runnable: the fraction of the wall
    time the gevent loop's thread was on a CPU or waiting in the run queue for one (Linux
    /proc/thread-self/schedstat): on a machine shared with other work a process can be starved
    below 90% busy and still never idle, and its timestamps are late either way (a client asked for
    64,000 events/s on this 2-core machine: busy 0.40, runnable 0.995).
    """

    def __init__(self):
        self.marks: dict[str, tuple[float, float, float | None]] = {"start": self._read()}

    @staticmethod
    def _read() -> tuple[float, float, float | None]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open("/proc/thread-self/schedstat") as f:
                on_cpu, waiting = f.read().split()[:2]
            runnable = (int(on_cpu) + int(waiting)) / 1e9
        except (OSError, ValueError):
            runnable = None
        return now(), r.ru_utime + r.ru_stime, runnable

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, self._read())

    def write(self, path: str, users: int) -> None:
        self.marks["end"] = self._read()

        def span(a: str, b: str) -> dict | None:
            if a not in self.marks or b not in self.marks or self.marks[b][0] <= self.marks[a][0]:
                return None
            (t0, c0, r0), (t1, c1, r1) = self.marks[a], self.marks[b]
            return {"from_s": t0, "to_s": t1, "cpu_s": c1 - c0, "busy": (c1 - c0) / (t1 - t0),
                    "runnable": (r1 - r0) / (t1 - t0) if r0 is not None and r1 is not None else None}

        # The measured phase: gate to the first idle user (closed loop), else to the last request's end (a
        # Poisson rung, or users outnumbering the requests: a user idle at once says nothing).
        steady = span("gate", "drain")
        if steady is None or steady["to_s"] - steady["from_s"] < _MIN_STEADY_S:
            steady = span("gate", "done") or span("gate", "end")
        doc = {"role": ROLE if ROLE == "local" else f"{ROLE} {WORKER}", "pid": os.getpid(), "users": users,
               "measured": steady, "whole": span("start", "end"),
               "marks": {k: v[0] for k, v in self.marks.items()}}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)


class Dispatcher:
    """Hands this process's request indices (and Poisson arrival times) to its users; says when it is done."""

    def __init__(self, plan: dict, worker: int, workers: int):
        self.warmup = plan["warmup"]
        self.total = (plan["num_requests"] + self.warmup) if plan.get("num_requests") is not None else None
        self.duration_s = plan.get("duration_s")
        self.rate = plan.get("request_rate")
        self.stride = workers
        self.next_index = worker
        self.share = len(range(worker, self.total, workers)) if self.total is not None else None
        self.warm_left = len(range(worker, self.warmup, workers))
        self._rng = random.Random(plan.get("seed", 0))
        self._arrivals: list[float] = []
        self.gate = gevent.event.Event()
        self.gate_s: float | None = None
        self.spawned = False
        self.ready = False
        self.in_flight = 0
        self.written = 0
        self.done = False
        self.on_ready = None  # set at init: opens the gate (one process) or tells the master
        self.on_done = None  # set at init: quits the runner (one process) or tells the master
        self.cpu = CpuMeter()

    def _arrival(self, measured: int) -> float:
        """The measured-th arrival of the shared schedule, seconds after the gate (first at 0)."""
        while len(self._arrivals) <= measured:
            prev = self._arrivals[-1] + self._rng.expovariate(self.rate) if self._arrivals else 0.0
            self._arrivals.append(prev)
        return self._arrivals[measured]

    def take(self) -> tuple[int, float | None] | None:
        """(index, scheduled_s or None), or None when nothing is left; measured ones wait for the gate."""
        if self.next_index >= self.warmup:
            self.gate.wait()
        if self.done:
            return None
        index = self.next_index
        if self.total is not None and index >= self.total:
            return self._nothing_left(deadline_passed=False)
        scheduled = None
        if index >= self.warmup:
            if self.rate:
                scheduled = self.gate_s + self._arrival(index - self.warmup)
            if self.duration_s is not None and (now() >= self.gate_s + self.duration_s or (
                    scheduled is not None and scheduled >= self.gate_s + self.duration_s)):
                return self._nothing_left(deadline_passed=True)
        self.next_index += self.stride
        self.in_flight += 1
        return index, scheduled

    def _nothing_left(self, deadline_passed: bool) -> None:
        if not self.rate:
            self.cpu.mark("drain")  # the first user left idle: the end of the steady, all-users-busy phase
        self._maybe_done(deadline_passed)
        return None

    def finished(self, index: int) -> None:
        self.in_flight -= 1
        self.written += 1
        if index < self.warmup:
            self.warm_left -= 1
            self.maybe_ready()
        self._maybe_done(self.duration_s is not None and self.gate_s is not None
                         and now() >= self.gate_s + self.duration_s)

    def maybe_ready(self) -> None:
        if self.spawned and self.warm_left <= 0 and not self.ready:
            self.ready = True
            self.on_ready()

    def open_gate(self) -> None:
        if not self.gate.is_set():
            self.gate_s = now()
            self.cpu.mark("gate")
            self.gate.set()

    def _maybe_done(self, deadline_passed: bool) -> None:
        done = ((self.share is not None and self.written >= self.share)
                or (deadline_passed and self.in_flight == 0))
        if done and not self.done:
            self.done = True
            self.cpu.mark("done")
            RECORDS.flush()
            # In its own greenlet: quitting kills the users, and this may run in one of them.
            gevent.spawn(self.on_done)


class Records:
    """The records file of this process, written in batches by one greenlet (and at the end)."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")
        self._pending: list[dict] = []
        self._writer = None

    def add(self, record: dict) -> None:
        self._pending.append(record)
        if self._writer is None:
            self._writer = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(_FLUSH_EVERY_S)
            self.flush()

    def flush(self) -> None:
        if self._pending:
            # Regular-file writes do not yield to other greenlets: the batch goes out whole.
            records, self._pending = self._pending, []
            self._file.write("".join(json.dumps(r) + "\n" for r in records))
            self._file.flush()


def _records_path(plan: dict) -> str:
    path = plan["records_path"]
    return path if ROLE == "local" else path.replace(".jsonl", f".w{WORKER}.jsonl")


def _cpu_path(plan: dict) -> str:
    if ROLE == "local":
        return plan["cpu_path"]
    return plan["cpu_path"].replace(".json", f".w{WORKER}.json" if ROLE == "worker" else ".master.json")


DISPATCH = Dispatcher(PLAN, WORKER, WORKERS) if PLAN and ROLE != "master" else None
RECORDS = Records(_records_path(PLAN)) if DISPATCH else None
_MASTER = {"ready": set(), "done": set(), "cpu": CpuMeter() if PLAN and ROLE == "master" else None}


@events.init.add_listener
def _on_init(environment, **_kwargs):
    if PLAN is None:
        return
    runner = environment.runner

    def quit_runner():
        # Locust rewrites its --csv files every second and not at exit: let it write the final counts.
        gevent.sleep(_CSV_SETTLE_S)
        runner.quit()

    if isinstance(runner, MasterRunner):
        def on_ready(environment, msg, **_kw):
            _MASTER["ready"].add(msg.data["worker"])
            if len(_MASTER["ready"]) == WORKERS:
                _MASTER["cpu"].mark("gate")
                runner.send_message(_GATE_MSG, {})

        def on_done(environment, msg, **_kw):
            _MASTER["done"].add(msg.data["worker"])
            if len(_MASTER["done"]) == WORKERS:
                _MASTER["cpu"].mark("done")
                gevent.spawn(quit_runner)

        runner.register_message(_READY_MSG, on_ready)
        runner.register_message(_DONE_MSG, on_done)
        return
    if isinstance(runner, WorkerRunner):
        runner.register_message(_GATE_MSG, lambda environment, msg, **_kw: DISPATCH.open_gate())
        DISPATCH.on_ready = lambda: runner.send_message(_READY_MSG, {"worker": WORKER})
        DISPATCH.on_done = lambda: runner.send_message(_DONE_MSG, {"worker": WORKER})
    else:
        DISPATCH.on_ready = DISPATCH.open_gate
        DISPATCH.on_done = quit_runner


@events.spawning_complete.add_listener
def _on_spawned(user_count, **_kwargs):
    # A worker hears this from the master once every worker has spawned its users.
    if DISPATCH is not None:
        DISPATCH.spawned = True
        DISPATCH.maybe_ready()


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs):
    if PLAN is None:
        return
    if RECORDS is not None:
        RECORDS.flush()
    if DISPATCH is not None:
        DISPATCH.cpu.write(_cpu_path(PLAN), OpenAIStreamUser._count)
    elif _MASTER["cpu"] is not None:
        _MASTER["cpu"].write(_cpu_path(PLAN), 0)  # the master runs no user: it only coordinates


class OpenAIStreamUser(FastHttpUser):
    """Sends the dispatcher's requests one after another, streaming, and times them from the SSE events."""

    # One deadline per request is enforced below (gevent.Timeout); these socket timeouts are backstops.
    network_timeout = float((PLAN or {}).get("timeout_s") or 600) + _READ_SLACK_S
    connection_timeout = min(_CONNECT_TIMEOUT_S, float((PLAN or {}).get("timeout_s") or 600))
    max_retries = 0  # a retried request would be sent twice and timed once
    concurrency = 1  # one connection per user: one request in flight at a time
    _count = 0

    def on_start(self):
        if PLAN is None:
            raise RuntimeError(f"set {PLAN_ENV} to a plan file (toolkit.bench.load_runner writes one)")
        OpenAIStreamUser._count += 1
        self.user_id = f"{TAG}:{OpenAIStreamUser._count}"
        self.path = "/v1/chat/completions" if PLAN["endpoint"] == "chat" else "/v1/completions"
        # identity: an SSE stream must not be compressed (FastHttpSession asks for gzip by default)
        self.headers = {"Accept": "text/event-stream", "Content-Type": "application/json",
                        "Accept-Encoding": "identity"}
        if os.environ.get(API_KEY_ENV):
            self.headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
        # Every status is an answer to read (an error body says why); geventhttpclient would drop it.
        self.client.client.valid_response_codes = frozenset(range(100, 600))

    @task
    def send_requests(self):
        # The user's whole life is this loop: back to Locust's scheduler after each request, the
        # next send waited behind a gevent.sleep(0), i.e. behind every greenlet ready to run.
        while True:
            got = DISPATCH.take()
            if got is None:
                gevent.event.Event().wait()  # nothing left: idle until the runner quits
                return
            index, scheduled = got
            if scheduled is not None:
                delay = scheduled - now()
                if delay > 0:
                    gevent.sleep(delay)
            try:
                record = self._send(index, scheduled)
            except Exception as e:  # noqa: BLE001 - a bug here must not lose the request's record
                record = {"index": index, "warmup": index < DISPATCH.warmup, "user": self.user_id,
                          "scheduled_s": scheduled, "start_s": None,
                          "error": _one_line(f"client error: {type(e).__name__}: {e}")}
            RECORDS.add(record)
            DISPATCH.finished(index)

    def _body(self, item: dict) -> bytes:
        body = {"model": PLAN["model"], "max_tokens": item["max_tokens"], "stream": True,
                "stream_options": {"include_usage": True}}
        if PLAN["endpoint"] == "chat":
            body["messages"] = [{"role": "user", "content": item["prompt"]}]
        else:
            body["prompt"] = item["prompt"]
        if PLAN.get("ignore_eos"):
            body["ignore_eos"] = True
        if PLAN.get("temperature") is not None:
            body["temperature"] = PLAN["temperature"]
        return json.dumps(body).encode()

    def _send(self, index: int, scheduled: float | None) -> dict:
        items = PLAN["items"]
        item = items[index % len(items)]
        warmup = index < DISPATCH.warmup
        name = self.path + (" (warmup)" if warmup else "")
        rec = {"index": index, "warmup": warmup, "user": self.user_id, "scheduled_s": scheduled, "start_s": None,
               "ttft_s": None, "e2e_s": None, "itl_us": [], "prompt_tokens": item.get("prompt_tokens"),
               "workload_prompt_tokens": item.get("prompt_tokens"), "output_tokens": 0, "usage": False,
               "chunks": 0, "finish_reason": None, "status": None, "error": None}
        limit = float(PLAN.get("timeout_s") or 600)
        body = self._body(item)
        headers = {**self.headers, "X-Request-Id": f"opsctl-{TAG}-{index}"}
        # One deadline for the whole request. The socket timeouts only bound each read, which a server
        # sending a keep-alive comment every second would reset forever. gevent raises it in this
        # greenlet wherever it waits (connect, headers, any read); the stream reader catches it to say
        # how far the stream got, and the handler here catches it before the headers came.
        deadline = gevent.Timeout(limit)
        start = time.monotonic()
        rec["start_s"] = start - PLAN["origin"]
        deadline.start()
        try:
            with self.client.post(self.path, data=body, headers=headers, stream=True, name=name,
                                  catch_response=True) as resp:
                try:
                    self._read_response(resp, start, rec, deadline, limit)
                finally:
                    if rec["error"]:
                        _hang_up(resp)  # a server still streaming (or hanging) must see the client leave
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            if rec["status"] is None:
                # Locust records a request when its headers come: this one it never saw, so tell it.
                rec["error"] = _NO_RESPONSE.format(limit)
                rec["e2e_s"] = time.monotonic() - start
                self.environment.events.request.fire(request_type="POST", name=name,
                                                     response_time=rec["e2e_s"] * 1000, response_length=0,
                                                     exception=RuntimeError(rec["error"]), context={})
        finally:
            deadline.cancel()
        if not rec["error"]:
            self._fire("TTFT", rec["ttft_s"], warmup)
            if rec["output_tokens"] > 1 and rec["ttft_s"] is not None:
                self._fire("TPOT", (rec["e2e_s"] - rec["ttft_s"]) / (rec["output_tokens"] - 1), warmup)
        return rec

    def _read_response(self, resp, start: float, rec: dict, deadline: gevent.Timeout, limit: float) -> None:
        """Fill rec from the response (its stream, or its error body) and mark it for Locust."""
        rec["status"] = resp.status_code
        try:
            if resp.status_code == 0 and not deadline.pending:
                # geventhttpclient catches the deadline before the headers and answers "retries exceeded"
                rec["error"] = _NO_RESPONSE.format(limit)
            elif resp.status_code != 200:
                rec["error"] = _http_error(resp)
            else:
                self._read_stream(resp, start, rec, deadline, limit)
        except gevent.Timeout as t:  # an error body that never ends (the stream reader catches its own)
            if t is not deadline:
                raise
            rec["error"] = rec["error"] or f"HTTP {resp.status_code}: no complete error body within {limit:g} s"
        end = time.monotonic()
        if rec["e2e_s"] is None:
            rec["e2e_s"] = end - start
        resp.request_meta["response_time"] = (end - start) * 1000
        resp.request_meta["response_length"] = rec.pop("_bytes", 0)
        if rec["error"]:
            resp.failure(rec["error"])
        else:
            resp.success()

    def _fire(self, name: str, seconds: float | None, warmup: bool) -> None:
        if seconds is None:
            return
        self.environment.events.request.fire(request_type="SSE", name=name + (" (warmup)" if warmup else ""),
                                             response_time=seconds * 1000, response_length=0, exception=None,
                                             context={})

    def _read_stream(self, resp, start: float, rec: dict, deadline: gevent.Timeout, limit: float) -> None:
        """Parse `data:` events line by line as bytes arrive; time each content chunk; usage from the last chunk."""
        body = resp._response  # geventhttpclient's response: readline() returns one line as soon as it is in
        content_times: list[int] = []  # time.monotonic_ns() of each content chunk
        done = False
        head = b""  # the body's first bytes, quoted when it turns out not to be SSE
        nbytes = events = comments = 0
        try:
            while True:
                line = body.readline(b"\n")
                if not line:  # the body ended; a last line without a newline is still in the buffer
                    line = body.read()
                    if not line:
                        break
                now_ns = time.monotonic_ns()
                nbytes += len(line)
                if len(head) < _BODY_HEAD:
                    head += line[: _BODY_HEAD - len(head)]
                line = line.strip()
                if line.startswith(b":"):  # an SSE comment: a keep-alive, no content
                    comments += 1
                    continue
                if not line.startswith(b"data:"):
                    continue
                events += 1
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                event = _parse_event(payload)
                if event.get("error"):
                    err = event["error"]
                    rec["error"] = _one_line("error event in stream: "
                                             + str(err.get("message", err) if isinstance(err, dict) else err))
                    done = True
                    break
                if _has_content(event):
                    content_times.append(now_ns)
                for choice in event["choices"]:
                    if choice.get("finish_reason"):
                        rec["finish_reason"] = choice["finish_reason"]
                usage = event.get("usage")
                if usage:
                    rec["usage"] = True
                    rec["output_tokens"] = int(usage.get("completion_tokens") or 0)
                    if usage.get("prompt_tokens") is not None:
                        rec["prompt_tokens"] = int(usage["prompt_tokens"])
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            if content_times:
                rec["error"] = (f"stream unfinished at the timeout: {len(content_times)} content chunks in "
                                f"{limit:g} s, no [DONE]")
            else:
                rec["error"] = (f"no content before the timeout: no token within {limit:g} s "
                                f"({comments} keep-alive comments, {events} events)")
        except _Malformed as e:
            rec["error"] = _one_line(f"malformed event: after {len(content_times)} content chunks: {e}")
        except Exception as e:  # noqa: BLE001 - a broken stream is the server's error, recorded per request
            rec["error"] = _one_line(f"stream broken: after {len(content_times)} content chunks: "
                                     f"{type(e).__name__}: {e}")
        end = time.monotonic()
        if done and not rec["error"]:
            _finish_body(body)
        rec["_bytes"] = nbytes
        rec["chunks"] = len(content_times)
        if not done and not rec["error"]:
            content_type = (resp.headers or {}).get("content-type") or ""
            if not events and "event-stream" not in content_type:
                # e.g. the whole completion as one JSON: the server ignored "stream": true
                rec["error"] = _one_line(f"not an SSE stream: HTTP 200 with Content-Type "
                                         f"{content_type or 'none'} and no data: line, body "
                                         f"{head.decode('utf-8', 'replace')!r}")
            else:
                rec["error"] = f"stream ended before [DONE]: after {len(content_times)} content chunks"
        if content_times:
            rec["ttft_s"] = content_times[0] / 1e9 - start
            rec["itl_us"] = [(b - a) // 1000 for a, b in zip(content_times, content_times[1:])]
        rec["e2e_s"] = end - start
        if not rec["usage"]:
            rec["output_tokens"] = len(content_times)
        if not rec["error"] and not content_times:
            rec["error"] = "no content: [DONE] before any token"


class _Malformed(Exception):
    """A `data:` event that is not what an OpenAI stream sends."""


def _parse_event(payload: bytes) -> dict:
    """The event as a dict with a list of dict choices and a dict (or no) usage; else _Malformed."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise _Malformed(f"data: line is not JSON: {payload[:80].decode('utf-8', 'replace')!r}") from None
    if not isinstance(event, dict):
        raise _Malformed(f"data: line is JSON but not an object: {payload[:80].decode('utf-8', 'replace')!r}")
    choices = event.get("choices")
    if choices is None:
        event["choices"] = []
    elif not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise _Malformed(f"\"choices\" is not a list of objects: {str(choices)[:80]!r}")
    usage = event.get("usage")
    if usage is not None and (not isinstance(usage, dict) or not all(
            isinstance(usage.get(k), int) or usage.get(k) is None for k in ("prompt_tokens", "completion_tokens"))):
        raise _Malformed(f"\"usage\" is not an object of token counts: {str(usage)[:80]!r}")
    return event


def _has_content(event: dict) -> bool:
    for choice in event["choices"]:
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                return True
        elif choice.get("text"):  # completions
            return True
    return False


def _finish_body(body) -> None:
    """Read past [DONE] to the end of the HTTP body, briefly, so the connection goes back to the pool."""
    if body.message_complete:
        return
    try:
        with gevent.Timeout(_TERMINATOR_WAIT_S, False):
            while body.readline(b"\n"):
                pass
    except Exception:  # noqa: BLE001 - the connection is dropped instead; the request itself is done
        pass
    if not body.message_complete:
        body.release()


def _hang_up(resp) -> None:
    """Close the connection under a response (a failed connection has none)."""
    body = getattr(resp, "_response", None)
    if body is not None:
        try:
            body.release()  # an unfinished body: geventhttpclient closes the socket instead of pooling it
        except Exception:  # noqa: BLE001 - already broken: nothing left to close
            pass


def _http_error(resp) -> str:
    if resp.status_code == 0:  # Locust's stand-in response for a connection that failed
        return _one_line(f"connection failed: {getattr(resp, 'error', None) or 'no response'}")
    message = ""
    try:
        body = getattr(resp, "_response", None)
        text = body.read(4096).decode("utf-8", "replace") if body is not None else ""
        try:
            doc = json.loads(text)
            err = doc.get("error", doc) if isinstance(doc, dict) else doc
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        except ValueError:
            message = text
    except Exception as e:  # noqa: BLE001
        message = f"(body unreadable: {type(e).__name__})"
    return _one_line(f"HTTP {resp.status_code}: {message}".rstrip(": "))
