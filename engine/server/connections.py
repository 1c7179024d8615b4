"""Connection-level limits of the HTTP server: a header deadline, a connection cap, and the file-descriptor limit.

uvicorn starts its keep-alive timer only after a response, so a client that opens a connection and
sends half a header (or nothing) holds a socket forever; enough of them (20,400 in one attack)
exhaust the process's file descriptors, after which accept() fails in a loop, /health times out and
the log fills with tracebacks. Three defences, all here:
- a header deadline: every request's headers must be complete `header_timeout` seconds after the
  connection opened or the previous response ended; past it the server answers 408 (if the client
  sent anything) and closes the connection;
- a connection cap below the descriptor limit: a connection over `max_connections` is answered 503
  with Retry-After at once and closed, so the server never runs out of descriptors and keeps
  answering those it has;
- the soft RLIMIT_NOFILE raised to the hard limit at start-up (Linux defaults the soft one to 1024).
Slow bodies are the app's business (app.read_json_object has its own deadline): by then the route
is known and the answer can be an OpenAI error body.
"""
from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0
_FD_RESERVE = 256  # descriptors kept for the engine pipes, model files, threads and logs
_MAX_FD_LIMIT = 1 << 16


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (capped at 65,536); returns the soft limit now."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _MAX_FD_LIMIT
    target = min(target, _MAX_FD_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else _MAX_FD_LIMIT
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def default_max_connections(fd_limit: int) -> int:
    """Connections the server takes at once: what the descriptor limit leaves after a reserve."""
    return max(16, fd_limit - _FD_RESERVE)


def _canned(status: str, message: str, code: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": "service_unavailable" if status.startswith("503")
                                 else "invalid_request_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n").encode()
    return head + body


def guarded_protocol(*, header_timeout: float = DEFAULT_HEADER_TIMEOUT_S, max_connections: int | None = None,
                     base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol class with the header deadline and the connection cap (pass it as `http=`)."""
    overloaded = _canned("503 Service Unavailable",
                         f"the server has {max_connections} open connections, its limit (--max-connections): "
                         "retry later", "too_many_connections", "retry-after: 1\r\n")
    too_slow = _canned("408 Request Timeout", f"the request headers did not arrive within {header_timeout:g} s",
                       "request_timeout")

    class GuardedHTTPProtocol(base):
        """One connection: uvicorn's protocol, closed when its headers are late or the server is full."""

        def connection_made(self, transport) -> None:
            if max_connections is not None and len(self.server_state.connections) >= max_connections:
                # Never registered with uvicorn: answer and close, so the descriptor comes back at once.
                log.warning("connection limit %d reached: answering 503 to new connections", max_connections)
                transport.write(overloaded)
                transport.close()
                self._header_timer = None
                self._rejected = True
                return
            self._rejected = False
            self._header_timer = None
            self._bytes_waiting = 0
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._rejected:
                return
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            waiting = self._waiting_for_headers()
            if waiting:
                self._bytes_waiting += len(data)
                self._arm_header_timer()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Idle until the next request's first byte: uvicorn's keep-alive timer covers that; the
            # header deadline starts again with that byte (data_received arms it).
            self._bytes_waiting = 0

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and self.transport is not None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.transport is None or self.transport.is_closing() or not self._waiting_for_headers():
                return
            if self._bytes_waiting:
                self.transport.write(too_slow)
            self.transport.close()

    return GuardedHTTPProtocol
