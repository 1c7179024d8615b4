"""RequestGuard: what every HTTP request passes before a route, and the one place a bug becomes a 500.

In order: a request id (the client's `X-Request-Id` when it is short and plain, else a new one; sent
back on every response), the Host header against `--allowed-hosts` (against DNS rebinding: a page on
evil.example resolving to 127.0.0.1 sends Host: evil.example), the API key on every route but
/health and /metrics (so /docs and /openapi.json are closed too), and `Content-Type: application/json`
on every POST (415 otherwise). The JSON rule is what keeps other web pages out: a browser sends a
cross-site POST without asking first only as text/plain, a form or multipart, never as JSON.

An exception no route handled is logged once with its request id and answered 500 with that id and
no exception text (the text can carry paths, prompts or keys); it is not re-raised, so uvicorn does
not log a second traceback.
"""
from __future__ import annotations

import logging
import re
import uuid

from starlette.responses import JSONResponse

from .auth import APIKeyChecker
from .protocol import APIError

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics"})
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def host_allowed(host_header: str | None, allowed: tuple[str, ...]) -> bool:
    """Host (port and IPv6 brackets stripped, case-insensitive) equal to an allowed name, or a subdomain of
    a `*.domain` entry; "*" or no list allows every host."""
    if not allowed or "*" in allowed:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:port
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


class RequestGuard:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app, keys: APIKeyChecker, allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.keys = keys
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = _header(scope, b"x-request-id")
        request_id = client_id if client_id and _CLIENT_ID.fullmatch(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
            await JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)(scope, receive,
                                                                                           send_with_id)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - a bug: one log record, a 500 without its text
            log.error("request %s: unhandled %s on %s %s", request_id, type(exc).__name__, scope.get("method"),
                      scope.get("path"), exc_info=exc)
            if not started:
                err = APIError(500, f"internal server error (request id {request_id}); the server log has the "
                                    "details", code="internal_error")
                await JSONResponse(err.body(), status_code=500)(scope, receive, send_with_id)

    def _refusal(self, scope) -> APIError | None:
        if not host_allowed(_header(scope, b"host"), self.allowed_hosts):
            return APIError(400, "this Host header is not allowed here (--allowed-hosts)", code="host_not_allowed")
        path = scope.get("path", "")
        if path not in OPEN_PATHS and not self.keys.is_valid(_header(scope, b"authorization")):
            return self.keys.refusal(_header(scope, b"authorization"))
        if scope.get("method") == "POST":
            content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                shown = content_type or "none"
                return APIError(415, f"the request body must be JSON: send Content-Type: application/json "
                                     f"(got {shown})", code="unsupported_media_type")
        return None
