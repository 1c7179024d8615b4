"""Weight formats through the layer seam: fused layers load int8 / AWQ shards into the right slices,
the format is decided from config.json alone (one line for each bad case, before any weight is read),
and an engine with int8 weights really holds and computes with the 8-bit numbers."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from engine.config import EngineConfig
from engine.errors import InvalidRequestError, ModelLoadError
from engine.layers.linear import GateUpLinear, MergedLinear, QKVLinear
from engine.layers.options import LayerOptions
from engine.models.weight_format import resolve_weight_format
from engine.quant.int4_pack import dequantize_awq, pack_awq
from engine.quant.int8 import dequantize_per_channel, quantize_per_channel

GEN = torch.Generator().manual_seed(0)


def _load(layer, tensors: dict) -> None:
    params = dict(layer.named_parameters())
    for (name, shard), tensor in tensors.items():
        params[name].weight_loader(params[name], tensor, shard)
    layer.after_loading()


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])  # "cuda" here: the torch path of a layer built for CUDA
def test_awq_qkv_shards_land_in_their_packed_columns(device_type):
    q_w, k_w, v_w = (torch.randn(n, 128, generator=GEN) for n in (64, 16, 16))
    layer = QKVLinear(128, 16, 4, 1, bias=True,
                      options=LayerOptions(weight_format="awq", group_size=32, device_type=device_type))
    tensors, full = {}, []
    for shard, w in zip("qkv", (q_w, k_w, v_w)):
        qweight, qzeros, scales = pack_awq(w, 32)
        tensors |= {("qweight", shard): qweight, ("qzeros", shard): qzeros, ("scales", shard): scales,
                    ("bias", shard): torch.full((w.shape[0],), float(ord(shard)))}
        full.append(dequantize_awq(qweight, qzeros, scales, 32))
    _load(layer, tensors)
    x = torch.randn(3, 128, generator=GEN)
    bias = torch.cat([torch.full((n,), float(ord(s))) for s, n in zip("qkv", (64, 16, 16))])
    torch.testing.assert_close(layer(x), F.linear(x, torch.cat(full), bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_int8_gate_up_shards_are_quantized_row_by_row(device_type):
    gate, up = torch.randn(24, 40, generator=GEN), torch.randn(24, 40, generator=GEN) * 3
    layer = MergedLinear(40, [24, 24], options=LayerOptions(weight_format="int8", device_type=device_type))
    _load(layer, {("weight", 0): gate, ("weight", 1): up})
    expected = torch.cat([dequantize_per_channel(*quantize_per_channel(w)) for w in (gate, up)])
    x = torch.randn(5, 40, generator=GEN)
    torch.testing.assert_close(layer(x), F.linear(x, expected), rtol=1e-5, atol=1e-4)
    assert layer.qweight.dtype == torch.int8 and layer.weight is None  # the 16-bit weight is not kept


@pytest.mark.parametrize("weight_format", ["hf", "int8", "awq"])
def test_gate_up_layer_returns_silu_of_gate_times_up(weight_format):
    """GateUpLinear owns the MLP's activation (a method may fuse it into its kernel): on the torch path of every
    format, silu(gate) * up of the merged product, the halves in checkpoint order."""
    gate, up = torch.randn(64, 128, generator=GEN), torch.randn(64, 128, generator=GEN)
    options = LayerOptions(weight_format=weight_format, group_size=32)
    layer, merged = GateUpLinear(128, 64, options=options), MergedLinear(128, [64, 64], options=options)
    if weight_format == "awq":
        tensors = {}
        for shard, w in enumerate((gate, up)):
            tensors |= dict(zip((("qweight", shard), ("qzeros", shard), ("scales", shard)), pack_awq(w, 32)))
    else:
        tensors = {("weight", 0): gate, ("weight", 1): up}
    _load(layer, tensors)
    _load(merged, tensors)
    x = torch.randn(3, 128, generator=GEN)
    product = merged(x)
    torch.testing.assert_close(layer(x), F.silu(product[:, :64]) * product[:, 64:], rtol=0, atol=0)
    assert layer(x).shape == (3, 64)


def test_awq_layer_refuses_a_group_size_that_does_not_divide_the_input():
    with pytest.raises(ValueError, match="group size"):
        QKVLinear(96, 16, 4, 1, bias=False, options=LayerOptions(weight_format="awq", group_size=64))


def _source(quantization_config=None, kind="hf", **sizes):
    cfg = SimpleNamespace(hidden_size=sizes.get("hidden", 256), intermediate_size=sizes.get("inter", 512),
                          num_attention_heads=4, head_dim=64)
    if quantization_config is not None:
        cfg.quantization_config = quantization_config
    return SimpleNamespace(hf_config=cfg, name="m", kind=kind)


AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@pytest.mark.parametrize("config, model_format, expected", [
    (None, None, ("hf", 0)), (None, "hf", ("hf", 0)), (None, "int8", ("int8", 0)), (None, "gguf", ("hf", 0)),
    (AWQ, None, ("awq", 128)), (AWQ, "awq", ("awq", 128)), ({**AWQ, "group_size": 64}, None, ("awq", 64)),
])
def test_format_is_read_from_the_config(config, model_format, expected):
    fmt = resolve_weight_format(_source(config), model_format)
    assert (fmt.name, fmt.group_size) == expected


def test_awq_preset_is_random_weights_in_awq_layout():
    assert resolve_weight_format(_source(kind="preset"), "awq").name == "awq"


@pytest.mark.parametrize("config, model_format, error, words", [
    ({**AWQ, "bits": 8}, None, ModelLoadError, "8 bits"),
    ({**AWQ, "group_size": 96}, None, ModelLoadError, "not divisible by the AWQ group size 96"),
    ({**AWQ, "group_size": "x"}, None, ModelLoadError, "group size"),
    ({**AWQ, "version": "gemv"}, None, ModelLoadError, "version"),
    ({**AWQ, "zero_point": False}, None, ModelLoadError, "zero points"),
    ({"quant_method": "gptq", "bits": 4}, None, ModelLoadError, "'gptq' is not supported"),
    (AWQ, "int8", InvalidRequestError, "is an AWQ checkpoint"),
    (AWQ, "hf", InvalidRequestError, "is an AWQ checkpoint"),
    (None, "awq", InvalidRequestError, "opsctl quantize awq"),
])
def test_bad_formats_are_one_line(config, model_format, error, words):
    with pytest.raises(error, match=words) as info:
        resolve_weight_format(_source(config), model_format)
    assert "\n" not in str(info.value)


def test_engine_refuses_an_awq_request_for_a_16_bit_checkpoint_before_loading(default_model_dir, monkeypatch):
    from engine.engine import LLMEngine
    from engine.models import loader

    monkeypatch.setattr(loader, "iter_safetensors", lambda *a: pytest.fail("weights were read"))
    with pytest.raises(InvalidRequestError, match="needs an AWQ checkpoint"):
        LLMEngine(default_model_dir, EngineConfig(model_format="awq", device="cpu"))


def test_int8_engine_holds_8_bit_weights_and_decodes_like_16_bit_mostly(default_model_dir):
    from engine.engine import LLMEngine
    from engine.generation import GenerationConfig

    gen = GenerationConfig(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    runs = {}
    for fmt in (None, "int8"):
        engine = LLMEngine(default_model_dir, EngineConfig(model_format=fmt, device="cpu"))
        runs[fmt] = (engine.runner.weight_bytes, [r.output_token_ids for r in engine.generate(prompts, gen)])
        assert engine.scheduler.kv.num_free_blocks == engine.scheduler.kv.num_blocks
    (full_bytes, full), (int8_bytes, int8) = runs[None], runs["int8"]
    assert int8_bytes < 0.45 * full_bytes  # fp32 linears -> int8 + scales; embedding stays
    assert int8[1][:8] == full[1][:8]  # the code prompt is confident: the first tokens agree
