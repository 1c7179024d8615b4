"""The OpenAI-compatible HTTP server (`opsctl serve`): FastAPI app, streaming, metrics, API keys.

    from engine.server import build_app, run_server
    app = build_app(ThreadedEngine(LLMEngine(None)), model_name="SmolLM2-135M-Instruct")
    run_server(None, EngineConfig())       # what `opsctl serve` runs: the engine in its own process

`protocol` holds the request/response shapes, `serving` turns requests into engine requests and
responses or SSE chunks, `app` wires the routes and error bodies, `metrics` the Prometheus registry,
`auth` the API keys, `launcher` the process around it (socket, engine, uvicorn, SIGTERM).
"""
from .app import build_app
from .launcher import StartupError, run_server

__all__ = ["build_app", "run_server", "StartupError"]
