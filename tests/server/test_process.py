"""`python -m toolkit serve` as a real process: SIGTERM mid-stream exits 0; start-up failures are one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--device", "cpu", "--cache-block-seq-len", "16", "--session-len", "1024", "--max-batch-size", "8"]


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", "serve", *args]


def run_failing(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPSCTL_DEBUG": ""}
    env.pop("OPSCTL_DEBUG")
    return subprocess.run(serve_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_failure(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line, line
    return line


def test_port_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.perf_counter()
        done = run_failing("--server-port", str(port), *SMALL)
        elapsed = time.perf_counter() - start
    assert_one_line_failure(done, f"port {port}", "already in use", "--server-port")
    assert "loading" not in done.stdout  # refused before the model was touched
    assert elapsed < 60


def test_missing_model_path_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    done = run_failing(str(missing), "--server-port", str(free_port()), *SMALL)
    assert_one_line_failure(done, "model not found", str(missing))


def test_cache_too_small_for_one_session_is_one_line():
    done = run_failing("--server-port", str(free_port()), *SMALL, "--cache-max-entry-count", "4")
    assert_one_line_failure(done, "less than one session", "--cache-max-entry-count", "--session-len")


def test_sigterm_mid_stream_finishes_or_aborts_and_exits_0():
    """A short stream finishes within --shutdown-timeout; a long one is ended with an error event + [DONE]."""
    port = free_port()
    proc = subprocess.Popen(serve_cmd("--server-port", str(port), *SMALL, "--cache-max-entry-count", "128",
                                      "--shutdown-timeout", "12", "--log-level", "warning"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)

        streams = {"short": 24, "long": 900}
        events: dict[str, list[str]] = {name: [] for name in streams}
        started = {name: threading.Event() for name in streams}

        def stream(name):
            body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": streams[name],
                    "ignore_eos": True, "temperature": 0, "stream": True}
            try:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as resp:
                    for line in resp.iter_lines():
                        if line.startswith("data: "):
                            events[name].append(line[6:])
                            if len(events[name]) == 3:
                                started[name].set()
            finally:
                started[name].set()

        threads = [threading.Thread(target=stream, args=(name,)) for name in streams]
        for t in threads:
            t.start()
        assert all(e.wait(120) for e in started.values())
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = proc.wait(60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = proc.communicate()
    assert code == 0, (out, err)
    assert "Traceback" not in err
    assert took < 30
    short, long = events["short"], events["long"]
    # The short stream was allowed to finish ...
    assert short[-1] == "[DONE]", short[-3:]
    final = json.loads(short[-2])
    assert final["choices"][0]["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 24
    # ... the long one was aborted after --shutdown-timeout, with an error event, not a cut connection.
    assert long[-1] == "[DONE]" and json.loads(long[-2])["error"]["code"] == "shutting_down", long[-3:]
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
