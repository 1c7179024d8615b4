"""The /admin routes of a real `opsctl serve` process: settings, and runtime reconfigure without a restart.

With --enable-admin and an API key: both routes need the key (401), a reconfigure answers the new
settings and a pool of exactly the new size, a field that needs a restart is a 400 naming it, a
request in flight is a 409, streams after a reconfigure answer what they answered before it, and a
reconfigure costs a small part of what a restart does. Without --enable-admin the routes do not exist.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest

from .serve_process import ServeProcess

KEY = "sk-admin-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Several 16-token blocks long, so that with prefix caching on a second run finds full blocks cached.
PROMPT = ("You are a poet who writes about the weather and the sea. Your poems are short, plain and exact. "
          "Write a short poem about the sea at dawn.")


def _start(tmp_path_factory, name: str, *args: str) -> tuple[ServeProcess, float]:
    """A server and its restart cost: seconds from launching the process to /health answering 200."""
    started = time.monotonic()
    server = ServeProcess(tmp_path_factory.mktemp(name) / "serve.log", *args)
    server.wait_healthy(timeout=300)
    return server, time.monotonic() - started


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    server, restart_s = _start(tmp_path_factory, "admin", "--enable-admin", "--api-keys", KEY, "--log-level", "info")
    server.restart_s = restart_s
    yield server
    server.stop()


def _reconfigure(server: ServeProcess, changes: dict, headers=AUTH) -> httpx.Response:
    return httpx.post(server.url + "/admin/reconfigure", json=changes, headers=headers, timeout=120)


def _config(server: ServeProcess) -> dict:
    response = httpx.get(server.url + "/admin/config", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_idle(server: ServeProcess, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = _config(server)["stats"]
        if stats["num_running"] == stats["num_waiting"] == 0 and stats["num_free_blocks"] == stats["num_blocks"]:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


def _streamed_text(server: ServeProcess, max_tokens: int = 16) -> str:
    """A greedy streamed completion's text; the stream must end with [DONE]."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    text, done = [], False
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: "):])
            assert "error" not in chunk, chunk
            text.append(chunk["choices"][0]["text"])
    assert done
    return "".join(text)


def test_admin_routes_need_the_api_key(admin_server):
    for method, path in (("GET", "/admin/config"), ("POST", "/admin/reconfigure")):
        response = httpx.request(method, admin_server.url + path, json={"max_batch_size": 2}, timeout=30)
        assert response.status_code == 401, (path, response.text)
        wrong = httpx.request(method, admin_server.url + path, json={"max_batch_size": 2}, timeout=30,
                              headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401, (path, wrong.text)
    assert _config(admin_server)["config"]["max_batch_size"] == 8  # nothing was applied


def test_config_reports_the_effective_settings(admin_server):
    settings = _config(admin_server)
    assert settings["config"]["max_batch_size"] == 8 and settings["config"]["cache_max_entry_count"] == 128
    assert settings["config"]["cache_block_seq_len"] == 16 and settings["config"]["session_len"] == 1024
    flags = settings["flags"]
    assert flags[flags.index("--max-batch-size") + 1] == "8" and flags[flags.index("--device") + 1] == "cpu"
    assert "max_batch_size" in settings["runtime_fields"] and settings["stats"]["num_blocks"] == 128


def test_reconfigure_is_cheap_and_streams_answer_as_before(admin_server):
    before = _streamed_text(admin_server)
    _wait_idle(admin_server)
    changes = {"max_batch_size": 2, "cache_max_entry_count": 64, "enable_prefix_caching": True}
    started = time.monotonic()
    response = _reconfigure(admin_server, changes)
    wall_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"] == changes
    assert {k: body["config"][k] for k in changes} == changes
    assert body["stats"]["num_blocks"] == body["stats"]["num_free_blocks"] == 64
    flags = body["flags"]
    assert flags[flags.index("--max-batch-size") + 1] == "2" and "--enable-prefix-caching" in flags
    # The API process's view (GET /admin/config, /metrics) is the engine's new one.
    assert _config(admin_server)["config"]["max_batch_size"] == 2
    metrics = httpx.get(admin_server.url + "/metrics", timeout=30).text
    assert 'opsctl:kv_cache_num_blocks{model_name="SmolLM2-135M-Instruct"} 64.0' in metrics
    print(f"\nCPU, SmolLM2-135M: restart to /health {admin_server.restart_s:.1f} s; reconfigure "
          f"{wall_s * 1000:.0f} ms over HTTP ({body['reconfigure_s'] * 1000:.0f} ms in the server)")
    assert wall_s < admin_server.restart_s / 4, (wall_s, admin_server.restart_s)

    # Greedy, one request at a time: the same text as before, twice (the second from the prefix cache).
    assert _streamed_text(admin_server) == before
    assert _streamed_text(admin_server) == before
    assert _config(admin_server)["stats"]["prefix_cache_hits"] > 0
    _wait_idle(admin_server)
    assert _reconfigure(admin_server, {"max_batch_size": 8, "cache_max_entry_count": 128,
                                       "enable_prefix_caching": False}).status_code == 200


def test_reconfigure_with_a_request_in_flight_is_409(admin_server):
    body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", admin_server.url + "/v1/completions", json=body, headers=AUTH, timeout=120) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the request is running
        response = _reconfigure(admin_server, {"max_batch_size": 4})
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "engine_busy"
    # Closing the stream aborted the request: once its blocks are free the engine takes new settings.
    _wait_idle(admin_server)
    assert _config(admin_server)["config"]["max_batch_size"] == 8
    response = _reconfigure(admin_server, {"max_batch_size": 4})
    assert response.status_code == 200, response.text
    assert _streamed_text(admin_server, 4)
    assert _reconfigure(admin_server, {"max_batch_size": 8}).status_code == 200


@pytest.mark.parametrize("changes, param, status", [
    ({"dtype": "bfloat16"}, "dtype", 400),
    ({"session_len": 512}, "session_len", 400),
    ({"max_batch_size": "two"}, "max_batch_size", 400),
    ({"cache_max_entry_count": 8}, None, 400),  # 8 blocks of 16 tokens: less than one session of 1024
])
def test_refused_reconfigure_names_why_and_keeps_the_settings(admin_server, changes, param, status):
    response = _reconfigure(admin_server, changes)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if param is not None:
        assert param in error["message"]
    else:
        assert "less than one session" in error["message"] and "kept its previous settings" in error["message"]
    settings = _config(admin_server)
    assert settings["config"]["max_batch_size"] == 8 and settings["stats"]["num_blocks"] == 128
    assert _streamed_text(admin_server, 4)  # and the engine serves on


def test_without_enable_admin_the_routes_do_not_exist(tmp_path_factory):
    server, restart_s = _start(tmp_path_factory, "plain")
    try:
        for method, path in (("GET", "/admin/config"), ("POST", "/admin/reconfigure")):
            response = httpx.request(method, server.url + path, json={"max_batch_size": 2}, timeout=30)
            assert response.status_code == 404, (path, response.text)
        assert "no route" in response.json()["error"]["message"]
    finally:
        server.stop()
