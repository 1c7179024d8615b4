"""`opsctl serve` as a subprocess of a measurement: started on a free port, its CPU watched, stopped, nothing left.

The server is started with --server-port 0: the kernel picks a free port at the bind, so nothing can
take it between a check and the bind; the server names the port in its start-up line on stdout
("opsctl serve: NAME on http://HOST:PORT/v1 ..."), read back from its log. It runs in its own session,
so a Ctrl-C at the terminal reaches only the measuring process, which then stops the server itself:
SIGTERM (the server's clean shutdown, its engine process included), then SIGKILL to its whole process
group if it lingers. `stop()` says which of its processes, if any, were still there afterwards. A
measuring process killed outright (SIGKILL, the OOM killer) cannot stop anything, so on Linux the
server is also told to receive SIGTERM when its parent dies (PR_SET_PDEATHSIG): it then drains and
takes its engine process with it, and never holds a GPU for a tune that is gone.

CPU: CpuSampler reads /proc/<pid>/stat of the API process and of the engine process (the server's
child running multiprocessing's spawn_main) in a thread, so the CPU each used over any span of the
run (a bench's measured window) can be read back afterwards: near 1.0 of a core means that process,
not the GPU, set the pace. Linux only (/proc); elsewhere the figures are None.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_READY = re.compile(r"^opsctl serve: .+ on (http://\S+?)/v1 ", re.M)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LOG_TAIL_LINES = 5
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere stop() is the only way)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ServeError(RuntimeError):
    """The server did not come up; the message is one line plus the tail of its log."""


# -- processes (Linux /proc) ---------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _stat_fields(pid: int) -> list[str] | None:
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie (an exited child not yet reaped holds no resources)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process, all its threads; None when it cannot be read."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of stat


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# -- the server ----------------------------------------------------------------------------------

class ServeProcess:
    """`python -m toolkit serve [MODEL] --server-port 0 FLAGS`, its stdout and stderr in `log_path`."""

    def __init__(self, model: str | None, flags: list[str], log_path: Path, env: dict | None = None):
        self.command = [sys.executable, "-m", "toolkit", "serve", *([model] if model else []),
                        "--server-name", "127.0.0.1", "--server-port", "0", *flags]
        self.log_path = Path(log_path)
        self.url: str | None = None
        with open(self.log_path, "w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.pids: dict[str, int] = {"api": self.proc.pid}

    def wait_ready(self, timeout_s: float) -> str:
        """The base URL once the port is in the log and /health answers 200; ServeError otherwise."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ServeError(f"opsctl serve exited with code {self.proc.returncode} before serving "
                                 f"(log {self.log_path}): {self._tail()}")
            if self.url is None:
                found = _READY.search(self._log_text())
                self.url = found.group(1) if found else None
            if self.url is not None:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # the line is printed before uvicorn accepts: try again
            if time.monotonic() > deadline:
                raise ServeError(f"opsctl serve did not answer /health within {timeout_s:g} s "
                                 f"(log {self.log_path}): {self._tail()}")
            time.sleep(0.2)
        engines = [p for p in descendants(self.proc.pid) if b"spawn_main" in _cmdline(p)]
        if engines:  # none when the engine runs in a thread of the API process (--no-engine-process)
            self.pids["engine"] = engines[0]
        return self.url

    def running(self) -> bool:
        return self.proc.poll() is None

    def last_words(self) -> str:
        """The tail of the server's log in one line (its start-up errors are one line)."""
        return self._tail()

    def stop(self, timeout_s: float = 60.0) -> dict:
        """SIGTERM, then SIGKILL to the process group after timeout_s; {exit_code, killed, left_running}."""
        family = descendants(self.proc.pid)
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                killed = True
                self._kill_group()
                self.proc.wait(10)
        # The engine process ends with the server's shutdown; it may take a moment after the API process.
        deadline = time.monotonic() + 10
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        if any(alive(p) for p in family):
            killed = True
            self._kill_group()
            time.sleep(0.5)
        return {"exit_code": self.proc.returncode, "killed": killed,
                "left_running": [p for p in family if alive(p)]}

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only the server and its children
        except ProcessLookupError:
            pass

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self) -> str:
        lines = [ln.strip() for ln in self._log_text().splitlines() if ln.strip()]
        return " | ".join(lines[-_LOG_TAIL_LINES:]) or "no output"


# -- CPU over time -------------------------------------------------------------------------------

class CpuSampler:
    """CPU seconds of named processes, sampled every interval_s in a thread while the `with` block runs."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2):
        self.pids, self.interval_s = dict(pids), interval_s
        self.samples: list[tuple[float, dict[str, float | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), {name: cpu_seconds(pid) for name, pid in self.pids.items()}))

    def busy(self, start: float, end: float) -> dict[str, float | None]:
        """Cores each process used on average over [start, end] (time.monotonic() seconds)."""
        out: dict[str, float | None] = {}
        for name in self.pids:
            points = [(t, values[name]) for t, values in self.samples if values.get(name) is not None]
            a, b = _interpolate(points, start), _interpolate(points, end)
            out[name] = round((b - a) / (end - start), 3) if a is not None and b is not None and end > start else None
        return out


def _interpolate(points: list[tuple[float, float]], t: float) -> float | None:
    """The value at t, linear between the samples around it; None outside the sampled span."""
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v0
    return None
