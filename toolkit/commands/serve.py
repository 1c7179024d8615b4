"""`opsctl serve [MODEL]`: the OpenAI-compatible API server, with `lmdeploy serve api_server`'s flags.

    opsctl serve                                  # the embedded model on http://127.0.0.1:23333/v1
    OPSCTL_API_KEY=sk-1 opsctl serve /models/Qwen2.5-7B-Instruct --server-name 0.0.0.0
    OPSCTL_PROXY_TOKEN=... opsctl serve --model-name smol --proxy-url http://127.0.0.1:8000   # behind `opsctl proxy`

Start-up failures (port in use, model missing, too large for the device, cache too small for one
session) are one line on stderr and exit code 2; the engine process dying later ends the server with
exit code 1. The engine runs in its own process (--no-engine-process keeps it in a thread
of the server's process).
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
                           "commas. Visible to other users in `ps`: prefer --api-key-file or $OPSCTL_API_KEY. "
                           "Default: no key needed.")] = None,
    api_key_file: Annotated[Optional[str], typer.Option(
        "--api-key-file", help="File of accepted API keys, one per line (# comments); adds to --api-keys and "
                               "$OPSCTL_API_KEY (comma-separated).")] = None,
    allowed_hosts: Annotated[Optional[list[str]], typer.Option(
        "--allowed-hosts", help="Host header values accepted (e.g. api.example.com, *.example.com, 127.0.0.1); "
                                "others get 400, against DNS rebinding. Repeat or separate with commas. "
                                "Default: any.")] = None,
    max_connections: Annotated[Optional[int], typer.Option(
        "--max-connections", help="Open connections at once; more are answered 503 and closed (default: the "
                                  "file-descriptor limit less a reserve).")] = None,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", help="Seconds a client has to send a request's headers; then 408 and the "
                                 "connection is closed.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", help="Seconds a client has to send a request's body; then 408 and the connection is "
                               "closed.")] = 30.0,
    max_concurrent_requests: Annotated[Optional[int], typer.Option(
        "--max-concurrent-requests", help="Generation requests in flight at once; more get 429 (default: no limit).")
    ] = None,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="critical, error, warning, info or debug.", case_sensitive=False)] = "info",
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", help="On SIGTERM, seconds in-flight requests get to finish before they are aborted.")
    ] = 30.0,
    enable_admin: Annotated[bool, typer.Option(
        "--enable-admin", help="Serve GET /admin/config and POST /admin/reconfigure (new batch size, cache size, "
                               "prefill budget, block length or prefix caching without reloading the weights, "
                               "e.g. between a tuner's trials), behind the API key when one is set.")] = False,
    proxy_url: Annotated[Optional[str], typer.Option(
        "--proxy-url", help="Register with the `opsctl proxy` at this URL once serving (again every 15 s) and "
                            "deregister on shutdown; the proxy's token comes from $OPSCTL_PROXY_TOKEN or "
                            "--proxy-token-file.")] = None,
    proxy_token_file: Annotated[Optional[str], typer.Option(
        "--proxy-token-file", help="File holding the proxy's registration token (instead of $OPSCTL_PROXY_TOKEN).")
    ] = None,
    advertise_url: Annotated[Optional[str], typer.Option(
        "--advertise-url", help="The URL the proxy reaches this server at (default http://SERVER_NAME:PORT, "
                                "0.0.0.0 replaced by this host's name; in Kubernetes http://$(POD_IP):PORT).")
    ] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Accepted for lmdeploy command lines (turbomind|pytorch); opsctl has one engine.")] = None,
    engine_config=None,
) -> None:
    """Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)."""
    from engine.errors import EngineError
    from engine.server.auth import APIKeySourceError, gather_api_keys
    from engine.server.launcher import StartupError, run_server

    if backend is not None:
        print(f"opsctl serve: --backend {backend} ignored (opsctl runs its own engine)", flush=True)
    try:
        try:
            keys = gather_api_keys(api_keys, api_key_file)
        except APIKeySourceError as e:
            raise StartupError(str(e)) from None
        announce = _proxy_hook(proxy_url, proxy_token_file, server_name, advertise_url) if proxy_url else None
        code = run_server(model, engine_config, host=server_name, port=server_port, model_name=model_name,
                          api_keys=keys, max_concurrent_requests=max_concurrent_requests,
                          log_level=log_level.lower(), shutdown_timeout=shutdown_timeout,
                          allowed_hosts=_split(allowed_hosts), header_timeout=header_timeout,
                          body_timeout=body_timeout, max_connections=max_connections, enable_admin=enable_admin,
                          announce=announce)
    except EngineError as e:
        if os.environ.get("OPSCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _proxy_hook(proxy_url: str, token_file: str | None, server_name: str, advertise_url: str | None):
    """The launcher's announce hook for --proxy-url; StartupError (before the model loads) when it cannot work."""
    from engine.server.launcher import StartupError
    from toolkit.proxy.registration import proxy_registration
    from toolkit.proxy.settings import TOKEN_ENV, ProxyConfigError, read_secret

    try:
        token = read_secret(TOKEN_ENV, token_file, "--proxy-token-file")
        if not token:
            raise ProxyConfigError(f"--proxy-url needs the proxy's registration token: set ${TOKEN_ENV} or "
                                   "--proxy-token-file FILE")
        return proxy_registration(proxy_url, token, server_name, advertise_url)
    except ValueError as e:  # ProxyConfigError, or a URL that is not http(s)://host:port
        raise StartupError(str(e)) from None


def _split(values: list[str] | None) -> tuple[str, ...]:
    """Repeated and/or comma-separated flag values."""
    return tuple(v.strip() for value in values or () for v in value.split(",") if v.strip())
