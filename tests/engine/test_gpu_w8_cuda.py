"""On the GPU machine: --w8-kernel cuda (int8 weights repacked for the CUDA kernels' int8 variants) decodes what
the Triton W8A16 kernels decode, through every path: up to 32 rows the few-row kernel, 33-128 the warpgroup
kernel (Hopper), prefill dequantized + cuBLAS; CUDA graphs and the KV blocks as usual. CPU: clear errors where it
cannot run.

Run there with `python3 -m pytest -m gpu tests/engine/test_gpu_w8_cuda.py` (needs nvcc: the kernels are built
on first use)."""
from __future__ import annotations

import pytest
import torch

from engine import EngineConfig
from engine.errors import InvalidRequestError
from tests.engine.test_gpu_w4_cuda import PROMPTS as W4_PROMPTS, assert_decodes_alike, greedy_tokens

PROMPTS = [*W4_PROMPTS[:3],
           " ".join(["A long prompt, so its prefill takes more than a hundred and twenty-eight rows."] * 24)]


def _ready() -> str | None:
    from engine.kernels import w4_mma

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return w4_mma.unavailable_reason(torch.device("cuda"))


# the linear layers' kernels compared: the LM head 16-bit on both sides (auto would make it int8 with "cuda" only)
HEAD16 = {"lm_head_int8": "off"}


@pytest.mark.gpu
def test_cuda_kernels_decode_like_the_triton_kernels():
    why = _ready()
    if why:
        pytest.skip(why)
    prompts = PROMPTS * 16  # 64 requests: decode batches of 33-64 rows (the warpgroup kernel), then fewer
    cuda, engine = greedy_tokens(prompts, 24, model_format="int8", w8_kernel="cuda", **HEAD16)
    layer = engine.runner.model.layers[0].mlp.gate_up_proj
    assert layer.qweight is None and layer.w8_qw is not None  # one layout in memory
    assert_decodes_alike(cuda, greedy_tokens(prompts, 24, model_format="int8", w8_kernel="triton", **HEAD16)[0])
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_a_layer_the_kernels_cannot_take_is_refused_when_it_is_built():
    """Before any weight is read: the layer is refused where its parameters would be made (SmolLM2's 576 inputs)."""
    from engine.layers.linear import Linear
    from engine.layers.options import LayerOptions

    options = LayerOptions(use_kernels=True, weight_format="int8", device_type="cuda", w8_kernel="cuda")
    with pytest.raises(ValueError, match=r"--w8-kernel cuda: the CUDA W8A16 kernel needs .* K \(576\) by 128"):
        Linear(576, 960, options=options)
    assert Linear(1024, 4096, options=options).qweight.shape == (4096, 1024)


def test_cuda_kernels_refuse_what_they_cannot_run(default_model_dir):
    from engine.engine import LLMEngine

    with pytest.raises(InvalidRequestError, match="--w8-kernel cuda applies to int8 weights"):
        LLMEngine(default_model_dir, EngineConfig(device="cpu", w8_kernel="cuda"))
    with pytest.raises(InvalidRequestError, match="--w8-kernel cuda needs the GPU kernels"):
        LLMEngine(default_model_dir, EngineConfig(device="cpu", model_format="int8", w8_kernel="cuda"))
    with pytest.raises(InvalidRequestError, match="w8_kernel: must be auto, triton or cuda"):
        EngineConfig(w8_kernel="marlin")
