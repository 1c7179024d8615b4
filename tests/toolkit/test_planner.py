"""The planner against hand calculations (Qwen2.5-7B-Instruct on an RTX 4090), and `opsctl plan`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.models.presets import preset_config
from toolkit import planner
from toolkit.cli import app
from toolkit.model_sizes import ModelShape, weight_bytes
from toolkit.planner import PlanError, make_plan
from toolkit.profiles import get_profile

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30

# Qwen2.5-7B-Instruct's config.json, the fields that size it.
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "tie_word_embeddings": False, "max_position_embeddings": 32768}


def _qwen_plan(profile="rtx4090", **kwargs):
    return make_plan(QWEN25_7B, get_profile(profile), quants=("bf16", "fp16", "int8", "awq"), **kwargs)


def test_qwen25_7b_on_rtx4090_by_hand():
    # Parameters, written out: head_dim = 3584 / 28 = 128, K/V width = 4 x 128 = 512.
    embedding = 152064 * 3584  # 544,997,376
    lm_head = 152064 * 3584  # untied
    q = 3584 * 3584 + 3584  # Qwen2: q/k/v have biases
    k = v = 3584 * 512 + 512
    o = 3584 * 3584  # no bias
    mlp = 3 * 3584 * 18944  # gate, up, down
    norms = 2 * 3584  # input and post-attention RMSNorm
    per_layer = q + k + v + o + mlp + norms
    assert per_layer == 233_057_792
    total = embedding + lm_head + 28 * per_layer + 3584  # + final norm
    assert total == 7_615_616_512

    plan = _qwen_plan()
    assert plan.params.total == total and plan.params.per_layer == per_layer
    assert plan.params.embedding == embedding and plan.params.lm_head == lm_head
    bf16 = plan.quants[0]
    assert bf16.quant == "bf16"
    weights = total * 2
    assert bf16.weights.total == weights == 15_231_233_024  # 14.19 GiB
    assert bf16.weights.decode == weights - 2 * embedding  # the table is looked up, not read whole

    kv_per_token = 2 * 28 * 4 * 128 * 2  # K and V x layers x kv heads x head_dim x 2 bytes
    assert kv_per_token == 57_344 and bf16.kv_bytes_per_token == kv_per_token

    memory = 24 * GIB  # the profile's 24 GiB as the planner counts it
    reserve = 2 * GIB  # planner.DEFAULT_RESERVE_GIB
    free = memory - weights - reserve
    assert free == 8_391_087_104 and bf16.free_bytes == free  # 7.81 GiB
    at_08 = next(kv for kv in bf16.kv if kv.cache_ratio == 0.8)
    assert at_08.tokens == int(0.8 * free) // kv_per_token == 117_063
    assert at_08.sequences == 117_063 // 4096 == 28
    assert at_08.blocks == int(0.8 * free) // (64 * kv_per_token) == 1829
    assert at_08.sequences_in_blocks == 1829 // (4096 // 64) == 28


def test_quantized_weights_by_hand():
    plan = _qwen_plan()
    by_quant = {q.quant: q for q in plan.quants}
    # Per layer, the linear layers as (in, out): q, k, v, o, gate, up, down.
    linears = [(3584, 3584), (3584, 512), (3584, 512), (3584, 3584), (3584, 18944), (3584, 18944), (18944, 3584)]
    linear_params = 28 * sum(i * o for i, o in linears)
    assert linear_params == 6_525_288_448
    sixteen_bit = 2 * (7_615_616_512 - linear_params)  # embedding, lm_head, biases, norms stay 16-bit
    int8 = linear_params + 28 * sum(4 * o for _, o in linears)  # 1 byte + fp32 scale per output channel (engine/quant/int8.py)
    awq = linear_params // 2 + 28 * sum(math.ceil(i / 128) * o * 5 // 2 for i, o in linears)  # fp16 scale + 4-bit zero
    assert by_quant["int8"].weights.total == int8 + sixteen_bit == 8_711_506_944
    assert by_quant["awq"].weights.total == awq + sixteen_bit == 5_570_747_392
    assert by_quant["fp16"].weights.total == by_quant["bf16"].weights.total


def test_an_h200_plan_counts_the_int8_head_that_auto_gives_int8_and_awq():
    """On Hopper the engine's --lm-head-int8 auto holds the head (152,064 x 3,584) as int8 codes + an fp32 scale a
    row instead of 16 bits: the engine measured AWQ 5.19 -> 4.68 GiB (reports/examples/h200/int8-head/)."""
    rtx, h200 = ({q.quant: q.weights for q in _qwen_plan(gpu).quants} for gpu in ("rtx4090", "h200"))
    head16, head8 = 2 * 152_064 * 3_584, 152_064 * 3_584 + 4 * 152_064
    for quant in ("int8", "awq"):
        assert h200[quant].total == rtx[quant].total - head16 + head8
        assert h200[quant].decode == rtx[quant].decode - head16 + head8  # the head is read every step
        assert h200[quant].head_int8 == head8 and rtx[quant].head_int8 == 0
    assert h200["awq"].total == 5_026_358_272  # 4.68 GiB
    assert h200["bf16"] == rtx["bf16"]  # 16-bit formats keep a 16-bit head


def test_a_tied_int8_head_is_held_beside_the_table_and_read_instead_of_it():
    shape = ModelShape.from_config(dict(model_type="qwen2", vocab_size=1000, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True))
    plain, head8 = weight_bytes(shape, "awq"), weight_bytes(shape, "awq", head_int8=True)
    assert head8.total == plain.total + 1000 * 64 + 4 * 1000  # the lookups still read the 16-bit table
    assert head8.decode == plain.decode - 2 * 1000 * 64 + 1000 * 64 + 4 * 1000
    assert weight_bytes(shape, "bf16", head_int8=True) == weight_bytes(shape, "bf16")


def test_fp16_on_24gb_is_little_kv_and_awq_leaves_much_more():
    plan = _qwen_plan()
    by_quant = {q.quant: q for q in plan.quants}
    fp16, awq = by_quant["fp16"], by_quant["awq"]
    assert fp16.fits and any(f.startswith("little KV") for f in fp16.flags)
    assert awq.fits and awq.flags == []
    tokens = {q: next(kv.tokens for kv in by_quant[q].kv if kv.cache_ratio == 0.8) for q in by_quant}
    assert tokens["awq"] > 2 * tokens["fp16"]  # 251,835 against 117,063


def test_does_not_fit_and_too_little_for_two_sessions():
    llama_70b = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}
    plan = make_plan(llama_70b, get_profile("rtx4090"), quants=("bf16", "awq"))
    assert all(not q.fits and q.flags[0].startswith("does not fit") for q in plan.quants)
    assert all(kv.tokens == 0 for q in plan.quants for kv in q.kv)
    h200 = make_plan(llama_70b, get_profile("h200"), quants=("bf16",), session_len=32768)
    assert h200.quants[0].fits and h200.quants[0].flags[0].startswith("little KV")  # 141 GiB - 131 GiB of weights


def test_decode_and_prefill_rooflines():
    # On the H100 the measured 3000 GB/s wins over the datasheet: batch-1 limit ~213 tok/s (DESIGN.md).
    h100 = _qwen_plan("h100-sxm", batch_sizes=(1, 64), context_len=1024)
    bf16 = h100.quants[0]
    assert h100.bandwidth_source == "measured" and h100.tensor_tflops == 790
    one = bf16.decode[0]
    kv = 57_344
    assert one.bytes_per_step == 14_141_238_272 + 1024 * kv
    assert one.tokens_per_s == pytest.approx(3000e9 / (14_141_238_272 + 1024 * kv))
    assert 205 < one.tokens_per_s < 213 and one.bound == "memory"
    big = bf16.decode[1]
    multiplying = 7_615_616_512 - 152064 * 3584  # the embedding lookup multiplies nothing
    assert big.flops_per_step == 64 * (2 * multiplying + 4 * 28 * 28 * 128 * 1024)
    assert big.step_ms == pytest.approx(1e3 * max((14_141_238_272 + 64 * 1024 * kv) / 3000e9,
                                                  big.flops_per_step / 790e12))
    prefill = next(p for p in bf16.prefill if p.prompt_len == 2048)
    assert prefill.flops == 2 * multiplying * 2048 + 2 * 28 * 28 * 128 * 2048**2
    assert prefill.seconds == pytest.approx(prefill.flops / 790e12) and prefill.bound == "compute"
    # Batch 64 at 1k context needs 64 x 1024 x 57,344 bytes of the free memory.
    assert big.cache_ratio_needed == pytest.approx(64 * 1024 * kv / bf16.free_bytes)


@pytest.mark.parametrize("name", ["qwen2.5-7b", "qwen3-0.6b", "tiny-llama", "tiny-qwen2"])
def test_param_count_matches_the_built_model(name):
    from engine.models.presets import parameter_shapes

    config = preset_config(name)
    built = sum(math.prod(shape) for shape, _ in parameter_shapes(config).values())  # a tied lm_head once
    shape = planner.ModelShape.from_config(config)
    assert planner.count_params(shape).total == built
    assert planner.ModelShape.from_config(config.to_dict()) == shape


def test_bad_configs_and_settings():
    with pytest.raises(PlanError, match="mixture-of-experts"):
        planner.ModelShape.from_config({**QWEN25_7B, "num_experts": 64})
    with pytest.raises(PlanError, match="lacks hidden_size"):
        planner.ModelShape.from_config({"model_type": "bert"})
    with pytest.raises(PlanError, match="unknown weight format 'int4'"):
        make_plan(QWEN25_7B, get_profile("rtx4090"), quants=("int4",))
    with pytest.raises(PlanError, match=r"cache ratios must be fractions in \(0, 1\]"):
        make_plan(QWEN25_7B, get_profile("rtx4090"), cache_ratios=(0.8, 1.5))


def test_plan_cli_json_subprocess():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "plan", "preset:qwen2.5-7b", "--gpu", "rtx4090", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["profile"] == "rtx4090" and data["params"]["total"] == 7_615_616_512
    bf16 = next(q for q in data["quants"] if q["quant"] == "bf16")
    assert next(kv["tokens"] for kv in bf16["kv"] if kv["cache_ratio"] == 0.8) == 117_063
    assert [q["quant"] for q in data["quants"]] == ["bf16", "int8", "awq"]


def test_plan_cli_table_from_config_json_only(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))  # no weights, no tokenizer
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "rtx4090", "--quant", "fp16,awq"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "117,063 (28)" in result.output and "little KV" in result.output and "251,835" in result.output


def test_quantized_kv_cache_by_hand():
    """An int8 / int4 cache row (token, KV head) is head_dim codes of 8 / 4 bits plus the engine's fp32
    (scale, min): 128 + 8 and 64 + 8 bytes against 256 in 16 bits, for each of K and V in 28 layers x 4 heads."""
    per_token = {0: 2 * 28 * 4 * 128 * 2, 8: 2 * 28 * 4 * (128 + 8), 4: 2 * 28 * 4 * (64 + 8)}
    assert per_token == {0: 57_344, 8: 30_464, 4: 16_128}
    free = 24 * GIB - 15_231_233_024 - 2 * GIB  # bf16 weights and the reserve, as in the plan by hand above
    for policy, kv in per_token.items():
        plan = _qwen_plan(quant_policy=policy)
        bf16 = plan.quants[0]
        assert bf16.kv_bytes_per_token == kv and plan.quant_policy == policy
        assert next(k for k in bf16.kv if k.cache_ratio == 0.8).tokens == int(0.8 * free) // kv
        # the decode estimate reads each token's cache at its real size: the step's bytes grow by B x C x kv
        b8, b1 = (next(d for d in bf16.decode if d.batch_size == b) for b in (8, 1))
        assert b8.bytes_per_step - b1.bytes_per_step == pytest.approx(7 * plan.context_len * kv)
    assert _qwen_plan(quant_policy=8).recommendation.engine["quant_policy"] == 8
    with pytest.raises(PlanError, match="quant_policy 3"):
        _qwen_plan(quant_policy=3)


def test_planner_kv_bytes_equal_the_engines_blocks(default_model_dir):
    """What the planner counts per token is what the engine allocates per block, in every cache format."""
    from engine.config import EngineConfig
    from engine.engine import LLMEngine
    from transformers import AutoConfig

    shape = planner.ModelShape.from_config(AutoConfig.from_pretrained(default_model_dir))
    for policy in (0, 8, 4):
        config = EngineConfig(device="cpu", dtype="bfloat16", cpu_memory_gb=0.05, cache_max_entry_count=0.5,
                              cache_block_seq_len=16, session_len=256, quant_policy=policy)
        runner = LLMEngine(default_model_dir, config).runner
        assert runner.block_bytes == 16 * planner.kv_bytes_per_token(shape, policy), policy


def test_plan_cli_quant_policy(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "rtx4090", "--quant", "bf16",
                                      "--quant-policy", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["quants"][0]["kv_bytes_per_token"] == 30_464 and "--quant-policy 8" in " ".join(
        data["recommendation"]["serve"])
    bad = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "rtx4090", "--quant-policy", "3"])
    assert bad.exit_code == 2 and "quant_policy 3" in bad.output


def test_plan_cli_unknown_profile_is_one_line():
    result = CliRunner().invoke(app, ["plan", "preset:qwen2.5-7b", "--gpu", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: unknown GPU profile 'nope': known profiles are a10")
    assert len(result.output.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no other exception
