"""What a model weighs, from its config alone: its shape, parameter counts, weight bytes in each
format, KV cache bytes per token and how much cache a cache ratio gives.

Pure functions of an HF config (a transformers PretrainedConfig or a plain dict) and a weight
format; no weights are read and no GPU is needed. toolkit.planner (the plan) and
toolkit.predictions (the calibrated speeds) size models with these. The formulas:

- Parameters: embedding V x H; lm_head V x H unless tied; per layer q (H x heads*d), k and v
  (H x kv_heads*d each), o (heads*d x H), gate/up/down (3 x H x I), biases where the architecture
  has them (Qwen2: q, k, v), two RMSNorms (2H; Qwen3 adds q/k norms of d each); final norm H.
- Weight bytes: bf16/fp16 2 bytes a parameter. int8 (weight-only): the layers' linear weights
  1 byte + one fp16 scale per output channel. awq (4-bit, AutoAWQ GEMM layout): linear weights
  0.5 byte + per group of 128 input channels an fp16 scale and a 4-bit zero per output channel.
  Embedding, lm_head, biases and norms stay 16-bit in both, as AutoAWQ and LMDeploy leave them,
  except where the engine's --lm-head-int8 auto puts the head in int8 (head_int8_by_default: int8 and
  AWQ on Hopper, where the CUDA weight kernels run): V x H codes + an fp32 scale a row, replacing an
  untied head's 16-bit copy, beside a tied table (which the lookups still read) and read in its place.
- KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x 2 (16-bit cache); with an
  int8 / int4 cache (quant_policy 8 / 4) head_dim x bits / 8 bytes of codes plus the engine's
  (scale, min) pair in fp32 per token, head and K/V (engine/runner/model_runner.py allocates both).
- Tensor parallelism (tp = t ranks, one a GPU) splits as the engine does (engine/layers/partition.py):
  q heads, MLP columns and vocab rows (ceil(V / t) a rank, padded) by t; KV heads by t, or one a rank
  replicated when t exceeds them; o_proj/down_proj split their inputs and keep whole biases; norms are
  replicated. weight_bytes(..., tp) and kv_bytes_per_token(..., tp) are then one GPU's, and every memory
  figure below is per GPU. A tp the engine refuses for a model (engine check_tensor_parallel: it must
  divide the attention heads and the MLP, divide the KV heads or be a multiple of them, and fit AWQ's
  packing) is refused here with the engine's own words (tp_refusal).
- Free memory = usable card memory x 2^30 - weights - a runtime reserve. Usable memory is what
  torch reports, where a committed run recorded it (the profile's calibration.usable_memory_gib:
  139.8 GiB on an H200 against 141 on its datasheet), else the datasheet memory_gib. The reserve
  (default DEFAULT_RESERVE_GIB) holds the CUDA context, cuBLAS workspaces, CUDA graphs and the
  activations of one prefill chunk of a 7B-class model.
- KV tokens at cache ratio r = int(r x free) // kv_bytes_per_token: LMDeploy's
  cache_max_entry_count is the fraction of the memory left free after the weights (the engine
  counts int(free x r) // block_bytes blocks the same way). Sequences of length L that fit =
  tokens // L, and in blocks of 64 tokens floor(blocks / ceil(L / 64)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

QUANTS = ("bf16", "fp16", "int8", "awq")
DEFAULT_RESERVE_GIB = 2.0
AWQ_GROUP_SIZE = 128
KV_DTYPE_BYTES = 2
# LMDeploy's default cache_max_entry_count: the plan's flags and predict_serving size the cache at
# it. Here, beside kv_fit, so that the plan and the predictions share one figure without a cycle.
FLAG_CACHE_RATIO = 0.8
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


class PlanError(ValueError):
    """A model config the planner cannot size, or plan settings that make no sense."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a dense decoder-only transformer that sizes its weights and KV cache."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    quantization: str | None = None  # quant_method of a quantized checkpoint's config

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """Read a transformers PretrainedConfig or a config.json dict (text_config when nested)."""
        get = _getter(config)
        if get("hidden_size") is None and get("text_config") is not None:
            return cls.from_config(get("text_config"))
        for key in _MOE_KEYS:
            if _is_count(get(key)) and get(key) > 0:
                raise PlanError(f"mixture-of-experts models ({key}={get(key)!r}) are not covered by the planner")
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [k for k in required if not _is_count(get(k)) or get(k) <= 0]
        if missing:
            raise PlanError(f"the model config lacks {', '.join(missing)}: the planner needs a decoder-only LLM config")
        # A hand-edited or damaged config.json may hold anything: refuse it here, not as a TypeError below.
        bad = [f"{k}={get(k)!r}" for k in ("num_key_value_heads", "head_dim")
               if get(k) is not None and (not _is_count(get(k)) or get(k) <= 0)]
        bad += [f"{k}={get(k)!r}" for k in _MOE_KEYS if get(k) is not None and not _is_count(get(k))]
        if get("head_dim") is None and get("hidden_size") < get("num_attention_heads"):
            bad.append(f"hidden_size={get('hidden_size')} < num_attention_heads={get('num_attention_heads')}")
        if bad:
            raise PlanError(f"the model config has {', '.join(bad)}: sizes must be positive integers (and "
                            f"hidden_size at least num_attention_heads); fix the config or pass another model")
        model_type = str(get("model_type") or "llama")
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        attention_bias = bool(get("attention_bias") or False)
        quant = get("quantization_config")
        quant_method = (quant.get("quant_method") if isinstance(quant, Mapping)
                        else getattr(quant, "quant_method", None)) if quant else None
        return cls(
            model_type=model_type, hidden_size=hidden, intermediate_size=get("intermediate_size"),
            num_layers=get("num_hidden_layers"), num_heads=heads,
            num_kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or hidden // heads,
            vocab_size=get("vocab_size"), tie_word_embeddings=bool(get("tie_word_embeddings") or False),
            # Qwen2 always has q/k/v biases (none on o); Llama-style configs say so in attention_bias.
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(get("mlp_bias") or False), qk_norm=model_type == "qwen3",
            quantization=str(quant_method) if quant_method else None)


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer: y = x W^T (+ b), W of out_features x in_features."""

    name: str
    in_features: int
    out_features: int
    bias: bool


def kv_heads_per_rank(shape: ModelShape, tp: int = 1) -> int:
    """KV heads one rank holds: its share, or the one head its query heads read when tp > KV heads."""
    return shape.num_kv_heads // tp if tp <= shape.num_kv_heads else 1


def vocab_rows_per_rank(shape: ModelShape, tp: int = 1) -> int:
    """Embedding / LM head rows one rank holds: ceil(V / tp), the last rank's past V zero padding."""
    return -(-shape.vocab_size // tp)


def tp_refusal(shape: ModelShape, tp: int, quant: str = "bf16") -> str:
    """Why the engine refuses to split `shape` over `tp` ranks in weight format `quant`, or "".

    The engine's own rule and words (engine.layers.partition.check_tensor_parallel), asked with the
    config fields it reads; AWQ adds its packing and group checks at AWQ_GROUP_SIZE (AutoAWQ's 128).
    """
    if tp < 1:
        return f"--tp {tp}: must be >= 1"
    if tp == 1:
        return ""
    from engine.errors import InvalidRequestError
    from engine.layers.partition import check_tensor_parallel

    config = SimpleNamespace(num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                             intermediate_size=shape.intermediate_size, hidden_size=shape.hidden_size,
                             head_dim=shape.head_dim)
    try:
        check_tensor_parallel(config, tp, "awq" if quant == "awq" else "hf", AWQ_GROUP_SIZE)
    except InvalidRequestError as e:
        return str(e)
    return ""


def layer_linears(shape: ModelShape, tp: int = 1) -> list[Linear]:
    """The linear layers of one decoder layer (attention q/k/v/o, MLP gate/up/down), as one of `tp`
    ranks holds them: column-parallel outputs (q/k/v, gate/up) and row-parallel inputs (o, down) split."""
    reason = tp_refusal(shape, tp)
    if reason:
        raise PlanError(reason)
    h, d, i = shape.hidden_size, shape.head_dim, shape.intermediate_size // tp
    q_out, kv_out = shape.num_heads // tp * d, kv_heads_per_rank(shape, tp) * d
    return [Linear("q_proj", h, q_out, shape.qkv_bias), Linear("k_proj", h, kv_out, shape.qkv_bias),
            Linear("v_proj", h, kv_out, shape.qkv_bias), Linear("o_proj", q_out, h, shape.o_bias),
            Linear("gate_proj", h, i, shape.mlp_bias), Linear("up_proj", h, i, shape.mlp_bias),
            Linear("down_proj", i, h, shape.mlp_bias)]


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by part. `multiplying` counts those used as matmul weights per token."""

    embedding: int
    lm_head: int  # 0 when tied (the embedding table serves as the lm_head)
    lm_head_tied: bool
    attention_per_layer: int  # q/k/v/o weights and biases (+ q/k norms)
    mlp_per_layer: int
    norms_per_layer: int
    per_layer: int
    num_layers: int
    final_norm: int
    linear_weights: int  # all layers' linear weight matrices (what int8/AWQ quantize)
    total: int
    multiplying: int
    tp: int = 1  # > 1: the counts of one rank (one GPU) of a tensor-parallel engine


def count_params(shape: ModelShape, tp: int = 1) -> ParamCounts:
    """Parameter counts of `shape` (see the module docstring for the per-part formulas); with tp > 1,
    those one rank holds (a row-parallel bias whole on every rank, as the engine allocates it)."""
    linears = layer_linears(shape, tp)
    attention = sum(_linear_params(l) for l in linears if l.name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if shape.qk_norm:
        attention += 2 * shape.head_dim
    mlp = sum(_linear_params(l) for l in linears if l.name in ("gate_proj", "up_proj", "down_proj"))
    norms = 2 * shape.hidden_size
    per_layer = attention + mlp + norms
    embedding = vocab_rows_per_rank(shape, tp) * shape.hidden_size
    lm_head = 0 if shape.tie_word_embeddings else embedding
    total = embedding + lm_head + shape.num_layers * per_layer + shape.hidden_size
    linear_weights = shape.num_layers * sum(l.in_features * l.out_features for l in linears)
    # The embedding lookup multiplies nothing; a tied table does the lm_head's matmul.
    multiplying = total - (0 if shape.tie_word_embeddings else embedding)
    return ParamCounts(embedding=embedding, lm_head=lm_head, lm_head_tied=shape.tie_word_embeddings,
                       attention_per_layer=attention, mlp_per_layer=mlp, norms_per_layer=norms,
                       per_layer=per_layer, num_layers=shape.num_layers, final_norm=shape.hidden_size,
                       linear_weights=linear_weights, total=total, multiplying=multiplying, tp=tp)


def _linear_params(linear: Linear) -> int:
    return linear.in_features * linear.out_features + (linear.out_features if linear.bias else 0)


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the weights in one format: the whole, and what one decode step reads."""

    quant: str
    total: int
    decode: int  # all but the embedding table (row lookups); a tied table counts once
    linear: int  # the layers' linear weights in this format
    scales: int  # int8 / AWQ scales and zeros
    sixteen_bit: int  # embedding, lm_head, biases, norms (and the linears for bf16/fp16)
    tp: int = 1  # > 1: the bytes on one GPU of a tensor-parallel engine
    head_int8: int = 0  # the int8 LM head's codes and scales (--lm-head-int8), 0 where the head is 16-bit


# Where the engine's --lm-head-int8 auto takes the int8 head: int8 / AWQ weights on the CUDA weight kernels,
# which auto runs on Hopper only (engine/runner/weight_kernels.py, MEASURED_CAPABILITY (9, 0)).
HEAD_INT8_ARCH = "sm_90"


def head_int8_by_default(quant: str, arch: str | None) -> bool:
    """Whether the engine's default (--lm-head-int8 auto) holds the LM head in int8 for `quant` on a card of `arch`."""
    return quant in ("int8", "awq") and arch == HEAD_INT8_ARCH


def weight_bytes(shape: ModelShape, quant: str, tp: int = 1, head_int8: bool = False) -> WeightBytes:
    """Weight bytes of `shape` stored as `quant` (bf16, fp16, int8 or awq); with tp > 1, one GPU's. head_int8:
    the LM head in per-row int8 as --lm-head-int8 holds it (int8 and awq only; head_int8_by_default says when)."""
    if quant not in QUANTS:
        raise PlanError(f"unknown weight format {quant!r}: choose from {', '.join(QUANTS)}")
    reason = tp_refusal(shape, tp, quant)
    if reason:
        raise PlanError(reason)
    params = count_params(shape, tp)
    linears = layer_linears(shape, tp)
    if quant in ("bf16", "fp16"):
        linear, scales = 2 * params.linear_weights, 0
    elif quant == "int8":
        linear = params.linear_weights
        scales = shape.num_layers * sum(4 * l.out_features for l in linears)  # fp32 per output channel (engine/quant/int8.py)
    else:  # awq: 4-bit weights; per (group of 128 inputs, output): fp16 scale + 4-bit zero
        linear = params.linear_weights // 2
        scales = shape.num_layers * sum(math.ceil(l.in_features / AWQ_GROUP_SIZE) * l.out_features * 5 // 2
                                        for l in linears)
    sixteen_bit = 2 * (params.total - params.linear_weights)
    head = 0
    if head_int8 and quant in ("int8", "awq"):
        rows = vocab_rows_per_rank(shape, tp)
        head = rows * shape.hidden_size + 4 * rows  # codes + an fp32 scale a row (engine/layers/embedding.py)
        sixteen_bit -= 2 * params.lm_head  # an untied head's 16-bit copy is replaced; a tied table stays
    total = linear + scales + sixteen_bit + head
    embedding_bytes = 2 * params.embedding
    # A decode step reads every weight but the embedding table, unless a tied table is also the (16-bit) head.
    decode = total - (0 if shape.tie_word_embeddings and not head else embedding_bytes)
    return WeightBytes(quant=quant, total=total, decode=decode, linear=linear, scales=scales,
                       sixteen_bit=sixteen_bit, tp=tp, head_int8=head)


KV_SCALE_BYTES = 8  # a quantized cache's (scale, min) in fp32 per token, head and K/V


def kv_bytes_per_token(shape: ModelShape, quant_policy: int = 0, tp: int = 1) -> int:
    """K and V of one token across all layers: 2 x layers x kv_heads x (bytes per head), a head being
    head_dim 16-bit values, or with quant_policy 8 / 4 head_dim codes of that many bits + its scales.
    With tp > 1, one GPU's: its KV heads only (kv_heads_per_rank: a share, or one replicated head)."""
    if quant_policy not in (0, 4, 8):
        raise PlanError(f"quant_policy {quant_policy}: the KV cache is 16-bit (0), int8 (8) or int4 (4)")
    per_head = (shape.head_dim * KV_DTYPE_BYTES if not quant_policy
                else shape.head_dim * quant_policy // 8 + KV_SCALE_BYTES)
    reason = tp_refusal(shape, tp)
    if reason:
        raise PlanError(reason)
    return 2 * shape.num_layers * kv_heads_per_rank(shape, tp) * per_head


@dataclass(frozen=True)
class KvFit:
    """How much KV cache a cache ratio gives, and how many sequences of session_len it holds."""

    cache_ratio: float
    kv_bytes: int
    tokens: int
    blocks: int
    sequences: int  # tokens // session_len
    sequences_in_blocks: int  # blocks // ceil(session_len / block_size): what a paged cache really holds


def kv_fit(free_bytes: int, kv_per_token: int, ratio: float, session_len: int, block_size: int) -> KvFit:
    """KV tokens and sequences at cache ratio `ratio` of `free_bytes` (LMDeploy's meaning)."""
    budget = max(int(free_bytes * ratio), 0)
    tokens = budget // kv_per_token
    blocks = budget // (kv_per_token * block_size)
    return KvFit(cache_ratio=ratio, kv_bytes=budget, tokens=tokens, blocks=blocks,
                 sequences=tokens // session_len,
                 sequences_in_blocks=blocks // math.ceil(session_len / block_size))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _getter(config: Any):
    if isinstance(config, Mapping):
        return config.get
    return lambda key: getattr(config, key, None)
