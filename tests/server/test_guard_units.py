"""Unit checks of the pieces the hardened server is built from: the Host rule, the log flood limit, keys."""
from __future__ import annotations

import logging

import pytest

from engine.logs import ProbeAccessFilter, RepeatLimiter
from engine.server.auth import APIKeySourceError, gather_api_keys, read_key_file
from engine.server.guard import host_allowed


@pytest.mark.parametrize("host,allowed,ok", [
    ("api.example.com", ("api.example.com",), True),
    ("API.Example.com:8443", ("api.example.com",), True),
    ("evil.example", ("api.example.com",), False),
    ("api.example.com.evil.example", ("api.example.com",), False),
    ("a.b.example.com", ("*.example.com",), True),
    ("example.com", ("*.example.com",), False),
    ("notexample.com", ("*.example.com",), False),
    ("[::1]:23333", ("::1",), True),
    ("127.0.0.1:23333", ("127.0.0.1", "localhost"), True),
    (None, ("127.0.0.1",), False),
    ("anything", (), True),
    ("anything", ("*",), True),
])
def test_host_allowed(host, allowed, ok):
    assert host_allowed(host, allowed) is ok


def _record(msg, *args, name="asyncio", level=logging.ERROR):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeat_limiter_lets_a_burst_through_then_counts_what_it_dropped():
    now = [0.0]
    limiter = RepeatLimiter(burst=3, window_s=10, clock=lambda: now[0])
    passed = [limiter.filter(_record("accept() failed: %s", i)) for i in range(1000)]
    assert sum(passed) == 3  # the same template with other arguments is the same kind
    assert limiter.filter(_record("something else"))  # a distinct message still gets through
    now[0] = 10.0
    summary = _record("accept() failed: %s", 1)
    assert limiter.filter(summary)
    assert "997 similar messages dropped" in summary.getMessage()
    now[0] = 25.0
    fresh = _record("accept() failed: %s", 2)
    assert limiter.filter(fresh) and "dropped" not in fresh.getMessage()


def test_probe_paths_leave_the_access_log_at_info():
    access = logging.getLogger("uvicorn.access")
    old = access.level
    try:
        access.setLevel(logging.INFO)
        f = ProbeAccessFilter()
        fmt = '%s - "%s %s HTTP/%s" %d'
        assert not f.filter(_record(fmt, "1.2.3.4:5", "GET", "/health", "1.1", 200, name="uvicorn.access"))
        assert not f.filter(_record(fmt, "1.2.3.4:5", "GET", "/metrics?x=1", "1.1", 200, name="uvicorn.access"))
        assert f.filter(_record(fmt, "1.2.3.4:5", "POST", "/v1/completions", "1.1", 200, name="uvicorn.access"))
        access.setLevel(logging.DEBUG)
        assert f.filter(_record(fmt, "1.2.3.4:5", "GET", "/health", "1.1", 200, name="uvicorn.access"))
    finally:
        access.setLevel(old)


def test_api_keys_from_file_and_environment(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-one\n\n  sk-two  # rotated in May\nsk-three,sk-four\n")
    assert read_key_file(path) == ["sk-one", "sk-two", "sk-three,sk-four"]
    keys = gather_api_keys(["sk-cli"], path, environ={"OPSCTL_API_KEY": "sk-env1,sk-env2"})
    assert keys == ("sk-cli", "sk-one", "sk-two", "sk-three", "sk-four", "sk-env1", "sk-env2")
    assert gather_api_keys(None, None, environ={}) == ()
    with pytest.raises(APIKeySourceError, match="cannot read --api-key-file"):
        read_key_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(APIKeySourceError, match="holds no key"):
        read_key_file(tmp_path / "empty")
