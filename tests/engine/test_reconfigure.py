"""LLMEngine.reconfigure: new runtime settings on loaded weights behave as a fresh engine built with them.

Greedy outputs after a reconfigure equal a new engine's with the same final config (same weights, same
scheduling, so the same batches); the pool has exactly the new block count, all free; the old KV cache
is gone before the new one is allocated; a busy engine, a field that needs a restart and a bad value
are refused with nothing changed; settings that do not fit leave the previous ones in place. Through
the async fronts (ThreadedEngine, ProcessEngine) the same, with the front's config and stats updated.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
import weakref

import pytest

from engine import EngineConfig, InvalidRequestError, OutOfMemoryError
from engine.async_engine import EngineDeadError, ThreadedEngine
from engine.engine import RUNTIME_FIELDS, EngineBusyError, LLMEngine

from .helpers import assert_all_blocks_free, greedy

BEFORE = EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=256, max_batch_size=4,
                      cache_max_entry_count=64)
CHANGES = {"max_batch_size": 2, "cache_max_entry_count": 32, "enable_prefix_caching": True}
MODEL = "preset:tiny-llama"  # random weights: greedy outputs are as deterministic as a trained model's, and fast
# A shared system prompt of several 16-token blocks, so prefix caching has full blocks to share.
_SYSTEM = "You are a careful assistant. Answer in one short sentence, and never repeat the question. "
PROMPTS = [_SYSTEM + q for q in ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a land",
                                 "The three primary colours are", "To make a cup of tea, first")]


@pytest.fixture(scope="module")
def engine():
    """One engine the tests of this module reconfigure in turn; each starts by setting what it needs."""
    return LLMEngine(MODEL, BEFORE)


def _outputs(engine: LLMEngine, prompts=PROMPTS, n: int = 12) -> list[list[int]]:
    """Greedy outputs of all prompts submitted at once, checking the batch limit at every step."""
    requests = [engine.make_request(p, greedy(n)) for p in prompts]
    for r in requests:
        engine.add(r)
    most = 0
    while engine.has_unfinished():
        engine.step()
        most = max(most, len(engine.scheduler.running))
    assert most <= engine.scheduler.max_batch_size
    return [r.output_token_ids for r in requests]


def _settings(config: EngineConfig) -> dict:
    """The runtime settings of a config (the tests' conftest turns debug_invariants on in every engine)."""
    return {f: getattr(config, f) for f in RUNTIME_FIELDS}


def _reset(engine: LLMEngine) -> None:
    engine.reconfigure(_settings(BEFORE))


def test_outputs_equal_a_fresh_engine_with_the_final_config(engine):
    _reset(engine)
    _outputs(engine)  # the engine has served with the old settings: blocks used, counters moved
    stats = engine.reconfigure(CHANGES)
    final = BEFORE.replace(**{**CHANGES, "cache_max_entry_count": 32.0})
    assert _settings(engine.config) == _settings(final)
    assert stats.num_blocks == stats.num_free_blocks == 32 and stats.num_running == stats.num_waiting == 0
    assert engine.kv.num_blocks == 32 and engine.kv.enable_prefix_caching
    assert engine.runner.kv_cache.shape[2] == 32
    assert engine.scheduler.max_batch_size == 2 and engine.runner.buffers.max_reqs == 2

    fresh = LLMEngine(MODEL, final)
    expected = _outputs(fresh)
    assert _outputs(engine) == expected
    # Prefix caching is on: the same prompts again hit the blocks the first round left cached.
    hits = engine.stats().prefix_cache_hits
    assert _outputs(engine) == expected and engine.stats().prefix_cache_hits > hits
    assert_all_blocks_free(engine)


def test_block_length_and_prefill_budget_change_too(engine):
    _reset(engine)
    changes = {"cache_block_seq_len": 32, "max_prefill_token_num": 8, "cache_max_entry_count": 16}
    engine.reconfigure(changes)
    final = BEFORE.replace(**{**changes, "cache_max_entry_count": 16.0})
    assert engine.kv.block_size == 32 and engine.runner.kv_cache.shape[2:4] == (16, 32)
    assert engine.scheduler.max_num_batched_tokens == 8  # prompts now prefill in chunks of 8 tokens
    assert _outputs(engine) == _outputs(LLMEngine(MODEL, final))
    assert_all_blocks_free(engine)


def test_old_cache_is_freed_before_the_new_one_is_allocated(engine, monkeypatch):
    """On a GPU the old and the new cache would not fit together: nothing may hold the old one."""
    _reset(engine)
    _outputs(engine, PROMPTS[:2], 4)
    old = weakref.ref(engine.runner.kv_cache)
    allocate = engine.runner._init_kv_cache
    seen = []

    def spy():
        gc.collect()
        seen.append(old() is None)
        allocate()

    monkeypatch.setattr(engine.runner, "_init_kv_cache", spy)
    engine.reconfigure({"cache_max_entry_count": 48})
    assert seen == [True], "the old KV cache was still alive when the new one was allocated"
    assert engine.runner.num_blocks == 48
    assert all(a.k_cache.shape[0] == 48 for a in engine.runner.model.attention_layers())


def test_empty_changes_rebuild_a_clean_pool(engine):
    _reset(engine)
    engine.reconfigure({"enable_prefix_caching": True})
    _outputs(engine, PROMPTS[:2], 4)
    assert engine.kv.cached  # finished requests left their full blocks in the prefix cache
    stats = engine.reconfigure({})
    assert not engine.kv.cached and stats.num_free_blocks == stats.num_blocks == 64
    assert stats.prefix_cache_queries > 0  # counters carry over: Prometheus counters never go down


def test_busy_engine_is_refused_and_unchanged(engine):
    _reset(engine)
    config, runner_cache = engine.config, engine.runner.kv_cache
    rid = engine.add_request("Count slowly: one, two,", greedy(6))
    with pytest.raises(EngineBusyError, match="1 wait"):  # added, not scheduled yet
        engine.reconfigure({"max_batch_size": 2})
    engine.step()
    with pytest.raises(EngineBusyError, match="1 request\\(s\\) run"):
        engine.reconfigure({"max_batch_size": 2})
    assert engine.config is config and engine.runner.kv_cache is runner_cache
    while engine.has_unfinished():
        engine.step()
    assert rid not in engine._requests
    assert engine.reconfigure({"max_batch_size": 2}).num_free_blocks == 64


def test_step_in_flight_after_an_abort_is_settled():
    """Overlap scheduling: an aborted request's last step may still be in flight when the engine goes idle."""
    config = BEFORE.replace(overlap="on")
    engine = LLMEngine(MODEL, config)
    rid = engine.add_request(PROMPTS[0], greedy(8))
    engine.step()
    engine.step()
    engine.abort(rid)
    assert not engine.has_unfinished() and engine._in_flight is not None
    engine.reconfigure(CHANGES)
    assert engine._in_flight is None
    final = config.replace(**CHANGES)
    assert _outputs(engine) == _outputs(LLMEngine(MODEL, final))


@pytest.mark.parametrize("changes, param, message", [
    ({"dtype": "bfloat16"}, "dtype", "dtype needs a restart"),
    ({"session_len": 512}, "session_len", "session_len needs a restart"),
    ({"max_batch_size": 2, "device": "cuda"}, "device", "device needs a restart"),
    ({"batch": 2}, "batch", "'batch' is not an engine setting"),
    ({"max_batch_size": 0}, "max_batch_size", "must be >= 1"),
    ({"max_batch_size": "4"}, "max_batch_size", "max_batch_size must be int or null"),
    ({"max_prefill_token_num": True}, "max_prefill_token_num", "must be int"),
    ({"enable_prefix_caching": 1}, "enable_prefix_caching", "must be bool"),
    ({"cache_block_seq_len": 48}, "cache_block_seq_len", "power of two"),
    ({"cache_max_entry_count": 2.5}, "cache_max_entry_count", "integer block count"),
])
def test_refused_changes_name_the_field_and_change_nothing(engine, changes, param, message):
    _reset(engine)
    config, cache = engine.config, engine.runner.kv_cache
    with pytest.raises(InvalidRequestError, match=message) as e:
        engine.reconfigure(changes)
    assert e.value.param == param
    assert engine.config is config and engine.runner.kv_cache is cache


def test_settings_that_do_not_fit_restore_the_previous_ones(engine):
    _reset(engine)
    expected = _outputs(engine, PROMPTS[:3], 6)
    with pytest.raises(OutOfMemoryError, match="less than one session"):
        engine.reconfigure({"cache_max_entry_count": 4, "max_batch_size": 1})  # 4 x 16 tokens < session_len 256
    assert _settings(engine.config) == _settings(BEFORE) and engine.scheduler.max_batch_size == 4
    assert engine.stats().num_blocks == engine.stats().num_free_blocks == 64
    assert _outputs(engine, PROMPTS[:3], 6) == expected


def _start(backend: str, config: EngineConfig):
    if backend == "thread":
        return ThreadedEngine(LLMEngine(MODEL, config))
    from engine.engine_process import ProcessEngine
    from engine.models.source import resolve_model

    return ProcessEngine.start(resolve_model(MODEL), config)


async def _tokens(aengine, prompt: str, n: int = 8) -> list[int]:
    tokens = []
    async for out in aengine.generate(prompt, greedy(n)):
        tokens += out.token_ids
    return tokens


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_async_fronts_reconfigure_between_requests(backend):
    async def main():
        aengine = _start(backend, BEFORE)
        try:
            before = await _tokens(aengine, PROMPTS[0])
            stats = await aengine.reconfigure(CHANGES)
            assert stats.num_blocks == stats.num_free_blocks == 32
            assert aengine.stats().num_blocks == 32  # the front's view, without another round trip
            assert aengine.config.max_batch_size == 2 and aengine.config.enable_prefix_caching
            with pytest.raises(InvalidRequestError, match="dtype needs a restart") as e:
                await aengine.reconfigure({"dtype": "float16"})
            assert e.value.param == "dtype" and aengine.config.dtype == BEFORE.dtype

            stream = aengine.generate(PROMPTS[1], greedy(64))
            await stream.__anext__()
            with pytest.raises(EngineBusyError, match="1 request"):
                await aengine.reconfigure({"max_batch_size": 4})
            await stream.aclose()  # aborts it; the abort reaches the engine before the next reconfigure
            assert (await aengine.reconfigure({"max_batch_size": 4})).num_running == 0
            assert await _tokens(aengine, PROMPTS[0]) == before
        finally:
            await aengine.shutdown(timeout=2)

    asyncio.run(main())


def test_process_engine_reconfigure_after_death_is_engine_dead():
    async def main():
        aengine = _start("process", BEFORE)
        try:
            os.kill(aengine._process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while aengine.dead_reason is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            with pytest.raises(EngineDeadError, match="killed by SIGKILL"):
                await aengine.reconfigure({"max_batch_size": 2})
        finally:
            await aengine.shutdown(timeout=2)

    asyncio.run(main())
