"""`python -m toolkit serve` as a real process for tests: start, wait for /health, find its engine, stop.

Its stdout and stderr go to one log file, so tests can count what the server logged.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from toolkit.bench.serve_subprocess import alive, children, descendants  # noqa: F401 - tests import them here

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--device", "cpu", "--cache-block-seq-len", "16", "--session-len", "1024", "--max-batch-size", "8",
         "--cache-max-entry-count", "128"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class ServeProcess:
    def __init__(self, log_path: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "-m", "toolkit", "serve", "--server-port", str(self.port), *SMALL, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_healthy(self, timeout: float = 180, headers: dict | None = None) -> "ServeProcess":
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_text()
            try:
                if httpx.get(self.url + "/health", timeout=1, headers=headers).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up: " + self.log_text()
            time.sleep(0.3)

    @property
    def engine_pid(self) -> int:
        kids = [p for p in children(self.proc.pid) if alive(p)]
        engines = [p for p in kids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(engines) == 1, (kids, engines)
        return engines[0]

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
