"""Random-weight presets: real architectures (Qwen2.5-7B, Llama-3-8B, Qwen3-0.6B, tiny test shapes).

Speed does not depend on weight values, and no model hub is reachable, so `preset:NAME` builds a
model of a real architecture from a config written here (the published values) and weights drawn
by `iter_random_weights`. Every preset uses the SmolLM2 tokenizer committed under
assets/smollm2-tokenizer/: its ids are < 49152, so valid in every preset vocab. The output rows of
ids the tokenizer cannot show are zero, so greedy decoding picks ids that decode to text and a
stream sends one event per token, as a real model's does (ignore EOS when benchmarking).

`materialize_preset` writes a preset as an HF directory that transformers loads, so tests can
compare our engine with transformers on identical weights.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import ModelLoadError
from .gguf_convert import make_readable

TOKENIZER_DIR = Path(__file__).parent / "assets" / "smollm2-tokenizer"

# The SmolLM2 tokenizer's special ids: <|im_start|> = 1, <|im_end|> = 2 (also its pad token).
_SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)
TOKENIZER_VOCAB = 49152  # the tokenizer's size: no id it produces can fall outside the embedding
_TINY_VOCAB = TOKENIZER_VOCAB
_LARGE_BYTES = 2 * 1024**3  # materialize_preset refuses more than this unless allow_large


def _qwen25_7b():
    from transformers import Qwen2Config

    # Qwen2.5-7B-Instruct's config.json (q/k/v biases are built into the Qwen2 architecture).
    return Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       rope_theta=1_000_000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, use_sliding_window=False, hidden_act="silu",
                       dtype="bfloat16", **_SPECIAL_IDS)


def _llama3_8b():
    from transformers import LlamaConfig

    # Meta-Llama-3-8B-Instruct's config.json.
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       rope_theta=500_000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                       hidden_act="silu", dtype="bfloat16", **_SPECIAL_IDS)


def _qwen3_0_6b():
    from transformers import Qwen3Config

    # Qwen3-0.6B's config.json: head_dim 128 with 16 heads, so q_proj is 1024 -> 2048.
    return Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936, rope_theta=1_000_000.0, max_position_embeddings=40960,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                       use_sliding_window=False, hidden_act="silu", dtype="bfloat16",
                       **_SPECIAL_IDS)


# Tiny shapes for CPU tests: a second to run, but odd sizes (head counts not powers of two,
# one KV head, head_dim * heads != hidden) so that shape bugs cannot hide.
def _tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       vocab_size=_TINY_VOCAB, rope_theta=10_000.0, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="float32",
                       **_SPECIAL_IDS)


def _tiny_qwen2():
    from transformers import Qwen2Config

    # 7 query heads sharing 1 KV head; qkv biases; tied embeddings (unlike tiny-llama).
    return Qwen2Config(hidden_size=112, intermediate_size=304, num_hidden_layers=3,
                       num_attention_heads=7, num_key_value_heads=1, vocab_size=_TINY_VOCAB,
                       rope_theta=1_000_000.0, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, use_sliding_window=False, dtype="float32",
                       **_SPECIAL_IDS)


def _tiny_qwen2_tp():
    from transformers import Qwen2Config

    # For tensor-parallel tests: 6 query heads split over tp 2 or 3, their one KV head replicated on every
    # rank; a vocab that tp 2 does not divide (the last rank's rows are padded); qkv biases. Untied: a
    # random tied head mostly repeats the last input token, which would hide broken attention.
    return Qwen2Config(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=1, vocab_size=_TINY_VOCAB + 3,
                       rope_theta=1_000_000.0, max_position_embeddings=4096, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, use_sliding_window=False, dtype="float32",
                       **_SPECIAL_IDS)


def _tiny_qwen3():
    from transformers import Qwen3Config

    # head_dim 32 * 4 heads = 128 != hidden 96; q/k norm; untied.
    return Qwen3Config(hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       vocab_size=_TINY_VOCAB, rope_theta=1_000_000.0, max_position_embeddings=4096,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                       use_sliding_window=False, dtype="float32", **_SPECIAL_IDS)


_PRESETS: dict[str, Callable] = {
    "qwen2.5-7b": _qwen25_7b,
    "llama3-8b": _llama3_8b,
    "qwen3-0.6b": _qwen3_0_6b,
    "tiny-llama": _tiny_llama,
    "tiny-qwen2": _tiny_qwen2,
    "tiny-qwen3": _tiny_qwen3,
    "tiny-qwen2-tp": _tiny_qwen2_tp,
}


def list_presets() -> list[str]:
    """Names accepted by `preset:NAME`."""
    return list(_PRESETS)


def preset_config(name: str):
    """A fresh transformers PretrainedConfig of preset `name`."""
    try:
        build = _PRESETS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown preset {name!r}: known presets are {', '.join(list_presets())}") from None
    config = build()
    config.architectures = [_ARCHITECTURES[config.model_type]]
    return config


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}


def parameter_shapes(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """{HF tensor name: (shape, kind)} of the model transformers builds for `config`.

    kind is "embedding", "linear_weight", "bias", "norm" or "lm_head" and picks the init. The
    model is built on the meta device, so no memory is used (~1 s for the 7B architectures).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    shapes = {}
    for name, param in model.named_parameters():
        if name == "lm_head.weight":
            if tied:
                continue
            kind = "lm_head"
        else:
            kind = _kind_of(name, model.get_submodule(name.rpartition(".")[0]))
        shapes[name] = (tuple(param.shape), kind)
    return shapes


def _kind_of(name: str, module: torch.nn.Module) -> str:
    if name.endswith("norm.weight"):  # input/post_attention layernorms, model.norm, q_norm, k_norm
        return "norm"
    if name.endswith(".bias"):
        return "bias"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, torch.nn.Linear):
        return "linear_weight"
    raise ModelLoadError(f"no random init known for parameter {name} ({type(module).__name__})")


def _tensor_seed(seed: int, name: str) -> int:
    # A stable hash (Python's hash() is salted per process): each tensor is reproducible on its
    # own, whatever order tensors are drawn in or which subset a tensor-parallel rank draws.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def iter_random_weights(config, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) for every weight of `config`'s model, random but reproducible.

    Tensors are drawn in float32 on `device` (values depend on the device's generator: CPU and
    CUDA differ) and then cast, so a bf16 preset holds the rounded values of the fp32 one.
    A tied lm_head is not yielded (it is the embedding).

    Why not HF's init (std 0.02): through a deep random model that gives near-flat logits, and
    greedy decoding in bf16 then picks among near-ties, so runs that differ only in rounding
    diverge. Instead activations stay O(1) through the layers: embedding N(0, 1), every Linear
    weight N(0, 1/sqrt(in_features)) (variance-preserving), RMSNorm weights 1 + N(0, 0.1), biases
    N(0, 0.1); an untied lm_head N(0, 2/sqrt(hidden)) gives logits a spread of ~2 units.

    The output rows (lm_head, or the tied embedding) of ids >= the tokenizer's 49,152 are zero: their
    logits are 0 while the largest of the others is several units above, so greedy decoding never
    picks an id that decodes to "" (at temperature 1 the 7B presets' zero rows still hold ~22% of
    the mass: 103k x e^0 against 49k x E[e^x] = 49k x e^2 for logits ~ N(0, 4)). Before, ~2/3 of
    their greedy tokens were such ids and a stream sent an event for only a third of its tokens,
    flattering the server. Speed is unchanged: every row is still read.
    """
    device = torch.device(device)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, (shape, kind) in parameter_shapes(config).items():
        generator = torch.Generator(device)
        generator.manual_seed(_tensor_seed(seed, name))
        tensor = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if kind == "norm":
            tensor.mul_(0.1).add_(1.0)
        elif kind == "bias":
            tensor.mul_(0.1)
        elif kind == "linear_weight":
            tensor.mul_(1.0 / math.sqrt(shape[1]))
        elif kind == "lm_head":
            tensor.mul_(2.0 / math.sqrt(shape[1]))
        # "embedding": N(0, 1) as drawn
        if (kind == "lm_head" or (kind == "embedding" and tied)) and shape[0] > TOKENIZER_VOCAB:
            tensor[TOKENIZER_VOCAB:].zero_()
        yield name, tensor.to(dtype)


def preset_num_bytes(config, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the weights `iter_random_weights` yields for `config` in `dtype`."""
    element = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(shape) for shape, _ in parameter_shapes(config).values()) * element


def materialize_preset(name: str, out_dir: str | os.PathLike, *, seed: int = 0,
                       dtype: torch.dtype = torch.float32, allow_large: bool = False) -> Path:
    """Write preset `name` as an HF directory (config.json, model.safetensors, tokenizer).

    Refuses presets over 2 GiB of weights unless `allow_large` (they are built in memory first).
    """
    from safetensors.torch import save_file

    config = preset_config(name)
    config.dtype = dtype
    size = preset_num_bytes(config, dtype)
    if size > _LARGE_BYTES and not allow_large:
        raise ModelLoadError(
            f"preset {name!r} has {size / 1024**3:.1f} GiB of weights in {dtype}: pass "
            f"allow_large=True to write it, or use it directly as 'preset:{name}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = dict(iter_random_weights(config, seed=seed, dtype=dtype))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    for path in TOKENIZER_DIR.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    make_readable(out / "model.safetensors")  # safetensors creates its files 0600
    return out
