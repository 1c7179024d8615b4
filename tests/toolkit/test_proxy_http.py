"""The proxy over real sockets, in front of fake OpenAI servers of known timing (toolkit.bench.fake_server).

Routing by model and the merged /v1/models, each strategy's spread as the servers themselves counted
it, SSE passed through event by event while the server is still generating, a refused connection
retried on another server, a server dying mid-stream ending the client's stream with an error event,
health checks dropping and re-admitting a server, registration behind the token, API keys, and a
server's own registration hook (`opsctl serve --proxy-url`). The proxy runs in a thread of the test
process (its app with its lifespan, on uvicorn), the fakes too.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from tests.server.conftest import free_port
from tests.toolkit.fake_openai_server import FakeOpenAIServer
from toolkit.bench.fake_server import FakeConfig, FakeServer
from toolkit.proxy.app import build_app
from toolkit.proxy.registration import proxy_registration
from toolkit.proxy.settings import ProxySettings, ServerSpec

TOKEN = "test-token-0123456789abcdef"


class ProxyThread:
    """The proxy app on a free 127.0.0.1 port, served by uvicorn (lifespan on) in a thread."""

    def __init__(self, settings: ProxySettings):
        self.app = build_app(settings)
        self.state = self.app.state.proxy
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, lifespan="on", log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    def __enter__(self) -> "ProxyThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=30)

    def wait(self, predicate, timeout: float = 10.0, what: str = "the condition"):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def models(self, **kw) -> list[str]:
        return [m["id"] for m in httpx.get(self.url + "/v1/models", **kw).json()["data"]]

    def metric(self, name: str, **labels) -> float:
        """The first sample of `name` in the proxy's /metrics carrying these labels (0 when none does)."""
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            head, _, value = line.rpartition(" ")
            if head == name or (head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())):
                return float(value)
        return 0.0


def _settings(*servers, **kw) -> ProxySettings:
    specs = tuple(s if isinstance(s, ServerSpec) else ServerSpec(s.url) for s in servers)
    return ProxySettings(port=0, servers=specs, **{"health_interval_s": 0.2, "health_timeout_s": 1.0, **kw})


def _fakes(n: int, model: str = "m", **kw) -> list[FakeOpenAIServer]:
    return [FakeOpenAIServer(model=model, **{"first_token_s": 0.01, "inter_token_s": 0.01, **kw}).start()
            for _ in range(n)]


@pytest.fixture
def fakes():
    started: list = []

    def make(n: int, model: str = "m", **kw):
        new = _fakes(n, model, **kw)
        started.extend(new)
        return new
    yield make
    for f in started:
        f.stop()


def _error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# -- routing and the model list -----------------------------------------------------------------
def test_routes_by_model_and_merges_the_model_lists(fakes):
    a, b = fakes(1, "model-a")[0], fakes(1, "model-b")[0]
    with ProxyThread(_settings(a, b)) as proxy:  # no `models:`: learned from each server's /v1/models
        proxy.wait(lambda: proxy.models() == ["model-a", "model-b"], what="both models listed")
        with proxy.client() as client:
            for name in ("model-a", "model-b"):
                out = client.completions.create(model=name, prompt="hello there", max_tokens=3)
                assert out.model == name and out.choices[0].text == " w0 w1 w2"
                chunks = list(client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                             max_tokens=4, stream=True))
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " w0 w1 w2 w3"
            assert client.models.retrieve("model-b").id == "model-b"
        assert (a.num_requests, b.num_requests) == (2, 2)
        r = httpx.post(proxy.url + "/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404 and _error(r)["code"] == "model_not_found" and "model-a, model-b" in r.text
        r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 400 and _error(r)["param"] == "model"
        r = httpx.post(proxy.url + "/v1/completions", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]
        r = httpx.post(proxy.url + "/v1/completions", content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = httpx.post(proxy.url + "/v1/completions", content=b" " * (2 << 20),
                       headers={"content-type": "application/json"})
        assert r.status_code == 413 and _error(r)["code"] == "request_too_large"
        r = httpx.get(proxy.url + "/v1/nothing")
        assert r.status_code == 404 and _error(r)
        assert proxy.metric("opsctl_proxy:requests_total", server=a.url, model="model-a", outcome="200") == 2


def test_a_request_without_a_model_goes_to_the_only_model(fakes):
    (a,) = fakes(1, "solo")
    with ProxyThread(_settings(a)) as proxy:
        proxy.wait(lambda: proxy.models() == ["solo"])
        assert httpx.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


# -- streaming ----------------------------------------------------------------------------------
def test_stream_events_pass_through_while_the_server_generates(fakes):
    (slow,) = fakes(1, first_token_s=0.05, inter_token_s=0.3)  # 5 tokens: the server needs >= 1.25 s
    with ProxyThread(_settings(ServerSpec(slow.url, ("m",)))) as proxy:
        arrivals = []
        start = time.monotonic()
        with httpx.stream("POST", proxy.url + "/v1/completions", timeout=10,
                          json={"model": "m", "prompt": "x", "max_tokens": 5, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic() - start, chunk))
        first, last = arrivals[0][0], arrivals[-1][0]
        assert last >= 1.2
        assert first < 0.6, arrivals  # the first token, long before the server's last (buffering would wait 1.25 s)
        token_times = [t for t, c in arrivals if b'"text": " w' in c]
        assert len(token_times) >= 4 and token_times[-1] - token_times[0] >= 0.8  # spread out, as generated
        assert all(c.endswith(b"\n\n") for _, c in arrivals)  # whole events only


def test_a_server_dying_mid_stream_ends_the_stream_with_an_error_event(fakes):
    (dying,) = fakes(1, close_early_every=1)  # every stream: 3 tokens, then the connection drops
    with ProxyThread(_settings(ServerSpec(dying.url, ("m",)))) as proxy, proxy.client() as client:
        got = []
        with pytest.raises(openai.APIError, match="failed while streaming"):
            for chunk in client.completions.create(model="m", prompt="x", max_tokens=10, stream=True):
                got.append(chunk.choices[0].text)
        assert got == [" w0", " w1", " w2"]
        proxy.wait(lambda: proxy.metric("opsctl_proxy:requests_total", outcome="stream_error") == 1)
        assert proxy.metric("opsctl_proxy:server_failures_total", server=dying.url, kind="stream") == 1
        assert proxy.metric("opsctl_proxy:outstanding_requests", server=dying.url) == 0


def test_a_client_that_leaves_takes_its_upstream_request_with_it(fakes):
    endless, slow = fakes(1, "endless", stream_mode="endless")[0], fakes(1, "slow", first_token_s=30)[0]
    with ProxyThread(_settings(endless, slow)) as proxy:
        proxy.wait(lambda: proxy.models() == ["endless", "slow"])
        with httpx.stream("POST", proxy.url + "/v1/completions", timeout=10,
                          json={"model": "endless", "prompt": "x", "stream": True}) as r:
            next(r.iter_raw())  # one event, then the client goes away
        proxy.wait(lambda: endless.disconnects == 1, what="the server to see the stream's client leave")
        assert proxy.metric("opsctl_proxy:requests_total", server=endless.url, outcome="client_gone") == 1
        with pytest.raises(httpx.ReadTimeout):  # not streamed: the answer would take 30 s
            httpx.post(proxy.url + "/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=0.5)
        for server in (endless, slow):
            proxy.wait(lambda: proxy.metric("opsctl_proxy:outstanding_requests", server=server.url) == 0,
                       timeout=3, what="the request released")
        assert proxy.metric("opsctl_proxy:requests_total", server=slow.url, outcome="client_gone") == 1


# -- strategies, as the servers counted ---------------------------------------------------------
def _run(proxy: ProxyThread, n: int, concurrency: int, body=lambda i: {"prompt": f"p{i}"}, max_tokens: int = 4):
    def one(i):
        r = httpx.post(proxy.url + "/v1/completions", timeout=30,
                       json={"model": "m", "max_tokens": max_tokens, "stream": True, **body(i)})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))


@pytest.mark.parametrize("strategy", ["round_robin", "least_outstanding"])
def test_sequential_requests_use_every_server_in_turn(fakes, strategy):
    servers = fakes(3)
    with ProxyThread(_settings(*[ServerSpec(s.url, ("m",)) for s in servers], strategy=strategy)) as proxy:
        _run(proxy, 12, 1)
        assert [s.num_requests for s in servers] == [4, 4, 4]


def test_least_outstanding_sends_to_the_idle_server(fakes):
    fast, slow = fakes(1)[0], fakes(1, inter_token_s=0.2)[0]  # the slow one holds each request ~0.8 s
    with ProxyThread(_settings(ServerSpec(fast.url, ("m",)), ServerSpec(slow.url, ("m",)))) as proxy:
        _run(proxy, 40, 4)
        # round robin would give each 20; least outstanding sends most to the one that finishes fast
        assert slow.num_requests <= 10 and fast.num_requests >= 30, (fast.num_requests, slow.num_requests)


def test_prefix_affinity_sends_a_shared_prefix_to_one_server(fakes):
    servers = fakes(3)
    shared = "You are the support assistant of ACME. Answer in one line. " * 10
    with ProxyThread(_settings(*[ServerSpec(s.url, ("m",)) for s in servers], strategy="prefix_affinity")) as proxy:
        _run(proxy, 12, 2, body=lambda i: {"prompt": shared + f"Question {i}?"})
        assert sorted(s.num_requests for s in servers) == [0, 0, 12]
        _run(proxy, 30, 2, body=lambda i: {"prompt": f"Document {i}: " + shared})  # 30 distinct prefixes
        assert all(s.num_requests > 0 for s in servers)  # ~10 each: the prefixes spread


def test_prefix_affinity_falls_back_to_the_least_loaded_when_its_server_is_swamped(fakes):
    servers = fakes(2, inter_token_s=0.1)
    settings = _settings(*[ServerSpec(s.url, ("m",)) for s in servers], strategy="prefix_affinity",
                         prefix_fallback_factor=1.0)
    with ProxyThread(settings) as proxy:
        _run(proxy, 16, 8, body=lambda i: {"prompt": "one shared system prompt " * 20 + str(i)})
        assert min(s.num_requests for s in servers) >= 4, [s.num_requests for s in servers]


# -- failures and health ------------------------------------------------------------------------
def test_a_refused_connection_is_retried_on_another_server_and_drops_it(fakes):
    (live,) = fakes(1)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = _settings(ServerSpec(dead, ("m",)), ServerSpec(live.url, ("m",)), strategy="round_robin",
                         health_interval_s=60)  # only the failed forward may drop it here
    with ProxyThread(settings) as proxy:
        for i in range(6):
            r = httpx.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200, r.text
        assert live.num_requests == 6
        assert proxy.metric("opsctl_proxy:server_failures_total", server=dead, kind="connect") == 1
        assert proxy.metric("opsctl_proxy:server_up", server=dead) == 0
        assert proxy.metric("opsctl_proxy:retries_total", model="m") == 1
        assert proxy.metric("opsctl_proxy:outstanding_requests", server=dead) == 0


def test_no_reachable_server_is_a_502_and_no_live_one_a_503():
    dead = f"http://127.0.0.1:{free_port()}"
    with ProxyThread(_settings(ServerSpec(dead, ("m",)), health_interval_s=60)) as proxy:
        r = httpx.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 502 and _error(r)["code"] == "upstream_unavailable"
        r = httpx.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 503 and _error(r)["code"] == "no_live_server"
        assert proxy.models() == []


def test_a_server_error_is_passed_on_not_retried(fakes):
    servers = fakes(2, fail_every=1)
    with ProxyThread(_settings(*[ServerSpec(s.url, ("m",)) for s in servers])) as proxy:
        r = httpx.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 500 and "injected failure" in r.text
        assert sum(s.num_requests for s in servers) == 1


def test_health_checks_drop_a_dead_server_and_readmit_it(fakes):
    (a,) = fakes(1, "model-a")
    b = FakeServer(FakeConfig(model="model-b"), workers=0).start()
    port = b.port
    settings = _settings(a, b, health_failures=2)
    with ProxyThread(settings) as proxy:
        proxy.wait(lambda: proxy.models() == ["model-a", "model-b"])
        b.stop()
        proxy.wait(lambda: proxy.models() == ["model-a"], what="model-b dropped")
        r = httpx.post(proxy.url + "/v1/completions", json={"model": "model-b", "prompt": "x"})
        assert r.status_code == 503 and _error(r)["code"] == "no_live_server"
        assert proxy.metric("opsctl_proxy:server_failures_total", server=b.url, kind="health") >= 2
        b = FakeServer(FakeConfig(model="model-b"), port=port, workers=0).start()
        try:
            proxy.wait(lambda: proxy.models() == ["model-a", "model-b"], what="model-b re-admitted")
            r = httpx.post(proxy.url + "/v1/completions", json={"model": "model-b", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 200
        finally:
            b.stop()


def test_a_registered_server_down_for_long_is_forgotten(fakes):
    (a,) = fakes(1, "model-a")
    auth = {"authorization": f"Bearer {TOKEN}"}
    with ProxyThread(_settings(token=TOKEN, health_failures=1, forget_after_s=0.5)) as proxy:
        assert httpx.post(proxy.url + "/nodes/add", json={"url": a.url}, headers=auth).status_code == 200
        a.stop()
        proxy.wait(lambda: httpx.get(proxy.url + "/nodes/status", headers=auth).json()["servers"] == [],
                   what="the dead registered server removed")


# -- registration, keys ---------------------------------------------------------------------------
def test_registration_needs_the_token(fakes):
    (a,) = fakes(1, "model-a")
    with ProxyThread(_settings(token=TOKEN)) as proxy:
        add = proxy.url + "/nodes/add"
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": TOKEN}):
            r = httpx.post(add, json={"url": a.url}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert _error(r)["code"] == "invalid_token"
        assert httpx.get(proxy.url + "/nodes/status").status_code == 401
        assert proxy.models() == []
        auth = {"authorization": f"Bearer {TOKEN}"}
        r = httpx.post(add, json={"url": a.url + "/v1"}, headers=auth)  # models asked from the server itself
        assert r.status_code == 200 and r.json()["models"] == ["model-a"]
        assert proxy.models() == ["model-a"]
        r = httpx.post(add, json={"url": "http://127.0.0.1:1"}, headers=auth)
        assert r.status_code == 400 and "cannot reach" in _error(r)["message"]
        r = httpx.post(add, json={"url": "file:///etc/passwd", "models": ["x"]}, headers=auth)
        assert r.status_code == 400 and _error(r)["param"] == "url"
        status = httpx.get(proxy.url + "/nodes/status", headers=auth).json()
        assert [s["url"] for s in status["servers"]] == [a.url]
        r = httpx.post(proxy.url + "/nodes/remove", json={"url": a.url}, headers=auth)
        assert r.json() == {"url": a.url, "removed": True}
        assert proxy.models() == []
    with ProxyThread(_settings()) as proxy:  # no token: registration is closed to everyone
        r = httpx.post(proxy.url + "/nodes/add", json={"url": a.url}, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and _error(r)["code"] == "registration_closed"


def test_api_keys_are_enforced_by_the_proxy(fakes):
    (a,) = fakes(1)
    with ProxyThread(_settings(ServerSpec(a.url, ("m",)), api_keys=("sk-proxy",))) as proxy:
        for headers in ({}, {"authorization": "Bearer sk-wrong"}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")):
                r = httpx.request(method, proxy.url + path, json={"model": "m", "prompt": "x"}, headers=headers)
                assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key", (path, r.text)
        assert a.num_requests == 0
        assert httpx.get(proxy.url + "/health").status_code == 200  # probes and Prometheus need no key
        assert httpx.get(proxy.url + "/metrics").status_code == 200
        assert httpx.get(proxy.url + "/docs").status_code == 404
        with proxy.client(api_key="wrong") as client, pytest.raises(openai.AuthenticationError):
            client.models.list()
        with proxy.client(api_key="sk-proxy") as client:
            assert client.completions.create(model="m", prompt="x", max_tokens=2).choices[0].text == " w0 w1"
        assert proxy.metric("opsctl_proxy:rejected_requests_total", reason="unauthorized") >= 7


def test_a_server_registers_itself_and_leaves_on_shutdown(fakes):
    """The hook `opsctl serve --proxy-url` gives its launcher: in while serving, out before draining."""
    (a,) = fakes(1, "self-registered")
    with ProxyThread(_settings(token=TOKEN)) as proxy:
        port = int(a.url.rsplit(":", 1)[1])

        def forget():  # as a restarted proxy would: it remembers nobody
            httpx.post(proxy.url + "/nodes/remove", json={"url": a.url}, headers={"authorization": f"Bearer {TOKEN}"})

        async def serve_for_a_while(token):
            announce = proxy_registration(proxy.url, token, "127.0.0.1", heartbeat_s=0.2)
            async with announce(port, "self-registered"):
                await asyncio.sleep(0.6)
                listed = await asyncio.to_thread(proxy.models)
                await asyncio.to_thread(forget)
                await asyncio.sleep(0.6)  # the heartbeat registers it again
                listed += await asyncio.to_thread(proxy.models)
            return listed, await asyncio.to_thread(proxy.models)

        assert asyncio.run(serve_for_a_while(TOKEN)) == (["self-registered"] * 2, [])
        assert asyncio.run(serve_for_a_while("wrong-token-0123456789")) == ([], [])  # refused, logged, no crash
    with pytest.raises(ValueError, match="--proxy-url"):
        proxy_registration("localhost:8000", TOKEN, "127.0.0.1")


def test_the_proxy_health_says_what_it_routes_to(fakes):
    (a,) = fakes(1, "model-a")
    dead = f"http://127.0.0.1:{free_port()}"
    with ProxyThread(_settings(a, ServerSpec(dead, ("model-z",)), health_failures=1)) as proxy:
        # Both settle asynchronously: the dead server's refused check can drop it before the live one's
        # /v1/models has been read (model-a is learned, not listed), so wait for the two together.
        want = {"status": "ok", "servers": 2, "live_servers": 1, "models": ["model-a"]}
        proxy.wait(lambda: httpx.get(proxy.url + "/health").json() == want, what="one live server, model-a")
        assert httpx.get(proxy.url + "/health").json() == want
        body = httpx.get(proxy.url + "/metrics").text
        assert 'opsctl_proxy:live_servers{model="model-z"} 0.0' in body
