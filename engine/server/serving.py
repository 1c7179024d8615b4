"""Chat and text completions: OpenAI request -> engine requests -> response body or SSE chunks.

Everything a request can get wrong is checked before the first engine request is made (prompt
length against session_len, max_tokens, sampling ranges), so a 400 names the OpenAI parameter and
the engine never sees the request. `n` choices (and a list of prompts) become one engine request
each; their streams are merged. A client that goes away cancels the merge, which closes every
engine stream, which aborts its request and frees its KV blocks on the engine's next loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from ..async_engine import AsyncEngine, EngineDeadError
from ..engine import RequestOutput
from ..errors import EngineError, InvalidRequestError
from ..generation import GenerationConfig
from ..prompt import chat_token_ids
from .metrics import RequestTimer, ServerMetrics
from .sse import _DONE, SSEResponse, TokenText, _sse, _TextChunk
from .protocol import (APIError, ChatCompletionChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage,
                       CompletionChoice, CompletionRequest, CompletionResponse, DetokenizeRequest,
                       DetokenizeResponse, PromptTokensDetails, TokenizeRequest, TokenizeResponse, Usage)

log = logging.getLogger(__name__)

MAX_CHOICES = 128  # n times the number of prompts: OpenAI's cap on n
MAX_LOGPROBS = 20
_LOGPROB_FLOOR = -9999.0  # JSON has no -inf; vLLM clamps the same way
_TOKENIZER_THREADS = min(4, os.cpu_count() or 1)
# Engine parameter names -> the OpenAI ones users sent (set per request for max_tokens/logprobs).
_PARAM_NAMES = {"min_new_tokens": "min_tokens", "random_seed": "seed", "stop_words": "stop",
                "do_sample": "temperature"}


def _yield_to_event_loop() -> None:
    """Run this tokenizer thread at a lower priority (Linux: per thread) than the event loop's.

    Tokenizers release the GIL, so the loop is never blocked by them, but on a machine with few cores
    four busy tokenizer threads still take the CPU from it: /health then waits for a time slice.
    """
    with suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)


@dataclass
class _Job:
    """One engine request: a choice of one prompt."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    gen: GenerationConfig
    request_id: str


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


def _clamp(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _LOGPROB_FLOOR


class OpenAIServing:
    def __init__(self, aengine: AsyncEngine, model_name: str, metrics: ServerMetrics):
        self.aengine = aengine
        self.tokenizer = aengine.tokenizer
        self.model_name = model_name
        self.session_len = aengine.session_len
        self.metrics = metrics
        self.token_text = TokenText(self.tokenizer)
        # Every tokenization (chat template, prompt, /tokenize, /detokenize) runs here, off the event
        # loop (~1 ms per 4k characters; a 1 MB prompt ~250 ms): the loop keeps answering /health and
        # streaming tokens meanwhile. Its own pool, so long prompts never wait behind other thread work.
        self._tokenizer_pool = ThreadPoolExecutor(_TOKENIZER_THREADS, thread_name_prefix="tokenize",
                                                  initializer=_yield_to_event_loop)

    # -- checks ----------------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.model_name!r} "
                                "(GET /v1/models lists it)", param="model", code="model_not_found")

    def _check_prompt_len(self, num_tokens: int, param: str) -> None:
        if num_tokens == 0:
            raise APIError(400, f"{param} is empty", param=param)
        if num_tokens >= self.session_len:
            raise APIError(400, f"the prompt has {num_tokens} tokens but session_len is {self.session_len} "
                                "(prompt + output): shorten it", param=param, code="context_length_exceeded")

    def _max_tokens(self, value: int | None, name: str, prompt_len: int) -> int:
        room = self.session_len - prompt_len
        if value is None:
            return room
        if value < 1:
            raise APIError(400, f"{name} must be a positive integer, got {value}", param=name)
        if value > room:
            raise APIError(400, f"{name}={value} does not fit: the prompt has {prompt_len} tokens and session_len "
                                f"is {self.session_len}, so at most {room} tokens can be generated", param=name,
                           code="context_length_exceeded")
        return value

    def _gen_config(self, req, *, max_new_tokens: int, logprobs: int | None, names: dict[str, str]
                    ) -> GenerationConfig:
        temperature = 1.0 if req.temperature is None else req.temperature
        stop = req.stop if req.stop is not None else ()
        try:
            return GenerationConfig(
                max_new_tokens=max_new_tokens, min_new_tokens=req.min_tokens or 0,
                do_sample=temperature > 0, temperature=temperature,
                top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                min_p=req.min_p or 0.0,
                repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
                presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                random_seed=req.seed, stop_words=stop, stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=bool(req.ignore_eos),
                skip_special_tokens=req.skip_special_tokens is not False,
                include_stop_str_in_output=bool(req.include_stop_str_in_output), logprobs=logprobs,
                cache_salt=req.cache_salt)
        except InvalidRequestError as e:
            raise self._renamed(e, names) from None

    @staticmethod
    def _renamed(error: InvalidRequestError, names: dict[str, str]) -> APIError:
        param = error.param
        message = str(error)
        openai_name = names.get(param) or _PARAM_NAMES.get(param) or param
        if param and openai_name != param:
            message = message.replace(param, openai_name)
        return APIError(400, message, param=openai_name)

    def _jobs(self, req, prompts: list[list[int]], prompt_param: str, max_tokens_name: str, max_tokens: int | None,
              logprobs: int | None, logprobs_name: str, prefix: str) -> list[_Job]:
        n = 1 if req.n is None else req.n
        if not 1 <= n <= MAX_CHOICES:
            raise APIError(400, f"n must be an integer in [1, {MAX_CHOICES}], got {n}", param="n")
        if n * len(prompts) > MAX_CHOICES:
            raise APIError(400, f"n times the number of prompts is {n * len(prompts)}, more than {MAX_CHOICES}",
                           param="n")
        names = {"max_new_tokens": max_tokens_name, "logprobs": logprobs_name}
        jobs: list[_Job] = []
        for p, ids in enumerate(prompts):
            self._check_prompt_len(len(ids), prompt_param)
            limit = self._max_tokens(max_tokens, max_tokens_name, len(ids))
            gen = self._gen_config(req, max_new_tokens=limit, logprobs=logprobs, names=names)
            for j in range(n):
                g = gen if req.seed is None or j == 0 else gen.replace(random_seed=req.seed + j)
                jobs.append(_Job(len(jobs), p, ids, g, f"{prefix}-{len(jobs)}"))
        return jobs

    def _check_accepting(self) -> None:
        if self.aengine.dead_reason is not None:
            raise APIError(503, f"the engine has stopped: {self.aengine.dead_reason}", code="engine_dead")
        if not self.aengine.accepting:
            raise APIError(503, "the server is shutting down", code="shutting_down")

    async def _tokenize(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, fn, *args)

    # -- chat ------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, http: HTTPRequest, on_close) -> Response:
        arrival = time.perf_counter()
        self.check_model(req.model)
        self._check_accepting()
        if not req.messages:
            raise APIError(400, "messages must be a non-empty list", param="messages")
        try:
            ids = await self._tokenize(chat_token_ids, self.tokenizer, req.messages)
        except InvalidRequestError as e:
            raise APIError(400, str(e), param="messages") from None
        max_name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        logprobs = None
        if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], got {req.top_logprobs}",
                           param="top_logprobs")
        if req.logprobs:
            logprobs = req.top_logprobs or 0
        elif req.top_logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        jobs = self._jobs(req, [ids], "messages", max_name, max_tokens, logprobs, "top_logprobs", rid)
        ctx = _Context(rid, int(time.time()), self.model_name, arrival, _http_request_id(http))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            return SSEResponse(self._chat_stream(ctx, jobs, include_usage, logprobs is not None), on_close)
        choices = await _until_disconnect(self._collect(jobs, ctx), http)
        body = ChatCompletionResponse(
            id=rid, created=ctx.created, model=self.model_name,
            choices=[ChatCompletionChoice(
                index=i, message=ChatMessage(content="".join(c.text)), finish_reason=c.finish_reason,
                logprobs={"content": self._chat_logprobs(c.logprobs)} if logprobs is not None else None)
                for i, c in enumerate(choices)],
            usage=_usage(jobs, choices))
        return JSONResponse(body.model_dump())

    async def _chat_stream(self, ctx: _Context, jobs: list[_Job], include_usage: bool, want_logprobs: bool):
        head = {"id": ctx.rid, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model}

        def chunk(index, delta, finish=None, logprobs=None, usage=None):
            return _sse({**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                              "finish_reason": finish}], "usage": usage})

        text_chunk = _TextChunk(head, ',"delta":{"content":', "}")
        for job in jobs:
            yield chunk(job.index, {"role": "assistant", "content": ""})
        # aclosing: a client that leaves closes this generator, which must close the engine streams
        # now rather than whenever the garbage collector finalizes them.
        async with aclosing(self._stream_events(ctx, jobs, include_usage)) as events:
            async for event in events:
                if isinstance(event, bytes):
                    yield event
                    continue
                index, out, usage = event
                logprobs = ({"content": self._chat_logprobs(out.logprobs)} if want_logprobs and out.logprobs
                            else None)
                if not (logprobs or out.finished or usage):
                    if out.text:
                        yield text_chunk(index, out.text)
                elif out.text or logprobs or out.finished:
                    delta = {"content": out.text} if out.text else {}
                    yield chunk(index, delta, out.finish_reason if out.finished else None, logprobs, usage)

    def _chat_logprobs(self, items) -> list[dict]:
        content = []
        for tl in items:
            text, raw = self.token_text(tl.token_id)
            top = []
            for tid, lp in tl.top.items():
                t, b = self.token_text(tid)
                top.append({"token": t, "logprob": _clamp(lp), "bytes": b})
            content.append({"token": text, "logprob": _clamp(tl.logprob), "bytes": raw, "top_logprobs": top})
        return content

    # -- text completions ------------------------------------------------------------------------
    async def completion(self, req: CompletionRequest, http: HTTPRequest, on_close) -> Response:
        arrival = time.perf_counter()
        self.check_model(req.model)
        self._check_accepting()
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if req.best_of is not None and req.best_of != (req.n or 1):
            raise APIError(400, "best_of is not supported (only best_of equal to n)", param="best_of")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {req.logprobs}",
                           param="logprobs")
        prompts = await self._completion_prompts(req.prompt)
        rid = f"cmpl-{uuid.uuid4().hex}"
        jobs = self._jobs(req, prompts, "prompt", "max_tokens", req.max_tokens, req.logprobs, "logprobs", rid)
        ctx = _Context(rid, int(time.time()), self.model_name, arrival, _http_request_id(http))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream:
            return SSEResponse(self._completion_stream(ctx, jobs, include_usage, req.logprobs), on_close)
        choices = await _until_disconnect(self._collect(jobs, ctx), http)
        body = CompletionResponse(
            id=rid, created=ctx.created, model=self.model_name,
            choices=[CompletionChoice(index=i, text="".join(c.text), finish_reason=c.finish_reason,
                                      logprobs=(self._completion_logprobs(c.logprobs, req.logprobs, [0])
                                                if req.logprobs is not None else None))
                     for i, c in enumerate(choices)],
            usage=_usage(jobs, choices))
        return JSONResponse(body.model_dump())

    async def _completion_prompts(self, prompt) -> list[list[int]]:
        """OpenAI's four prompt shapes (text, texts, token ids, lists of token ids) as token-id lists."""
        if isinstance(prompt, str):
            items = [prompt]
        elif not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        elif isinstance(prompt[0], int):
            items = [prompt]
        else:
            items = list(prompt)
        out = []
        for item in items:
            try:
                ids = await self._tokenize(self.aengine.requests.tokenize_prompt, item)
            except InvalidRequestError as e:
                raise APIError(400, str(e), param="prompt") from None
            out.append(ids)
        return out

    async def _completion_stream(self, ctx: _Context, jobs: list[_Job], include_usage: bool, logprobs: int | None):
        head = {"id": ctx.rid, "object": "text_completion", "created": ctx.created, "model": ctx.model}
        offsets = [[0] for _ in jobs]
        text_chunk = _TextChunk(head, ',"text":', "")
        async with aclosing(self._stream_events(ctx, jobs, include_usage)) as events:
            async for event in events:
                if isinstance(event, bytes):
                    yield event
                    continue
                index, out, usage = event
                lp = (self._completion_logprobs(out.logprobs, logprobs, offsets[index])
                      if logprobs is not None and out.logprobs else None)
                if not (lp or out.finished or usage):
                    if out.text:
                        yield text_chunk(index, out.text)
                elif out.text or lp or out.finished:
                    yield _sse({**head, "choices": [{"index": index, "text": out.text, "logprobs": lp,
                                                     "finish_reason": out.finish_reason if out.finished else None}],
                                "usage": usage})

    def _completion_logprobs(self, items, k: int | None, offset: list[int]) -> dict:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for tl in items:
            text, _ = self.token_text(tl.token_id)
            tokens.append(text)
            token_logprobs.append(_clamp(tl.logprob))
            top_logprobs.append({self.token_text(t)[0]: _clamp(lp) for t, lp in tl.top.items()} if k else None)
            text_offset.append(offset[0])
            offset[0] += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}

    # -- running engine requests -----------------------------------------------------------------
    async def _merged(self, jobs: list[_Job]) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Outputs of every job's engine stream as they come; leaving early aborts what is unfinished."""
        if len(jobs) == 1:
            job = jobs[0]
            stream = self.aengine.generate(job.prompt_ids, job.gen, job.request_id)
            try:
                async for out in stream:
                    yield 0, out
            finally:
                await stream.aclose()
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(job: _Job):
            stream = self.aengine.generate(job.prompt_ids, job.gen, job.request_id)
            try:
                async for out in stream:
                    queue.put_nowait((job.index, out))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                queue.put_nowait((job.index, e))
            finally:
                await stream.aclose()

        tasks = [asyncio.ensure_future(pump(job)) for job in jobs]
        try:
            remaining = len(jobs)
            while remaining:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    remaining -= 1
                yield index, item
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with suppress(asyncio.CancelledError, Exception):
                    await t

    async def _collect(self, jobs: list[_Job], ctx: _Context) -> list[_Choice]:
        choices = [_Choice() for _ in jobs]
        timers = [RequestTimer(self.metrics, ctx.arrival) for _ in jobs]
        try:
            async with aclosing(self._merged(jobs)) as outputs:
                async for index, out in outputs:
                    c = choices[index]
                    timers[index].on_tokens(len(out.token_ids))
                    c.text.append(out.text)
                    c.logprobs.extend(out.logprobs)
                    if out.finished:
                        timers[index].on_finish(out.finish_reason)
                        _finish_choice(c, out)
                        if out.finish_reason == "error":
                            raise _engine_failure(ctx, out.error)
        except EngineDeadError as e:
            raise _dead(e) from None
        except InvalidRequestError as e:  # checked before, so only if the engine's rules grew
            raise APIError(400, str(e), param=e.param) from None
        except EngineError as e:
            raise _engine_failure(ctx, e) from None
        finally:
            for timer in timers:
                timer.on_abandoned()
        return choices

    async def _stream_events(self, ctx: _Context, jobs: list[_Job], include_usage: bool):
        """(index, output, usage-or-None) per engine output, then the usage chunk and [DONE] as bytes.

        Usage rides on the chunk that finishes the last choice unless the client asked for OpenAI's
        separate usage chunk (stream_options.include_usage).
        """
        choices = [_Choice() for _ in jobs]
        timers = [RequestTimer(self.metrics, ctx.arrival) for _ in jobs]
        remaining = len(jobs)
        try:
            async with aclosing(self._merged(jobs)) as outputs:
                async for index, out in outputs:
                    timers[index].on_tokens(len(out.token_ids))
                    usage = None
                    if out.finished:
                        timers[index].on_finish(out.finish_reason)
                        _finish_choice(choices[index], out)
                        remaining -= 1
                        if out.finish_reason == "error":
                            yield _sse(_engine_failure(ctx, out.error).body())
                            yield _DONE
                            return
                        if not remaining and not include_usage:
                            usage = _usage(jobs, choices).model_dump()
                    yield index, out, usage
        except EngineDeadError as e:
            yield _sse(_dead(e).body())
            yield _DONE
            return
        except InvalidRequestError as e:
            yield _sse(APIError(400, str(e), param=e.param).body())
            yield _DONE
            return
        except EngineError as e:
            yield _sse(_engine_failure(ctx, e).body())
            yield _DONE
            return
        finally:  # a client that leaves closes this generator here: its requests count as aborted
            for timer in timers:
                timer.on_abandoned()
        if include_usage:
            yield _sse({"id": ctx.rid, "object": "chat.completion.chunk" if ctx.rid.startswith("chatcmpl")
                        else "text_completion", "created": ctx.created, "model": ctx.model, "choices": [],
                        "usage": _usage(jobs, choices).model_dump()})
        yield _DONE

    # -- tokenizer endpoints ---------------------------------------------------------------------
    async def tokenize(self, req: TokenizeRequest) -> Response:
        self.check_model(req.model)
        if req.messages is None and req.prompt is None:
            raise APIError(400, "send prompt (a string) or messages", param="prompt")

        def run() -> bytes:
            if req.messages is not None:
                ids = chat_token_ids(self.tokenizer, req.messages, req.add_generation_prompt is not False)
            else:
                ids = self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens is not False).input_ids
            # Rendered in the pool too: 200k ids are ~30 ms of JSON the event loop need not spend.
            return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=self.session_len).model_dump_json()

        try:
            body = await self._tokenize(run)
        except InvalidRequestError as e:
            raise APIError(400, str(e), param=e.param or "messages") from None
        return Response(body, media_type="application/json")

    async def detokenize(self, req: DetokenizeRequest) -> dict:
        self.check_model(req.model)
        vocab = self.aengine.vocab_size
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens has ids outside [0, {vocab}): {bad[:5]}", param="tokens")
        return DetokenizeResponse(prompt=await self._tokenize(self.tokenizer.decode, req.tokens)).model_dump()


def _dead(error: EngineDeadError) -> APIError:
    if error.code == "shutting_down":
        return APIError(503, "the server is shutting down", code="shutting_down")
    return APIError(503, f"the engine has stopped: {error}; the server is exiting", code="engine_dead")


@dataclass
class _Context:
    rid: str
    created: int
    model: str
    arrival: float
    request_id: str | None = None  # the HTTP request's id (guard.py), named in 5xx bodies and the log


def _http_request_id(http: HTTPRequest) -> str | None:
    return http.scope.get("state", {}).get("request_id")


def _engine_failure(ctx: _Context, detail) -> APIError:
    """A 500 naming the request id; the failure's text goes to the log only (it may carry paths or data)."""
    log.error("request %s (%s): the engine failed: %s", ctx.request_id, ctx.rid, detail)
    return APIError(500, f"the engine failed on this request (request id {ctx.request_id}); the server log has "
                         "the details", code="engine_error")


def _finish_choice(c: _Choice, out: RequestOutput) -> None:
    c.finish_reason = out.finish_reason
    c.num_tokens = out.num_output_tokens
    c.num_prompt_tokens = out.num_prompt_tokens
    c.num_cached_tokens = out.num_cached_tokens


def _usage(jobs: list[_Job], choices: list[_Choice]) -> Usage:
    """Each prompt counts once however many choices it has (as OpenAI counts n > 1)."""
    prompt_tokens, cached, seen = 0, 0, set()
    for job, c in zip(jobs, choices):
        if job.prompt_index not in seen:
            seen.add(job.prompt_index)
            prompt_tokens += len(job.prompt_ids)
            cached += c.num_cached_tokens
    completion = sum(c.num_tokens for c in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


async def _until_disconnect(coro, http: HTTPRequest):
    """Await `coro` unless the client disconnects first; then cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_wait_disconnect(http))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await t


async def _wait_disconnect(http: HTTPRequest) -> None:
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
