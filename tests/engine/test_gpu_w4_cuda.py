"""On the GPU machine: --w4-kernel cuda (AWQ repacked for the CUDA tensor-core kernel) decodes what the Triton
AWQ kernels decode, through every path of the layout: up to 32 rows one launch, 33-64 rows 32-row launches,
prefill dequantized + cuBLAS; CUDA graphs and the KV blocks as usual. CPU: clear errors where it cannot run.

Run there with `python3 -m pytest -m gpu tests/engine/test_gpu_w4_cuda.py` (needs nvcc: the kernel is built
on first use)."""
from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, GenerationConfig
from engine.errors import InvalidRequestError

PROMPTS = ["The history of the Roman empire begins with", "def fibonacci(n):", "List three colors:",
           " ".join(["A long prompt, so its prefill takes more than sixty-four rows."] * 12)]


def greedy_tokens(prompts: list[str], new_tokens: int, **settings) -> tuple[list[list[int]], object]:
    """Greedy tokens of preset qwen3-0.6b on the GPU with these EngineConfig settings, and the engine."""
    from engine.engine import LLMEngine

    engine = LLMEngine("preset:qwen3-0.6b", EngineConfig(device="cuda", session_len=2048, **settings))
    gen = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    return [r.output_token_ids for r in engine.generate(prompts, gen)], engine


def assert_decodes_alike(cuda: list[list[int]], triton: list[list[int]]) -> None:
    """Random weights, different summation orders: a near-tie may flip a token late; the start must agree."""
    assert [t[:4] for t in cuda] == [t[:4] for t in triton]
    same = sum(a == b for x, y in zip(cuda, triton) for a, b in zip(x, y))
    assert same >= 0.9 * sum(len(t) for t in triton)


# the linear layers' kernels compared: the LM head 16-bit on both sides (auto would make it int8 with "cuda" only)
HEAD16 = {"lm_head_int8": "off"}


@pytest.mark.gpu
def test_cuda_kernel_decodes_like_the_triton_kernels():
    from engine.kernels import w4_mma

    if not torch.cuda.is_available() or w4_mma.unavailable_reason(torch.device("cuda")):
        pytest.skip("needs a CUDA GPU with nvcc")
    prompts = PROMPTS * 12  # 48 requests: decode batches of 33-48 rows (32-row launches), then fewer
    cuda, engine = greedy_tokens(prompts, 24, model_format="awq", w4_kernel="cuda", **HEAD16)
    layer = engine.runner.model.layers[0].mlp.gate_up_proj
    assert layer.qweight is None and layer.w4_qw is not None  # one layout in memory
    assert_decodes_alike(cuda, greedy_tokens(prompts, 24, model_format="awq", w4_kernel="triton", **HEAD16)[0])
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_cuda_kernel_refuses_what_it_cannot_run(default_model_dir):
    from engine.engine import LLMEngine

    with pytest.raises(InvalidRequestError, match="--w4-kernel cuda applies to AWQ weights"):
        LLMEngine(default_model_dir, EngineConfig(device="cpu", w4_kernel="cuda"))
    with pytest.raises(InvalidRequestError, match="--w4-kernel cuda needs the GPU kernels"):
        LLMEngine("preset:qwen3-0.6b", EngineConfig(device="cpu", model_format="awq", w4_kernel="cuda"))
    with pytest.raises(InvalidRequestError, match="w4_kernel: must be auto, triton or cuda"):
        EngineConfig(w4_kernel="marlin")
