"""Reading one streamed answer of an OpenAI-compatible server, for the Locust users of `opsctl bench --url`.

Loaded by the locustfile as a module beside it (Locust puts the locustfile's directory on sys.path
while it imports the file): only the standard library and gevent here, never toolkit. read_response
fills a request's record (the fields are in the locustfile's docstring) from geventhttpclient's
response: the SSE events parsed line by line as they arrive, each content chunk timed, usage from the
last chunk, or the error body of a non-200 answer.

Client cost, measured on this 2-core machine against toolkit.bench.fake_server: a streamed token costs
~30 us (gevent's wake-up and recv, whatever the HTTP client), of which ~9 us are json.loads and the
shape checks. Parsing stays exact (a malformed event must be caught, and a cheaper check would save
under a third); the runner spreads users over more processes instead. A response that ends at
[DONE] before its chunked terminator was read cost a new connection each time (1,600 sockets in
TIME-WAIT after 800 requests): reading the body to its end keeps the connection.

Every request has one deadline (a gevent.Timeout the caller starts, which holds through connect,
headers and every read); this module catches it to say how far the stream got. Whatever the server
does, the request ends with one record; a failed one has `error` = "KIND: details", and the runner
counts failures by KIND:
  no response before the timeout     no HTTP headers by the deadline
  no content before the timeout      headers (maybe keep-alive comments or empty events), no token
  stream unfinished at the timeout   tokens came, [DONE] did not, by the deadline
  HTTP <code>                        a non-200 answer (its error message after the colon)
  connection failed                  no connection (refused, reset before headers)
  not an SSE stream                  a 200 whose body has no `data:` line (e.g. a whole JSON answer)
  malformed event                    a `data:` line that is not a JSON object of the OpenAI shape
  error event in stream              a `data:` event carrying an "error"
  stream broken                      the connection failed mid-stream
  stream ended before [DONE]         the body ended cleanly without `data: [DONE]`
  no content                         [DONE] (or a finish) without a single token
  client error                       a bug on this side (the locustfile records it)
"""
from __future__ import annotations

import json
import time

import gevent

ERROR_CHARS = 300
NO_RESPONSE = "no response before the timeout: no HTTP response within {:g} s"
_TERMINATOR_WAIT_S = 0.05  # after [DONE], how long to wait for the chunked body's end (keeps the connection)
_BODY_HEAD = 120  # bytes of a non-SSE body quoted in its error


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def read_response(resp, start: float, rec: dict, deadline: gevent.Timeout, limit: float) -> None:
    """Fill rec from the response (its stream, or its error body) and mark it for Locust."""
    rec["status"] = resp.status_code
    try:
        if resp.status_code == 0 and not deadline.pending:
            # geventhttpclient catches the deadline before the headers and answers "retries exceeded"
            rec["error"] = NO_RESPONSE.format(limit)
        elif resp.status_code != 200:
            rec["error"] = _http_error(resp)
        else:
            _read_stream(resp, start, rec, deadline, limit)
    except gevent.Timeout as t:  # an error body that never ends (the stream reader catches its own)
        if t is not deadline:
            raise
        rec["error"] = rec["error"] or f"HTTP {resp.status_code}: no complete error body within {limit:g} s"
    end = time.monotonic()
    if rec["e2e_s"] is None:
        rec["e2e_s"] = end - start
    resp.request_meta["response_time"] = (end - start) * 1000
    resp.request_meta["response_length"] = rec.pop("_bytes", 0)
    if rec["error"]:
        resp.failure(rec["error"])
    else:
        resp.success()


def _read_stream(resp, start: float, rec: dict, deadline: gevent.Timeout, limit: float) -> None:
    """Parse `data:` events line by line as bytes arrive; time each content chunk; usage from the last chunk."""
    body = resp._response  # geventhttpclient's response: readline() returns one line as soon as it is in
    content_times: list[int] = []  # time.monotonic_ns() of each content chunk
    done = False
    head = b""  # the body's first bytes, quoted when it turns out not to be SSE
    nbytes = events = comments = 0
    try:
        while True:
            line = body.readline(b"\n")
            if not line:  # the body ended; a last line without a newline is still in the buffer
                line = body.read()
                if not line:
                    break
            now_ns = time.monotonic_ns()
            nbytes += len(line)
            if len(head) < _BODY_HEAD:
                head += line[: _BODY_HEAD - len(head)]
            line = line.strip()
            if line.startswith(b":"):  # an SSE comment: a keep-alive, no content
                comments += 1
                continue
            if not line.startswith(b"data:"):
                continue
            events += 1
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            event = _parse_event(payload)
            if event.get("error"):
                err = event["error"]
                rec["error"] = one_line("error event in stream: "
                                         + str(err.get("message", err) if isinstance(err, dict) else err))
                done = True
                break
            if _has_content(event):
                content_times.append(now_ns)
            for choice in event["choices"]:
                if choice.get("finish_reason"):
                    rec["finish_reason"] = choice["finish_reason"]
            usage = event.get("usage")
            if usage:
                rec["usage"] = True
                rec["output_tokens"] = int(usage.get("completion_tokens") or 0)
                if usage.get("prompt_tokens") is not None:
                    rec["prompt_tokens"] = int(usage["prompt_tokens"])
    except gevent.Timeout as t:
        if t is not deadline:
            raise
        if content_times:
            rec["error"] = (f"stream unfinished at the timeout: {len(content_times)} content chunks in "
                            f"{limit:g} s, no [DONE]")
        else:
            rec["error"] = (f"no content before the timeout: no token within {limit:g} s "
                            f"({comments} keep-alive comments, {events} events)")
    except Malformed as e:
        rec["error"] = one_line(f"malformed event: after {len(content_times)} content chunks: {e}")
    except Exception as e:  # noqa: BLE001 - a broken stream is the server's error, recorded per request
        rec["error"] = one_line(f"stream broken: after {len(content_times)} content chunks: "
                                 f"{type(e).__name__}: {e}")
    end = time.monotonic()
    if done and not rec["error"]:
        _finish_body(body)
    rec["_bytes"] = nbytes
    rec["chunks"] = len(content_times)
    if not done and not rec["error"]:
        content_type = (resp.headers or {}).get("content-type") or ""
        if not events and "event-stream" not in content_type:
            # e.g. the whole completion as one JSON: the server ignored "stream": true
            rec["error"] = one_line(f"not an SSE stream: HTTP 200 with Content-Type "
                                     f"{content_type or 'none'} and no data: line, body "
                                     f"{head.decode('utf-8', 'replace')!r}")
        else:
            rec["error"] = f"stream ended before [DONE]: after {len(content_times)} content chunks"
    if content_times:
        rec["ttft_s"] = content_times[0] / 1e9 - start
        rec["itl_us"] = [(b - a) // 1000 for a, b in zip(content_times, content_times[1:])]
    rec["e2e_s"] = end - start
    if not rec["usage"]:
        rec["output_tokens"] = len(content_times)
    if not rec["error"] and not content_times:
        rec["error"] = "no content: [DONE] before any token"


class Malformed(Exception):
    """A `data:` event that is not what an OpenAI stream sends."""


def _parse_event(payload: bytes) -> dict:
    """The event as a dict with a list of dict choices and a dict (or no) usage; else Malformed."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise Malformed(f"data: line is not JSON: {payload[:80].decode('utf-8', 'replace')!r}") from None
    if not isinstance(event, dict):
        raise Malformed(f"data: line is JSON but not an object: {payload[:80].decode('utf-8', 'replace')!r}")
    choices = event.get("choices")
    if choices is None:
        event["choices"] = []
    elif not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise Malformed(f"\"choices\" is not a list of objects: {str(choices)[:80]!r}")
    usage = event.get("usage")
    if usage is not None and (not isinstance(usage, dict) or not all(
            isinstance(usage.get(k), int) or usage.get(k) is None for k in ("prompt_tokens", "completion_tokens"))):
        raise Malformed(f"\"usage\" is not an object of token counts: {str(usage)[:80]!r}")
    return event


def _has_content(event: dict) -> bool:
    for choice in event["choices"]:
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                return True
        elif choice.get("text"):  # completions
            return True
    return False


def _finish_body(body) -> None:
    """Read past [DONE] to the end of the HTTP body, briefly, so the connection goes back to the pool."""
    if body.message_complete:
        return
    try:
        with gevent.Timeout(_TERMINATOR_WAIT_S, False):
            while body.readline(b"\n"):
                pass
    except Exception:  # noqa: BLE001 - the connection is dropped instead; the request itself is done
        pass
    if not body.message_complete:
        body.release()


def hang_up(resp) -> None:
    """Close the connection under a response (a failed connection has none)."""
    body = getattr(resp, "_response", None)
    if body is not None:
        try:
            body.release()  # an unfinished body: geventhttpclient closes the socket instead of pooling it
        except Exception:  # noqa: BLE001 - already broken: nothing left to close
            pass


def _http_error(resp) -> str:
    if resp.status_code == 0:  # Locust's stand-in response for a connection that failed
        return one_line(f"connection failed: {getattr(resp, 'error', None) or 'no response'}")
    message = ""
    try:
        body = getattr(resp, "_response", None)
        text = body.read(4096).decode("utf-8", "replace") if body is not None else ""
        try:
            doc = json.loads(text)
            err = doc.get("error", doc) if isinstance(doc, dict) else doc
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        except ValueError:
            message = text
    except Exception as e:  # noqa: BLE001
        message = f"(body unreadable: {type(e).__name__})"
    return one_line(f"HTTP {resp.status_code}: {message}".rstrip(": "))
