"""Asking an OpenAI-compatible server what it serves before `opsctl bench --url` loads it: GET /v1/models.

The URL is normalized first ('http://h:8000/v1/' -> 'http://h:8000'; the locustfile adds /v1/...).
An unreachable server fails before Locust starts, with one line (BenchError). The answer is checked:
one that is not a model list (not JSON, no "data" list, an entry without a string "id") comes back
as one line naming the URL and the problem, which stops the run unless --model names the model (the
runner then goes on with a warning and a note: the list is only needed for the default model and
its tokenizer). A models endpoint that does not answer within PROBE_TIMEOUT_S, or refuses the key,
stops the run either way.
"""
from __future__ import annotations

import json
import time

from .http_plan import BenchError

PROBE_TIMEOUT_S = 5.0
_MAX_MODELS_BYTES = 4 << 20  # a model list is a few KB; past this the server is not sending one


def normalize_url(url: str) -> str:
    """'http://h:8000/v1/' -> 'http://h:8000' (the locustfile adds /v1/...)."""
    base = url.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    if not base.startswith(("http://", "https://")):
        raise BenchError(f"bad --url {url!r}: use http://HOST:PORT (or https://)")
    return base


def probe(base: str, api_key: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[list[dict], str]:
    """(models GET /v1/models lists, "" or what is wrong with its answer, one line naming the URL).

    BenchError when the server cannot be asked at all: unreachable, no complete answer within
    timeout_s, or the key refused. Every model returned has a non-empty string "id".
    """
    import httpx

    url = f"{base}/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout_s) as resp:
            if resp.status_code in (401, 403):
                raise BenchError(f"{base} refused the request (HTTP {resp.status_code}): pass the right --api-key")
            if resp.status_code != 200:
                return [], f"GET {url} answered HTTP {resp.status_code}"
            body = bytearray()
            # Read by hand: httpx's timeout is per read, and a server may dribble bytes forever.
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > _MAX_MODELS_BYTES:
                    return [], f"GET {url} answered over {_MAX_MODELS_BYTES >> 20} MiB, not a model list"
                if time.monotonic() > deadline:
                    raise BenchError(f"GET {url} sent no complete answer within {timeout_s:g} s")
            content_type = resp.headers.get("content-type", "no Content-Type").split(";")[0]
    except httpx.ConnectTimeout:
        raise BenchError(f"cannot reach {base}: no connection within {timeout_s:g} s") from None
    except httpx.TimeoutException:  # connected, but the answer did not come (or not all of it)
        raise BenchError(f"GET {url} sent no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach {base}: {str(e) or type(e).__name__}") from None
    return _model_list(url, bytes(body), content_type)


def _model_list(url: str, body: bytes, content_type: str) -> tuple[list[dict], str]:
    """The models of an OpenAI model list, or ([], what is wrong with it)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return [], f"GET {url} answered something not JSON ({content_type}): {_quote(body)}"
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return [], f'GET {url} answered JSON with no "data" list: {_quote(body)}'
    for j, m in enumerate(data):
        if not isinstance(m, dict):
            return [], f"GET {url} answered a model list whose data[{j}] is {_quote(m)}, not an object"
        if not isinstance(m.get("id"), str) or not m["id"].strip():
            return [], f"GET {url} answered a model list whose data[{j}].id is {_quote(m.get('id'))}, not a name"
    if not data:
        return [], f"GET {url} lists no model"
    return [{**m, "root": m.get("root") if isinstance(m.get("root"), str) else None} for m in data], ""


def _quote(value, limit: int = 80) -> str:
    """A short one-line rendering of what the server sent, for an error message."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
        text = repr(" ".join(value.split()))
    else:
        text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
