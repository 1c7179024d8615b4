"""toolkit.bench.fake_server answers as an OpenAI server would, with the timing it is told, and logs what it did.

The in-process server (workers=0) for the API's shape; the command line with 2 worker processes for
the workers sharing one port, /stats over both, and a clean stop on SIGTERM.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest

from tests.server.conftest import free_port
from toolkit.bench.fake_server import FakeConfig, FakeServer


def _events(resp: httpx.Response) -> list:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def _stream(url: str, path: str, body: dict) -> list:
    with httpx.stream("POST", url + path, json={"model": "fake-model", "stream": True, **body}, timeout=10) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        return _events(resp)


def test_answers_and_counts_as_asked():
    with FakeServer(FakeConfig(ttft_s=0.03, itl_s=0.005, output_len=4, chat_template_tokens=30), workers=0) as fake:
        url = fake.url
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "fake-model"
        # Chat, streamed: a role chunk, max_tokens=3 tokens one per event, the finish, the usage, [DONE].
        ev = _stream(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three"}],
                                                   "max_tokens": 3, "stream_options": {"include_usage": True}})
        assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [e["choices"][0]["delta"]["content"] for e in ev[1:4]] == [" w0", " w1", " w2"]
        assert ev[4]["choices"][0]["finish_reason"] == "length"
        assert ev[5]["usage"] == {"prompt_tokens": 33, "completion_tokens": 3, "total_tokens": 36}  # 3 words + 30
        assert ev[6] == "[DONE]" and len(ev) == 7
        # Completions: the answer stops at output_len (finish "stop") unless ignore_eos; token ids count as tokens.
        ev = _stream(url, "/v1/completions", {"prompt": [1, 2, 3, 4, 5], "max_tokens": 50,
                                              "stream_options": {"include_usage": True}})
        assert [e["choices"][0]["text"] for e in ev[:4]] == [" w0", " w1", " w2", " w3"]
        assert ev[4]["choices"][0]["finish_reason"] == "stop" and ev[5]["usage"]["prompt_tokens"] == 5
        ev = _stream(url, "/v1/completions", {"prompt": "a b", "max_tokens": 6, "ignore_eos": True})
        assert len(ev) == 6 + 2 and "usage" not in ev[-2]  # no include_usage: no usage chunk
        # Not streamed: one JSON after the whole answer's time, with usage.
        doc = httpx.post(url + "/v1/chat/completions", json={"model": "m", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x y"}]}]}, timeout=10).json()
        assert doc["choices"][0]["message"]["content"] == " w0 w1" and doc["usage"]["prompt_tokens"] == 32
        assert httpx.post(url + "/v1/completions", content=b"not json").status_code == 400
        resp = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 1, "stream": True},
                          headers={"X-Request-Id": "abc-7"})
        assert resp.status_code == 200
        stats = httpx.get(url + "/stats?requests=1").json()
    assert stats["requests"] == 5 and stats["token_events"] == 3 + 4 + 6 + 2 + 1
    assert stats["config"]["ttft_s"] == 0.03 and stats["request_list"][-1]["rid"] == "abc-7"
    # What it did: TTFT from the request's arrival, tokens on a fixed schedule (the streamed ones only).
    assert stats["ttft_s"]["count"] == 4 and stats["ttft_s"]["min"] >= 0.03
    assert stats["itl_s"]["p50"] == pytest.approx(0.005, abs=0.002)
    assert fake.app.num_requests == 5  # the in-process app: its own counters


def test_command_line_serves_from_several_workers():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.bench.fake_server", "--port", str(port), "--workers", "2",
                             "--ttft-ms", "5", "--itl-ms", "1", "--output-len", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"fake OpenAI server on http://127.0.0.1:{port} (2 worker(s)"), line
        url = f"http://127.0.0.1:{port}"
        for _ in range(24):  # a connection each: the kernel spreads them over the workers' sockets
            with httpx.Client() as client:
                assert client.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 9}).json()[
                    "usage"]["completion_tokens"] == 4
        stats = httpx.get(url + "/stats?requests=1").json()
        assert stats["requests"] == 24 and stats["token_events"] == 96
        assert {r["w"] for r in stats["request_list"]} == {0, 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "served 24 requests, 96 token events" in out and "Traceback" not in err
