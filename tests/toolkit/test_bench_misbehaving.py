"""`opsctl bench --url` against servers that misbehave: it ends within its timeouts and says what happened.

The server is the fake (fake_openai_server.py) in one misbehaviour mode per test; the bench runs as
users run it, `python -m toolkit bench` (Locust in its own process below that), with a couple of
requests and a short --timeout so each test takes seconds. A broken model list is one line of error
(or, with --model, a warning and a run); a broken stream is a failed request, counted by kind in
result.json, whatever the stream did, and no request outlives its --timeout.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.toolkit.fake_openai_server import FakeOpenAIServer
from toolkit.report.schema import BenchResult

TIMEOUT_S = 1.5  # --timeout of the stream tests: every request must end by then


def _bench(out: Path, url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--url", url, "--input-len", "8",
                           "--output-len", "4", "-o", str(out), "--run-id", "r1", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr


# -- GET /v1/models says something that is not a model list --------------------------------------

BAD_MODEL_LISTS = {
    "id is a number": (b'{"object": "list", "data": [{"id": 42}]}', "application/json", "data[0].id is 42"),
    "no data": (b'{"object": "list"}', "application/json", 'no "data" list'),
    "data not a list": (b'{"data": {"id": "m"}}', "application/json", 'no "data" list'),
    "entry not an object": (b'{"data": ["m"]}', "application/json", "data[0] is 'm'"),
    "html page": (b"<html><body>Welcome to nginx!</body></html>", "text/html", "not JSON (text/html)"),
    "invalid json": (b'{"data": [{"id": "m"', "application/json", "not JSON (application/json)"),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_LISTS))
def test_bad_model_list_is_one_line_naming_the_url(tmp_path, case):
    body, content_type, what = BAD_MODEL_LISTS[case]
    with FakeOpenAIServer(models_body=(body, content_type)) as fake:
        proc = _bench(tmp_path, fake.url, "--num-requests", "1", timeout=60)
        assert fake.num_requests == 0
    _no_traceback(proc)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: GET {fake.url}/v1/models"), lines
    assert what in lines[0] and "--model" in lines[0], lines[0]
    assert not (tmp_path / "r1").exists()


def test_bad_model_list_with_explicit_model_still_runs(tmp_path):
    with FakeOpenAIServer(models_body=(b'{"data": [{"id": 42}]}', "application/json"), first_token_s=0.01,
                          inter_token_s=0.01) as fake:
        proc = _bench(tmp_path, fake.url, "--model", "fake-model", "--num-requests", "2", "--warmup", "0",
                      "--no-report")
        assert fake.num_requests == 2
    _no_traceback(proc)
    assert proc.returncode == 0
    assert f"warning: GET {fake.url}/v1/models" in proc.stderr and "using --model fake-model" in proc.stderr
    result = BenchResult.read(tmp_path / "r1" / "result.json")
    assert result.runs[0].model == "fake-model" and result.runs[0].summary.num_errors == 0
    assert any("data[0].id is 42" in n for n in result.notes)


def test_models_endpoint_that_never_answers_is_one_line(tmp_path):
    from tests.server.conftest import UvicornThread

    async def app(scope, receive, send):  # accepts every connection, never answers
        import asyncio

        await asyncio.sleep(30)

    server = UvicornThread(app).start()
    try:
        started = time.monotonic()
        proc = _bench(tmp_path, server.url, "--num-requests", "1", timeout=60)
        took = time.monotonic() - started
    finally:
        server.server.force_exit = True
        server.stop()
    _no_traceback(proc)
    assert proc.returncode == 1 and took < 30
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: GET {server.url}/v1/models sent no answer within 5 s"], lines


# -- the completion stream misbehaves ------------------------------------------------------------

def _run_stream_case(tmp_path: Path, mode: str, *extra: str, requests: int = 2, **server) -> tuple:
    with FakeOpenAIServer(stream_mode=mode, first_token_s=0.01, inter_token_s=0.05, **server) as fake:
        started = time.monotonic()
        proc = _bench(tmp_path, fake.url, "--num-requests", str(requests), "--concurrency", "2", "--warmup", "0",
                      "--timeout", str(TIMEOUT_S), *extra)
        took = time.monotonic() - started
        time.sleep(0.3)  # the server notices the client leaving on its next send
        disconnects = fake.disconnects
    _no_traceback(proc)
    out = tmp_path / "r1"
    assert (out / "result.json").is_file(), "no result.json"
    result = BenchResult.read(out / "result.json")
    file = result.runs[0].requests_file if result.runs else None  # no CSV when nothing was recorded
    rows = pd.read_csv(out / file) if file else pd.DataFrame(columns=["error", "e2e_s"])
    return proc, result, rows, took, disconnects


STREAM_CASES = {
    # mode: (error kind in result.json, the error text of each request has, the note explains)
    "hang": ("no response before the timeout", f"no HTTP response within {TIMEOUT_S:g} s",
             "sent no response headers"),
    "keepalive": ("no content before the timeout", "keep-alive comments", "without a single token"),
    "endless": ("stream unfinished at the timeout", "content chunks", "still streaming"),
    "json": ("not an SSE stream", "application/json", "not an SSE stream"),
    "malformed": ("malformed event", "not JSON", "not JSON"),
    "no-done": ("stream ended before [DONE]", "after 3 content chunks", "without data: [DONE]"),
    "done-only": ("no content", "[DONE] before any token", "without a single token"),
}


@pytest.mark.parametrize("mode", list(STREAM_CASES))
def test_misbehaving_stream_is_counted_by_kind_within_the_timeout(tmp_path, mode):
    kind, text, explained = STREAM_CASES[mode]
    proc, result, rows, took, disconnects = _run_stream_case(tmp_path, mode, "--no-report")
    # Every request failed: exit 1, but what was measured is written and explained.
    assert proc.returncode == 1
    s = result.runs[0].summary
    assert (s.num_requests, s.num_errors) == (2, 2)
    assert s.extra["errors"] == {kind: 2}, s.extra["errors"]
    assert rows["error"].str.startswith(kind + ":").all() and rows["error"].str.contains(text, regex=False).all()
    assert (rows["e2e_s"] < TIMEOUT_S + 1).all()
    assert f"warning: 2 of 2 requests failed ({kind} x2)" in proc.stdout
    assert any(explained in n for n in result.notes), result.notes
    assert explained in " ".join(proc.stdout.split())  # the console wraps long notes
    if mode in ("hang", "keepalive", "endless"):
        # The deadline holds for the whole stream, not only the first byte: each request ended at the
        # timeout and the client hung up on the server.
        assert (rows["e2e_s"] > TIMEOUT_S - 0.1).all()
        assert disconnects == 2
    assert took < 40


def test_server_errors_only_are_counted(tmp_path):
    proc, result, rows, took, _ = _run_stream_case(tmp_path, "normal", "--no-report", fail_every=1)
    assert proc.returncode == 1
    assert result.runs[0].summary.extra["errors"] == {"HTTP 500": 2}
    assert any("answered HTTP 500" in n for n in result.notes), result.notes
    assert took < 40


def test_keepalive_run_writes_the_html_report(tmp_path):
    """A run in which nothing succeeded still gets its CSV and report, beside result.json."""
    proc, result, rows, took, _ = _run_stream_case(tmp_path, "keepalive", requests=1)
    assert proc.returncode == 1 and len(rows) == 1
    assert (tmp_path / "r1" / "report.html").is_file() or "HTML report skipped" in proc.stdout
    raw = [json.loads(ln) for ln in (tmp_path / "r1" / "raw" / "records-0.jsonl").read_text().splitlines()]
    assert len(raw) == 1 and raw[0]["error"].startswith("no content before the timeout")
