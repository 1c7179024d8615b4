"""The server process: bind the port, build the engine, run uvicorn, shut down cleanly on SIGTERM.

Order matters for users: the port is bound first (a port in use fails in a second, not after the
model has loaded), then the engine is built; the socket is handed to uvicorn so nobody can take the
port in between. Start-up failures are a StartupError with one line saying what to do. SIGTERM or
SIGINT: /health turns 503, the listener closes, in-flight requests get `shutdown_timeout` seconds to
finish, the rest are aborted, and the process exits 0. A second SIGINT forces the exit.

If the engine process dies (OOM killer, a crash, kill -9), every request in flight is failed with
`engine_dead`, the server stops and `run_server` returns 1, so a restart policy (systemd, Docker,
Kubernetes) brings it back; a server that answered 503 forever would never be restarted.
Connections are guarded (connections.py: header deadline, connection cap, descriptor limit) and the
log is bounded against floods (engine/logs.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys

import uvicorn

from ..errors import EngineError, describe_load_failure
from ..logs import configure_logging
from .connections import DEFAULT_HEADER_TIMEOUT_S, default_max_connections, guarded_protocol, raise_fd_limit

log = logging.getLogger(__name__)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class StartupError(EngineError):
    """The server could not start; the message is one line saying why and what to do."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) socket, as uvicorn would make it; StartupError with the fix if not."""
    if not 0 <= port <= 65535:
        raise StartupError(f"--server-port {port} is not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(f"--server-name {host!r} is not an address of this machine ({e.strerror}): "
                           "use 127.0.0.1, 0.0.0.0 or one of its IPs") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use: stop the server using it "
                               f"(e.g. `lsof -i :{port}`) or pick another --server-port") from None
        if e.errno == errno.EACCES:
            raise StartupError(f"no permission to listen on port {port}: use a port above 1023 "
                               "(--server-port 23333)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"--server-name {host!r} is not an address of this machine: use 127.0.0.1, "
                               "0.0.0.0 or one of its IPs") from None
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def build_engine(model: str | None, config):
    """LLMEngine in this process, or StartupError with one line (engine errors already say what would fit)."""
    from ..engine import LLMEngine

    try:
        return LLMEngine(model, config)
    except Exception as e:  # noqa: BLE001 - a failure while loading weights or building the cache
        raise StartupError(describe_load_failure(model or "the default model", e)) from None


def start_engine(model: str | None, config, log_level: str = "warning"):
    """The server's AsyncEngine: the engine in its own process (ProcessEngine), or StartupError.

    EngineConfig.engine_process=False (--no-engine-process) keeps it in a thread of this process instead
    (ThreadedEngine: one process to debug, but the event loop and the engine loop then share the GIL).
    """
    if not config.engine_process:
        from ..async_engine import ThreadedEngine

        return ThreadedEngine(build_engine(model, config))
    from ..engine_process import ProcessEngine
    from ..models.source import resolve_model

    try:
        source = resolve_model(model)
        return ProcessEngine.start(source, config, log_level=log_level)
    except Exception as e:  # noqa: BLE001 - ProcessEngine reports the engine's own one-line reason
        raise StartupError(describe_load_failure(model or "the default model", e)) from None


def run_server(model: str | None, config, *, host: str = "127.0.0.1", port: int = 23333,
               model_name: str | None = None, api_keys=None, max_concurrent_requests: int | None = None,
               log_level: str = "info", shutdown_timeout: float = 30.0, allowed_hosts=(),
               header_timeout: float = DEFAULT_HEADER_TIMEOUT_S, body_timeout: float | None = None,
               max_connections: int | None = None, enable_admin: bool = False, announce=None, say=print) -> int:
    """Serve until SIGTERM/SIGINT (returns 0) or the engine's death (returns 1).

    `enable_admin` serves the /admin routes (app.py, admin.py: settings, runtime reconfigure).
    `announce(port, served_model_name)`, when given, returns an async context manager entered once the
    server listens and left as soon as it starts stopping (`opsctl serve --proxy-url`: register with a
    proxy, deregister before draining). Start-up failures raise StartupError.
    """
    from .app import DEFAULT_BODY_TIMEOUT_S, build_app

    if log_level not in LOG_LEVELS:
        raise StartupError(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if max_concurrent_requests is not None and max_concurrent_requests < 1:
        raise StartupError("--max-concurrent-requests must be at least 1")
    for name, value in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if value is not None and not value > 0:
            raise StartupError(f"{name} must be a positive number of seconds, got {value}")
    fd_limit = raise_fd_limit()
    if max_connections is None:
        max_connections = default_max_connections(fd_limit)
    elif not 1 <= max_connections <= fd_limit:
        raise StartupError(f"--max-connections must be between 1 and the descriptor limit {fd_limit}, "
                           f"got {max_connections}")
    configure_logging(log_level)
    from ..distributed import holds_rank_zero

    if not holds_rank_zero(config):  # --node-rank > 0 (or a launcher's rank > 0): this machine only runs ranks
        from ..executor.worker import run_worker_node

        return run_worker_node(model, config, log_level)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]  # the port bound, when 0 asked for any free one
    try:
        say(f"opsctl serve: loading {model or 'the embedded default model'} ...", flush=True)
        aengine = start_engine(model, config, log_level)
        app = build_app(aengine, model_name=model_name, api_keys=api_keys,
                        max_concurrent_requests=max_concurrent_requests, allowed_hosts=allowed_hosts,
                        body_timeout=DEFAULT_BODY_TIMEOUT_S if body_timeout is None else body_timeout,
                        enable_admin=enable_admin)
        if enable_admin and not api_keys:
            log.warning("--enable-admin without an API key: whoever reaches this server can reconfigure its engine")
        served = model_name or aengine.source.name
        stats = aengine.stats()
        say(f"opsctl serve: {served} on http://{host}:{port}/v1 (session_len {aengine.session_len}, "
            f"{stats.num_blocks} KV blocks of {aengine.config.cache_block_seq_len} tokens); "
            "stop with Ctrl-C or SIGTERM", flush=True)
        # uvicorn's own grace period is only a backstop: _serve aborts leftovers after shutdown_timeout.
        # log_config=None: configure_logging above set up the one handler, with the flood limit.
        uv_config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                                   timeout_graceful_shutdown=shutdown_timeout + 10, lifespan="off",
                                   log_config=None, http=guarded_protocol(header_timeout=header_timeout,
                                                                          max_connections=max_connections))
        server = _Server(uv_config)
        hook = (lambda: announce(port, served)) if announce is not None else None
        died = run_event_loop(_serve(server, app, aengine, sock, shutdown_timeout, hook))
    finally:
        sock.close()
    if died is not None:
        print(f"opsctl serve: {died}; exiting with code 1 so a supervisor restarts the server",
              file=sys.stderr, flush=True)
        return 1
    say("opsctl serve: stopped", flush=True)
    return 0


def run_event_loop(coro):
    """Run `coro` on uvloop where it is installed (uvicorn[standard] brings it), else on asyncio's loop.

    uvicorn picks uvloop itself only in Server.run(); we drive Server.serve() under our own signal
    handling, so the loop is chosen here: asyncio.run() would leave the server on the pure-Python loop.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()
    return asyncio.run(coro)


class _Server(uvicorn.Server):
    """uvicorn's Server without its signal capture: uvicorn re-raises the captured SIGTERM after a clean
    shutdown, which would end the process with -15 instead of 0. `_serve` installs our handlers."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _serve(server, app, aengine, sock: socket.socket, shutdown_timeout: float, announce=None) -> str | None:
    """Run uvicorn until a signal or the engine's death; returns the death's reason, else None."""
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task] = []
    died: list[str] = []
    stopping = asyncio.Event()

    def on_engine_death(reason: str) -> None:
        # In-flight requests already have their engine_dead error: uvicorn closes the listener and
        # lets their responses end, then the process exits 1.
        died.append(reason)
        app.state.shutting_down = True
        server.should_exit = True
        stopping.set()

    def from_reader_thread(reason: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed: the server is stopping anyway
            loop.call_soon_threadsafe(on_engine_death, reason)

    aengine.on_dead = from_reader_thread

    def on_signal(sig: int) -> None:
        if server.should_exit:
            if sig == signal.SIGINT:
                server.force_exit = True
            return
        log.warning("received %s: finishing in-flight requests (up to %.0f s), then exiting",
                    signal.Signals(sig).name, shutdown_timeout)
        app.state.shutting_down = True
        server.should_exit = True
        stopping.set()
        # The engine, not uvicorn, ends what is still running after the grace period: its streams get
        # an error event and [DONE] (non-streaming requests a 503), so every response ends cleanly.
        draining.append(loop.create_task(aengine.shutdown(timeout=shutdown_timeout)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / Windows
            loop.add_signal_handler(sig, on_signal, sig)
    announcing = loop.create_task(_announced(server, announce, stopping)) if announce else None
    try:
        await server.serve(sockets=[sock])
    finally:
        app.state.shutting_down = True
        stopping.set()
        if announcing is not None:
            with contextlib.suppress(Exception):
                await announcing
        for task in draining:
            with contextlib.suppress(Exception):
                await task
        await aengine.shutdown(timeout=1.0)
    return died[0] if died else None


async def _announced(server, announce, stopping: asyncio.Event) -> None:
    """Hold `announce()` from the moment uvicorn listens until the server starts stopping."""
    while not server.started:
        if stopping.is_set():
            return
        await asyncio.sleep(0.05)
    try:
        async with announce():
            await stopping.wait()
    except Exception as e:  # noqa: BLE001 - announcing is a courtesy: it never takes the server down
        log.warning("announcing the server failed: %s: %s", type(e).__name__, e)
