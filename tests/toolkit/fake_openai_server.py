"""A small, independent OpenAI-compatible server for bench tests: tokens at a known, fixed rate.

It shares no code with engine/server: a FastAPI app on uvicorn in a background thread (real
socket on 127.0.0.1) that answers GET /v1/models and streams /v1/chat/completions and
/v1/completions. Every streamed request waits `first_token_s` before its first token, then
`inter_token_s` between tokens, sends exactly max_tokens tokens (one word each), then a
finish chunk, the usage chunk (when stream_options.include_usage) and [DONE]. So a correct client
measures TTFT = first_token_s and TPOT = inter_token_s.

Faults, by the server's own request count n (1-based, warm-up requests included):
  fail_every=k         -> n % k == 0 answers HTTP 500 with an OpenAI error body;
  close_early_every=k  -> n % k == 0 (and not failed) sends 3 tokens, then drops the connection.

Misbehaviour, for every request (the bench must survive each one):
  models_body=(bytes, content_type) -> GET /v1/models answers HTTP 200 with exactly that body;
  stream_mode="hang"       -> the completion endpoints never send headers (until the client leaves);
  stream_mode="keepalive"  -> headers, then an SSE comment `: keep-alive` every keepalive_s, forever;
  stream_mode="endless"    -> tokens every inter_token_s, forever (never a finish or [DONE]);
  stream_mode="json"       -> HTTP 200 with a whole (non-streamed) JSON completion, not SSE;
  stream_mode="malformed"  -> one good token, then `data: {"choices": [` (not JSON), then [DONE];
  stream_mode="no-done"    -> the normal tokens and usage, then a clean end without `data: [DONE]`;
  stream_mode="done-only"  -> `data: [DONE]` and nothing else.
"""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.server.conftest import UvicornThread

MODEL = "fake-model"


class FakeOpenAIServer:
    STREAM_MODES = ("normal", "hang", "keepalive", "endless", "json", "malformed", "no-done", "done-only")

    def __init__(self, *, first_token_s: float = 0.2, inter_token_s: float = 0.05, fail_every: int = 0,
                 close_early_every: int = 0, model: str = MODEL, models_body: tuple[bytes, str] | None = None,
                 stream_mode: str = "normal", keepalive_s: float = 0.2):
        if stream_mode not in self.STREAM_MODES:
            raise ValueError(f"stream_mode {stream_mode!r}: one of {self.STREAM_MODES}")
        self.first_token_s, self.inter_token_s = first_token_s, inter_token_s
        self.fail_every, self.close_early_every, self.model = fail_every, close_early_every, model
        self.models_body, self.stream_mode, self.keepalive_s = models_body, stream_mode, keepalive_s
        self.disconnects = 0  # hanging or endless requests whose client went away (the deadline was applied)
        self.num_requests = 0
        self.completion_tokens_sent = 0
        self._server = UvicornThread(self.build_app())  # binds a free port now: url is known before start
        self.url, self.port = self._server.url, self._server.port

    # -- the app ---------------------------------------------------------------------------------
    def build_app(self):
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            if self.models_body is not None:
                body, content_type = self.models_body
                return Response(body, media_type=content_type)
            return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}

        async def handle(request: Request, chat: bool):
            body = await request.json()
            self.num_requests += 1
            n = self.num_requests
            if self.fail_every and n % self.fail_every == 0:
                return JSONResponse({"error": {"message": f"injected failure on request {n}", "type": "server_error",
                                               "code": 500}}, status_code=500)
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            max_tokens = int(body.get("max_tokens") or 16)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if self.stream_mode == "hang":
                while not await request.is_disconnected():
                    await asyncio.sleep(0.05)
                self.disconnects += 1
                return Response(status_code=204)
            if self.stream_mode == "json":
                return JSONResponse({"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                                     "model": self.model, "choices": [{"index": 0, "text": "w0 w1",
                                                                       "finish_reason": "length"}]})
            if self.stream_mode != "normal":
                return StreamingResponse(self._misbehave(chat), media_type="text/event-stream")
            close_early = bool(self.close_early_every and n % self.close_early_every == 0)
            gen = self._stream(chat, len(prompt.split()), max_tokens, usage, close_early)
            return StreamingResponse(gen, media_type="text/event-stream")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await handle(request, True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await handle(request, False)

        return app

    async def _stream(self, chat: bool, prompt_tokens: int, max_tokens: int, usage: bool, close_early: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": "fake-1", "object": obj, "created": int(time.time()), "model": self.model}

        def event(payload: dict) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def choice(text: str, finish=None) -> dict:
            if chat:
                return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        if chat:
            yield event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
        await asyncio.sleep(self.first_token_s)
        for i in range(max_tokens):
            if i:
                await asyncio.sleep(self.inter_token_s)
            if close_early and i == 3:
                raise ConnectionAbortedError("injected early close")  # uvicorn drops the connection mid-body
            self.completion_tokens_sent += 1
            yield event({**head, "choices": [choice(f" w{i}")]})
        yield event({**head, "choices": [choice("", "length")]})
        if usage:
            yield event({**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                          "completion_tokens": max_tokens,
                                                          "total_tokens": prompt_tokens + max_tokens}})
        yield b"data: [DONE]\n\n"

    async def _misbehave(self, chat: bool):
        head = {"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion", "model": self.model}
        token = {**head, "choices": [{"index": 0, "delta": {"content": " w"}} if chat else {"index": 0, "text": " w"}]}
        mode = self.stream_mode
        try:
            if mode == "keepalive":
                while True:
                    yield b": keep-alive\n\n"
                    await asyncio.sleep(self.keepalive_s)
            elif mode == "endless":
                while True:
                    yield f"data: {json.dumps(token)}\n\n".encode()
                    await asyncio.sleep(self.inter_token_s)
            elif mode == "malformed":
                yield f"data: {json.dumps(token)}\n\n".encode()
                yield b'data: {"choices": [\n\n'
                yield b"data: [DONE]\n\n"
            elif mode == "no-done":
                for _ in range(3):
                    yield f"data: {json.dumps(token)}\n\n".encode()
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': {'prompt_tokens': 1, 'completion_tokens': 3}})}\n\n".encode()
            elif mode == "done-only":
                yield b"data: [DONE]\n\n"
        finally:  # these two never end by themselves: reaching here means the client went away
            if mode in ("keepalive", "endless"):
                self.disconnects += 1

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
