"""An AWQ checkpoint through the engine: 32 greedy tokens equal to the same weights dequantized and
loaded as a plain 16/32-bit checkpoint (the reference path), on the CPU; GPU: the W4A16 kernel path."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.config import EngineConfig
from engine.generation import GenerationConfig

PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three colors:"]


@pytest.fixture(scope="module")
def awq_and_dequantized(default_model_dir, tmp_path_factory):
    """An RTN checkpoint in AWQ's layout (the loader's subject; calibration is tested elsewhere) and
    the same weights dequantized into an ordinary directory."""
    from safetensors.torch import save_file

    from engine.quant.awq import quantize_rtn
    from engine.quant.checkpoint import dequantized_state_dict

    root = tmp_path_factory.mktemp("awq")
    awq = quantize_rtn(default_model_dir, root / "awq", w_group_size=64, progress=False).work_dir
    plain = root / "dequantized"
    shutil.copytree(awq, plain)
    for f in plain.glob("*.safetensors"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in dequantized_state_dict(awq).items()}, str(plain / "model.safetensors"))
    config = json.loads((plain / "config.json").read_text())
    del config["quantization_config"]
    config["torch_dtype"] = "float32"
    (plain / "config.json").write_text(json.dumps(config))
    return str(awq), str(plain)


def _greedy(model: str, **config) -> tuple[list[list[int]], object]:
    from engine.engine import LLMEngine

    engine = LLMEngine(model, EngineConfig(device="cpu", dtype="float32", **config))
    gen = GenerationConfig(max_new_tokens=32, temperature=0.0, ignore_eos=True)
    return [r.output_token_ids for r in engine.generate(PROMPTS, gen)], engine


def test_awq_checkpoint_is_detected_and_decodes_like_its_dequantized_weights(awq_and_dequantized):
    awq, plain = awq_and_dequantized
    awq_tokens, engine = _greedy(awq)
    assert engine.runner.options.weight_format == "awq" and engine.runner.options.group_size == 64
    plain_tokens, plain_engine = _greedy(plain)
    assert awq_tokens == plain_tokens
    # packed int4 + fp16 scales and zeros: the linears' bytes shrink ~7x against fp32
    assert engine.runner.weight_bytes < 0.5 * plain_engine.runner.weight_bytes


def test_asking_for_int8_on_an_awq_checkpoint_is_one_line(awq_and_dequantized):
    from engine.engine import LLMEngine
    from engine.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="is an AWQ checkpoint"):
        LLMEngine(awq_and_dequantized[0], EngineConfig(device="cpu", model_format="int8"))


@pytest.mark.slow
def test_awq_checkpoint_split_over_three_ranks_decodes_like_one(awq_and_dequantized):
    # Tensor parallel with packed weights (issue 15): each rank keeps whole int32 words of 8 columns and
    # whole groups of 64 rows of its slice of qweight / qzeros / scales (SmolLM2: o_proj's 576 inputs are
    # 192 = 3 groups a rank, gate/up's 1536 columns 512 a rank), and the ranks decode the same tokens.
    awq, _ = awq_and_dequantized
    expected, engine = _greedy(awq)
    engine.shutdown()
    got, engine = _greedy(awq, tp=3)
    try:
        assert engine.runner.options.weight_format == "awq"
        assert got == expected
    finally:
        engine.shutdown()
