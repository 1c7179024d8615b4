"""`opsctl serve` as a real process against hostile input, slow clients and a dead engine (issue 9).

One guarded server (API keys from a file and the environment, --allowed-hosts, 3 s header and body
deadlines, a connection cap) serves most tests; the engine-death test starts its own. Every request
here goes over a real socket to the real process.
"""
from __future__ import annotations

import json
import selectors
import signal
import socket
import threading
import time

import httpx
import pytest

from .serve_process import ServeProcess, alive, descendants

KEY_IN_FILE = "sk-from-file-7f3a"
KEY_IN_ENV = "sk-from-env-91bc"
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
MAX_CONNECTIONS = 300
AUTH = {"Authorization": f"Bearer {KEY_IN_FILE}"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    key_file = tmp / "keys.txt"
    key_file.write_text(f"# keys of the test server\n{KEY_IN_FILE}\n")
    server = ServeProcess(tmp / "serve.log", "--api-key-file", str(key_file), "--allowed-hosts", "127.0.0.1,localhost",
                          "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                          "--max-connections", str(MAX_CONNECTIONS), env={"OPSCTL_API_KEY": KEY_IN_ENV})
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


def chat_body(content="Say hi.", max_tokens=8, **extra):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0, **extra}


# -- 7: keys from a file and the environment; nothing open but /health and /metrics ---------------
def test_keys_from_file_and_env_and_docs_need_a_key(guarded):
    for key in (KEY_IN_FILE, KEY_IN_ENV):
        r = httpx.post(guarded.url + "/v1/chat/completions", json=chat_body(),
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, r.text
    cmdline = open(f"/proc/{guarded.proc.pid}/cmdline", "rb").read()
    assert KEY_IN_FILE.encode() not in cmdline and KEY_IN_ENV.encode() not in cmdline
    for path in ("/docs", "/openapi.json", "/redoc", "/v1/models", "/no-such-route"):
        r = httpx.get(guarded.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(guarded.url + "/openapi.json", headers=AUTH, timeout=10).status_code == 200
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200
    assert httpx.get(guarded.url + "/metrics", timeout=10).status_code == 200


# -- 6: only JSON bodies; only allowed Host headers ------------------------------------------------
def test_a_body_that_is_not_json_is_415_and_starts_nothing(guarded):
    before = _metric(guarded, 'opsctl:prompt_tokens_total')
    body = json.dumps(chat_body())
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {**AUTH, "Origin": "https://evil.example"}
        if content_type:
            headers["Content-Type"] = content_type
        r = httpx.post(guarded.url + "/v1/chat/completions", content=body, headers=headers, timeout=10)
        assert r.status_code == 415, (content_type, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
        assert "access-control-allow-origin" not in r.headers
    r = httpx.post(guarded.url + "/v1/chat/completions", content=body,
                   headers={**AUTH, "Content-Type": "Application/JSON; charset=utf-8"}, timeout=60)
    assert r.status_code == 200, r.text
    assert _metric(guarded, 'opsctl:prompt_tokens_total') > before  # only the JSON one generated


def test_host_header_outside_allowed_hosts_is_400(guarded):
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80"):
        r = httpx.get(guarded.url + "/v1/models", headers={**AUTH, "Host": host}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed", (host, r.text)
    r = httpx.get(guarded.url + "/v1/models", headers={**AUTH, "Host": f"localhost:{guarded.port}"}, timeout=10)
    assert r.status_code == 200


# -- 5: client faults are 4xx; 5xx never carry exception text --------------------------------------
def test_lone_surrogate_is_400_with_few_log_lines(guarded):
    lines_before = len(guarded.log_lines())
    raw = b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 4}'
    r = httpx.post(guarded.url + "/v1/chat/completions", content=raw,
                   headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages" and "surrogate" in err["message"] and "Traceback" not in r.text
    assert r.headers.get("x-request-id")
    time.sleep(0.5)
    assert len(guarded.log_lines()) - lines_before <= 2, guarded.log_lines()[lines_before:]


def test_client_gone_while_sending_its_body_logs_no_traceback(guarded):
    lines_before = len(guarded.log_lines())
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", guarded.port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + KEY_IN_FILE.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"messa")
            time.sleep(0.2)
    time.sleep(1.0)
    new = guarded.log_lines()[lines_before:]
    assert not any("Traceback" in line or "ERROR" in line for line in new), new
    assert len(new) <= 5, new
    assert httpx.get(guarded.url + "/health", timeout=5).status_code == 200


# -- 3: tokenizing never blocks the event loop -----------------------------------------------------
def test_big_tokenize_requests_do_not_stall_health(guarded):
    prompt = "the quick brown fox jumps over the lazy dog " * 22_000  # ~990 kB of text
    results = []

    def big():
        r = httpx.post(guarded.url + "/tokenize", json={"prompt": prompt}, headers=AUTH, timeout=120)
        results.append((r.status_code, r.json().get("count")))

    threads = [threading.Thread(target=big) for _ in range(10)]
    latencies = _watch_health(guarded, lambda: any(t.is_alive() for t in threads), start=threads)
    assert [code for code, _ in results] == [200] * 10, results
    assert all(count > 100_000 for _, count in results)
    assert max(latencies) < 1.0, f"/health took {max(latencies):.2f} s while tokenizing ({len(latencies)} probes)"


# -- 12 (server side): a client that leaves is counted as an abort ----------------------------------
def test_client_abort_is_counted_in_request_success_abort(guarded):
    before = _metric(guarded, 'opsctl:request_success_total{finished_reason="abort"')
    with httpx.stream("POST", guarded.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json=chat_body("Tell me a long story.", max_tokens=500, ignore_eos=True, stream=True)) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
    deadline = time.monotonic() + 10
    while _metric(guarded, 'opsctl:request_success_total{finished_reason="abort"') < before + 1:
        assert time.monotonic() < deadline, "the abort was not counted"
        time.sleep(0.1)


# -- 2: half-open connections and one-byte-a-second bodies while real streams run --------------------
def test_slow_clients_are_cut_off_while_streams_finish(guarded):
    lines_before = len(guarded.log_lines())
    sel = selectors.DefaultSelector()
    half_open, slow = [], []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", guarded.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")  # half a header
        half_open.append(s)
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", guarded.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY_IN_FILE.encode() + b"\r\nContent-Length: 100\r\n\r\n")
        slow.append(s)
    opened = time.monotonic()
    closed_at: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {}
    for s in half_open + slow:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    stream_results = []

    def stream():
        events = []
        with httpx.stream("POST", guarded.url + "/v1/chat/completions", headers=AUTH, timeout=120,
                          json=chat_body("Write a poem.", max_tokens=48, ignore_eos=True, stream=True)) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        stream_results.append(events)

    streams = [threading.Thread(target=stream) for _ in range(8)]
    stop = threading.Event()

    def trickle_and_watch():
        last_byte = 0.0
        while not stop.is_set() and len(closed_at) < len(half_open) + len(slow):
            now = time.monotonic()
            if now - last_byte >= 1.0:
                last_byte = now
                for s in slow:
                    if s not in closed_at:
                        try:
                            s.send(b" ")
                        except OSError:
                            closed_at.setdefault(s, time.monotonic())
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    answers[s] = answers.get(s, b"") + data
                else:
                    closed_at.setdefault(s, time.monotonic())
                    sel.unregister(s)

    watcher = threading.Thread(target=trickle_and_watch)
    watcher.start()
    try:
        latencies = _watch_health(guarded, lambda: any(t.is_alive() for t in streams) or watcher.is_alive(),
                                  start=streams, max_s=60)
    finally:
        stop.set()
        watcher.join(10)
        for s in half_open + slow:
            s.close()
    # The streams finished, with every token and [DONE].
    assert len(stream_results) == 8
    for events in stream_results:
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length", events[-3:]
    # /health answered within a second throughout.
    assert max(latencies) < 1.0, f"/health took {max(latencies):.2f} s"
    # Every half-open connection was closed by the server within the header deadline (+ scheduling slack),
    # after a 408; every slow body got a 408 within the body deadline.
    assert len(closed_at) == 220, f"{220 - len(closed_at)} connections still open"
    late = [t - opened for s, t in closed_at.items() if s in half_open and t - opened > HEADER_TIMEOUT + 2]
    assert not late, f"{len(late)} half-open connections closed late: {sorted(late)[-3:]}"
    assert all(answers.get(s, b"").startswith(b"HTTP/1.1 408") for s in half_open)
    late = [t - opened for s, t in closed_at.items() if s in slow and t - opened > BODY_TIMEOUT + 3]
    assert not late, f"{len(late)} slow bodies closed late: {sorted(late)[-3:]}"
    assert all(answers.get(s, b"").startswith(b"HTTP/1.1 408") for s in slow), [answers.get(s, b"")[:40] for s in slow]
    # The log stays short: no tracebacks, no line per probe.
    new = guarded.log_lines()[lines_before:]
    assert len(new) < 100, f"{len(new)} log lines:\n" + "\n".join(new[:20])
    assert not any("Traceback" in line for line in new)


def test_connections_over_the_cap_get_503_not_a_crash(guarded):
    socks, answers = [], []
    try:
        for _ in range(MAX_CONNECTIONS + 20):
            socks.append(socket.create_connection(("127.0.0.1", guarded.port)))
        time.sleep(0.5)
        for s in socks[-20:]:
            s.settimeout(5)
            answers.append(s.recv(4096))
    finally:
        for s in socks:
            s.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 15, answers[:3]
    assert b"too_many_connections" in refused[0] and b"retry-after: 1" in refused[0].lower()
    time.sleep(0.5)
    assert httpx.get(guarded.url + "/health", timeout=5).status_code == 200


# -- 4: the engine process dies ------------------------------------------------------------------
def test_engine_killed_ends_server_nonzero_and_fails_streams_with_engine_dead(tmp_path):
    server = ServeProcess(tmp_path / "serve.log", "--log-level", "warning")
    try:
        server.wait_healthy()
        everyone = descendants(server.proc.pid)
        engine = server.engine_pid
        events, started = [], threading.Event()

        def stream():
            with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                              json=chat_body("Tell me a long story.", max_tokens=900, ignore_eos=True,
                                             stream=True)) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 3:
                            started.set()
            started.set()

        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(60)
        killed = time.monotonic()
        import os

        os.kill(engine, signal.SIGKILL)
        code = server.proc.wait(10)
        took = time.monotonic() - killed
        t.join(10)
    finally:
        server.stop()
    assert code == 1, (code, server.log_text())
    assert took < 10
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "engine_dead" and "SIGKILL" in err["message"], err
    log = server.log_text()
    assert "killed by SIGKILL" in log and "Traceback" not in log, log
    time.sleep(0.5)
    assert not [p for p in everyone if alive(p)], "processes left behind"


# -- helpers -----------------------------------------------------------------------------------------
def _metric(server, prefix: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _watch_health(server, busy, start=(), max_s: float = 120) -> list[float]:
    """Probe /health every 0.1 s from before `start` threads start until busy() is false; the latencies."""
    latencies = []
    with httpx.Client(timeout=10) as probe:
        probe.get(server.url + "/health")
        for t in start:
            t.start()
        deadline = time.monotonic() + max_s
        while busy() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert probe.get(server.url + "/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
    for t in start:
        t.join(30)
    return latencies
