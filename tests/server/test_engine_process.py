"""ProcessEngine: the engine in its own process gives the same outputs as in-process, relays errors,
reports start-up failures in one line, and a dead engine process turns into clear errors, not hangs."""
from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from engine import EngineConfig, GenerationConfig, InvalidRequestError, OutOfMemoryError
from engine.async_engine import EngineDeadError
from engine.engine import LLMEngine
from engine.engine_process import ProcessEngine
from engine.models.source import resolve_model

from .conftest import UvicornThread

CONFIG = EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=256, max_batch_size=8,
                      cache_max_entry_count=64)
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):"]


async def _run(aengine, prompt_ids, gen):
    text, tokens, logprobs, reason = "", [], [], None
    async for out in aengine.generate(prompt_ids, gen):
        text += out.text
        tokens += out.token_ids
        logprobs += out.logprobs
        reason = out.finish_reason
    return text, tokens, [lp.logprob for lp in logprobs], reason


@pytest.fixture(scope="module")
def process_engine():
    aengine = ProcessEngine.start(resolve_model(None), CONFIG)
    yield aengine
    if aengine._process.is_alive():
        asyncio.run(aengine.shutdown(timeout=2))


def test_outputs_equal_the_in_process_engine(process_engine):
    """Greedy text, tokens, logprobs and finish reasons match LLMEngine's, with and without stop words
    (text detokenized by the engine process) and for several requests at once."""
    local = LLMEngine(None, CONFIG)
    gens = [GenerationConfig(max_new_tokens=24, logprobs=2),
            GenerationConfig(max_new_tokens=24, stop_words=(" the", "\n")),
            GenerationConfig(max_new_tokens=24, min_new_tokens=24, ignore_eos=True)]
    cases = [(local.tokenize_prompt(p), g) for p in PROMPTS for g in gens]
    expected = []
    for ids, gen in cases:
        request = local.make_request(ids, gen)
        local.add(request)
        text, logprobs = "", []
        while local.has_unfinished():
            for out in local.step():
                text += out.text
                logprobs += out.logprobs
        expected.append((text, request.output_token_ids, [lp.logprob for lp in logprobs],
                         request.finish_reason.value))

    async def main():
        return await asyncio.gather(*(_run(process_engine, ids, gen) for ids, gen in cases))

    got = asyncio.run(main())
    # Logprobs differ in the 4th decimal between a batch of 9 and one request at a time (fp32 sums).
    assert [(t, ids, r) for t, ids, _, r in got] == [(t, ids, r) for t, ids, _, r in expected]
    for (*_, lps, _r), (*_, want, _w) in zip(got, expected):
        assert lps == pytest.approx(want, abs=1e-3)
    assert any(reason == "stop" for *_, reason in got)
    stats = process_engine.stats()
    assert stats.num_free_blocks == stats.num_blocks and stats.num_running == 0


def test_request_id_in_use_fails_that_stream_only(process_engine):
    """A second request with an id in flight is refused at once; the first one runs to its end."""
    ids = process_engine.requests.tokenize_prompt("Hello there")

    async def main():
        first = process_engine.generate(ids, GenerationConfig(max_new_tokens=40, min_new_tokens=40), "dup")
        await first.__anext__()
        with pytest.raises(InvalidRequestError, match="already in use"):
            async for _ in process_engine.generate(ids, GenerationConfig(max_new_tokens=4), "dup"):
                pass
        rest = [out async for out in first]
        return rest[-1]

    last = asyncio.run(main())
    assert last.finished and last.finish_reason == "length"


def test_startup_failure_is_one_line():
    """The engine process's own error (a cache smaller than one session) comes back as the same error."""
    with pytest.raises(OutOfMemoryError) as info:
        ProcessEngine.start(resolve_model(None), CONFIG.replace(cache_max_entry_count=4))
    message = str(info.value)
    assert "\n" not in message and "--cache-max-entry-count" in message and "--session-len" in message


def test_dead_engine_process_fails_streams_and_health():
    """Killing the engine process mid-stream ends the stream with EngineDeadError, /health turns 503
    and new requests get 503 instead of hanging."""
    from engine.server import build_app

    aengine = ProcessEngine.start(resolve_model(None), CONFIG)
    thread = UvicornThread(build_app(aengine)).start()
    try:
        ids = aengine.requests.tokenize_prompt("Tell me a long story")

        async def main():
            stream = aengine.generate(ids, GenerationConfig(max_new_tokens=200, ignore_eos=True))
            await stream.__anext__()
            os.kill(aengine._process.pid, signal.SIGKILL)
            with pytest.raises(EngineDeadError, match="killed by SIGKILL"):
                async for _ in stream:
                    pass

        asyncio.run(asyncio.wait_for(main(), 60))
        health = httpx.get(thread.url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "engine_dead"
        r = httpx.post(thread.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    finally:
        thread.stop()
        asyncio.run(aengine.shutdown(timeout=2))
