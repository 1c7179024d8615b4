"""Logging of the server and engine processes: one stdout handler, bounded against floods.

A server's log must survive an attack: once, 20,400 half-open sockets made asyncio log 155,647
"accept() out of system resource" tracebacks (65 MB in ~40 s). `RepeatLimiter` lets through at most
`burst` records of one kind (logger, level, message template) per `window_s` seconds and then says once
how many it dropped, so a flood costs a few lines a minute while distinct messages all get through.
Probes (/health, /metrics) are left out of the access log at info level, as load balancers and
Prometheus call them every few seconds; `--log-level debug` shows them.
"""
from __future__ import annotations

import logging
import sys
import time

_FORMAT = "%(levelname)s %(name)s: %(message)s"
_PROBE_PATHS = ("/health", "/metrics")


class RepeatLimiter(logging.Filter):
    """At most `burst` records per (logger, level, template) in each `window_s`; then one summary line."""

    def __init__(self, burst: int = 5, window_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple, list] = {}  # key -> [window start, records in window, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            dropped = entry[2] if entry is not None else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 10_000:  # distinct templates are few; this only bounds a pathological case
                self._seen = {key: self._seen[key]}
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar messages dropped in the last {self.window_s:.0f} s]"
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        return False


class ProbeAccessFilter(logging.Filter):
    """Drops uvicorn access-log records of /health and /metrics unless the level is debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("uvicorn.access").isEnabledFor(logging.DEBUG):
            return True
        args = record.args
        path = args[2] if isinstance(args, tuple) and len(args) >= 3 else None
        return not (isinstance(path, str) and path.split("?", 1)[0] in _PROBE_PATHS)


def configure_logging(level: str) -> None:
    """Root logger to stdout through the repeat limiter; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RepeatLimiter())
    handler.addFilter(ProbeAccessFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("engine", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.handlers.clear()
        logger.propagate = True
