"""toolkit/proxy without sockets: URLs, the registry, the strategies' choices, prefix keys, the servers
file and the settings' checks, the SSE event boundary the stream pass-through cuts at."""
from __future__ import annotations

import collections
import socket

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

from toolkit.proxy.forward import _event_end
from toolkit.proxy.registry import ServerRegistry, normalize_url
from toolkit.proxy.settings import ProxyConfigError, ProxySettings, load_servers_file, read_secret
from toolkit.proxy.strategies import LeastOutstanding, PrefixAffinity, RoundRobin, make_strategy, prefix_key


def _registry(n: int, model: str = "m") -> tuple[ServerRegistry, list]:
    reg = ServerRegistry()
    servers = [reg.add(f"http://10.0.0.{i}:23333", [model]) for i in range(1, n + 1)]
    return reg, servers


# -- URLs and the registry ----------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("http://10.0.0.5:23333", "http://10.0.0.5:23333"),
    ("http://10.0.0.5:23333/", "http://10.0.0.5:23333"),
    ("http://10.0.0.5:23333/v1", "http://10.0.0.5:23333"),
    ("https://llm.example.com/v1/", "https://llm.example.com"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_urls_are_normalized(given, expected):
    assert normalize_url(given) == expected


@pytest.mark.parametrize("bad, why", [("10.0.0.5:23333", "http"), ("ftp://x:1", "http"), ("http://:80", "no host"),
                                      ("http://x:99999", "bad port"), ("http://u:p@x:1", "only"), ("", "required")])
def test_bad_urls_say_why(bad, why):
    with pytest.raises(ValueError, match=why):
        normalize_url(bad)


def test_registry_merges_models_and_hides_those_without_a_live_server():
    reg = ServerRegistry()
    a1 = reg.add("http://a1:1", ["a"], cards={"a": {"id": "a", "object": "model", "max_model_len": 2048}})
    reg.add("http://a2:1", ["a"])
    b = reg.add("http://b:1", ["b"])
    assert reg.live_models() == ["a", "b"]
    assert [c["id"] for c in reg.model_cards()] == ["a", "b"]
    assert reg.model_cards()[0]["max_model_len"] == 2048  # the server's own card, not a made-up one
    reg.mark_down(b, "gone")
    assert reg.live_models() == ["a"] and reg.known_model("b") and not reg.candidates("b")
    reg.mark_down(a1, "gone")
    assert [s.url for s in reg.candidates("a")] == ["http://a2:1"]
    assert reg.add("http://b:1/v1") is b and b.live  # a registration re-admits (the server says it is up)
    assert reg.remove("http://b:1/") and not reg.known_model("b")


def test_outstanding_never_goes_negative():
    reg, (s,) = _registry(1)
    reg.acquire(s)
    reg.release(s)
    reg.release(s)
    assert (s.outstanding, s.dispatched) == (0, 1)


# -- strategies ---------------------------------------------------------------------------------
def test_round_robin_takes_each_server_in_turn_per_model():
    _, servers = _registry(3)
    rr = RoundRobin()
    picks = [rr.choose("m", servers, {}).url for _ in range(9)]
    assert collections.Counter(picks) == {s.url: 3 for s in servers}
    assert picks[:3] == [s.url for s in servers]
    assert rr.choose("other", servers, {}) is servers[0]  # each model has its own turn


def test_least_outstanding_picks_the_least_busy_and_rotates_ties():
    _, servers = _registry(3)
    lo = LeastOutstanding()
    servers[0].outstanding, servers[1].outstanding, servers[2].outstanding = 4, 1, 3
    assert all(lo.choose("m", servers, {}) is servers[1] for _ in range(5))
    for s in servers:
        s.outstanding = 0
    # an idle fleet: every server in turn, not always the first
    assert collections.Counter(lo.choose("m", servers, {}).url for _ in range(30)) == {s.url: 10 for s in servers}


def test_least_outstanding_spreads_a_burst_evenly():
    reg, servers = _registry(2)
    lo = LeastOutstanding()
    for _ in range(60):  # 60 requests arriving before any finishes
        reg.acquire(lo.choose("m", servers, {}))
    assert [s.outstanding for s in servers] == [30, 30]


def _chat(system: str, user: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_prefix_keys():
    shared = "You are a terse assistant. " * 20  # 540 characters
    assert prefix_key(_chat(shared, "q1"), 256) == prefix_key(_chat(shared, "q2"), 256)
    assert prefix_key(_chat(shared, "q1"), 256) != prefix_key(_chat("Other. " + shared, "q1"), 256)
    assert prefix_key({"prompt": "abc" * 200}, 256) == prefix_key({"prompt": "abc" * 100 + "zzz"}, 256)
    assert prefix_key({"prompt": ["abc" * 100, "x"]}, 256) == prefix_key({"prompt": "abc" * 100}, 256)
    assert prefix_key({"prompt": list(range(300))}, 256) == prefix_key({"prompt": list(range(256)) + [7]}, 256)
    assert prefix_key({"prompt": list(range(300))}, 256) != prefix_key({"prompt": [1] + list(range(300))}, 256)
    # content parts read as their text; role and content boundaries count
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    assert prefix_key(parts, 256) == prefix_key({"messages": [{"role": "user", "content": "hello"}]}, 256)
    assert prefix_key(_chat("ab", "c"), 256) != prefix_key(_chat("a", "bc"), 256)
    assert prefix_key({}, 256) is None and prefix_key({"prompt": ""}, 256) is None


def test_prefix_affinity_keeps_a_prefix_on_one_server_and_spreads_prefixes():
    _, servers = _registry(4)
    pa = PrefixAffinity(prefix_length=64)
    owners = {pa.choose("m", servers, {"prompt": f"document {i:03d} " + "x" * 100}).url for i in range(40)}
    assert len(owners) == 4  # 40 distinct prefixes land on every server
    same = {pa.choose("m", servers, {"prompt": "shared prefix " * 10 + f"question {i}"}).url for i in range(20)}
    assert len(same) == 1


def test_prefix_affinity_moves_only_the_lost_servers_keys():
    _, servers = _registry(4)
    pa = PrefixAffinity(prefix_length=32)
    keys = [prefix_key({"prompt": f"tenant {i} " * 8}, 32) for i in range(200)]
    before = {k: pa.owner(k, servers).url for k in keys}
    lost = servers[2]
    after = {k: pa.owner(k, [s for s in servers if s is not lost]).url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == lost.url for k in moved)


def test_prefix_affinity_falls_back_when_the_owner_is_much_busier():
    _, servers = _registry(2)
    pa = PrefixAffinity(prefix_length=32, fallback_factor=2.0)
    body = {"prompt": "the same long system prompt " * 4}
    owner = pa.choose("m", servers, body)
    other = next(s for s in servers if s is not owner)
    owner.outstanding, other.outstanding = 2, 0  # 2 > 2 x (0 + 1) is false: stay for the cache hit
    assert pa.choose("m", servers, body) is owner
    owner.outstanding = 3  # 3 > 2: the queue costs more than the hit saves
    assert pa.choose("m", servers, body) is other
    other.outstanding = 1  # 3 > 2 x (1 + 1) is false again
    assert pa.choose("m", servers, body) is owner


def test_strategy_names():
    assert make_strategy("least-outstanding").name == "least_outstanding"
    assert make_strategy("ROUND_ROBIN").name == "round_robin"
    with pytest.raises(ValueError, match="least_outstanding, round_robin, prefix_affinity"):
        make_strategy("random")
    with pytest.raises(ValueError, match="prefix-fallback-factor"):
        make_strategy("prefix_affinity", fallback_factor=0.5)


# -- the SSE boundary ---------------------------------------------------------------------------
@pytest.mark.parametrize("data, end", [(b"", 0), (b"data: {\"a\"", 0), (b"data: 1\n\n", 9), (b"data: 1\n\ndata: 2", 9),
                                       (b"data: 1\n\ndata: 2\n\n", 18), (b"data: 1\r\n\r\ndata", 11),
                                       (b": keep-alive\n\n", 14)])
def test_event_end(data, end):
    assert _event_end(bytearray(data)) == end


# -- settings and the servers file --------------------------------------------------------------
def test_servers_file(tmp_path):
    path = tmp_path / "servers.yaml"
    path.write_text("servers:\n  - url: http://10.0.0.5:23333/v1\n    models: [qwen]\n  - http://10.0.0.6:23333\n")
    specs = load_servers_file(path)
    assert [(s.url, s.models) for s in specs] == [("http://10.0.0.5:23333", ("qwen",)), ("http://10.0.0.6:23333", ())]


@pytest.mark.parametrize("text, why", [
    ("servers: {}", "servers:` list"), ("- a", "servers:` list"), ("servers:\n  - models: [a]", r"servers\[0\] needs"),
    ("servers:\n  - url: x", "http"), ("servers:\n  - {url: 'http://a:1', model: x}", "unknown keys"),
    ("servers:\n  - {url: 'http://a:1', models: [1]}", "list of model names"), ("servers: [", "not valid YAML"),
])
def test_bad_servers_files_say_what_to_fix(tmp_path, text, why):
    path = tmp_path / "servers.yaml"
    path.write_text(text)
    with pytest.raises(ProxyConfigError, match=why):
        load_servers_file(path)
    with pytest.raises(ProxyConfigError, match="cannot read"):
        load_servers_file(tmp_path / "missing.yaml")


def test_settings_checks():
    with pytest.raises(ProxyConfigError, match="at least 16"):
        ProxySettings(token="short")
    with pytest.raises(ProxyConfigError, match="routing-strategy"):
        ProxySettings(strategy="fastest")
    with pytest.raises(ProxyConfigError, match="--health-interval"):
        ProxySettings(health_interval_s=0)
    assert ProxySettings().host == "127.0.0.1"  # never every interface unless asked


def test_secrets_come_from_a_file_or_the_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text("# the proxy token\n  0123456789abcdef  \n")
    assert read_secret("T", f, "token", environ={"T": "from-env"}) == "0123456789abcdef"
    assert read_secret("T", None, "token", environ={"T": " from-env "}) == "from-env"
    assert read_secret("T", None, "token", environ={}) is None
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ProxyConfigError, match="empty"):
        read_secret("T", tmp_path / "empty", "token")


# -- the commands' refusals ---------------------------------------------------------------------
def _invoke(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_the_proxy_command_refuses_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "servers.yaml"
    bad.write_text("servers: 3")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        for args, message in ((["--routing-strategy", "random"], "--routing-strategy 'random'"),
                              (["--config", str(bad)], "servers:` list"),
                              (["--server-port", str(port)], f"port {port} on 127.0.0.1 is already in use")):
            code, output = _invoke("proxy", *args, env={"OPSCTL_PROXY_TOKEN": None})
            assert code == 2 and output.startswith("error: ") and message in output, output
            assert len(output.strip().splitlines()) == 1
    code, output = _invoke("proxy", "--server-port", "0", env={"OPSCTL_PROXY_TOKEN": "short"})
    assert code == 2 and "at least 16 characters" in output


def test_serve_with_a_proxy_url_fails_before_loading_without_a_token():
    code, output = _invoke("serve", "--proxy-url", "http://127.0.0.1:8000", env={"OPSCTL_PROXY_TOKEN": None})
    assert code == 2 and "needs the proxy's registration token" in output and "loading" not in output, output
    code, output = _invoke("serve", "--proxy-url", "127.0.0.1:8000", env={"OPSCTL_PROXY_TOKEN": "x" * 20})
    assert code == 2 and "--proxy-url: server URL '127.0.0.1:8000' must start with http://" in output, output
