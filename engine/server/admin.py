"""The admin routes, served only by `opsctl serve --enable-admin`: the engine's settings, and new runtime
settings between a tuner's trials without a restart.

    GET  /admin/config                                  the effective settings
    POST /admin/reconfigure  {"max_batch_size": 64}     new runtime settings, answered like GET /admin/config

Both answer {"model", "config" (every EngineConfig field), "flags" (EngineConfig.to_flags(): the CLI
flags that rebuild it, for results), "runtime_fields" (what reconfigure takes), "session_len",
"stats" (the engine's EngineStats)}; a reconfigure adds "changes" and "reconfigure_s". The body of
a reconfigure is the object of changes itself; the engine (LLMEngine.reconfigure) rebuilds its KV
cache, block pool, scheduler and CUDA graphs, keeping weights, tokenizer and compiled kernels.
Refusals: 409 while requests are in flight (the tuner reconfigures between trials, when idle, so
nothing waits), 400 naming a field that needs a restart or a bad value, 400 for settings that do
not fit (the engine keeps its previous ones), 503 when the server is stopping or the engine died.

Without --enable-admin these routes do not exist (404). With it they sit behind the API key like
every route but /health and /metrics (guard.py): the app includes this router only when asked to.
"""
from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter
from starlette.requests import Request

from ..async_engine import EngineDeadError
from ..engine import RUNTIME_FIELDS, EngineBusyError
from ..errors import EngineError, InvalidRequestError, OutOfMemoryError
from .app import AppState, read_json_object
from .protocol import APIError

router = APIRouter()


def _state(request: Request) -> AppState:
    return request.app.state.opsctl


def _settings(state: AppState) -> dict:
    config = state.aengine.config
    return {"model": state.model_name, "config": dataclasses.asdict(config), "flags": config.to_flags(),
            "runtime_fields": sorted(RUNTIME_FIELDS), "session_len": state.aengine.session_len,
            "stats": dataclasses.asdict(state.aengine.stats())}


@router.get("/admin/config")
async def admin_config(request: Request):
    return _settings(_state(request))


@router.post("/admin/reconfigure")
async def admin_reconfigure(request: Request):
    if request.app.state.shutting_down:
        raise APIError(503, "the server is shutting down", code="shutting_down")
    state = _state(request)
    changes = await read_json_object(request, state.max_body_bytes, state.body_timeout)
    # Generation requests of this app still being tokenized count too: they are about to reach the engine.
    in_flight = max(state.limiter.active, state.aengine.num_active)
    if in_flight:
        raise APIError(409, f"{in_flight} request(s) in flight: reconfigure when the server is idle",
                       code="engine_busy")
    started = time.perf_counter()
    try:
        await state.aengine.reconfigure(changes)
    except EngineDeadError as e:
        if e.code == "shutting_down":
            raise APIError(503, "the server is shutting down", code="shutting_down") from None
        raise APIError(503, f"the engine has stopped: {e}", code="engine_dead") from None
    except EngineBusyError as e:
        raise APIError(409, str(e), code="engine_busy") from None
    except InvalidRequestError as e:
        raise APIError(400, str(e), param=e.param) from None
    except OutOfMemoryError as e:
        raise APIError(400, f"{e} (the engine kept its previous settings)", code="does_not_fit") from None
    except EngineError as e:
        raise APIError(500, f"{e} (the engine kept its previous settings)", code="engine_error") from None
    return {**_settings(state), "changes": changes, "reconfigure_s": round(time.perf_counter() - started, 4)}
