"""The tune's one live server: restarted when a trial needs it, reconfigured in place when it can be.

Consecutive trials of a tune differ only in runtime settings (EngineConfig fields the engine can
change without reloading weights: engine.engine.RUNTIME_FIELDS), so after the first start a trial
usually costs a POST /admin/reconfigure (the server runs with --enable-admin under a key made for
this tune) instead of a restart: ~0.1 s against 12-16 s on the CPU, and the 7B preset's ~31 s on an
H200. A configuration that does not fit is refused by the engine, which keeps its previous settings:
the trial fails with that reason and the server stays up for the next one. Anything else going wrong
in a reconfigure falls back to a restart.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx

from engine.config import EngineConfig
from engine.engine import RUNTIME_FIELDS
from engine.server.auth import API_KEY_ENV
from toolkit.bench.serve_subprocess import ServeError, ServeProcess


class SetupFailed(Exception):
    """The trial's configuration could not be served; the message is the reason in one line."""


class LiveServer:
    def __init__(self, model: str | None, out_dir: Path, start_timeout_s: float):
        self.model, self.out_dir, self.start_timeout_s = model, out_dir, start_timeout_s
        self.api_key = secrets.token_urlsafe(24)  # the admin routes answer only the tune itself
        self.process: ServeProcess | None = None
        self.config: EngineConfig | None = None

    @property
    def url(self) -> str:
        return self.process.url

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def last_words(self) -> str:
        return self.process.last_words() if self.process is not None else ""

    def serve(self, config: EngineConfig, name: str) -> tuple[float, str]:
        """Make the server serve `config`; (seconds it took, "reconfigure" or "restart"), or SetupFailed."""
        if self.running() and self.config is not None and _runtime_only(self.config, config):
            began = time.monotonic()
            changes = {f: getattr(config, f) for f in sorted(RUNTIME_FIELDS)}
            try:
                reply = httpx.post(self.url + "/admin/reconfigure", json=changes, timeout=600,
                                   headers={"Authorization": f"Bearer {self.api_key}"})
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code == 200:
                self.config = config
                return time.monotonic() - began, "reconfigure"
            if reply is not None and reply.status_code == 400:  # refused; the old settings still serve
                raise SetupFailed(_error_message(reply))
        return self._restart(config, name), "restart"

    def _restart(self, config: EngineConfig, name: str) -> float:
        self.stop()
        began = time.monotonic()
        (self.out_dir / "servers").mkdir(parents=True, exist_ok=True)
        self.process = ServeProcess(self.model, [*config.to_flags(), "--enable-admin"],
                                    self.out_dir / "servers" / f"{name}.log", env={API_KEY_ENV: self.api_key})
        try:
            self.process.wait_ready(self.start_timeout_s)
        except ServeError as e:
            self.stop()
            raise SetupFailed(f"did not start: {e}") from None
        self.config = config
        return time.monotonic() - began

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=30)
        self.process, self.config = None, None


def _runtime_only(old: EngineConfig, new: EngineConfig) -> bool:
    """Whether `new` differs from `old` only in settings the engine changes in place."""
    return all(getattr(old, f.name) == getattr(new, f.name) for f in old.__dataclass_fields__.values()
               if f.name not in RUNTIME_FIELDS)


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return reply.text[:400]
