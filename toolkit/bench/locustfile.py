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
        start = time.perf_counter()
        rec["start_s"] = start - DISPATCH.t0
        with self.client.post(self.path, json=self._body(item), headers=self.headers, stream=True, name=name,
                              catch_response=True, timeout=(10, PLAN.get("timeout_s") or 600)) as resp:
            rec["status"] = resp.status_code
            if resp.status_code != 200:
                rec["error"] = _http_error(resp)
            else:
                self._read_stream(resp, start, rec)
            end = time.perf_counter()
            if rec["e2e_s"] is None:
                rec["e2e_s"] = end - start
            resp.request_meta["response_time"] = (end - start) * 1000
            resp.request_meta["response_length"] = rec.pop("_bytes", 0)
            if rec["error"]:
                resp.failure(rec["error"])
            else:
                resp.success()
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

    def _read_stream(self, resp, start: float, rec: dict) -> None:
        """Parse `data:` events as bytes arrive; time each content chunk; take usage from the last chunk."""
        content_times: list[float] = []
        done = False
        buf = b""
        nbytes = 0
        try:
            for data in _raw_chunks(resp):
                now = time.perf_counter()
                nbytes += len(data)
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    event = json.loads(payload)
                    if event.get("error"):
                        err = event["error"]
                        rec["error"] = _one_line("error event in stream: "
                                                 + (err.get("message", str(err)) if isinstance(err, dict) else str(err)))
                        done = True
                        break
                    if _has_content(event):
                        content_times.append(now)
                    for choice in event.get("choices") or ():
                        if choice.get("finish_reason"):
                            rec["finish_reason"] = choice["finish_reason"]
                    usage = event.get("usage")
                    if usage:
                        rec["usage"] = True
                        rec["output_tokens"] = int(usage.get("completion_tokens") or 0)
                        rec["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
                if done:
                    break
        except Exception as e:  # noqa: BLE001 - a broken stream is the server's error, recorded per request
            rec["error"] = _one_line(f"stream broken after {len(content_times)} content chunks: "
                                     f"{type(e).__name__}: {e}")
        end = time.perf_counter()
        rec["_bytes"] = nbytes
        rec["chunks"] = len(content_times)
        if not done and not rec["error"]:
            rec["error"] = f"stream ended before [DONE] after {len(content_times)} content chunks"
        if content_times:
            rec["ttft_s"] = content_times[0] - start
            rec["itl_s"] = [b - a for a, b in zip(content_times, content_times[1:])]
        rec["e2e_s"] = end - start
        if not rec["usage"]:
            rec["output_tokens"] = len(content_times)
        if not rec["error"] and not content_times:
            rec["error"] = "the stream held no content"


def _has_content(event: dict) -> bool:
    for choice in event.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None:  # chat
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
