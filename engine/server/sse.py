"""Server-sent events and token texts: the SSE response, chunk rendering, and token ids as text and bytes.

Split out of serving.py, which turns OpenAI requests into engine requests; these are the pieces of
the stream format it writes with.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse


class SSEResponse(StreamingResponse):
    """A text/event-stream response whose body generator is always closed, whatever ends the stream.

    Closing it closes the engine streams (aborting their requests); `on_close` releases the
    concurrency slot. Starlette cancels the stream on a client disconnect but leaves the generator
    to the garbage collector; we do not rely on that.
    """

    def __init__(self, body: AsyncIterator[bytes], on_close=None, *, status_code: int = 200,
                 headers: dict | None = None):
        # `headers` (e.g. a proxied server's) go over the defaults; status_code: a proxied server's status.
        super().__init__(body, status_code=status_code, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                if self.on_close is not None:
                    self.on_close()


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _TextChunk:
    """The SSE bytes of a plain text chunk (no logprobs, not finished, no usage), byte for byte what _sse
    renders for {**head, "choices": [{"index": i, <field>: text, "logprobs": None, "finish_reason": None}],
    "usage": None}, but with only the text JSON-encoded per chunk: the rest is rendered once per stream."""

    __slots__ = ("_head", "_open", "_tail")

    def __init__(self, head: dict, open_field: str, close: str):
        self._head = "data: " + _json(head)[:-1] + ',"choices":[{"index":'
        self._tail = close + ',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        self._open = open_field

    def __call__(self, index: int, text: str) -> bytes:
        return (self._head + str(index) + self._open + _json(text) + self._tail).encode()


class TokenText:
    """A token id's text and exact bytes, for logprobs (a byte-level BPE token may be half a character)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_decoder = _byte_decoder() if type(decoder).__name__ == "ByteLevel" else None

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        raw: bytes | None = None
        if self._byte_decoder is not None:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and all(c in self._byte_decoder for c in piece):
                raw = bytes(self._byte_decoder[c] for c in piece)
        if raw is None:
            raw = self._tokenizer.decode([token_id]).encode("utf-8")
        hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for bytes (what byte-level BPE token strings are written in)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
