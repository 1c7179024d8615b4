"""Issue 17's acceptance, with real processes on 127.0.0.1: three `opsctl serve` of the embedded default
under two model names (smol-a twice, smol-b once) behind `opsctl proxy`.

The servers register themselves with the first proxy (least outstanding, API key required, servers
reached with their own key) through `--proxy-url` and the shared token; a second proxy (prefix
affinity) knows them from a servers file. In order, as the module runs them: the openai client
reaches both models (streaming included); 60 concurrent clients are spread within 20% over smol-a's
replicas, as the servers themselves counted; a shared 512-token prefix lands on one replica and its
prefix-cache hit rate shows it; registration without the token and a bad API key get 401; then
killing a smol-a replica and the smol-b server while they stream: their streams end with an error,
new requests succeed on the surviving replica, smol-b leaves /v1/models; a SIGTERM'd server leaves
the proxy at once (it deregisters). Outputs are short and batches small: two busy cores run all of it.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.conftest import free_port
from tests.server.serve_process import ROOT, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = "acceptance-token-0123456789abcdef"
CLIENT_KEY = "sk-proxy-client"
SERVER_KEY = "sk-server-only"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
# --debug-step-delay-ms: every engine step at least 40 ms longer, so a 16-token stream is still running when
# its server is killed, even on an idle machine
SERVE_ARGS = ("--enable-prefix-caching", "--max-batch-size", "8", "--dtype", "float32", "--debug-step-delay-ms", "40",
              "--api-keys", SERVER_KEY)


class ProxyProcess:
    """`python -m toolkit proxy` on a free port, its output in a log file."""

    def __init__(self, log_path: Path, *args: str, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "toolkit", "proxy", "--server-port", str(self.port),
                                      "--health-interval", "0.5", "--health-timeout", "5", *args],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def wait_until(self, predicate, what: str, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + self.log_path.read_text()[-3000:]
            time.sleep(0.3)

    def models(self) -> list[str]:
        return [m["id"] for m in httpx.get(self.url + "/v1/models", headers=AUTH, timeout=10).json()["data"]]

    def nodes(self) -> list[dict]:
        r = httpx.get(self.url + "/nodes/status", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
        return r.json()["servers"]

    stop = ServeProcess.stop  # SIGTERM, 30 s, then SIGKILL; the log closed


def server_counter(url: str, prefix: str) -> float:
    """The sum of a server's /metrics samples whose name starts with `prefix` (e.g. its finished requests)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix) and not line.startswith("#") and "_created" not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def finished(server: ServeProcess) -> float:
    return server_counter(server.url, "opsctl:request_success_total")


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        env = {"OPSCTL_PROXY_TOKEN": TOKEN, "OPSCTL_UPSTREAM_API_KEY": SERVER_KEY}
        self.proxy = ProxyProcess(tmp / "proxy.log", "--health-failures", "2",
                                  env={**env, "OPSCTL_API_KEY": CLIENT_KEY})
        self.servers: list[ServeProcess] = []
        for i, name in enumerate(("smol-a", "smol-a", "smol-b")):
            self.servers.append(ServeProcess(tmp / f"serve-{i}.log", "--model-name", name, "--proxy-url",
                                             self.proxy.url, *SERVE_ARGS,
                                             env={"OPSCTL_PROXY_TOKEN": TOKEN, "OPSCTL_API_KEY": ""}))
        self.a1, self.a2, self.b = self.servers
        servers_file = tmp / "servers.yaml"
        servers_file.write_text("servers:\n" + "".join(f"  - url: {s.url}\n" for s in self.servers))
        self.affinity = ProxyProcess(tmp / "proxy-affinity.log", "--config", str(servers_file),
                                     "--routing-strategy", "prefix_affinity",
                                     env={"OPSCTL_UPSTREAM_API_KEY": SERVER_KEY, "OPSCTL_API_KEY": "",
                                          "OPSCTL_PROXY_TOKEN": ""})

    def start(self) -> "Cluster":
        for server in self.servers:
            server.wait_healthy(timeout=300)
        self.proxy.wait_until(lambda: sum(n["live"] for n in self.proxy.nodes()) == 3, "three registrations")
        self.affinity.wait_until(lambda: httpx.get(self.affinity.url + "/health").json()["models"] ==
                                 ["smol-a", "smol-b"], "the servers file's models")
        return self

    def stop(self) -> None:
        for process in (*self.servers, self.proxy, self.affinity):
            process.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("proxy-acceptance"))
    try:
        yield c.start()
    finally:
        c.stop()


def _client(url: str, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=180)


def test_the_openai_client_reaches_both_models_through_the_proxy(cluster):
    assert cluster.proxy.models() == ["smol-a", "smol-b"]
    with _client(cluster.proxy.url) as client:
        assert [m.id for m in client.models.list()] == ["smol-a", "smol-b"]
        for name in ("smol-a", "smol-b"):
            out = client.completions.create(model=name, prompt="The capital of France is", max_tokens=3)
            assert out.model == name and out.usage.completion_tokens == 3
            stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Say hi"}],
                                                    max_tokens=4, stream=True, stream_options={"include_usage": True})
            chunks = list(stream)
            assert chunks[-1].usage.completion_tokens <= 4 and all(c.model == name for c in chunks)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_least_outstanding_spreads_60_clients_evenly_over_the_replicas(cluster):
    before = [finished(s) for s in (cluster.a1, cluster.a2)]
    start = threading.Barrier(60)
    with _client(cluster.proxy.url) as client:
        def one_client(i: int) -> int:
            start.wait()  # all 60 at once
            done = 0
            for j in range(2):
                out = client.completions.create(model="smol-a", prompt=f"Client {i} asks question {j}:", max_tokens=1)
                done += out.usage.completion_tokens > 0
            return done

        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            assert sum(pool.map(one_client, range(60))) == 120
    served = [finished(s) - b for s, b in zip((cluster.a1, cluster.a2), before)]
    assert sum(served) == 120
    spread = abs(served[0] - served[1]) / (sum(served) / 2)
    print(f"\nleast_outstanding, 60 clients x 2 requests: replicas served {served} (spread {spread:.1%})")
    assert spread <= 0.20, served


def _shared_prefix(url: str) -> str:
    """Text of exactly 512 tokens of the served model (its own tokenizer, through the proxy)."""
    text = " ".join(f"Clause {i}: the tenant keeps unit {i % 37} tidy." for i in range(120))
    ids = httpx.post(url + "/tokenize", headers=AUTH, json={"model": "smol-a", "prompt": text,
                                                             "add_special_tokens": False}, timeout=60).json()["tokens"]
    assert len(ids) > 600
    return httpx.post(url + "/detokenize", headers=AUTH, json={"model": "smol-a", "tokens": ids[:512]},
                      timeout=60).json()["prompt"]


def test_prefix_affinity_keeps_a_512_token_prefix_on_one_replica(cluster):
    prefix = _shared_prefix(cluster.proxy.url)
    replicas = (cluster.a1, cluster.a2)
    served0 = [finished(s) for s in replicas]
    hits0 = [server_counter(s.url, "opsctl:prefix_cache_hits_total") for s in replicas]
    queries0 = [server_counter(s.url, "opsctl:prefix_cache_queries_total") for s in replicas]
    with _client(cluster.affinity.url, key="unused") as client:
        def ask(i: int):
            return client.completions.create(model="smol-a", prompt=prefix + f"\nQuestion {i}: who keeps unit {i}?",
                                             max_tokens=1)
        ask(0)  # the first one fills the cache; the rest come two at a time
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(ask, range(1, 8)))
    served = [finished(s) - b for s, b in zip(replicas, served0)]
    owner = served.index(max(served))
    hits = server_counter(replicas[owner].url, "opsctl:prefix_cache_hits_total") - hits0[owner]
    queries = server_counter(replicas[owner].url, "opsctl:prefix_cache_queries_total") - queries0[owner]
    rate = hits / queries
    print(f"\nprefix_affinity, 8 requests sharing 512 tokens: replicas served {served}; the owner's prefix-cache "
          f"hit rate {rate:.2f} ({hits:.0f} of {queries:.0f} prompt tokens)")
    assert sorted(served) == [0, 8]
    assert rate >= 0.7  # 7 of 8 requests find the 512 tokens cached (32 blocks of 16)


def test_registration_needs_the_token_and_clients_the_key(cluster):
    url = cluster.proxy.url
    body = {"url": cluster.a1.url, "models": ["intruder"]}
    for headers in ({}, {"authorization": "Bearer not-the-token-0123456789"}):
        r = httpx.post(url + "/nodes/add", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    for key in (None, "sk-wrong"):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(url + "/v1/completions", json={"model": "smol-a", "prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with _client(url, key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.completions.create(model="smol-a", prompt="x", max_tokens=1)
    assert cluster.proxy.models() == ["smol-a", "smol-b"]  # nothing was registered


def _proxy_metric(url: str, name: str, **labels) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_killing_servers_mid_stream(cluster):
    """Runs last: it kills smol-a's first replica and the only smol-b server."""
    proxy = cluster.proxy
    streams = [("smol-a", i) for i in range(6)] + [("smol-b", i) for i in range(2)]
    started = threading.Semaphore(0)
    go_on = threading.Event()

    def stream(item) -> str:
        model, i = item
        with _client(proxy.url) as client:
            chunks = client.completions.create(model=model, prompt=f"Count slowly, take {i}:", max_tokens=16,
                                               stream=True, extra_body={"ignore_eos": True})
            tokens = 0
            try:
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].text:
                        tokens += 1
                        if tokens == 1:
                            started.release()
                            go_on.wait(120)
            except openai.APIError as e:
                assert "failed while streaming" in str(e)
                return "failed"
            return "complete" if chunk.choices[0].finish_reason == "length" else "short"

    with concurrent.futures.ThreadPoolExecutor(len(streams)) as pool:
        results = pool.map(stream, streams)
        for _ in streams:
            assert started.acquire(timeout=240), "the streams did not start"
        on_killed = _proxy_metric(proxy.url, "opsctl_proxy:outstanding_requests", server=cluster.a1.url)
        on_b = _proxy_metric(proxy.url, "opsctl_proxy:outstanding_requests", server=cluster.b.url)
        assert (on_killed, on_b) == (3, 2)  # least outstanding put 3 of smol-a's 6 on each replica
        for server in (cluster.a1, cluster.b):
            engine = server.engine_pid
            os.kill(server.proc.pid, signal.SIGKILL)  # as a crashed container: no goodbye to the proxy
            os.kill(engine, signal.SIGKILL)
        go_on.set()
        outcomes = list(results)
    print(f"\nkilled mid-stream: {outcomes}")
    assert sorted(outcomes) == ["complete"] * 3 + ["failed"] * 5  # the killed servers' 5 streams end with an error
    # new requests: refused connections to the dead replica are retried on the live one
    with _client(proxy.url) as client:
        for i in range(4):
            assert client.completions.create(model="smol-a", prompt=f"after {i}", max_tokens=1).usage
    proxy.wait_until(lambda: proxy.models() == ["smol-a"], "smol-b gone from /v1/models", timeout=30)
    r = httpx.post(proxy.url + "/v1/completions", json={"model": "smol-b", "prompt": "x"}, headers=AUTH)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_live_server"
    # a server stopped cleanly says goodbye: the proxy forgets it at once, not a health period later
    cluster.a2.stop()
    assert [n["url"] for n in proxy.nodes() if n["live"]] == []
    assert cluster.a2.url not in [n["url"] for n in proxy.nodes()]
