"""The engine with a quantized KV cache (EngineConfig.quant_policy 8, LMDeploy's --quant-policy 8; 4 in slow tests)
on CPU with the embedded SmolLM2: greedy tokens against the unquantized cache, the cache's real size
(~1.8x the blocks of a bf16 cache in the same memory, 3.6x of an fp32 one), prefix caching on and off,
blocks freed, and perplexity within 1% of the unquantized cache's.

Measured (fp32, CPU), greedy over 40 tokens of the five chat prompts below: 3 identical with int8, the
other two part at tokens 9 and 10, both near-ties of the unquantized model (top two 0.13 and 0.003 nats
apart; which near-ties tip depends on the CPU: see the greedy test); int4 differs from the first token
on 3 of 5 (coherent text, other words). Teacher-forced perplexity, first 1024 tokens of README.md +
docs/ARCHITECTURE.md as one prefill: 48.09 unquantized, 48.17 int8 (1.0016x), 54.59 int4 (1.135x); the
first 255 of them one decode step at a time: 163.68 unquantized, 164.45 int8 (1.0047x).
"""
from __future__ import annotations

import math

import pytest
import torch

from engine import EngineConfig
from engine.engine import LLMEngine
from engine.prompt import chat_token_ids
from engine.runner.forward_context import ForwardContext, forward_context

from .helpers import assert_all_blocks_free, greedy

# The shared smol_engine's configuration (tests/conftest.py), so it is the unquantized baseline.
CONFIG = EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=512, cache_block_seq_len=16,
                      max_batch_size=32, session_len=2048)
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "def fibonacci(n):",
           "Explain photosynthesis in simple terms.", "List three prime numbers."]


@pytest.fixture(scope="module")
def int8_engine(default_model_dir):
    return LLMEngine(default_model_dir, CONFIG.replace(quant_policy=8))


def _chat(engine, prompt: str) -> list[int]:
    return chat_token_ids(engine.tokenizer, [{"role": "user", "content": prompt}])


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def test_int8_cache_is_uint8_with_fp32_scales(int8_engine):
    runner = int8_engine.runner
    assert runner.kv_cache.dtype == torch.uint8 and runner.kv_cache.shape[-1] == runner.head_dim
    assert runner.kv_scales.dtype == torch.float32 and runner.kv_scales.shape[-1] == 2
    allocated = runner.kv_cache.nbytes + runner.kv_scales.nbytes
    assert allocated == runner.num_blocks * runner.block_bytes  # what sized the cache is what was allocated
    attn = runner.model.attention_layers()[0]
    assert attn.kv_quant == 8 and attn.k_scale is not None and attn.k_cache.dtype == torch.uint8


def _assert_parts_only_at_near_ties(plain_engine, ids, plain, quant) -> list[int | None]:
    """Where int8's greedy tokens first differ from the unquantized cache's, the unquantized model's top two
    candidates were < 0.3 nats apart: a near-tie that the cache's rounding may flip, not a real change.
    Returns the first divergence of each prompt (None: identical)."""
    divergences = [_first_divergence(a, b) for a, b in zip(plain, quant)]
    for prompt, out, d in zip(ids, plain, divergences):
        if d is not None:
            top2 = next_token_logprobs(plain_engine, prompt + out[:d])[-1].topk(2).values
            assert top2[0] - top2[1] < 0.3, (d, top2)
    return divergences


def test_int8_greedy_matches_unquantized_short(smol_engine, int8_engine):
    ids = [_chat(int8_engine, p) for p in PROMPTS[:2]]
    gens = [greedy(8)] * len(ids)
    quant = [r.output_token_ids for r in int8_engine.generate(ids, gens)]
    plain = [r.output_token_ids for r in smol_engine.generate(ids, gens)]
    divergences = _assert_parts_only_at_near_ties(smol_engine, ids, plain, quant)
    assert None in divergences, divergences
    assert_all_blocks_free(int8_engine)


@pytest.mark.slow
def test_int8_greedy_diverges_only_at_near_ties(smol_engine, int8_engine):
    """Measured over 24 tokens on an AMD EPYC (CI, 2026-12-03): 2 of the 5 prompts identical; the others part
    at tokens 0, 10 and 22, near-ties of the unquantized model (the first 0.08 nats apart). Earlier CI
    machines had 3 identical with the same weights and code: an int8 code is a step function of its value,
    so the CPU's fp32 rounding moves a few codes across .5 and tips a different near-tie. Hence the count
    asked for is 2, and every divergence is checked to be a near-tie."""
    ids = [_chat(int8_engine, p) for p in PROMPTS]
    gens = [greedy(24)] * len(ids)
    plain = [r.output_token_ids for r in smol_engine.generate(ids, gens)]
    quant = [r.output_token_ids for r in int8_engine.generate(ids, gens)]
    divergences = _assert_parts_only_at_near_ties(smol_engine, ids, plain, quant)
    assert sum(d is None for d in divergences) >= 2, divergences
    assert_all_blocks_free(int8_engine)


def test_int8_holds_about_twice_the_blocks(default_model_dir, smol_engine, int8_engine):
    """Same memory budget, ~1.8x the blocks of a bf16 cache: SmolLM2's rows are 64 codes + 8 bytes of
    scales against 128 bytes in bf16 (256 in fp32: 3.6x)."""
    assert smol_engine.runner.block_bytes / int8_engine.runner.block_bytes == pytest.approx(256 / 72)
    budget = EngineConfig(device="cpu", dtype="bfloat16", cpu_memory_gb=0.25, cache_max_entry_count=0.5,
                          cache_block_seq_len=16, session_len=512)
    blocks = {qp: LLMEngine(default_model_dir, budget.replace(quant_policy=qp)).stats().num_blocks for qp in (0, 8)}
    assert blocks[8] / blocks[0] == pytest.approx(128 / 72, rel=0.01)


@pytest.mark.slow
def test_int8_prefix_caching_gives_the_same_tokens(default_model_dir, int8_engine):
    cached = LLMEngine(default_model_dir, CONFIG.replace(quant_policy=8, enable_prefix_caching=True))
    prefix = int8_engine.tokenize_prompt("You are a helpful assistant. Here is a shared system prompt. " * 3)
    prompts = [prefix + int8_engine.tokenize_prompt(f" Question {i}: what is {i} plus {i}?") for i in range(3)]
    gens = [greedy(4)] * len(prompts)
    expected = [r.output_token_ids for r in int8_engine.generate(prompts, gens)]
    assert [r.output_token_ids for r in cached.generate(prompts, gens)] == expected
    assert cached.stats().prefix_cache_hits >= 2 * (len(prefix) // 16) * 16
    # Again, from the blocks (codes and scales) that finished requests left in the cache.
    assert [r.output_token_ids for r in cached.generate(prompts, gens)] == expected
    assert_all_blocks_free(cached)
    assert_all_blocks_free(int8_engine)


def next_token_logprobs(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-probabilities of ids run as one prompt through the engine's model and its paged
    (quantized) cache: teacher forcing, every position's prediction of the next token."""
    runner, block = engine.runner, engine.config.cache_block_seq_len
    n = len(ids)
    pos = torch.arange(n)
    ctx = ForwardContext(slot_mapping=pos.clone(), query_start_loc=torch.tensor([0, n], dtype=torch.int32),
                         seq_lens=torch.tensor([n], dtype=torch.int32),
                         block_tables=torch.arange(-(-n // block), dtype=torch.int32)[None],
                         query_lens=[n], seq_lens_host=[n], block_size=block, max_query_len=n, max_seq_len=n)
    with torch.inference_mode(), forward_context(ctx):
        return torch.log_softmax(runner.model.compute_logits(runner.model(torch.tensor(ids), pos)).float(), -1)


def teacher_forced_nll(engine: LLMEngine, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of ids (the log of the perplexity)."""
    logprobs = next_token_logprobs(engine, ids)[:-1]
    return -logprobs.gather(1, torch.tensor(ids[1:])[:, None]).mean().item()


@pytest.mark.slow
def test_perplexity_int8_within_one_percent_int4_within_twenty(default_model_dir, smol_engine, int8_engine):
    """The acceptance: perplexity with the int8 cache <= 1.01x the unquantized cache's. Measured on these 512
    tokens of README.md: 91.85 unquantized, 92.00 int8 (1.0017x), 104.66 int4 (1.140x); int4's per-token
    4-bit rows are coarse for SmolLM2's 64-dim heads, so it only gets a sanity bound."""
    int4_engine = LLMEngine(default_model_dir, CONFIG.replace(quant_policy=4))
    assert int4_engine.runner.kv_cache.shape[-1] == int4_engine.runner.head_dim // 2
    with open("README.md", encoding="utf-8") as f:
        ids = smol_engine.tokenizer.encode(f.read())[:512]
    base = teacher_forced_nll(smol_engine, ids)
    ratio8 = math.exp(teacher_forced_nll(int8_engine, ids) - base)
    ratio4 = math.exp(teacher_forced_nll(int4_engine, ids) - base)
    assert ratio8 <= 1.01, ratio8
    assert ratio4 <= 1.2, ratio4
    assert_all_blocks_free(int8_engine)
