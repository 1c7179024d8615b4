"""The LM head in per-row int8 (EngineConfig.lm_head_int8, engine/layers/embedding.py): its logits are the
dequantized rows' exactly, tied or untied, and the weights it holds are what it reads; auto's choice; the
refusal in deterministic mode. The head's perplexity cost is pinned in test_quant_quality.py, its Triton path
in tests/kernels/test_int8_head_kernels.py."""
from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig
from engine.errors import InvalidRequestError
from engine.quant.int8 import dequantize_per_channel, quantize_per_channel


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])  # an untied head, a tied one
def test_int8_head_computes_with_the_dequantized_rows_and_holds_int8(tiny_model_dirs, preset):
    from engine.engine import LLMEngine

    cfg = EngineConfig(device="cpu", dtype="float32")
    plain = LLMEngine(tiny_model_dirs[preset], cfg)
    head8 = LLMEngine(tiny_model_dirs[preset], cfg.replace(lm_head_int8="on"))
    model = plain.runner.model
    rows = model.embed_tokens.weight.data if model.tie_word_embeddings else model.lm_head.weight.data
    hidden = torch.randn(5, rows.shape[1], generator=torch.Generator().manual_seed(0))
    expected = hidden @ dequantize_per_channel(*quantize_per_channel(rows)).t()
    torch.testing.assert_close(head8.runner.model.lm_head(hidden), expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(plain.runner.model.lm_head(hidden), expected, rtol=1e-5, atol=1e-4)  # it is int8
    # bytes held: an untied head's fp32 rows become int8 codes and one fp32 scale a row; a tied one keeps the
    # embedding for lookups and adds the codes and scales
    vocab, hidden_size = rows.shape
    codes_and_scales = vocab * hidden_size + 4 * vocab
    change = codes_and_scales if model.tie_word_embeddings else codes_and_scales - 4 * vocab * hidden_size
    assert head8.runner.weight_bytes - plain.runner.weight_bytes == change
    for engine in (plain, head8):
        assert engine.scheduler.kv.num_free_blocks == engine.scheduler.kv.num_blocks


def test_auto_takes_the_int8_head_only_with_the_cuda_weight_kernels():
    from engine.models.weight_format import WeightFormat
    from engine.runner.weight_kernels import WeightKernels, head_int8

    awq, int8, hf = WeightFormat("awq", 128), WeightFormat("int8"), WeightFormat("hf")
    cuda, triton = WeightKernels("cuda", "cuda", True), WeightKernels("triton", "triton", False)
    auto, on, off = (EngineConfig(lm_head_int8=v) for v in ("auto", "on", "off"))
    assert head_int8(auto, awq, cuda) and head_int8(auto, int8, cuda)
    assert not head_int8(auto, awq, triton) and not head_int8(auto, int8, triton) and not head_int8(auto, hf, cuda)
    assert not head_int8(auto, awq, WeightKernels("triton", "cuda", False))  # the AWQ layers' kernel decides
    assert head_int8(on, hf, triton) and not head_int8(off, awq, cuda)


def test_int8_head_is_refused_in_deterministic_mode_and_bad_values_are_one_line():
    with pytest.raises(InvalidRequestError, match="lm_head_int8: must be auto, on or off"):
        EngineConfig(lm_head_int8="yes")
    with pytest.raises(InvalidRequestError, match="lm_head_int8: deterministic mode runs 16-bit weights only"):
        EngineConfig(deterministic=True, lm_head_int8="on")
    EngineConfig(deterministic=True)  # auto: 16-bit weights resolve it to off


@pytest.mark.gpu
def test_int8_head_on_the_cuda_kernel_decodes_like_the_triton_one():
    """On the GPU machine: with the CUDA weight kernels the head's codes are repacked for the W8A16 kernel
    (preset qwen3-0.6b: a tied 151,936 x 1,024 head) and give the dequantized rows' logits; the engine
    decodes what the Triton W8A16 head decodes, at 64 requests and fewer."""
    from tests.engine.test_gpu_w4_cuda import assert_decodes_alike, greedy_tokens
    from tests.engine.test_gpu_w8_cuda import PROMPTS, _ready

    why = _ready()
    if why:
        pytest.skip(why)
    prompts = PROMPTS * 16
    cuda, engine = greedy_tokens(prompts, 24, model_format="int8", w8_kernel="cuda", lm_head_int8="on")
    head = engine.runner.model.lm_head
    assert head.qweight is None and head.w8_qw is not None  # one layout in memory
    rows = engine.runner.model.embed_tokens.weight.data
    hidden = torch.randn(3, rows.shape[1], device="cuda").to(torch.bfloat16)
    expected = hidden.float() @ dequantize_per_channel(*quantize_per_channel(rows)).t()
    assert float((head(hidden) - expected).norm() / expected.norm()) < 1e-2
    triton, _ = greedy_tokens(prompts, 24, model_format="int8", w8_kernel="triton", lm_head_int8="on")
    assert_decodes_alike(cuda, triton)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
