"""Bad input raises one clear error naming the problem, and the engine goes on serving the others."""
from __future__ import annotations

import json
import shutil

import pytest

from engine import EngineConfig, GenerationConfig, InvalidRequestError, ModelLoadError
from engine.engine import LLMEngine

from .helpers import assert_all_blocks_free, greedy, run_alone


@pytest.mark.parametrize("make, param, words", [
    (lambda e: e.add_request(""), "prompt", "empty"),
    (lambda e: e.add_request([]), "prompt", "empty"),
    (lambda e: e.add_request("word " * 3000), "prompt", "session_len"),
    (lambda e: e.add_request([10**9]), "prompt", "token ids"),
    (lambda e: e.add_request(3.5), "prompt", "string or a list"),
    (lambda e: e.add_request("hi", GenerationConfig(max_new_tokens=0)), "max_new_tokens", "positive"),
    (lambda e: e.add_request("hi", GenerationConfig(max_new_tokens=-3)), "max_new_tokens", "positive"),
    (lambda e: e.add_request("hi", GenerationConfig(top_p=0.0)), "top_p", "(0, 1]"),
    (lambda e: e.add_request("hi", GenerationConfig(top_p=1.5)), "top_p", "(0, 1]"),
    (lambda e: e.add_request("hi", GenerationConfig(temperature=-0.1)), "temperature", ">= 0"),
    (lambda e: e.add_request("hi", GenerationConfig(top_k=-5)), "top_k", ">= -1"),
    (lambda e: e.add_request("hi", GenerationConfig(logprobs=50)), "logprobs", "[0, 20]"),
    (lambda e: e.add_request("hi", GenerationConfig(bad_words=("hello world",))), "bad_words", "single token"),
])
def test_bad_request_is_refused_and_others_continue(smol_engine, make, param, words):
    prompt = smol_engine.tokenize_prompt("The weather today is")
    expected = run_alone(smol_engine, prompt, greedy(10))
    good = smol_engine.make_request(prompt, greedy(10))
    smol_engine.add(good)
    smol_engine.step()  # the good request is in flight when the bad one arrives
    with pytest.raises(InvalidRequestError) as info:
        make(smol_engine)
    assert info.value.param == param
    assert words in str(info.value)
    while smol_engine.has_unfinished():
        smol_engine.step()
    assert good.output_token_ids == expected
    assert_all_blocks_free(smol_engine)


def test_unknown_model_path_is_one_clear_error():
    with pytest.raises(ModelLoadError, match="not found"):
        LLMEngine("/no/such/model", EngineConfig(device="cpu"))


def test_corrupt_safetensors_is_named(tmp_path, tiny_model_dirs):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dirs["tiny-llama"], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ModelLoadError, match="corrupt model file .*model.safetensors"):
        LLMEngine(str(broken), EngineConfig(device="cpu", cache_max_entry_count=16, cache_block_seq_len=16,
                                            session_len=128))


def test_corrupt_config_is_named(tmp_path, tiny_model_dirs):
    broken = tmp_path / "badconfig"
    shutil.copytree(tiny_model_dirs["tiny-llama"], broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json"):
        LLMEngine(str(broken), EngineConfig(device="cpu"))


def test_checkpoint_with_wrong_shapes_is_named(tmp_path, tiny_model_dirs):
    broken = tmp_path / "wrongshape"
    shutil.copytree(tiny_model_dirs["tiny-llama"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 8
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mlp"):
        LLMEngine(str(broken), EngineConfig(device="cpu", cache_max_entry_count=16, cache_block_seq_len=16,
                                            session_len=128))


def test_bad_engine_config_is_refused():
    with pytest.raises(InvalidRequestError, match="cache_block_seq_len"):
        EngineConfig(cache_block_seq_len=48)
    with pytest.raises(InvalidRequestError, match="cache_max_entry_count"):
        EngineConfig(cache_max_entry_count=2.5)


def test_cache_too_small_for_one_session(default_model_dir):
    from engine import OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match="less than one session"):
        LLMEngine(default_model_dir, EngineConfig(device="cpu", cache_max_entry_count=4, cache_block_seq_len=16,
                                                  session_len=1024))


def test_deterministic_mode_without_cuda_is_one_clear_error(default_model_dir):
    with pytest.raises(InvalidRequestError, match="deterministic mode needs the Triton kernels on a CUDA device") as e:
        LLMEngine(default_model_dir, EngineConfig(device="cpu", deterministic=True))
    assert e.value.param == "deterministic" and "\n" not in str(e.value)
