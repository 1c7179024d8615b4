"""On the GPU machine: greedy equality in bf16 against transformers, and the 7B preset running.

Run there with `python3 -m pytest -m gpu tests/engine/test_gpu.py`.
"""
from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from engine import EngineConfig, GenerationConfig  # noqa: E402
from engine.engine import LLMEngine  # noqa: E402

PROMPTS = ["The history of the Roman empire begins with", "def fibonacci(n):", "你好，请介绍一下自己"]
NEW_TOKENS = 64
MIN_AGREEMENT = 32  # bf16: the first divergence is allowed only after this many tokens...
TIE_MARGIN = 0.125  # ...or where the reference's own logits for the two tokens tie within bf16 rounding


def first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


@pytest.mark.parametrize("preset", ["qwen3-0.6b", "tiny-qwen2", "tiny-llama"])
def test_bf16_greedy_matches_transformers(tmp_path, preset):
    from transformers import AutoModelForCausalLM

    from engine.models.presets import materialize_preset

    path = materialize_preset(preset, tmp_path / preset, dtype=torch.bfloat16)
    engine = LLMEngine(str(path), EngineConfig(device="cuda", dtype="bfloat16", cache_max_entry_count=0.3,
                                               session_len=2048, eager_mode=False))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    prompts = [engine.tokenize_prompt(p) for p in PROMPTS]
    ours = [r.output_token_ids for r in engine.generate(prompts, gen)]
    for prompt, mine in zip(prompts, ours):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=NEW_TOKENS,
                              min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2)[0, len(prompt):].tolist()
        agree = first_divergence(mine, ref)
        margin = None
        if agree < NEW_TOKENS:
            with torch.no_grad():
                logits = hf(torch.tensor([prompt + ref[:agree]], device="cuda")).logits[0, -1].float()
            margin = (logits[ref[agree]] - logits[mine[agree]]).item()
        print(f"{preset}: first divergence at token {agree} of {NEW_TOKENS}; reference logit margin there: {margin}")
        assert agree >= MIN_AGREEMENT or margin <= TIE_MARGIN, (agree, margin)


def test_qwen25_7b_preset_runs():
    engine = LLMEngine("preset:qwen2.5-7b", EngineConfig(device="cuda", session_len=4096))
    prompt = engine.tokenize_prompt("Hello " * 120)
    gen = GenerationConfig(max_new_tokens=64, ignore_eos=True)
    engine.generate([prompt], GenerationConfig(max_new_tokens=4, ignore_eos=True))  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    [request] = engine.generate([prompt], gen)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"qwen2.5-7b preset: {64 / elapsed:.1f} tok/s at batch 1 (incl. prefill of {len(prompt)} tokens)")
    assert request.num_output_tokens == 64
    assert engine.stats().num_free_blocks == engine.stats().num_blocks
