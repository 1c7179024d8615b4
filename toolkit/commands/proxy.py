"""`opsctl proxy`: one OpenAI endpoint in front of many `opsctl serve` processes (LMDeploy's `serve proxy`).

    OPSCTL_PROXY_TOKEN=$(openssl rand -hex 32) opsctl proxy --server-port 8000
    OPSCTL_PROXY_TOKEN=... opsctl serve --model-name smol --server-port 23333 --proxy-url http://127.0.0.1:8000
    opsctl proxy --config servers.yaml --routing-strategy prefix_affinity

Servers register themselves (`opsctl serve --proxy-url`, with the shared token) or are listed in a
servers file; requests go to a live server of their `model` (toolkit/proxy/). Start-up failures (port
in use, bad servers file, bad flag) are one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.proxy.settings import ProxySettings as _Defaults  # the defaults are said once, in ProxySettings


def proxy(
    *,
    server_name: Annotated[str, typer.Option(
        "--server-name", help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    server_port: Annotated[int, typer.Option("--server-port", help="Port to listen on.")] = _Defaults.port,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML servers file: `servers:` entries with `url:` and optional `models:`.")] = None,
    routing_strategy: Annotated[str, typer.Option(
        "--routing-strategy", help="least_outstanding (fewest requests in flight), round_robin, or "
                                   "prefix_affinity (same prompt prefix, same server: its prefix cache hits).")
    ] = "least_outstanding",
    prefix_length: Annotated[int, typer.Option(
        "--prefix-length", help="prefix_affinity: characters (or token ids) of the prompt that pick the server.")
    ] = _Defaults.prefix_length,
    prefix_fallback_factor: Annotated[float, typer.Option(
        "--prefix-fallback-factor", help="prefix_affinity: go to the least-loaded server instead when the prefix's "
                                         "server has more than FACTOR x (the least-loaded one's + 1) requests in "
                                         "flight.")
    ] = _Defaults.prefix_fallback_factor,
    token_file: Annotated[Optional[str], typer.Option(
        "--token-file", help="File holding the token servers must send to register (instead of "
                             "$OPSCTL_PROXY_TOKEN); without either, registration is closed.")] = None,
    api_keys: Annotated[Optional[list[str]], typer.Option(
        "--api-keys", help="API keys clients must send (Authorization: Bearer KEY); repeat or separate with commas. "
                           "Prefer --api-key-file or $OPSCTL_API_KEY (flags show in `ps`). Default: none needed.")
    ] = None,
    api_key_file: Annotated[Optional[str], typer.Option(
        "--api-key-file", help="File of accepted API keys, one per line (adds to --api-keys and $OPSCTL_API_KEY).")
    ] = None,
    health_interval: Annotated[float, typer.Option(
        "--health-interval", help="Seconds between two /health checks of each server.")] = _Defaults.health_interval_s,
    health_timeout: Annotated[float, typer.Option(
        "--health-timeout", help="Seconds a server has to answer /health.")] = _Defaults.health_timeout_s,
    health_failures: Annotated[int, typer.Option(
        "--health-failures", help="Failed checks in a row that drop a server (the first good one re-admits it).")
    ] = _Defaults.health_failures,
    forget_after: Annotated[float, typer.Option(
        "--forget-after", help="Seconds a registered server may stay down before it is removed.")
    ] = _Defaults.forget_after_s,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", help="Seconds to connect to a server before trying another.")
    ] = _Defaults.connect_timeout_s,
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", help="On SIGTERM, seconds running streams get to finish.")] = 30.0,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="critical, error, warning, info or debug.", case_sensitive=False)] = "info",
) -> None:
    """Route OpenAI requests across servers, models and machines (least outstanding, round robin, prefix affinity)."""
    from engine.errors import EngineError
    from engine.server.auth import APIKeySourceError, gather_api_keys
    from toolkit.proxy.server import run_proxy
    from toolkit.proxy.settings import (TOKEN_ENV, UPSTREAM_KEY_ENV, ProxyConfigError, ProxySettings,
                                        load_servers_file, read_secret)

    try:
        settings = ProxySettings(
            host=server_name, port=server_port, strategy=routing_strategy, prefix_length=prefix_length,
            prefix_fallback_factor=prefix_fallback_factor,
            servers=load_servers_file(config) if config is not None else (),
            api_keys=gather_api_keys(api_keys, api_key_file),
            token=read_secret(TOKEN_ENV, token_file, "--token-file"),
            upstream_api_key=read_secret(UPSTREAM_KEY_ENV, None, UPSTREAM_KEY_ENV),
            health_interval_s=health_interval, health_timeout_s=health_timeout, health_failures=health_failures,
            forget_after_s=forget_after, connect_timeout_s=connect_timeout, log_level=log_level.lower())
        code = run_proxy(settings, shutdown_timeout=shutdown_timeout)
    except (ProxyConfigError, APIKeySourceError, EngineError) as e:
        if os.environ.get("OPSCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
