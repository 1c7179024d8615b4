"""The streamed chunks of chat and text completions, without a model: OpenAIServing on a fake engine.

The fake engine answers each choice with scripted RequestOutputs (text pieces, then a finishing
output), so every chunk the server writes is known. Pinned as test_api_fields.py pins them on the
real server (which takes minutes): every choice carries its own finish_reason ("length" or "stop")
on exactly one chunk and nothing after it; usage rides on the chunk that finishes the last choice
and on no other, unless stream_options.include_usage asks for OpenAI's separate last chunk (no
choices, the usage) with none before it; the prompt counts once whatever n; the stream ends with
[DONE]. Requests go through OpenAIServing.chat / .completion, so include_usage is read as the
server reads it.
"""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from engine.engine import RequestOutput
from engine.server import serving
from engine.server.metrics import ServerMetrics
from engine.server.protocol import ChatCompletionRequest, CompletionRequest

MODEL = "fake-model"
PROMPT_IDS = [11, 12, 13, 14, 15]
# Per choice: the text pieces of the outputs before the finishing one. Choices differ in length,
# so with n = 2 the choices finish at different chunks.
PIECES = {0: ["Par", "is", " is"], 1: ["Lyon"]}
LENGTH_TAIL = " big"  # a "length" ending's finishing output carries the last token's text
CACHED = 3  # prompt tokens the fake engine reports as served from the prefix cache


class FakeEngine:
    """What OpenAIServing uses of AsyncEngine; generate plays a script per choice."""

    tokenizer = None
    session_len = 256
    vocab_size = 1000
    dead_reason = None
    accepting = True

    def __init__(self, ending: str, longer: int):
        self.ending = ending
        self.longer = longer  # which choice gets the most outputs (finishes last)
        self.requests = SimpleNamespace(tokenize_prompt=lambda prompt: list(prompt))
        self.generated: list[str] = []

    def script(self, index: int) -> list[RequestOutput]:
        pieces = PIECES[0 if index == self.longer else 1]
        rid = f"r{index}"
        outs = [RequestOutput(rid, [100 + i], text, False, None, len(PROMPT_IDS), i + 1, CACHED)
                for i, text in enumerate(pieces)]
        n = len(pieces)
        if self.ending == "length":  # max_tokens: the last token has text
            outs.append(RequestOutput(rid, [200], LENGTH_TAIL, True, "length", len(PROMPT_IDS), n + 1, CACHED))
        else:  # EOS / stop token id: the last token gives no text
            outs.append(RequestOutput(rid, [2], "", True, "stop", len(PROMPT_IDS), n + 1, CACHED))
        return outs

    def expected(self, index: int) -> tuple[str, int]:
        """(text, completion tokens) of a choice."""
        outs = self.script(index)
        return "".join(o.text for o in outs), outs[-1].num_output_tokens

    async def generate(self, prompt_ids, gen, request_id):
        assert list(prompt_ids) == PROMPT_IDS
        self.generated.append(request_id)
        index = int(request_id.rsplit("-", 1)[1])
        for out in self.script(index):
            await asyncio.sleep(0)  # let the other choice's stream run: the merge interleaves them
            yield out


class _ZeroStats:
    """Engine stats for the metrics registry (read when it registers): every counter 0."""

    def __getattr__(self, name):
        return 0


def _serving(engine: FakeEngine, monkeypatch) -> serving.OpenAIServing:
    monkeypatch.setattr(serving, "chat_token_ids", lambda tokenizer, messages: list(PROMPT_IDS))
    return serving.OpenAIServing(engine, MODEL, ServerMetrics(_ZeroStats, MODEL))


def _stream(endpoint: str, engine: FakeEngine, n: int, include_usage, monkeypatch) -> list:
    """The parsed SSE events of one streamed request: dicts, then the string "[DONE]"."""
    fields = {"model": MODEL, "n": n, "stream": True, "max_tokens": 32}
    if include_usage is not None:
        fields["stream_options"] = {"include_usage": include_usage}
    server = _serving(engine, monkeypatch)
    http = SimpleNamespace(scope={})

    async def run() -> bytes:
        if endpoint == "chat":
            resp = await server.chat(ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields),
                                     http, None)
        else:
            resp = await server.completion(CompletionRequest(prompt=list(PROMPT_IDS), **fields), http, None)
        body = b""
        try:
            async for part in resp.body_iterator:
                body += part
        finally:
            await resp.body_iterator.aclose()
        return body

    try:
        body = asyncio.run(asyncio.wait_for(run(), 10))
    finally:
        server._tokenizer_pool.shutdown(wait=True)
    assert body.endswith(b"\n\n")
    events = []
    for block in body.decode().split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize("include_usage", [None, False, True], ids=["usage-default", "usage-off", "usage-on"])
@pytest.mark.parametrize("n,longer", [(1, 0), (2, 0), (2, 1)], ids=["n1", "n2-first-longer", "n2-second-longer"])
@pytest.mark.parametrize("ending", ["length", "stop"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_streamed_finish_reasons_and_usage(endpoint, ending, n, longer, include_usage, monkeypatch):
    engine = FakeEngine(ending, longer)
    events = _stream(endpoint, engine, n, include_usage, monkeypatch)
    assert len(engine.generated) == n
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    assert all(c["object"] == kind and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-" if endpoint == "chat" else "cmpl-")

    start = 0
    if endpoint == "chat":  # one role chunk per choice opens the stream
        assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"], c["usage"])
                for c in chunks[:n]] == [(i, {"role": "assistant", "content": ""}, None, None) for i in range(n)]
        start = n

    texts, finishes, finished_at = [""] * n, [None] * n, [None] * n
    for i, chunk in enumerate(chunks[start:], start):
        for c in chunk["choices"]:
            index = c["index"]
            assert finishes[index] is None, f"choice {index} went on after its finish_reason: {chunk}"
            texts[index] += c["delta"].get("content", "") if endpoint == "chat" else c["text"]
            if c["finish_reason"] is not None:
                finishes[index], finished_at[index] = c["finish_reason"], i
    assert finishes == [ending] * n, chunks
    assert texts == [engine.expected(i)[0] for i in range(n)]

    with_usage = [i for i, c in enumerate(chunks) if c.get("usage") is not None]
    if include_usage:
        # OpenAI's shape: one extra last chunk with no choices and the usage; none before it.
        assert with_usage == [len(chunks) - 1], chunks
        assert chunks[-1]["choices"] == []
    else:
        # Ours: usage rides on the chunk that finishes the last choice, and on no other.
        assert with_usage == [max(finished_at)], chunks
        assert len(chunks[-1]["choices"]) == 1 and chunks[-1]["choices"][0]["finish_reason"] == ending
    usage = chunks[with_usage[0]]["usage"]
    completion = sum(engine.expected(i)[1] for i in range(n))
    assert usage["prompt_tokens"] == len(PROMPT_IDS)  # each prompt counts once, whatever n
    assert usage["completion_tokens"] == completion
    assert usage["total_tokens"] == len(PROMPT_IDS) + completion
    assert usage["prompt_tokens_details"] == {"cached_tokens": CACHED}
    if n == 2:  # the script's longer choice finishes last
        assert max(finished_at) == finished_at[longer] > finished_at[1 - longer]
