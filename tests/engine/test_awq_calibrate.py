"""AWQ calibration (engine/quant/awq*.py, calib_data.py, checkpoint.py): the searches on synthetic
linears, folding on real layers, the calibration text, the output directory, and end-to-end runs on
the tiny presets (random weights, seconds) and on the embedded SmolLM2 (slow)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from engine.quant import calib_data
from engine.quant.awq import AwqOptions, layer_groups, quantize_awq, quantize_rtn
from engine.quant.awq_search import (SCALE_FORMS, ScaleGroup, apply_clip, fake_quantize, fold_scale, scale_moment,
                                     search_clip, search_scale, second_moment, smooth_scale)
from engine.quant.checkpoint import (QuantizeError, dequantized_state_dict, read_safetensors_headers,
                                     write_checkpoint)
from engine.quant.int4_pack import dequantize_awq


# Tiny models on one thread (tests/conftest.py says why); slow tests keep every thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread_unless_slow")


def _outlier_linear(seed: int = 0, k: int = 256, n: int = 64, tokens: int = 512):
    """A linear whose inputs have 4 channels 50x larger than the rest: the case AWQ exists for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g)
    x[:, :4] *= 50
    fc = nn.Linear(k, n, bias=False)
    fc.weight.data = torch.randn(n, k, generator=g) * 0.05
    norm = nn.Module()
    norm.weight = nn.Parameter(torch.ones(k))
    return x, fc, norm


def _output_error(x, weight, scales=None):
    ref = x @ weight.t()
    if scales is None:
        return (x @ fake_quantize(weight, 64).t() - ref).pow(2).mean().item()
    return ((x / scales) @ fake_quantize(weight * scales, 64).t() - ref).pow(2).mean().item()


@pytest.mark.parametrize("forms", [("duo",), ("x",)])
def test_scale_search_beats_rtn_on_outlier_channels(forms):
    x, fc, norm = _outlier_linear()
    original = fc.weight.data.clone()
    group = ScaleGroup("fc", norm, [fc], fc, x=x)
    found = search_scale(group, 64, forms=forms)
    assert torch.equal(fc.weight.data, original)  # the search leaves the weights as it found them
    assert found.ratio > 0 and found.form == forms[0] and len(group.history) == 20
    rtn, awq = _output_error(x, original), _output_error(x, original, found.scales)
    assert awq < 0.5 * rtn  # ~0.056 against 0.201 here
    assert min(group.history) == pytest.approx(awq, rel=1e-4)
    if forms == ("x",):  # ratio 0 is s = 1: plain round-to-nearest
        assert group.history[0] == pytest.approx(rtn, rel=1e-5)


def test_scale_search_over_both_forms_keeps_the_better_of_each_alone():
    """Both forms: 40 candidates, duo's 20 first, and the choice is whichever form's best error is lower
    (its scales and ratio those of that form's search alone)."""
    x, fc, norm = _outlier_linear(seed=2)
    group = ScaleGroup("fc", norm, [fc], fc, x=x)
    alone, histories = {}, []
    for form in ("duo", "x"):
        alone[form] = search_scale(group, 64, forms=(form,)), min(group.history)
        histories += group.history
    both = search_scale(group, 64, forms=("duo", "x"))
    assert group.history == histories  # the same 40 candidates, duo's first
    winner = min(alone, key=lambda form: alone[form][1])
    assert both.form == winner and both.ratio == alone[winner][0].ratio
    assert torch.equal(both.scales, alone[winner][0].scales)
    assert min(group.history) == alone[winner][1]
    with pytest.raises(ValueError, match="scale forms"):
        search_scale(group, 64, forms=("paper",))


def test_fixed_ratio_smoothing_helps_outliers_and_spares_zeroed_channels():
    x, fc, norm = _outlier_linear()
    norm.weight.data[10] = 0.0  # a channel the norm silences
    group = ScaleGroup("fc", norm, [fc], fc, x_absmax=x.abs().amax(0))
    scales = smooth_scale(group, 64)
    assert scales[10] == 1.0 and torch.isfinite(scales).all()
    assert _output_error(x, fc.weight.data, scales) < _output_error(x, fc.weight.data)


def test_the_clipping_moment_is_the_token_sum_and_follows_the_scales():
    """second_moment stands for every token: a group's (x . d)^2 summed over tokens equals d^T M d, batches
    add up, and scale_moment gives the moment of x / s (what the scaled linears see) without the rows."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 128, generator=g)
    moment = second_moment(x, 64)
    assert moment.shape == (2, 64, 64) and moment.dtype == torch.float64
    d = torch.randn(2, 64, generator=g).double()
    direct = ((x.view(300, 2, 64).double() * d).sum(-1) ** 2).sum(0)
    assert torch.allclose(torch.einsum("gi,gij,gj->g", d, moment, d), direct, rtol=1e-5)
    assert torch.allclose(second_moment(x[:100], 64) + second_moment(x[100:], 64), moment, atol=1e-3)  # fp32 products
    s = torch.rand(128, generator=g) + 0.5
    assert torch.allclose(scale_moment(moment, s), second_moment(x / s, 64), rtol=1e-4, atol=1e-3)


def test_clip_search_shrinks_outlier_groups_and_lowers_the_error():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * 0.05
    w[torch.arange(64), torch.randint(0, 256, (64,), generator=g)] = 0.5  # one large weight per row
    x = torch.randn(2048, 256, generator=g)
    limit = search_clip(w, second_moment(x, 64), 64)
    org_max = w.abs().view(64, 4, 64).amax(-1)
    assert limit.shape == (64, 4)
    assert (limit <= org_max + 1e-7).all() and (limit >= 0.55 * org_max - 1e-7).all()  # at most 9/20 shrink
    assert (limit < org_max).any()
    fc = nn.Linear(256, 64, bias=False)
    fc.weight.data = w.clone()
    apply_clip(fc, limit)
    ref = x @ w.t()
    err_rtn = (x @ fake_quantize(w, 64).t() - ref).pow(2).mean()
    err_clip = (x @ fake_quantize(fc.weight.data, 64).t() - ref).pow(2).mean()
    assert err_clip < err_rtn


def _random_model(kind: str):
    """A tiny transformers model, multi-head (so v_proj -> o_proj is a scale group), with biases for Qwen2."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=256, max_position_embeddings=256)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation="sdpa"))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation="sdpa"))
    for p in model.parameters():  # norms start at 1 and biases at 0: make every fold visible
        p.data.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_folding_scales_keeps_the_float_model_s_outputs(kind):
    model = _random_model(kind)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        g = torch.Generator().manual_seed(3)
        names = []
        for layer in model.model.layers:
            groups = layer_groups(layer, rotary=None)
            names.append([grp.name for grp in groups])
            for grp in groups:
                k = grp.linears[0].in_features
                fold_scale(grp.prev, grp.linears, torch.exp(torch.randn(k, generator=g)))  # 1/20 .. 20
        after = model(ids).logits
    assert names[0] == ["qkv", "o", "gate_up", "down"]  # v -> o kept: MHA
    assert ((after - before).norm() / before.norm()).item() < 1e-5


def test_gqa_layers_have_no_v_to_o_group(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["tiny-qwen2"], dtype=torch.float32)
    assert [g.name for g in layer_groups(model.model.layers[0], None)] == ["qkv", "gate_up", "down"]


def test_heldout_text_shares_no_file_and_no_paragraph_with_the_calibration_text():
    calibration, heldout = calib_data._builtin_split()
    assert not set(calibration) & set(heldout)
    assert len(calibration) > 3 * len(heldout) > 0
    assert calib_data.heldout_text() == "\n\n".join(heldout)
    assert calib_data.calibration_text() == "\n\n".join(calibration)
    # docstrings, not only files: a docstring copied into two files must not sit on both sides (much)
    seen = {p for d in calibration for p in d.split("\n\n") if len(p) > 200}
    long = [p for d in heldout for p in d.split("\n\n") if len(p) > 200]
    assert sum(p in seen for p in long) < 0.01 * len(long)


@pytest.mark.slow
def test_builtin_text_is_the_same_on_a_fresh_read():
    """~15 s: the standard library is parsed twice."""
    first = calib_data._builtin_split()
    calib_data._builtin_split.cache_clear()
    assert calib_data._builtin_split() == first


class _CharTokenizer:
    """One token per character: enough for window arithmetic."""

    chat_template = None

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [ord(c) % 250 for c in text]}


def test_windows_are_spread_and_short_text_says_so(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("abcdefghij" * 100)  # 1000 tokens
    full = calib_data.calib_samples(str(path), _CharTokenizer(), 4, 100, vocab_size=256)
    assert full.input_ids.shape == (4, 100) and full.note is None
    assert full.input_ids[-1].tolist() == [ord(c) % 250 for c in ("abcdefghij" * 100)[900:]]  # the end, too
    fewer = calib_data.calib_samples(str(path), _CharTokenizer(), 20, 100, vocab_size=256)
    assert fewer.input_ids.shape == (10, 100) and "10 windows" in fewer.note
    short = calib_data.calib_samples(str(path), _CharTokenizer(), 4, 5000, vocab_size=256)
    assert short.input_ids.shape == (1, 1000) and "1000 tokens" in short.note
    rand = calib_data.calib_samples("random", None, 3, 7, vocab_size=50)
    assert rand.input_ids.shape == (3, 7) and int(rand.input_ids.max()) < 50
    assert torch.equal(rand.input_ids, calib_data.calib_samples("random", None, 3, 7, vocab_size=50).input_ids)


def test_jsonl_fields_and_bad_lines(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text('{"text": "plain"}\n\n{"prompt": "Q? ", "completion": "A."}\n'
                    '{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert calib_data.load_documents(str(good)) == ["plain", "Q? A.", "user: hi"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(calib_data.CalibDataError, match="line 2"):
        calib_data.load_documents(str(bad))
    for spec, message in (("wikitext2", "unknown --calib-dataset"), (str(tmp_path / "x.csv"), "unknown"),
                          (str(tmp_path / "none.txt"), "no such file")):
        with pytest.raises(calib_data.CalibDataError, match=message):
            calib_data.check_calib_dataset(spec)


def test_checkpoint_shards_and_corrupt_headers(tmp_path):
    tensors = {f"t{i}": torch.full((256,), float(i), dtype=torch.float16) for i in range(6)}
    out = write_checkpoint(tmp_path / "out", tensors, tmp_path, {"model_type": "llama"}, bits=4, group_size=64,
                           max_shard_bytes=1024)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert set(read_safetensors_headers(out)) == set(tensors)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 64,
                                             "zero_point": True, "version": "gemm"}
    with pytest.raises(QuantizeError, match="not empty"):
        write_checkpoint(out, tensors, tmp_path, {}, bits=4, group_size=64)
    shard = out / index["weight_map"]["t5"]
    shard.write_bytes(shard.read_bytes()[:-10])
    from engine.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="cut short"):
        read_safetensors_headers(out)
    assert not list(tmp_path.glob(".out.partial-*"))  # no temporary folder left beside it


def _check_awq_dir(out: Path, source: Path, group_size: int) -> dict:
    config = json.loads((out / "config.json").read_text())
    src_config = json.loads((source / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == group_size and config["torch_dtype"] == "float16"
    hidden, layers = src_config["hidden_size"], src_config["num_hidden_layers"]
    with safe_open(str(out / "model.safetensors"), "pt") as f, safe_open(str(source / "model.safetensors"), "pt") as s:
        names = set(f.keys())
        for name in s.keys():
            if name.endswith("_proj.weight") and (".mlp." in name or ".self_attn." in name):
                base = name[:-len(".weight")]
                n, k = s.get_slice(name).get_shape()
                assert f.get_slice(f"{base}.qweight").get_shape() == [k, n // 8]
                assert f.get_slice(f"{base}.qzeros").get_shape() == [k // group_size, n // 8]
                assert f.get_slice(f"{base}.scales").get_shape() == [k // group_size, n]
                assert f.get_tensor(f"{base}.qweight").dtype == torch.int32
                assert f.get_tensor(f"{base}.scales").dtype == torch.float16
            elif name == "lm_head.weight" and src_config.get("tie_word_embeddings"):
                assert name not in names
            else:
                assert f.get_tensor(name).dtype == torch.float16 and name in names
        assert f.get_tensor("model.embed_tokens.weight").shape[1] == hidden
        assert sum(n.endswith(".qweight") for n in names) == 7 * layers
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / tokenizer_file).read_bytes() == (source / tokenizer_file).read_bytes()
    return config


def _logits(directory, ids, state=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa").eval()
    if state is not None:
        missing = model.load_state_dict(state, strict=False).missing_keys
        assert set(missing) <= {"lm_head.weight"}
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_awq_and_rtn_on_tiny_presets(tiny_model_dirs, tmp_path, preset):
    source = Path(tiny_model_dirs[preset])
    options = AwqOptions(calib_dataset="random", calib_samples=4, calib_seqlen=64, w_group_size=16,
                         search_scale=True, search_tokens=128)
    awq = quantize_awq(str(source), tmp_path / "awq", options, progress=False)
    rtn = quantize_rtn(str(source), tmp_path / "rtn", w_group_size=16, progress=False)
    assert (awq.samples, awq.seqlen, awq.group_size) == (4, 64, 16) and len(awq.ratios) >= 3 * awq.layers
    assert awq.forms.keys() == awq.ratios.keys() and set(awq.forms.values()) <= set(SCALE_FORMS)
    for result in (awq, rtn):
        _check_awq_dir(result.work_dir, source, 16)
    if preset == "tiny-qwen2":  # q/k/v biases travel as float16 next to the packed weights
        with safe_open(str(awq.work_dir / "model.safetensors"), "pt") as f:
            assert f.get_tensor("model.layers.0.self_attn.v_proj.bias").dtype == torch.float16
    ids = torch.randint(0, 200, (1, 48), generator=torch.Generator().manual_seed(0))
    reference = _logits(str(source), ids)
    for out in (awq.work_dir, rtn.work_dir):  # the dequantized model still computes nearly the same function
        logits = _logits(str(source), ids, dequantized_state_dict(out))
        assert ((logits - reference).norm() / reference.norm()).item() < 0.25


@pytest.mark.parametrize("forms", [(), ("duo", "paper")])
def test_unknown_scale_forms_fail_before_calibration(tiny_model_dirs, tmp_path, forms):
    from engine.quant.awq import prepare

    with pytest.raises(QuantizeError, match="scale forms"):
        prepare(tiny_model_dirs["tiny-llama"], tmp_path / "o", options=AwqOptions(scale_forms=forms))
    assert not (tmp_path / "o").exists()


def test_rtn_packs_exactly_int4_packs_rounding(tiny_model_dirs, tmp_path):
    from engine.quant.int4_pack import pack_awq

    source = Path(tiny_model_dirs["tiny-llama"])
    out = quantize_rtn(str(source), tmp_path / "rtn", w_group_size=16, progress=False).work_dir
    name = "model.layers.1.mlp.down_proj"
    with safe_open(str(source / "model.safetensors"), "pt") as s, safe_open(str(out / "model.safetensors"), "pt") as f:
        expected = pack_awq(s.get_tensor(f"{name}.weight").float(), 16)
        got = tuple(f.get_tensor(f"{name}.{part}") for part in ("qweight", "qzeros", "scales"))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert dequantize_awq(*got, 16).shape == (64, 176)


@pytest.mark.slow
def test_awq_end_to_end_on_smollm2(default_model_dir, tmp_path):
    """~1-2 min on 2 cores: 8 builtin windows of 256 tokens, the scale search on, default group size."""
    options = AwqOptions(calib_samples=8, calib_seqlen=256, search_scale=True, search_tokens=512)
    result = quantize_awq(default_model_dir, tmp_path / "awq", options, progress=False)
    assert result.group_size == 64 and any("group size 64" in n for n in result.notes)  # 576 = 4.5 x 128
    config = _check_awq_dir(result.work_dir, Path(default_model_dir), 64)
    assert config["tie_word_embeddings"] is True and config["num_hidden_layers"] == 30
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(result.work_dir))  # the copied tokenizer works
    ids = torch.tensor([tokenizer(calib_data.heldout_text()[:4000])["input_ids"][:512]])
    reference = _logits(default_model_dir, ids)
    quantized = _logits(default_model_dir, ids, dequantized_state_dict(result.work_dir))

    def ppl(logits):
        return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())

    assert ppl(quantized) < 1.5 * ppl(reference)
