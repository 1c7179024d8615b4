"""Test helpers: run our engine and transformers' generate the same way."""
from __future__ import annotations

import torch

from engine import GenerationConfig


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers greedy decoding with EOS suppressed for max_new_tokens (min_new_tokens = max)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0)
    return out[0, len(prompt_ids):].tolist()


def greedy(n: int, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, min_new_tokens=n, **kw)


def run_alone(engine, prompt_ids: list[int], gen: GenerationConfig) -> list[int]:
    [request] = engine.generate([prompt_ids], gen)
    return request.output_token_ids


def assert_all_blocks_free(engine) -> None:
    stats = engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks, f"{stats.num_blocks - stats.num_free_blocks} blocks leaked"
