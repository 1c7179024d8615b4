"""A real `python -m toolkit serve` process: stop strings cannot make one request cost memory or time.

Issue 9: one POST with a 40,000-character stop string grew the server by 620 MB and its engine
process by 755 MB and took 12 s. Both processes are measured here, by their resident set size.
"""
from __future__ import annotations

import time

import httpx
import pytest

from engine.generation import MAX_STOP_WORD_CHARS, MAX_STOP_WORDS

from .serve_process import ServeProcess, descendants, rss_mb

MAX_GROWTH = 50 * 2**20


def memory(pid: int) -> dict[int, int]:
    """RSS in bytes of the server process and of each process under it (the engine, multiprocessing's helpers)."""
    return {p: int(rss_mb(p) * 2**20) for p in [pid, *descendants(pid)]}


def assert_little_growth(before: dict[int, int], after: dict[int, int]) -> None:
    for pid, size in before.items():
        grown = after[pid] - size
        assert grown < MAX_GROWTH, f"process {pid} grew by {grown / 2**20:.0f} MB"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve = ServeProcess(tmp_path_factory.mktemp("stops") / "serve.log", "--log-level", "warning")
    try:
        serve.wait_healthy()
        # Warm up the request path (lazy imports, first tokenization) before anything is measured.
        warm = httpx.post(serve.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stop": ["x"]},
                          timeout=60)
        assert warm.status_code == 200, warm.text
        yield serve.proc, serve.url
    finally:
        serve.stop()


@pytest.mark.slow
def test_huge_stop_string_is_refused_fast_without_memory_growth(server):
    proc, url = server
    before = memory(proc.pid)
    assert len(before) >= 2, "no engine process under the server"
    start = time.perf_counter()
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stop": ["a" * 40_000]},
                      timeout=60)
    elapsed = time.perf_counter() - start
    assert elapsed < 1, f"{elapsed:.1f} s"
    if resp.status_code != 200:
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == "stop"
        assert error["message"].startswith("stop ") and str(MAX_STOP_WORD_CHARS) in error["message"]
        assert len(error["message"]) < 200
    assert_little_growth(before, memory(proc.pid))


@pytest.mark.slow
def test_stop_list_at_the_limits_is_served(server):
    proc, url = server
    before = memory(proc.pid)
    stops = [f"{i:02d}" + "z" * (MAX_STOP_WORD_CHARS - 2) for i in range(MAX_STOP_WORDS)]
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "stop": stops}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 4
    assert_little_growth(before, memory(proc.pid))
    # One more stop string is refused, naming OpenAI's parameter.
    resp = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "stop": stops + ["one more"]},
                      timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stop", resp.text
