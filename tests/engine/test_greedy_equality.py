"""Greedy output equals transformers on the same weights, token for token (fp32, CPU)."""
from __future__ import annotations

import pytest

from engine import EngineConfig, GenerationConfig
from engine.engine import LLMEngine
from engine.prompt import chat_token_ids

from .helpers import greedy, hf_greedy, run_alone

NEW_TOKENS = 64
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea and the wind.",
    "你好，请介绍一下自己",
]


@pytest.mark.parametrize("prompt", CHAT_PROMPTS)
def test_smollm2_greedy_matches_transformers(smol_engine, hf_smol, prompt):
    model, tokenizer = hf_smol
    ids = chat_token_ids(tokenizer, [{"role": "user", "content": prompt}])
    ours = run_alone(smol_engine, ids, greedy(NEW_TOKENS))
    theirs = hf_greedy(model, ids, NEW_TOKENS)
    assert len(ours) == NEW_TOKENS
    assert ours == theirs


def test_smollm2_answers_paris(smol_engine):
    ids = chat_token_ids(smol_engine.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    [request] = smol_engine.generate([ids], GenerationConfig(max_new_tokens=32))
    text = smol_engine.tokenizer.decode(request.output_token_ids, skip_special_tokens=True)
    assert text.strip() == "The capital of France is Paris."
    assert request.finish_reason.value == "stop"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_tiny_random_models_match_transformers(tiny_model_dirs, name):
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_model_dirs[name]
    engine = LLMEngine(path, EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=64,
                                          cache_block_seq_len=16, session_len=512))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt in ["Hello there, how are you today?", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19"]:
        ids = engine.tokenize_prompt(prompt)
        assert run_alone(engine, ids, greedy(NEW_TOKENS)) == hf_greedy(model, ids, NEW_TOKENS)
