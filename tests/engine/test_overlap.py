"""Overlapped scheduling (the next step planned before the previous one's tokens are read) changes
nothing: forced on here on CPU, where it runs the same logic as on CUDA."""
from __future__ import annotations

import pytest

from engine import EngineConfig, GenerationConfig
from engine.engine import LLMEngine

from .helpers import assert_all_blocks_free, greedy, run_alone
from .test_batching import _staggered, make_prompts


@pytest.fixture(scope="module")
def overlap_engine(default_model_dir):
    engine = LLMEngine(default_model_dir, EngineConfig(device="cpu", cache_max_entry_count=24,
                                                       cache_block_seq_len=16, session_len=384,
                                                       max_batch_size=32, overlap="on"))
    assert engine._overlap
    return engine


def test_overlap_batched_staggered_and_preempted_equal_alone(overlap_engine, smol_engine):
    prompts = (make_prompts(overlap_engine, 8) * 3)[:24]
    gens = [greedy(12 + (i % 5) * 5) for i in range(24)]
    alone = [run_alone(smol_engine, p, g) for p, g in zip(prompts[:8], gens[:8])]
    outs = [r.output_token_ids for r in overlap_engine.generate(prompts, gens)]
    assert outs[:8] == alone
    assert overlap_engine.stats().num_preemptions > 0  # 24 blocks cannot hold them all
    assert_all_blocks_free(overlap_engine)
    assert _staggered(overlap_engine, prompts[:8], gens[:8]) == alone
    assert_all_blocks_free(overlap_engine)


def test_overlap_stops_exactly(overlap_engine, smol_engine):
    from engine.prompt import chat_token_ids

    prompt = chat_token_ids(overlap_engine.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    gen = GenerationConfig(max_new_tokens=40)
    [r] = overlap_engine.generate([prompt], gen)
    assert r.finish_reason.value == "stop" and r.output_token_ids == run_alone(smol_engine, prompt, gen)
    [r] = overlap_engine.generate([prompt], GenerationConfig(max_new_tokens=5, ignore_eos=True))
    assert r.num_output_tokens == 5 and r.finish_reason.value == "length"
    seeded = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, random_seed=3)
    assert overlap_engine.generate([prompt], seeded)[0].output_token_ids == run_alone(smol_engine, prompt, seeded)
    penalized = greedy(12, repetition_penalty=1.3)  # needs the exact history: the overlap pauses
    assert overlap_engine.generate([prompt], penalized)[0].output_token_ids == run_alone(smol_engine, prompt, penalized)
    assert_all_blocks_free(overlap_engine)
