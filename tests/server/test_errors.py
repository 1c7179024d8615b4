"""Malformed and hostile requests: each gets the right status and an OpenAI error body; the server goes on.

Also API keys (401), --max-concurrent-requests (429) and an engine failure (500, server stays up).
"""
from __future__ import annotations

import asyncio
import json
import logging

import httpx
import openai
import pytest

from .conftest import API_KEYS, MODEL_NAME, wait_all_blocks_free

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "Hi"}]


def chat(**fields):
    return {"model": MODEL_NAME, "messages": MSG, "max_tokens": 4, **fields}


def raw(body: bytes, content_type="application/json"):
    return {"content": body, "headers": {"content-type": content_type}}


LONG_TEXT = "hello " * 1100  # ~1100 tokens, over the test session_len of 1024

# (id, method, path, request kwargs for httpx, status, param or None)
CASES = [
    ("invalid-json", "POST", CHAT, raw(b'{"model": "x", "messages": [}'), 400, None),
    ("truncated-json", "POST", CHAT, raw(b'{"model":'), 400, None),
    ("empty-body", "POST", CHAT, raw(b""), 400, None),
    ("json-array-body", "POST", CHAT, {"json": [1, 2, 3]}, 400, None),
    ("json-string-body", "POST", CHAT, {"json": "hello"}, 400, None),
    ("nan-literal", "POST", CHAT, raw(b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'),
     400, None),
    ("invalid-utf8", "POST", CHAT, raw(b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'), 400, None),
    ("deeply-nested", "POST", CHAT, raw(b"[" * 100_000 + b"]" * 100_000), 400, None),
    ("body-over-1MB", "POST", CHAT, {"json": chat(messages=[{"role": "user", "content": "x" * 2_000_000}])},
     413, None),
    ("missing-messages", "POST", CHAT, {"json": {"model": MODEL_NAME}}, 400, "messages"),
    ("empty-messages", "POST", CHAT, {"json": chat(messages=[])}, 400, "messages"),
    ("messages-not-list", "POST", CHAT, {"json": chat(messages="hello")}, 400, "messages"),
    ("message-not-object", "POST", CHAT, {"json": chat(messages=["hello"])}, 400, "messages"),
    ("unknown-role", "POST", CHAT, {"json": chat(messages=[{"role": "wizard", "content": "Hi"}])}, 400, "messages"),
    ("content-wrong-type", "POST", CHAT, {"json": chat(messages=[{"role": "user", "content": 42}])}, 400,
     "messages"),
    ("image-part", "POST", CHAT, {"json": chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])}, 400, "messages"),
    ("max-tokens-string", "POST", CHAT, {"json": chat(max_tokens="ten")}, 400, "max_tokens"),
    ("max-tokens-float", "POST", CHAT, {"json": chat(max_tokens=3.5)}, 400, "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, {"json": chat(max_tokens=-5)}, 400, "max_tokens"),
    ("max-tokens-zero", "POST", CHAT, {"json": chat(max_tokens=0)}, 400, "max_tokens"),
    ("max-tokens-huge", "POST", CHAT, {"json": chat(max_tokens=10**12)}, 400, "max_tokens"),
    ("max-completion-tokens-negative", "POST", CHAT, {"json": chat(max_completion_tokens=-1)}, 400,
     "max_completion_tokens"),
    ("temperature-negative", "POST", CHAT, {"json": chat(temperature=-1)}, 400, "temperature"),
    ("temperature-string", "POST", CHAT, {"json": chat(temperature="hot")}, 400, "temperature"),
    ("top-p-2", "POST", CHAT, {"json": chat(top_p=2)}, 400, "top_p"),
    ("top-p-0", "POST", CHAT, {"json": chat(top_p=0)}, 400, "top_p"),
    ("top-k-negative", "POST", CHAT, {"json": chat(top_k=-5)}, 400, "top_k"),
    ("min-p-over-1", "POST", CHAT, {"json": chat(min_p=1.5)}, 400, "min_p"),
    ("n-zero", "POST", CHAT, {"json": chat(n=0)}, 400, "n"),
    ("n-huge", "POST", CHAT, {"json": chat(n=100_000)}, 400, "n"),
    ("presence-penalty-5", "POST", CHAT, {"json": chat(presence_penalty=5)}, 400, "presence_penalty"),
    ("frequency-penalty--3", "POST", CHAT, {"json": chat(frequency_penalty=-3)}, 400, "frequency_penalty"),
    ("repetition-penalty-0", "POST", CHAT, {"json": chat(repetition_penalty=0)}, 400, "repetition_penalty"),
    ("seed-string", "POST", CHAT, {"json": chat(seed="abc")}, 400, "seed"),
    ("stop-number", "POST", CHAT, {"json": chat(stop=123)}, 400, "stop"),
    ("stop-empty-string", "POST", CHAT, {"json": chat(stop=[""])}, 400, "stop"),
    ("stream-string", "POST", CHAT, {"json": chat(stream="yes")}, 400, "stream"),
    ("top-logprobs-50", "POST", CHAT, {"json": chat(logprobs=True, top_logprobs=50)}, 400, "top_logprobs"),
    ("stream-options-not-object", "POST", CHAT, {"json": chat(stream=True, stream_options=3)}, 400,
     "stream_options"),
    ("unknown-model", "POST", CHAT, {"json": chat(model="gpt-4o")}, 404, "model"),
    ("prompt-over-session-len-chat", "POST", CHAT,
     {"json": chat(messages=[{"role": "user", "content": LONG_TEXT}])}, 400, "messages"),
    ("prompt-over-session-len-completion", "POST", COMPLETIONS,
     {"json": {"model": MODEL_NAME, "prompt": LONG_TEXT, "max_tokens": 4}}, 400, "prompt"),
    ("completion-missing-prompt", "POST", COMPLETIONS, {"json": {"model": MODEL_NAME}}, 400, "prompt"),
    ("completion-empty-prompt", "POST", COMPLETIONS, {"json": {"model": MODEL_NAME, "prompt": ""}}, 400, "prompt"),
    ("completion-token-out-of-range", "POST", COMPLETIONS,
     {"json": {"model": MODEL_NAME, "prompt": [1, 2, 10**9]}}, 400, "prompt"),
    ("completion-prompt-mixed-types", "POST", COMPLETIONS,
     {"json": {"model": MODEL_NAME, "prompt": ["a", 1]}}, 400, "prompt"),
    ("completion-echo", "POST", COMPLETIONS, {"json": {"model": MODEL_NAME, "prompt": "a", "echo": True}}, 400,
     "echo"),
    ("completion-logprobs-too-many", "POST", COMPLETIONS,
     {"json": {"model": MODEL_NAME, "prompt": "a", "logprobs": 99}}, 400, "logprobs"),
    ("completion-max-tokens-huge", "POST", COMPLETIONS,
     {"json": {"model": MODEL_NAME, "prompt": "a", "max_tokens": 5000}}, 400, "max_tokens"),
    ("detokenize-bad-ids", "POST", "/detokenize", {"json": {"tokens": [-1, 5]}}, 400, "tokens"),
    ("tokenize-nothing", "POST", "/tokenize", {"json": {}}, 400, "prompt"),
    ("unknown-route", "POST", "/v1/embeddings", {"json": {}}, 404, None),
    ("wrong-method", "GET", CHAT, {}, 405, None),
]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("method,path,kwargs,status,param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_openai_error(http, method, path, kwargs, status, param):
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert error["param"] == param, error


def test_server_still_answers_after_bad_requests(http, server):
    r = http.post(CHAT, json=chat(temperature=0))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    wait_all_blocks_free(server.engine)


def test_error_messages_name_the_fix(http):
    r = http.post(CHAT, json=chat(max_tokens=5000))
    assert "at most" in r.json()["error"]["message"] and r.json()["error"]["code"] == "context_length_exceeded"
    r = http.post(CHAT, json=chat(model="gpt-4o"))
    assert MODEL_NAME in r.json()["error"]["message"] and r.json()["error"]["code"] == "model_not_found"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MSG)


# -- API keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"},
                                     {"Authorization": f"Basic {API_KEYS[0]}"}, {"Authorization": API_KEYS[0]},
                                     {"Authorization": f"Bearer {API_KEYS[0]}x"}],
                         ids=["missing", "wrong", "empty", "basic-scheme", "no-scheme", "key-prefix"])
def test_api_key_required(keyed_server, headers):
    for method, path, body in (("POST", CHAT, chat()), ("GET", "/v1/models", None),
                               ("POST", "/tokenize", {"prompt": "x"})):
        r = httpx.request(method, keyed_server.url + path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_api_keys_accepted(keyed_server):
    for key in API_KEYS:
        with openai.OpenAI(base_url=keyed_server.base_url, api_key=key, max_retries=0) as c:
            assert c.models.list().data[0].id == MODEL_NAME
            resp = c.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=2)
            assert resp.usage.completion_tokens >= 1
    with openai.OpenAI(base_url=keyed_server.base_url, api_key="nope", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    assert httpx.get(keyed_server.url + "/health").status_code == 200  # health and metrics stay open
    assert httpx.get(keyed_server.url + "/metrics").status_code == 200


# -- concurrency limit ----------------------------------------------------------------------------
def test_max_concurrent_requests_gives_429(limited_server):
    async def main():
        async with httpx.AsyncClient(base_url=limited_server.url, timeout=120) as c:
            body = chat(max_tokens=200, stream=True, ignore_eos=True)
            streams, readers = [], []
            for _ in range(2):  # hold two streams open: the limit
                ctx = c.stream("POST", CHAT, json=body)
                resp = await ctx.__aenter__()
                assert resp.status_code == 200
                lines = resp.aiter_lines()
                while not (await lines.__anext__()).startswith("data:"):
                    pass
                # Keep the line iterator alive: a collected one closes its connection (a disconnect).
                streams.append(ctx)
                readers.append(lines)
            r = await c.post(CHAT, json=chat())
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            for lines, ctx in zip(readers, streams):
                await lines.aclose()
                await ctx.__aexit__(None, None, None)
            await asyncio.sleep(0.2)
            r = await c.post(CHAT, json=chat())
            assert r.status_code == 200, r.text

    asyncio.run(main())
    wait_all_blocks_free(limited_server.engine)


# -- engine failure -------------------------------------------------------------------------------
@pytest.fixture
def threaded_client(threaded_server):
    with openai.OpenAI(base_url=threaded_server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_engine_failure_is_500_and_server_stays_up(threaded_server, threaded_client, monkeypatch, caplog):
    """A failed forward (patched into the in-thread engine) is a 500; the server goes on serving."""
    server, client = threaded_server, threaded_client
    engine = server.aengine.engine
    wait_all_blocks_free(engine)
    real_launch = engine.runner.launch
    failures = []

    def failing_launch(plan):
        if len(failures) < 2:
            failures.append(plan)
            raise RuntimeError("simulated CUDA error")
        return real_launch(plan)

    monkeypatch.setattr(engine.runner, "launch", failing_launch)
    with caplog.at_level(logging.ERROR, logger="engine.server.serving"):
        r = httpx.post(server.url + CHAT, json=chat(), timeout=60)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_error"
    # The body names the request id, never the exception's text; the log has the text under that id.
    request_id = r.headers["x-request-id"]
    assert f"request id {request_id}" in error["message"] and "simulated" not in r.text
    assert any(request_id in rec.getMessage() and "simulated CUDA error" in rec.getMessage() for rec in caplog.records)
    with pytest.raises(openai.APIError, match="the engine failed on this request") as failed:
        for _ in client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=4, stream=True):
            pass
    assert "simulated" not in str(failed.value)
    assert len(failures) == 2
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=4)
    assert resp.choices[0].message.content
    wait_all_blocks_free(engine)
    text = httpx.get(server.url + "/metrics").text
    assert 'opsctl:request_success_total{finished_reason="error"' in text
    assert json.loads(httpx.get(server.url + "/health").text) == {"status": "ok"}


def test_a_bug_is_a_500_with_the_request_id_logged_once(threaded_server, monkeypatch, caplog):
    """An exception no route handles: 500 naming the request id (the client's, if it sent a plain one),
    no exception text in the body, one log record carrying the traceback, and the server goes on."""
    serving = threaded_server.app.state.opsctl.serving

    async def broken(*args, **kwargs):
        raise RuntimeError("secret at /home/alice/key.pem")

    monkeypatch.setattr(serving, "chat", broken)
    with caplog.at_level(logging.DEBUG):
        r = httpx.post(threaded_server.url + CHAT, json=chat(), headers={"X-Request-Id": "trace-42"}, timeout=30)
        odd = httpx.post(threaded_server.url + CHAT, json=chat(), headers={"X-Request-Id": "no spaces\tplease"},
                         timeout=30)
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-42"
    assert r.json()["error"]["code"] == "internal_error" and "trace-42" in r.json()["error"]["message"]
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert odd.status_code == 500 and len(odd.headers["x-request-id"]) == 32  # a fresh id, not the client's
    records = [rec for rec in caplog.records if rec.name.startswith(("engine", "uvicorn")) and "trace-42" in rec.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    assert not [rec for rec in caplog.records if rec.name.startswith("uvicorn") and rec.levelno >= logging.ERROR]
    monkeypatch.undo()
    assert httpx.post(threaded_server.url + CHAT, json=chat(), timeout=60).status_code == 200


def test_shutting_down_gives_503(server, http):
    server.app.state.shutting_down = True
    try:
        r = http.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "shutting_down"}
        r = http.post(CHAT, json=chat())
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    finally:
        server.app.state.shutting_down = False
    assert http.get("/health").status_code == 200


def test_api_keys_parse_repeated_and_comma_separated():
    from engine.server.auth import APIKeyChecker, parse_api_keys

    assert parse_api_keys(["sk-a,sk-b", " sk-c ", "sk-a", ""]) == ("sk-a", "sk-b", "sk-c")
    checker = APIKeyChecker("sk-a, sk-b")
    assert checker.is_valid("Bearer sk-b") and checker.is_valid("bearer sk-a")
    assert not checker.is_valid("Bearer sk-c") and not checker.is_valid(None) and not checker.is_valid("Bearer")
    assert APIKeyChecker(None).is_valid(None)
