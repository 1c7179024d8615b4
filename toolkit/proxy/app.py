"""The proxy's FastAPI app: the OpenAI routes routed by `model`, registration, /health and /metrics.

Routes: POST /v1/chat/completions, /v1/completions, /tokenize, /detokenize go to a live server of the
body's `model` (forward.py); GET /v1/models merges the live servers' lists (a model whose last
server died is gone from it); GET /health and /metrics are open, as on the servers. LMDeploy's
registration routes: POST /nodes/add {"url", "models"?}, POST /nodes/remove {"url"}, GET /nodes/status,
all behind the shared token (`Authorization: Bearer TOKEN`; 401 without it, 403 when the proxy was
started without one: registration is then closed). Clients need one of the proxy's API keys when it
has any (401 otherwise) and the proxy sends servers $OPSCTL_UPSTREAM_API_KEY instead; without keys
of its own it passes the client's Authorization header on, so keyed servers still check it.

Every request first passes the servers' own guard (engine/server/guard.py: request id, Host, JSON
content type, a bug answered 500 without its text); every error is OpenAI's error JSON.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import httpx
from fastapi import APIRouter, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from engine.server.app import DEFAULT_BODY_TIMEOUT_S, MAX_BODY_BYTES
from engine.server.auth import APIKeyChecker
from engine.server.guard import RequestGuard
from engine.server.protocol import APIError

from .forward import Forwarder
from .health import HealthChecker, fetch_models
from .metrics import CONTENT_TYPE, ProxyMetrics
from .registry import CONFIG, REGISTERED, ServerRegistry, normalize_url
from .settings import ProxySettings
from .strategies import make_strategy

log = logging.getLogger("opsctl.proxy")

FORWARDED_PATHS = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize")


class ProxyState:
    """What the routes share; the HTTP client, forwarder and health task exist while the app runs."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self.registry = ServerRegistry()
        for spec in settings.servers:
            self.registry.add(spec.url, spec.models, source=CONFIG)
        self.strategy = make_strategy(settings.strategy, prefix_length=settings.prefix_length,
                                      fallback_factor=settings.prefix_fallback_factor)
        self.metrics = ProxyMetrics(self.registry)
        self.keys = APIKeyChecker(settings.api_keys)
        self.token = APIKeyChecker(settings.token)  # one key: the same constant-time check
        self.client: httpx.AsyncClient | None = None
        self.forwarder: Forwarder | None = None
        self.health: HealthChecker | None = None

    def upstream_auth(self, client_authorization: str | None) -> dict:
        if self.settings.upstream_api_key:
            return {"authorization": f"Bearer {self.settings.upstream_api_key}"}
        if not self.keys.enabled and client_authorization:
            return {"authorization": client_authorization}
        return {}

    @contextlib.asynccontextmanager
    async def running(self):
        s = self.settings
        # no read timeout: a long generation streams (or, not streamed, answers) for minutes. Idle
        # connections are dropped before the servers' 5 s keep-alive ends, so a reused connection is
        # rarely one the server is closing. trust_env=False: an HTTP(S)_PROXY meant for the internet
        # must not carry in-cluster traffic.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=s.connect_timeout_s, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512, keepalive_expiry=2.0),
            trust_env=False)
        self.forwarder = Forwarder(self.registry, self.strategy, self.client, self.metrics)
        self.health = HealthChecker(self.registry, self.client, self.metrics, interval_s=s.health_interval_s,
                                    timeout_s=s.health_timeout_s, failures=s.health_failures,
                                    forget_after_s=s.forget_after_s, upstream_headers=self.upstream_auth(None))
        task = asyncio.create_task(self.health.run(), name="opsctl-proxy-health")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.client.aclose()


def build_app(settings: ProxySettings) -> FastAPI:
    """The proxy app; its lifespan starts the HTTP client and the health checker (serve it with lifespan on)."""
    state = ProxyState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with state.running():
            yield

    # no /docs or /openapi.json: they would be open routes on a proxy that may require keys
    app = FastAPI(title="opsctl proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.proxy = state
    app.include_router(router)
    app.add_middleware(RequestGuard, keys=APIKeyChecker(None))  # keys are checked per route: token or key
    _install_error_handlers(app)
    return app


router = APIRouter()


def _state(request: Request) -> ProxyState:
    return request.app.state.proxy


async def _read_json(request: Request) -> tuple[bytes, dict]:
    """The raw body (forwarded as it came) and its JSON object (read for routing)."""
    async def read() -> bytes | None:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return None
        return bytes(body)

    try:
        raw = await asyncio.wait_for(read(), DEFAULT_BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {DEFAULT_BODY_TIMEOUT_S:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:
        raise APIError(499, "the client closed the connection while sending its body", code="client_closed") from None
    if raw is None:
        raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return raw, body


def _route_model(state: ProxyState, body: dict) -> str:
    """The model a request goes to; an APIError when it names none, an unknown one or one with no live server."""
    live = state.registry.live_models()
    model = body.get("model")
    if model is None or model == "":
        if len(live) == 1:  # as a single server does: a request without a model gets the one there is
            return live[0]
        state.metrics.rejected.labels("no_model").inc()
        raise APIError(400, "model is required: this proxy serves " + (", ".join(live) or "no model right now"),
                       param="model")
    if not isinstance(model, str):
        raise APIError(400, f"model must be a string (got {type(model).__name__})", param="model")
    if model in live:
        return model
    if state.registry.known_model(model):
        state.metrics.rejected.labels("no_live_server").inc()
        raise APIError(503, f"model {model!r} has no live server right now; retry later", code="no_live_server")
    state.metrics.rejected.labels("unknown_model").inc()
    raise APIError(404, f"the model {model!r} does not exist here: this proxy serves "
                        f"{', '.join(live) or 'no model right now'}", param="model", code="model_not_found")


def _require_key(request: Request) -> None:
    state = _state(request)
    authorization = request.headers.get("authorization")
    if not state.keys.is_valid(authorization):
        state.metrics.rejected.labels("unauthorized").inc()
        raise state.keys.refusal(authorization)


def _require_token(request: Request) -> None:
    state = _state(request)
    if not state.settings.token:
        raise APIError(403, "registration is closed: start the proxy with a token ($OPSCTL_PROXY_TOKEN or "
                            "--token-file) to let servers register", code="registration_closed")
    authorization = request.headers.get("authorization")
    if not state.token.is_valid(authorization):
        state.metrics.rejected.labels("bad_token").inc()
        raise APIError(401, "missing registration token: send 'Authorization: Bearer TOKEN'" if not authorization
                       else "incorrect registration token", code="invalid_token")


async def _forward(request: Request, path: str) -> Response:
    _require_key(request)
    state = _state(request)
    raw, body = await _read_json(request)
    model = _route_model(state, body)
    headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*"),
               "accept-encoding": "identity", "x-request-id": request.state.request_id,
               **state.upstream_auth(request.headers.get("authorization"))}
    forwarding = asyncio.ensure_future(state.forwarder.forward(path, raw, body, model, headers))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        # a client that leaves before the answer starts (a timeout on a long non-streamed generation) takes
        # its upstream request with it: the server then aborts it instead of generating for nobody
        await asyncio.wait({forwarding, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not forwarding.done():
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarding
    if forwarding.cancelled():
        return Response(status_code=499)
    return forwarding.result()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is read by now: receive() has nothing else to say)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/health")
async def health(request: Request):
    registry = _state(request).registry
    servers = registry.all()
    return {"status": "ok", "servers": len(servers), "live_servers": sum(s.live for s in servers),
            "models": registry.live_models()}


@router.get("/metrics")
async def metrics(request: Request):
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def list_models(request: Request):
    _require_key(request)
    return {"object": "list", "data": _state(request).registry.model_cards()}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    _require_key(request)
    for card in _state(request).registry.model_cards():
        if card["id"] == model_id:
            return card
    raise APIError(404, f"the model {model_id!r} does not exist here (or has no live server)", param="model",
                   code="model_not_found")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await _forward(request, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request):
    return await _forward(request, "/v1/completions")


@router.post("/tokenize")
async def tokenize(request: Request):
    return await _forward(request, "/tokenize")


@router.post("/detokenize")
async def detokenize(request: Request):
    return await _forward(request, "/detokenize")


def _url_of(body: dict) -> str:
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise APIError(400, 'url is required: {"url": "http://HOST:PORT"}', param="url")
    return url


@router.post("/nodes/add")
async def add_node(request: Request):
    _require_token(request)
    state = _state(request)
    _, body = await _read_json(request)
    url = _url_of(body)
    models = body.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise APIError(400, "models must be a list of model names", param="models")
    try:
        url = normalize_url(url)
        cards = None
        if not models:  # the server did not say: ask it
            cards = await fetch_models(state.client, url, state.upstream_auth(None), state.settings.health_timeout_s)
            models = list(cards)
    except ValueError as e:
        raise APIError(400, str(e), param="url") from None
    known = state.registry.get(url)
    server = state.registry.add(url, models, source=REGISTERED, cards=cards)
    if known is None:
        log.info("proxy: %s registered, serving %s", server.url, ", ".join(server.models))
    return server.status()


@router.post("/nodes/remove")
async def remove_node(request: Request):
    _require_token(request)
    state = _state(request)
    _, body = await _read_json(request)
    try:
        server = state.registry.get(_url_of(body))
    except ValueError as e:
        raise APIError(400, str(e), param="url") from None
    if server is None:
        return {"url": body["url"], "removed": False}
    if server.source == CONFIG:
        # a servers-file entry stays known: it is only taken out of routing until /health answers again
        state.registry.mark_down(server, "deregistered")
        removed = False
    else:
        removed = state.registry.remove(server.url)
    log.info("proxy: %s deregistered", server.url)
    return {"url": server.url, "removed": removed}


@router.get("/nodes/status")
async def nodes_status(request: Request):
    _require_token(request)
    state = _state(request)
    return {"strategy": state.strategy.name, "servers": [s.status() for s in state.registry.all()]}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = APIError.for_route(request.method, request.url.path, exc.status_code, exc.detail, " on this proxy")
        return JSONResponse(err.body(), status_code=exc.status_code)
