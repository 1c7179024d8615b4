"""`opsctl serve [MODEL]`: the OpenAI-compatible API server, with `lmdeploy serve api_server`'s flags.

    opsctl serve                                  # the embedded model on http://127.0.0.1:23333/v1
    opsctl serve /models/Qwen2.5-7B-Instruct --server-name 0.0.0.0 --api-keys sk-1,sk-2

Start-up failures (port in use, model missing, too large for the device, cache too small for one
session) are one line on stderr and exit code 2. The engine runs in its own process (set
OPSCTL_ENGINE_PROCESS=0 to keep it in a thread of the server's process).
"""
from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from . import engine_options as eo


@eo.with_engine_flags()
def serve(
    model: eo.ModelArg = None,
    *,
    server_name: Annotated[str, typer.Option(
        "--server-name", help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    server_port: Annotated[int, typer.Option("--server-port", help="Port to listen on.")] = 23333,
    model_name: Annotated[Optional[str], typer.Option(
        "--model-name", help="Name served in /v1/models and expected in requests (default: the model's).")] = None,
    api_keys: Annotated[Optional[list[str]], typer.Option(
        "--api-keys", help="Accepted API keys (Authorization: Bearer KEY); repeat the flag or separate with "
                           "commas. Default: no key needed.")] = None,
    max_concurrent_requests: Annotated[Optional[int], typer.Option(
        "--max-concurrent-requests", help="Generation requests in flight at once; more get 429 (default: no limit).")
    ] = None,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="critical, error, warning, info or debug.", case_sensitive=False)] = "info",
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", help="On SIGTERM, seconds in-flight requests get to finish before they are aborted.")
    ] = 30.0,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Accepted for lmdeploy command lines (turbomind|pytorch); opsctl has one engine.")] = None,
    engine_config=None,
) -> None:
    """Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)."""
    from engine.errors import EngineError
    from engine.server.launcher import run_server

    if backend is not None:
        print(f"opsctl serve: --backend {backend} ignored (opsctl runs its own engine)", flush=True)
    try:
        code = run_server(model, engine_config, host=server_name, port=server_port, model_name=model_name,
                          api_keys=api_keys, max_concurrent_requests=max_concurrent_requests,
                          log_level=log_level.lower(), shutdown_timeout=shutdown_timeout)
    except EngineError as e:
        if os.environ.get("OPSCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
