"""Continuous batching changes nothing: batched, staggered and chunked runs equal each request alone."""
from __future__ import annotations

import pytest

from engine import EngineConfig, GenerationConfig
from engine.engine import LLMEngine

from .helpers import assert_all_blocks_free, greedy, run_alone

WORDS = ("the quick brown fox jumps over the lazy dog while a small bird sings in the old oak tree "
         "near the river where children play every summer afternoon").split()


def make_prompts(engine, n: int) -> list[list[int]]:
    """n prompts of clearly different lengths (8 to ~90 tokens)."""
    prompts = []
    for i in range(n):
        words = (WORDS * 4)[i: i + 6 + i * 11]
        prompts.append(engine.tokenize_prompt("Continue this story: " + " ".join(words)))
    return prompts


@pytest.fixture(scope="module")
def references(smol_engine):
    prompts = make_prompts(smol_engine, 8)
    gens = [greedy(12 + 5 * i) for i in range(8)]  # mixed output lengths too
    alone = [run_alone(smol_engine, p, g) for p, g in zip(prompts, gens)]
    return prompts, gens, alone


def test_batch_of_8_equals_alone(smol_engine, references):
    prompts, gens, alone = references
    requests = smol_engine.generate(prompts, gens)
    assert [r.output_token_ids for r in requests] == alone
    assert_all_blocks_free(smol_engine)


def _staggered(engine, prompts, gens) -> list[list[int]]:
    """Submit one new request every 3 steps while the earlier ones decode."""
    pending = list(zip(prompts, gens))
    requests = []
    steps = 0
    while pending or engine.has_unfinished():
        if pending and steps % 3 == 0:
            p, g = pending.pop(0)
            r = engine.make_request(p, g)
            engine.add(r)
            requests.append(r)
        engine.step()
        steps += 1
    return [r.output_token_ids for r in requests]


def test_staggered_arrivals_equal_alone(smol_engine, references):
    prompts, gens, alone = references
    assert _staggered(smol_engine, prompts, gens) == alone
    assert_all_blocks_free(smol_engine)


def test_chunked_prefill_16_tokens_equals_alone(default_model_dir, references):
    prompts, gens, alone = references
    engine = LLMEngine(default_model_dir, EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=256,
                                                       cache_block_seq_len=16, max_prefill_token_num=16,
                                                       session_len=1024))
    requests = engine.generate(prompts, gens)
    assert [r.output_token_ids for r in requests] == alone
    assert _staggered(engine, prompts, gens) == alone
    assert_all_blocks_free(engine)


def test_small_pool_preempts_and_recovers(default_model_dir, smol_engine):
    """32 requests through a pool far too small for them all: each finishes with its alone output."""
    engine = LLMEngine(default_model_dir, EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=24,
                                                       cache_block_seq_len=16, session_len=384,
                                                       max_batch_size=32))
    prompts = (make_prompts(engine, 8) * 4)[:32]
    gens = [greedy(20 + (i % 5) * 6) for i in range(32)]
    requests = engine.generate(prompts, gens)
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert all(r.finish_reason.value == "length" for r in requests)
    for r, p, g in zip(requests[:8], prompts, gens):
        assert r.output_token_ids == run_alone(smol_engine, p, g)
    assert_all_blocks_free(engine)


def test_seeded_sampling_is_reproducible_whatever_the_batch(smol_engine):
    prompt = smol_engine.tokenize_prompt("Tell me a story about a dragon.")
    gen = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=1.0, top_p=0.9, top_k=40, random_seed=1234)
    alone = run_alone(smol_engine, prompt, gen)
    others = make_prompts(smol_engine, 6)
    other_gens = [GenerationConfig(max_new_tokens=30, do_sample=True, temperature=0.7)] * 6
    batch = smol_engine.generate(others[:3] + [prompt] + others[3:], other_gens[:3] + [gen] + other_gens[3:])
    assert batch[3].output_token_ids == alone
    assert run_alone(smol_engine, prompt, gen.replace(random_seed=99)) != alone
    assert_all_blocks_free(smol_engine)
