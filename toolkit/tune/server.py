"""One trial's `opsctl serve`: started as a real subprocess, health-checked, stopped without leftovers.

The server runs in its own session (process group) so that stopping it also stops its engine
process, and a tune interrupted by Ctrl-C never leaves a server holding the GPU: stop() sends
SIGTERM to the group, waits, then SIGKILLs it. A tune killed outright (SIGKILL, OOM killer) cannot
clean up, so on Linux the server is also told to receive SIGTERM when the tune dies
(PR_SET_PDEATHSIG); it then drains and takes its engine process with it. The port is whatever the OS gives (--server-port
0), read back from the server's start-up line.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere stop() is the only way)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_READY = re.compile(r"opsctl serve: .* on http://[^\s/]+:(\d+)/v1")


class ServerFailed(Exception):
    """The server exited or never became healthy; the message is the reason in one line."""


class TrialServer:
    def __init__(self, model: str | None, flags: list[str], log_path: Path, *, host: str = "127.0.0.1",
                 extra: list[str] = ()):
        self.log_path = log_path
        self.command = [sys.executable, "-m", "toolkit", "serve", *([model] if model else []), *flags,
                        "--server-name", host, "--server-port", "0", *extra]
        self.host = host
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float) -> float:
        """Start and wait until /health answers; returns the seconds it took, or raises ServerFailed."""
        began = time.monotonic()
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = began + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(self.failure_reason())
            if self.port is None:
                match = _READY.search(self.log_text())
                self.port = int(match.group(1)) if match else None
            if self.port is not None:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return time.monotonic() - began
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"not healthy after {timeout_s:.0f} s (log: {self.log_path.name})")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after `grace_s`."""
        if self.proc is not None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    # the group may outlive its leader (the engine process): make sure it is gone
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    continue
                break
        if self._log is not None and not self._log.closed:
            self._log.close()

    def log_text(self) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def failure_reason(self) -> str:
        """The server's own last words (its start-up errors are one line), else its exit code."""
        lines = [line.strip() for line in self.log_text().splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "opsctl serve:" in line]
        code = self.proc.returncode if self.proc is not None else None
        last = (errors or lines or [f"exited with code {code}"])[-1]
        return last[:400]
