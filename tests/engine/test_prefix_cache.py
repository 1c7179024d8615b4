"""Prefix caching: shared prompt prefixes reuse KV blocks, outputs are unchanged, LRU eviction."""
from __future__ import annotations

from engine import EngineConfig, GenerationConfig
from engine.engine import LLMEngine
from engine.kv_cache import KVCacheManager
from engine.request import Request

from .helpers import assert_all_blocks_free, greedy, run_alone


def _request(tokens, rid="r"):
    return Request(rid, tokens, GenerationConfig(), frozenset(), max_tokens=len(tokens) + 8, seed=0)


def test_blocks_are_shared_and_evicted_least_recently_used_first():
    kv = KVCacheManager(num_blocks=6, block_size=4, enable_prefix_caching=True)
    a = _request(list(range(13)), "a")  # 3 full blocks + 1 token
    assert kv.allocate(a, 13)
    kv.cache_full_blocks(a, 13)
    a.num_computed_tokens = 13
    b = _request(list(range(12)) + [99, 98], "b")  # same first 3 blocks
    kv.match_prefix(b)
    assert b.block_ids == a.block_ids[:3] and b.num_computed_tokens == 12
    assert kv.stats.hits == 12
    a_blocks = list(a.block_ids)
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 6  # cached blocks count as free
    # A prompt that is exactly 2 full blocks hits only 1: the last token must be recomputed.
    c = _request(list(range(8)), "c")
    kv.match_prefix(c)
    assert c.num_computed_tokens == 4
    kv.free(c)
    # An unrelated request takes 4 of the 6 free blocks: never-cached ones go first, then the
    # prefix's tail block (freed first); the prefix's head blocks survive.
    d = _request(list(range(100, 116)), "d")
    assert kv.allocate(d, 16)
    e = _request(list(range(12)) + [5], "e")
    kv.match_prefix(e)
    assert e.num_computed_tokens == 8 and e.block_ids == a_blocks[:2]


def test_shared_prefix_outputs_identical_and_hits_counted(default_model_dir):
    config = EngineConfig(device="cpu", cache_max_entry_count=128, cache_block_seq_len=16, session_len=1024)
    plain = LLMEngine(default_model_dir, config)
    cached = LLMEngine(default_model_dir, config.replace(enable_prefix_caching=True))
    prefix = plain.tokenize_prompt("You are a helpful assistant. Here is a long shared system prompt. " * 6)
    prompts = [prefix + plain.tokenize_prompt(f" Question {i}: what is {i} plus {i}?") for i in range(6)]
    gens = [greedy(12)] * len(prompts)
    expected = [r.output_token_ids for r in plain.generate(prompts, gens)]
    # All submitted at once: later requests share blocks that earlier ones compute in the same step.
    assert [r.output_token_ids for r in cached.generate(prompts, gens)] == expected
    stats = cached.stats()
    full_blocks = len(prefix) // 16
    assert stats.prefix_cache_hits >= 5 * full_blocks * 16
    # Again, now from blocks cached by finished requests.
    assert [r.output_token_ids for r in cached.generate(prompts, gens)] == expected
    assert cached.stats().prefix_cache_hit_rate > 0.7
    assert_all_blocks_free(cached)
    # A prefix hit in the middle of chunked prefill is still exact.
    chunked = LLMEngine(default_model_dir, config.replace(enable_prefix_caching=True, max_prefill_token_num=24))
    assert [r.output_token_ids for r in chunked.generate(prompts, gens)] == expected
    assert_all_blocks_free(chunked)


def test_small_pool_with_prefix_caching_evicts_and_stays_exact(default_model_dir, smol_engine):
    engine = LLMEngine(default_model_dir, EngineConfig(device="cpu", cache_max_entry_count=24, cache_block_seq_len=16,
                                                       session_len=384, enable_prefix_caching=True))
    prompts = [engine.tokenize_prompt(f"Story number {i}: once upon a time in a land far away there lived") for i in range(12)]
    gens = [greedy(20)] * len(prompts)
    outs = [r.output_token_ids for r in engine.generate(prompts, gens)]
    assert outs[:3] == [run_alone(smol_engine, p, g) for p, g in zip(prompts[:3], gens)]
    assert_all_blocks_free(engine)
