"""Forwarding one request: pick a server, send the body as it came, pass the answer back unbuffered.

Retries: a failure before the server's response headers (connection refused or reset, a server gone
while a pooled connection was reused, a non-streamed answer cut off before its body ended) cannot
have sent the client anything, so the request goes to another live server of the model; a refused
connection also drops the server at once (the health checker re-admits it). A 429 or 503 from a
server (busy, or shutting down) also moves on while an untried server is left; the last answer is
passed on as it is. Generation has no side effect a second server could repeat wrongly.

Streaming: once a text/event-stream response starts, its bytes go to the client as they arrive,
one send per complete SSE event (an event is never split, so the proxy never holds more than a
partial event). If the server dies mid-stream the client gets OpenAI's error event (`data:
{"error": ...}`) and `data: [DONE]`, the same ending the server writes when its own engine fails, so
the openai client raises an APIError instead of hanging or reading half an event. A client that
goes away closes the upstream response, and the server aborts the request and frees its blocks.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Callable

import httpx
from starlette.responses import Response

from engine.server.protocol import APIError
from engine.server.sse import SSEResponse

from .metrics import ProxyMetrics
from .registry import Server, ServerRegistry
from .strategies import Strategy

log = logging.getLogger("opsctl.proxy")

RETRY_STATUSES = (429, 503)
# headers of the server's answer worth passing on; hop-by-hop ones and the length (re-framed) are not
PASSED_RESPONSE_HEADERS = ("content-type", "cache-control", "retry-after", "www-authenticate")
_DONE = b"data: [DONE]\n\n"


def _sse_error(err: APIError) -> bytes:
    return b"data: " + json.dumps(err.body(), separators=(",", ":")).encode() + b"\n\n"


def _event_end(buffer: bytearray) -> int:
    """The length of `buffer`'s complete SSE events (up to the last blank line), 0 when none is complete."""
    lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class PassThroughStream(SSEResponse):
    """The server's SSE stream, event by event; whatever ends it, the upstream response is closed once
    and `on_close(outcome)` called once (the outstanding count and the metrics). SSEResponse closes the
    body generator and calls back whatever ends the stream; the upstream is closed here after that."""

    def __init__(self, upstream: httpx.Response, headers: dict, on_close: Callable[[str], None]):
        self.upstream = upstream
        self.outcome = str(upstream.status_code)
        self._ended = False  # the whole stream (or its error ending) went out; else the client left
        super().__init__(self._events(), lambda: on_close(self.outcome if self._ended else "client_gone"),
                         status_code=upstream.status_code, headers=headers)

    async def _events(self) -> AsyncIterator[bytes]:
        pending = bytearray()
        try:
            async for chunk in self.upstream.aiter_raw():
                pending += chunk
                end = _event_end(pending)
                if end:
                    yield bytes(pending[:end])
                    del pending[:end]
            if pending:  # a last event without its blank line: pass it on as the server sent it
                yield bytes(pending)
            self._ended = True
        except httpx.HTTPError as e:
            self.outcome = "stream_error"
            log.warning("proxy: %s failed mid-stream: %s %s", self.upstream.request.url, type(e).__name__, e)
            err = APIError(502, "the model server failed while streaming this response; the answer is incomplete "
                                "(retry the request)", code="upstream_stream_error")
            yield _sse_error(err) + _DONE
            self._ended = True

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


class Forwarder:
    def __init__(self, registry: ServerRegistry, strategy: Strategy, client: httpx.AsyncClient,
                 metrics: ProxyMetrics):
        self.registry = registry
        self.strategy = strategy
        self.client = client
        self.metrics = metrics

    async def forward(self, path: str, raw_body: bytes, body: dict, model: str, headers: dict) -> Response:
        """The answer to POST `path` for `model`, from one of its live servers (see the module docstring)."""
        arrived = time.perf_counter()
        tried: set[str] = set()
        last: tuple[int, bytes, dict] | None = None  # the last retryable answer, passed on when no server is left
        last_error = ""
        while True:
            candidates = [s for s in self.registry.candidates(model) if s.url not in tried]
            if not candidates:
                break
            server = self.strategy.choose(model, candidates, body)
            if tried:
                self.metrics.retries.labels(model).inc()
            tried.add(server.url)
            self.registry.acquire(server)
            outcome = "no_response"
            handed_off = False  # the stream releases the server when it ends

            def release(outcome: str, server: Server = server) -> None:
                self.registry.release(server)
                self.metrics.requests.labels(server.url, model, outcome).inc()
                if outcome == "stream_error":
                    self.metrics.failures.labels(server.url, "stream").inc()
                    server.failures += 1

            try:
                try:
                    request = self.client.build_request("POST", server.url + path, content=raw_body, headers=headers)
                    upstream = await self.client.send(request, stream=True)
                except httpx.HTTPError as e:
                    last_error = self._failed_before_first_byte(server, e)
                    continue
                outcome = str(upstream.status_code)
                self.metrics.upstream_latency.labels(model).observe(time.perf_counter() - arrived)
                passed = {k: v for k in PASSED_RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None}
                if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                    passed["X-Accel-Buffering"] = "no"  # an nginx in front must not buffer the stream either
                    handed_off = True
                    return PassThroughStream(upstream, passed, release)
                try:
                    content = await upstream.aread()
                except httpx.HTTPError as e:  # cut off before the whole body: the client has seen nothing yet
                    outcome = "no_response"
                    last_error = self._failed_before_first_byte(server, e)
                    continue
                finally:
                    await upstream.aclose()
                if upstream.status_code in RETRY_STATUSES:
                    last = (upstream.status_code, content, passed)
                    last_error = f"HTTP {upstream.status_code}"
                    log.info("proxy: %s answered %d; trying another server", server.url, upstream.status_code)
                    continue
                return Response(content, status_code=upstream.status_code, headers=passed)
            except asyncio.CancelledError:  # the client left before the answer (app.py cancels us)
                outcome = "client_gone"
                raise
            finally:
                if not handed_off:
                    release(outcome)
        if last is not None:
            status, content, passed = last
            return Response(content, status_code=status, headers=passed)
        if tried:
            self.metrics.rejected.labels("upstream_unavailable").inc()
            raise APIError(502, f"no server of model {model!r} could answer ({len(tried)} tried; last error: "
                                f"{last_error}); retry later", code="upstream_unavailable")
        self.metrics.rejected.labels("no_live_server").inc()
        raise APIError(503, f"model {model!r} has no live server right now; retry later", code="no_live_server")

    def _failed_before_first_byte(self, server: Server, error: httpx.HTTPError) -> str:
        reason = f"{type(error).__name__}: {error}".rstrip(": ")
        self.metrics.failures.labels(server.url, "connect").inc()
        server.failures += 1
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            # nobody listens there (or cannot be reached): stop routing to it until /health answers again
            if self.registry.mark_down(server, reason):
                log.warning("proxy: %s dropped: %s", server.url, reason)
        else:
            server.last_error = reason
        log.info("proxy: %s failed before its first byte (%s); trying another server", server.url, reason)
        return reason
