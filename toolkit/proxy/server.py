"""The proxy process: bind the port, serve the app with uvicorn, stop cleanly on SIGTERM / SIGINT.

The socket is bound as `opsctl serve` binds its own (engine/server/launcher.py: a port in use or an
address not of this machine is one line saying what to do). On SIGTERM the listener closes and
streams still running get `shutdown_timeout` seconds to finish; the process then exits 0 (uvicorn
left to itself re-raises the signal, which a supervisor reads as a crash).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from engine.logs import configure_logging
from engine.server.launcher import LOG_LEVELS, StartupError, bind_socket, run_event_loop

from .app import build_app
from .settings import ProxySettings

log = logging.getLogger("opsctl.proxy")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # our handlers below; uvicorn's would re-raise SIGTERM after shutting down
        yield


def run_proxy(settings: ProxySettings, *, shutdown_timeout: float = 30.0, say=print) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit code. Start-up failures raise StartupError."""
    if settings.log_level not in LOG_LEVELS:
        raise StartupError(f"--log-level {settings.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    sock = bind_socket(settings.host, settings.port)  # first: a port in use fails before anything else changes
    port = sock.getsockname()[1]
    try:
        configure_logging(settings.log_level)
        app = build_app(settings)
        config = uvicorn.Config(app, log_level=settings.log_level, access_log=settings.log_level in ("info", "debug"),
                                lifespan="on", log_config=None, timeout_graceful_shutdown=shutdown_timeout)
        server = _Server(config)
        servers = ", ".join(s.url for s in settings.servers) or "none yet"
        say(f"opsctl proxy: http://{settings.host}:{port}/v1 ({settings.strategy.replace('-', '_')}; servers: "
            f"{servers}; registration {'open to token holders' if settings.token else 'closed (no token)'}; "
            f"API keys {'required' if settings.api_keys else 'not required'}); stop with Ctrl-C or SIGTERM",
            flush=True)
        run_event_loop(_serve(server, sock))
    finally:
        sock.close()
    say("opsctl proxy: stopped", flush=True)
    return 0


async def _serve(server: uvicorn.Server, sock) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for the streams
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    await server.serve(sockets=[sock])
