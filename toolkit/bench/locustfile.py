"""Locust load for OpenAI-compatible servers: streaming chat or completion requests, timed from the SSE stream.

Run by toolkit.bench.load_runner in its own process, or in several (Locust monkey-patches with gevent
at import, and one gevent process is one core):

    OPSCTL_BENCH_PLAN=plan.json [OPSCTL_BENCH_ROLE=...] python -m locust -f toolkit/bench/locustfile.py \\
        --headless -u USERS -r USERS --host http://127.0.0.1:23333 --csv PREFIX --only-summary
    roles: "local" (the default: one process), "master W" (--master --expect-workers W: no users,
    it only coordinates) and "worker K W" (--worker: worker K of W; the master hands it its users).

This file is the Locust side: the plan, the process's role, the messages between master and workers,
and the user class. Beside it, imported by their module names (Locust puts this file's directory on
sys.path while it imports it): locust_dispatch (which request next, the gate, the first sends'
spread), locust_sse (reading a streamed answer, the failure kinds), locust_outputs (the records and
CPU files). Only the standard library, gevent and locust are imported, never toolkit.

The plan (JSON, written by the runner) holds the prompts, the load shape and the records path:
  endpoint ("chat" | "completions"), model, items [{prompt, max_tokens, prompt_tokens}],
  num_requests (measured, after warm-up) or duration_s, warmup, request_rate (null: closed loop),
  seed, records_path, cpu_path, origin (the runner's time.monotonic() when it wrote the plan),
  timeout_s, ignore_eos, temperature (None: the server's default), think_time_ms (closed loop: a user
  waits uniform(0, think_time_ms) after each measured answer before its next send; 0: back to back).
  The API key, if any, comes in OPSCTL_BENCH_API_KEY.

Request indices: warm-ups are 0..warmup-1, measured ones follow. Worker K of W owns the indices
i with i % W == K (one process: all), so W processes together send exactly warmup + N requests, and
with Poisson arrivals each owns every W-th arrival of the one shared schedule.

Phases, in every process:
1. Users start (all at once: -r USERS). The users that take a warm-up index send it at once; every
   other user waits at the gate.
2. The gate opens when every process has all its users running and its warm-ups finished (a
   worker tells the master, with its warm-ups' durations, and the master opens every worker's gate
   together). Without it, warm-ups overlapped the first measured requests: at 64 users, 4 warm-ups
   beside 60 measured requests pushed exactly 256 of them into a fifth, nearly empty wave (the old
   bench read 0.79 of the server's rate on the H200 machine's CPU).
3. Closed loop: each user sends its first measured request at its slot, k/n of one warm-up time
   after the gate (locust_dispatch says why: users sent together stay in lockstep), then back to
   back (never through Locust's scheduler between two requests). Poisson arrivals are timed from
   the gate.
4. Exactly N: a process that has written all of its indices' records is done; with duration_s,
   a process is done when the deadline (gate + duration_s) has passed and nothing is in flight. When
   every process is done the runner quits, after a short pause so Locust's CSV (rewritten on a
   timer, not at exit: every 0.2 s here instead of Locust's 1 s) holds the final counts.

Per request one JSON line goes to the process's records file (times in seconds from the plan's
origin, on CLOCK_MONOTONIC, the same in every process here): index, warmup, user (process:user),
scheduled_s, start_s, ttft_s (first non-empty content), e2e_s (end of stream), itl_us (gaps between
content chunks, integer microseconds), prompt_tokens (the server's usage.prompt_tokens when it reports it, else the
workload's), workload_prompt_tokens (the local tokenizer's count), output_tokens (usage, else the
number of content chunks), usage (whether the server reported it), chunks, finish_reason, status,
error (locust_sse lists the kinds). Each request carries X-Request-Id: opsctl-<process tag>-<index>,
so a server's log can be matched to the records (the fake server records it).

Client cost, measured on this 2-core machine against toolkit.bench.fake_server (1 worker), 8 users
of 1-token answers: requests' HttpUser spent 1,060 us CPU per request (700 us of it without proxy
lookups from the environment), FastHttpUser (geventhttpclient) 270 us. A streamed token costs ~30 us
more (locust_sse), so the runner spreads users over processes (load_runner). On the H200 machine's
CPU one process kept up with 64 users of a 7 ms-ITL server at 48% of a core and was saturated
(98%) at 256. Every process writes its CPU use to cpu_path (locust_outputs.CpuMeter), so the runner
can say when the client, not the server, set the pace.

Every request has one deadline, timeout_s from its start to the end of its stream (a gevent.Timeout,
so it holds through connect, headers and every read: a server that sends a keep-alive comment every
second forever still loses the request at the deadline).

Locust's own statistics get the request with its end-to-end time (not time-to-headers, which is what
Locust records for stream=True), plus "TTFT" and "TPOT" entries of type SSE; warm-up requests are
named "... (warmup)". Locust rounds these; opsctl's summaries come from the raw records.
"""
from __future__ import annotations

import json
import os
import random
import time
import uuid

import gevent
import gevent.event
import locust.stats
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.runners import MasterRunner, WorkerRunner

# Siblings of this file, not toolkit.bench.*: see the docstring.
from locust_dispatch import Dispatcher, warmup_spread
from locust_outputs import CpuMeter, Records
from locust_sse import NO_RESPONSE, hang_up, one_line, read_response

PLAN_ENV = "OPSCTL_BENCH_PLAN"
ROLE_ENV = "OPSCTL_BENCH_ROLE"
API_KEY_ENV = "OPSCTL_BENCH_API_KEY"  # the key stays out of the plan file, which is kept with the results
# Locust rewrites its --csv files on a timer (CSV_STATS_INTERVAL_SEC, 1 s by default, read on every turn of
# its writer loop) and not at exit, so a rung waits one interval after its last request for the final
# counts. A tuner runs a hundred short rungs: 0.2 s instead of 1 s (and a 0.5 s pause instead of 1.2) saves 0.7 s each.
_CSV_INTERVAL_S = 0.2
_CSV_SETTLE_S = 0.5  # two turns of the writer at least, also on a busy machine
locust.stats.CSV_STATS_INTERVAL_SEC = _CSV_INTERVAL_S
_CONNECT_TIMEOUT_S = 10.0
_READ_SLACK_S = 5.0  # the socket's own read timeout, a backstop behind the request's deadline
_GATE_MSG, _READY_MSG, _DONE_MSG = "opsctl_gate", "opsctl_ready", "opsctl_done"


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
THINK_S = float((PLAN or {}).get("think_time_ms") or 0.0) / 1e3  # closed loop: the longest wait after an answer
TAG = f"{uuid.uuid4().hex[:8]}{'' if ROLE == 'local' else f'w{WORKER}'}"  # in X-Request-Id and user ids


def now() -> float:
    """Seconds since the plan's origin, on the clock every process here shares."""
    return time.monotonic() - PLAN["origin"]


def _records_path(plan: dict) -> str:
    path = plan["records_path"]
    return path if ROLE == "local" else path.replace(".jsonl", f".w{WORKER}.jsonl")


def _cpu_path(plan: dict) -> str:
    if ROLE == "local":
        return plan["cpu_path"]
    return plan["cpu_path"].replace(".json", f".w{WORKER}.json" if ROLE == "worker" else ".master.json")


RECORDS = Records(_records_path(PLAN)) if PLAN and ROLE != "master" else None
DISPATCH = (Dispatcher(PLAN, WORKER, WORKERS, clock=now, cpu=CpuMeter(now), flush=RECORDS.flush)
            if RECORDS else None)
_MASTER = {"ready": set(), "done": set(), "warmup_s": [], "cpu": CpuMeter(now) if PLAN and ROLE == "master" else None}


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
            _MASTER["warmup_s"].extend(msg.data["warmup_s"])
            if len(_MASTER["ready"]) == WORKERS:
                _MASTER["cpu"].mark("gate")
                # Every worker spreads its users over the same time: all the rung's warm-ups, averaged.
                runner.send_message(_GATE_MSG, {"spread_s": warmup_spread(_MASTER["warmup_s"])})

        def on_done(environment, msg, **_kw):
            _MASTER["done"].add(msg.data["worker"])
            if len(_MASTER["done"]) == WORKERS:
                _MASTER["cpu"].mark("done")
                gevent.spawn(quit_runner)

        runner.register_message(_READY_MSG, on_ready)
        runner.register_message(_DONE_MSG, on_done)
        return
    if isinstance(runner, WorkerRunner):
        runner.register_message(_GATE_MSG, lambda environment, msg, **_kw: DISPATCH.open_gate(
            msg.data["spread_s"], runner.user_count))
        DISPATCH.on_ready = lambda: runner.send_message(_READY_MSG, {"worker": WORKER, "warmup_s": DISPATCH.warmup_s})
        DISPATCH.on_done = lambda: runner.send_message(_DONE_MSG, {"worker": WORKER})
    else:
        DISPATCH.on_ready = lambda: DISPATCH.open_gate(warmup_spread(DISPATCH.warmup_s), runner.user_count)
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
        DISPATCH.cpu.write(_cpu_path(PLAN), ROLE if ROLE == "local" else f"{ROLE} {WORKER}", OpenAIStreamUser._count)
    elif _MASTER["cpu"] is not None:
        _MASTER["cpu"].write(_cpu_path(PLAN), f"master {WORKER}", 0)  # the master runs no user: it only coordinates


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
        self.think_rng = random.Random(f"{PLAN.get('seed', 0)}:{WORKER}:{OpenAIStreamUser._count}")  # reproducible
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
        first = True  # no measured request taken yet: the first waits for this user's slot (locust_dispatch)
        while True:
            got = DISPATCH.take(first_measured=first)
            if got is None:
                gevent.event.Event().wait()  # nothing left: idle until the runner quits
                return
            index, scheduled = got
            first = first and index < DISPATCH.warmup
            if scheduled is not None:
                delay = scheduled - now()
                if delay > 0:
                    gevent.sleep(delay)
            try:
                record = self._send(index, scheduled)
            except Exception as e:  # noqa: BLE001 - a bug here must not lose the request's record
                record = {"index": index, "warmup": index < DISPATCH.warmup, "user": self.user_id,
                          "scheduled_s": scheduled, "start_s": None,
                          "error": one_line(f"client error: {type(e).__name__}: {e}")}
            RECORDS.add(record)
            DISPATCH.finished(index, None if record.get("error") else record.get("e2e_s"))
            if THINK_S and PLAN.get("request_rate") is None and index >= DISPATCH.warmup:
                gevent.sleep(self.think_rng.uniform(0.0, THINK_S))  # after an answer: the next send waits

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
                    read_response(resp, start, rec, deadline, limit)
                finally:
                    if rec["error"]:
                        hang_up(resp)  # a server still streaming (or hanging) must see the client leave
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            if rec["status"] is None:
                # Locust records a request when its headers come: this one it never saw, so tell it.
                rec["error"] = NO_RESPONSE.format(limit)
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

    def _fire(self, name: str, seconds: float | None, warmup: bool) -> None:
        if seconds is None:
            return
        self.environment.events.request.fire(request_type="SSE", name=name + (" (warmup)" if warmup else ""),
                                             response_time=seconds * 1000, response_length=0, exception=None,
                                             context={})
