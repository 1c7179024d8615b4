"""The FastAPI app: routes, request bodies, the concurrency limit and OpenAI error bodies.

Bodies are read and parsed here rather than by FastAPI, so every bad body gets OpenAI's error shape
with the parameter named: over the size limit -> 413 (read and dropped, so the client sees the
answer instead of a reset connection), slower than `body_timeout` -> 408 and the connection closed,
not UTF-8 / not JSON / not an object / a lone UTF-16 surrogate in a string -> 400, a field of the
wrong type -> 400 naming it, a client gone while sending -> 499 (logged by nobody but the access log).
What every request passes first (request id, Host, API key, JSON content type) and what becomes of a
bug (a 500 with the request id) is the guard's (guard.py). Every error, including unknown routes, is
{"error": {"message", "type", "param", "code"}} and the server keeps serving. Tokenizing runs in a
thread pool, never on the event loop: ten 1 MB prompts to /tokenize once held /health for 4.5 s.
"""
from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..async_engine import AsyncEngine
from .auth import APIKeyChecker
from .guard import RequestGuard
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, ModelCard, ModelList,
                       TokenizeRequest)
from .serving import ClientDisconnected, OpenAIServing
from .sse import SSEResponse

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: ~250k tokens of text, more than any session_len we serve
DEFAULT_BODY_TIMEOUT_S = 30.0  # a whole 1 MiB body at 35 KB/s; a client slower than that holds a slot for nothing
_DRAIN_LIMIT = 32 << 20  # an oversized body is read and dropped up to this, then the connection is cut


class ConcurrencyLimiter:
    """At most `limit` generation requests in flight (streams count until their last byte); None: no limit."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.active = 0

    def acquire(self) -> None:
        if self.limit is not None and self.active >= self.limit:
            raise APIError(429, f"too many concurrent requests: this server takes {self.limit} at a time "
                                "(--max-concurrent-requests); retry later", code="rate_limit_exceeded")
        self.active += 1

    def release(self) -> None:
        self.active -= 1


async def read_json_object(request: Request, limit: int, timeout: float | None = None) -> dict:
    """The body as a JSON object, or an APIError saying what is wrong with it (see the module docstring)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise APIError(400, "the Content-Length header is not a number") from None
        if declared > limit:
            await _drain(request, declared)
            raise _too_large(limit)
    try:
        body = await asyncio.wait_for(_read_body(request, limit), timeout)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    except ClientDisconnect:
        raise APIError(499, "the client closed the connection while sending its body", code="client_closed") from None
    if body is None:
        await _drain(request, limit + 1)
        raise _too_large(limit)
    if not body.strip():
        raise APIError(400, "the request body is empty: send a JSON object")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    where = _lone_surrogate(data)
    if where is not None:
        raise APIError(400, f"{where or 'the body'} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                            "escape): send valid Unicode", param=where.split(".", 1)[0].split("[", 1)[0] or None)
    return data


async def _read_body(request: Request, limit: int) -> bytearray | None:
    """The body, or None as soon as it passes `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def _lone_surrogate(data) -> str | None:
    """The path ("messages[0].content") of the first string (key or value) with a lone surrogate, else None.

    json.loads accepts "\\ud800" and yields a str that no UTF-8 encoder (the tokenizer's, the log's)
    accepts; found here, it is the client's 400 rather than a 500 deep in the tokenizer.
    """
    stack = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return path
        elif isinstance(item, dict):
            for key, value in item.items():
                sub = f"{path}.{key}" if path else str(key)
                stack.append((sub, key))
                stack.append((sub, value))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", value) for i, value in enumerate(item))
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


async def _drain(request: Request, seen: int) -> None:
    if seen > _DRAIN_LIMIT:
        return
    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > _DRAIN_LIMIT:
                return
    except Exception:  # noqa: BLE001 - the body is being dropped anyway (a client gone, a stream consumed)
        return


def _validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    param = loc[0] if loc else None
    where = ".".join(p for p in loc if not p.startswith(("list[", "str", "int", "float", "bool"))) or param
    if first.get("type") == "missing":
        return APIError(400, f"{param} is required", param=param)
    return APIError(400, f"{where}: {first.get('msg')} (got {first.get('input')!r:.80})", param=param)


class AppState:
    """What the routes of one app share: the engine, the serving layer, keys, limits and metrics."""

    def __init__(self, aengine: AsyncEngine, model_name: str, api_keys, max_concurrent_requests: int | None,
                 max_body_bytes: int, body_timeout: float | None):
        self.aengine = aengine
        self.model_name = model_name
        self.metrics = ServerMetrics(aengine.stats, model_name)
        self.serving = OpenAIServing(aengine, model_name, self.metrics)
        self.keys = APIKeyChecker(api_keys)
        self.limiter = ConcurrencyLimiter(max_concurrent_requests)
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    def model_card(self) -> ModelCard:
        return ModelCard(id=self.model_name, root=self.aengine.source.name, max_model_len=self.aengine.session_len)


def build_app(aengine: AsyncEngine, *, model_name: str | None = None, api_keys=None,
              max_concurrent_requests: int | None = None, max_body_bytes: int = MAX_BODY_BYTES,
              body_timeout: float | None = DEFAULT_BODY_TIMEOUT_S, allowed_hosts=(),
              enable_admin: bool = False) -> FastAPI:
    """The OpenAI-compatible app around a running AsyncEngine (the caller owns the engine's lifetime).

    The routes are module-level functions that find their AppState on `request.app.state`: FastAPI
    caches endpoint functions process-wide, so routes defined as closures here would keep every
    app, and its engine with its GPU memory, alive after the server is gone. `enable_admin` adds
    the /admin routes (admin.py: settings, reconfigure); without it they do not exist.
    """
    app = FastAPI(title="opsctl", summary="OpenAI-compatible LLM server", version="0.1.0")
    state = AppState(aengine, model_name or aengine.source.name, api_keys, max_concurrent_requests, max_body_bytes,
                     body_timeout)
    app.state.opsctl = state
    app.state.shutting_down = False
    app.include_router(router)
    if enable_admin:
        from .admin import router as admin_router  # imported here: admin.py builds on this module

        app.include_router(admin_router)
    app.add_middleware(RequestGuard, keys=state.keys, allowed_hosts=tuple(allowed_hosts or ()))
    _install_error_handlers(app)
    return app


router = APIRouter()


def _state(request: Request) -> AppState:
    return request.app.state.opsctl


async def _parse(request: Request, model_cls):
    state = _state(request)
    data = await read_json_object(request, state.max_body_bytes, state.body_timeout)
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None


async def _generate(request: Request, model_cls, handler_name: str) -> Response:
    if request.app.state.shutting_down:
        raise APIError(503, "the server is shutting down", code="shutting_down")
    req = await _parse(request, model_cls)
    state = _state(request)
    limiter = state.limiter
    limiter.acquire()
    try:
        response = await getattr(state.serving, handler_name)(req, request, limiter.release)
    except ClientDisconnected:
        limiter.release()
        return Response(status_code=499)
    except BaseException:
        limiter.release()
        raise
    if not isinstance(response, SSEResponse):
        limiter.release()
    return response


@router.get("/health")
async def health(request: Request):
    if request.app.state.shutting_down:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    dead = _state(request).aengine.dead_reason
    if dead is not None:
        return JSONResponse({"status": "engine_dead", "reason": dead}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics")
async def prometheus_metrics(request: Request):
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def list_models(request: Request):
    return ModelList(data=[_state(request).model_card()]).model_dump()


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    state = _state(request)
    state.serving.check_model(model_id)
    return state.model_card().model_dump()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await _generate(request, ChatCompletionRequest, "chat")


@router.post("/v1/completions")
async def completions(request: Request):
    return await _generate(request, CompletionRequest, "completion")


@router.post("/tokenize")
async def tokenize(request: Request):
    return await _state(request).serving.tokenize(await _parse(request, TokenizeRequest))


@router.post("/detokenize")
async def detokenize(request: Request):
    return await _state(request).serving.detokenize(await _parse(request, DetokenizeRequest))


def _install_error_handlers(app: FastAPI) -> None:
    # No handler for Exception: the guard answers a bug's 500 (Starlette's would re-raise it to uvicorn,
    # which logs a second traceback).
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.status == 408:  # the rest of a late body is not worth reading
            headers["Connection"] = "close"
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = APIError.for_route(request.method, request.url.path, exc.status_code, exc.detail,
                                 ": see /docs for the API")
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        param = str(errors[0]["loc"][-1]) if errors and errors[0].get("loc") else None
        err = APIError(400, f"invalid request: {errors[0].get('msg') if errors else exc}", param=param)
        return JSONResponse(err.body(), status_code=400)
