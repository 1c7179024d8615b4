"""Locust load for OpenAI-compatible servers: streaming chat or completion requests, timed from the SSE stream.

Run by toolkit.bench.load_runner in its own process (Locust monkey-patches with gevent at import):

    OPSCTL_BENCH_PLAN=plan.json python -m locust -f toolkit/bench/locustfile.py --headless \\
        -u USERS -r USERS --host http://127.0.0.1:23333 --csv PREFIX --only-summary

The plan (JSON, written by the runner) holds the prompts, the load shape and the records path:
  endpoint ("chat" | "completions"), model, items [{prompt, max_tokens, prompt_tokens}],
  num_requests (measured, after warm-up) or duration_s, warmup, request_rate (null: closed loop),
  seed, records_path, timeout_s, ignore_eos. The API key, if any, comes in OPSCTL_BENCH_API_KEY.

Load shapes:
- Closed loop at concurrency C: C users, each sends its next request as soon as the previous one
  ends (wait_time constant(0)).
- Poisson at rate R: one shared arrival schedule (exponential gaps of mean 1/R, seeded, first
  arrival at 0). A user takes the next request index and its scheduled time from the shared
  dispatcher, sleeps until then, sends it, and comes back for another. The runner starts as many
  users as requests (capped at 512, or at --concurrency when given): a user holds at most one
  request, so an arrival waits only when every user is busy, which the cap makes a conscious limit
  rather than an accident. Each record carries scheduled_s next to start_s; the runner reports the
  largest lag and adds a note when an arrival left more than 50 ms late.
- Exactly N: the dispatcher hands out exactly warmup + N request indices and quits the runner once
  that many records are written (errors included), after a 1.2 s pause so Locust's own CSV (rewritten
  every second, not at exit) holds the final counts. With duration_s instead, no index is handed out
  after the deadline and the runner quits when the requests in flight have ended.

Per request one JSON line goes to records_path (times in seconds from the first dispatch, monotonic
clock): index, warmup, scheduled_s, start_s, ttft_s (first non-empty content), e2e_s (end of
stream), itl_s (gaps between content chunks), prompt_tokens / output_tokens (from the final usage
chunk, stream_options.include_usage; fallback: the plan's prompt count and the number of content
chunks), usage (whether the server reported it), chunks, finish_reason, status, error.

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
import time

import gevent
from locust import HttpUser, constant, events, task

PLAN_ENV = "OPSCTL_BENCH_PLAN"
API_KEY_ENV = "OPSCTL_BENCH_API_KEY"  # the key stays out of the plan file, which is kept with the results
_ERROR_CHARS = 300
_CSV_SETTLE_S = 1.2  # > locust.stats.CSV_STATS_INTERVAL_SEC (1 s)
_CONNECT_TIMEOUT_S = 10.0
_READ_SLACK_S = 5.0  # the socket's own read timeout, a backstop behind the request's deadline
_BODY_HEAD = 120  # bytes of a non-SSE body quoted in its error


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


class Dispatcher:
    """Hands out request indices (and Poisson arrival times) to users; quits the runner when done."""

    def __init__(self, plan: dict):
        self.total = (plan["num_requests"] + plan["warmup"]) if plan.get("num_requests") is not None else None
        self.duration_s = plan.get("duration_s")
        self.rate = plan.get("request_rate")
        self.warmup = plan["warmup"]
        self._rng = random.Random(plan.get("seed", 0))
        self._arrivals: list[float] = []
        self.t0: float | None = None
        self.next_index = 0
        self.in_flight = 0
        self.written = 0
        self.quitting = False
        self.on_done = None  # set at test start: quits the runner

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _arrival(self, index: int) -> float:
        while len(self._arrivals) <= index:
            prev = self._arrivals[-1] + self._rng.expovariate(self.rate) if self._arrivals else 0.0
            self._arrivals.append(prev)
        return self._arrivals[index]

    def take(self) -> tuple[int, float | None] | None:
        """(index, scheduled_s or None), or None when nothing is left to send."""
        if self.quitting:
            return None
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self.total is not None and self.next_index >= self.total:
            return None
        scheduled = self._arrival(self.next_index) if self.rate else None
        if self.duration_s is not None and (self.now() >= self.duration_s
                                            or (scheduled is not None and scheduled >= self.duration_s)):
            self._maybe_done(deadline_passed=True)
            return None
        index = self.next_index
        self.next_index += 1
        self.in_flight += 1
        return index, scheduled

    def finished(self) -> None:
        self.in_flight -= 1
        self.written += 1
        self._maybe_done(deadline_passed=self.duration_s is not None and self.now() >= self.duration_s)

    def _maybe_done(self, deadline_passed: bool) -> None:
        done = ((self.total is not None and self.written >= self.total)
                or (deadline_passed and self.in_flight == 0))
        if done and not self.quitting:
            self.quitting = True
            if self.on_done:
                # In its own greenlet: quitting kills the users, and this may run in one of them.
                gevent.spawn(self.on_done)


def _load_plan() -> dict | None:
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


PLAN = _load_plan()
DISPATCH = Dispatcher(PLAN) if PLAN else None
_RECORDS = open(PLAN["records_path"], "a", encoding="utf-8") if PLAN else None


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs):
    if DISPATCH is None:
        return

    def quit_runner():
        # Locust rewrites its --csv files every second and not at exit: let it write the final counts.
        gevent.sleep(_CSV_SETTLE_S)
        environment.runner.quit()

    DISPATCH.on_done = quit_runner


def _write(record: dict) -> None:
    # Regular-file writes do not yield to other greenlets, so lines never interleave.
    _RECORDS.write(json.dumps(record) + "\n")
    _RECORDS.flush()


class OpenAIStreamUser(HttpUser):
    """Sends the dispatcher's requests one at a time, streaming, and times them from the SSE events."""

    wait_time = constant(0)

    def on_start(self):
        if PLAN is None:
            raise RuntimeError(f"set {PLAN_ENV} to a plan file (toolkit.bench.load_runner writes one)")
        self.path = "/v1/chat/completions" if PLAN["endpoint"] == "chat" else "/v1/completions"
        self.headers = {"Accept": "text/event-stream"}
        if os.environ.get(API_KEY_ENV):
            self.headers["Authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"

    @task
    def send_next(self):
        got = DISPATCH.take()
        if got is None:
            gevent.sleep(0.05)  # nothing left: idle until the dispatcher quits the runner
            return
        index, scheduled = got
        if scheduled is not None:
            delay = scheduled - DISPATCH.now()
            if delay > 0:
                gevent.sleep(delay)
        try:
            record = self._send(index, scheduled)
        except Exception as e:  # noqa: BLE001 - a bug here must not lose the request's record
            record = {"index": index, "warmup": index < DISPATCH.warmup, "scheduled_s": scheduled,
                      "start_s": None, "error": _one_line(f"client error: {type(e).__name__}: {e}")}
        _write(record)
        DISPATCH.finished()

    def _body(self, item: dict) -> dict:
        body = {"model": PLAN["model"], "max_tokens": item["max_tokens"], "stream": True,
                "stream_options": {"include_usage": True}}
        if PLAN["endpoint"] == "chat":
            body["messages"] = [{"role": "user", "content": item["prompt"]}]
        else:
            body["prompt"] = item["prompt"]
        if PLAN.get("ignore_eos"):
            body["ignore_eos"] = True
        return body

    def _send(self, index: int, scheduled: float | None) -> dict:
        items = PLAN["items"]
        item = items[index % len(items)]
        warmup = index < DISPATCH.warmup
        name = self.path + (" (warmup)" if warmup else "")
        rec = {"index": index, "warmup": warmup, "scheduled_s": scheduled, "start_s": None, "ttft_s": None,
               "e2e_s": None, "itl_s": [], "prompt_tokens": item.get("prompt_tokens"), "output_tokens": 0,
               "usage": False, "chunks": 0, "finish_reason": None, "status": None, "error": None}
        limit = float(PLAN.get("timeout_s") or 600)
        # One deadline for the whole request. The socket timeouts only bound each read, which a server
        # sending a keep-alive comment every second would reset forever. gevent raises it in this
        # greenlet wherever it waits (connect, headers, any read); the stream reader catches it to say
        # how far the stream got, and the handler here catches it before the headers came.
        deadline = gevent.Timeout(limit)
        start = time.perf_counter()
        rec["start_s"] = start - DISPATCH.t0
        deadline.start()
        try:
            with self.client.post(self.path, json=self._body(item), headers=self.headers, stream=True, name=name,
                                  catch_response=True,
                                  timeout=(min(_CONNECT_TIMEOUT_S, limit), limit + _READ_SLACK_S)) as resp:
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
                rec["error"] = f"no response before the timeout: no HTTP response within {limit:g} s"
                rec["e2e_s"] = time.perf_counter() - start
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
            if resp.status_code != 200:
                rec["error"] = _http_error(resp)
            else:
                self._read_stream(resp, start, rec, deadline, limit)
        except gevent.Timeout as t:  # an error body that never ends (the stream reader catches its own)
            if t is not deadline:
                raise
            rec["error"] = rec["error"] or f"HTTP {resp.status_code}: no complete error body within {limit:g} s"
        end = time.perf_counter()
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
        """Parse `data:` events as bytes arrive; time each content chunk; take usage from the last chunk."""
        content_times: list[float] = []
        done = False
        buf = b""
        head = b""  # the body's first bytes, quoted when it turns out not to be SSE
        nbytes = events = comments = 0
        try:
            for data in _raw_chunks(resp):
                now = time.perf_counter()
                nbytes += len(data)
                if len(head) < _BODY_HEAD:
                    head += data[: _BODY_HEAD - len(head)]
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
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
                        content_times.append(now)
                    for choice in event["choices"]:
                        if choice.get("finish_reason"):
                            rec["finish_reason"] = choice["finish_reason"]
                    usage = event.get("usage")
                    if usage:
                        rec["usage"] = True
                        rec["output_tokens"] = int(usage.get("completion_tokens") or 0)
                        rec["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
                if done:
                    break
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
        end = time.perf_counter()
        rec["_bytes"] = nbytes
        rec["chunks"] = len(content_times)
        if not done and not rec["error"]:
            if not events and "event-stream" not in resp.headers.get("content-type", ""):
                # e.g. the whole completion as one JSON: the server ignored "stream": true
                rec["error"] = _one_line(f"not an SSE stream: HTTP 200 with Content-Type "
                                         f"{resp.headers.get('content-type') or 'none'} and no data: line, body "
                                         f"{head.decode('utf-8', 'replace')!r}")
            else:
                rec["error"] = f"stream ended before [DONE]: after {len(content_times)} content chunks"
        if content_times:
            rec["ttft_s"] = content_times[0] - start
            rec["itl_s"] = [b - a for a, b in zip(content_times, content_times[1:])]
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


def _raw_chunks(resp):
    """Bytes as they arrive: HTTP chunks when the body is chunked, else whatever one read returns."""
    raw = resp.raw
    if getattr(raw, "chunked", False):
        return raw.stream(None, decode_content=True)
    return iter(lambda: raw.read1(65536), b"")


def _hang_up(resp) -> None:
    """Close the connection under a response (Locust's stand-in for a failed connection has none)."""
    if getattr(resp, "raw", None) is not None:
        try:
            resp.raw.close()
        except Exception:  # noqa: BLE001 - already broken: nothing left to close
            pass


def _http_error(resp) -> str:
    if resp.status_code == 0:  # Locust's stand-in response for a connection that failed
        return _one_line(f"connection failed: {getattr(resp, 'error', None) or 'no response'}")
    message = ""
    try:
        text = resp.raw.read(4096, decode_content=True).decode("utf-8", "replace") if resp.raw else ""
        try:
            body = json.loads(text)
            err = body.get("error", body) if isinstance(body, dict) else body
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        except ValueError:
            message = text
    except Exception as e:  # noqa: BLE001
        message = f"(body unreadable: {type(e).__name__})"
    return _one_line(f"HTTP {resp.status_code}: {message}".rstrip(": "))
