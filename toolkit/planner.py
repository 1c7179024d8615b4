"""What fits and how fast, from a model's config alone: memory fit, roofline estimates and the
calibrated predictions of what the engine will reach.

Pure functions of an HF config (a transformers PretrainedConfig or a plain dict), a hardware
profile and a weight format; no weights are read and no GPU is needed. The formulas:

- Parameters: embedding V x H; lm_head V x H unless tied; per layer q (H x heads*d), k and v
  (H x kv_heads*d each), o (heads*d x H), gate/up/down (3 x H x I), biases where the architecture
  has them (Qwen2: q, k, v), two RMSNorms (2H; Qwen3 adds q/k norms of d each); final norm H.
- Weight bytes: bf16/fp16 2 bytes a parameter. int8 (weight-only): the layers' linear weights
  1 byte + one fp16 scale per output channel. awq (4-bit, AutoAWQ GEMM layout): linear weights
  0.5 byte + per group of 128 input channels an fp16 scale and a 4-bit zero per output channel.
  Embedding, lm_head, biases and norms stay 16-bit in both, as AutoAWQ and LMDeploy leave them.
- KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x 2 (16-bit cache).
- Free memory = usable card memory x 2^30 - weights - a runtime reserve. Usable memory is what
  torch reports, where a committed run recorded it (the profile's calibration.usable_memory_gib:
  139.8 GiB on an H200 against 141 on its datasheet), else the datasheet memory_gib. The reserve
  (default DEFAULT_RESERVE_GIB) holds the CUDA context, cuBLAS workspaces, CUDA graphs and the
  activations of one prefill chunk of a 7B-class model.
- KV tokens at cache ratio r = int(r x free) // kv_bytes_per_token: LMDeploy's
  cache_max_entry_count is the fraction of the memory left free after the weights (the engine
  counts int(free x r) // block_bytes blocks the same way). Sequences of length L that fit =
  tokens // L, and in blocks of 64 tokens floor(blocks / ceil(L / 64)).
- Decode at batch B and context C, per step: bytes = decode weights (all but the embedding table,
  which is looked up row by row; a tied table counts once, read whole as the lm_head) +
  B x C x kv_bytes_per_token; FLOPs = B x (2 x multiplying params + 4 x layers x heads x d x C);
  step time = max(bytes / bandwidth, FLOPs / tensor FLOP/s); tokens/s = B / step time.
- Prefill of P tokens: FLOPs = 2 x multiplying params x P + 2 x layers x heads x d x P^2 (causal
  attention: QK^T and PV over half the square); time = max(FLOPs / tensor FLOP/s, weight bytes /
  bandwidth).
- Tensor FLOP/s is the 16-bit dense figure for every format (weight-only int8 and AWQ dequantize
  to 16 bits and multiply there); the profile's measured figures win over the datasheet ones.

Predictions (what the engine will reach, not only what the card allows) scale the two parts of the
roofline by the profile's efficiencies (toolkit.profiles.efficiency: calibrated from committed runs
by `python -m toolkit.calibrate`, else a default from the calibrated cards, else 1):
- Decode step = max(bytes / (bandwidth x decode_bandwidth), FLOPs / (tensor FLOP/s x gemm)).
- Prefill of one prompt = max(FLOPs / (tensor FLOP/s x prefill), weight bytes / (bandwidth x
  decode_bandwidth)): the TTFT of an idle engine.
- Serving throughput of B streams, each a prompt of P tokens then O output tokens, in a closed loop
  (a finished stream is replaced): per round of B requests, B prefills at the gemm efficiency plus
  O decode steps at batch B and mean context P + O/2, so output tok/s = B x O / (B x prefill +
  O x step). B is capped by the sequences of P + O tokens the KV cache holds, where known.
- The closing recommendation of a plan: among the formats the engine runs today (ENGINE_DTYPES)
  that fit, the cache ratio and batch (of the rows planned) with the highest predicted decode
  tok/s whose batch KV fits that ratio and whose cache holds a whole session; on a tie, the ratio
  nearest LMDeploy's default 0.8, then the smaller.

Flags (the rule is in FLAG_RULES, repeated in the output):
- "does not fit": weights + reserve exceed the card's memory; such a format gets no speeds.
- "little KV": at cache ratio 0.8 (LMDeploy's default) the cache holds fewer than 2 sessions of
  session_len tokens, or takes fewer bytes than the weights (a full batch then reaches less than
  half the decode tokens/s that the bandwidth allows at that context).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from .profiles import Efficiency, HardwareProfile, efficiency as profile_efficiency

QUANTS = ("bf16", "fp16", "int8", "awq")
DEFAULT_QUANTS = ("bf16", "int8", "awq")
DEFAULT_RESERVE_GIB = 2.0
AWQ_GROUP_SIZE = 128
KV_DTYPE_BYTES = 2
FLAG_CACHE_RATIO = 0.8
MIN_SESSIONS = 2
FLAG_RULES = {
    "does not fit": "weights + runtime reserve > usable card memory (no speeds shown)",
    "little KV": (f"at cache ratio {FLAG_CACHE_RATIO} the KV cache holds fewer than {MIN_SESSIONS} sessions of "
                  f"session_len tokens, or is smaller than the weights"),
}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
# Weight formats the engine serves today, as its --dtype; int8 and AWQ weights are not available
# yet (engine/engine.py refuses model_format awq), so a plan recommends neither.
ENGINE_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


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


def layer_linears(shape: ModelShape) -> list[Linear]:
    """The linear layers of one decoder layer (attention q/k/v/o, MLP gate/up/down)."""
    h, q_out, kv_out = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    i = shape.intermediate_size
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


def count_params(shape: ModelShape) -> ParamCounts:
    """Parameter counts of `shape` (see the module docstring for the per-part formulas)."""
    linears = layer_linears(shape)
    attention = sum(_linear_params(l) for l in linears if l.name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if shape.qk_norm:
        attention += 2 * shape.head_dim
    mlp = sum(_linear_params(l) for l in linears if l.name in ("gate_proj", "up_proj", "down_proj"))
    norms = 2 * shape.hidden_size
    per_layer = attention + mlp + norms
    embedding = shape.vocab_size * shape.hidden_size
    lm_head = 0 if shape.tie_word_embeddings else embedding
    total = embedding + lm_head + shape.num_layers * per_layer + shape.hidden_size
    linear_weights = shape.num_layers * sum(l.in_features * l.out_features for l in linears)
    # The embedding lookup multiplies nothing; a tied table does the lm_head's matmul.
    multiplying = total - (0 if shape.tie_word_embeddings else embedding)
    return ParamCounts(embedding=embedding, lm_head=lm_head, lm_head_tied=shape.tie_word_embeddings,
                       attention_per_layer=attention, mlp_per_layer=mlp, norms_per_layer=norms,
                       per_layer=per_layer, num_layers=shape.num_layers, final_norm=shape.hidden_size,
                       linear_weights=linear_weights, total=total, multiplying=multiplying)


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


def weight_bytes(shape: ModelShape, quant: str) -> WeightBytes:
    """Weight bytes of `shape` stored as `quant` (bf16, fp16, int8 or awq)."""
    if quant not in QUANTS:
        raise PlanError(f"unknown weight format {quant!r}: choose from {', '.join(QUANTS)}")
    params = count_params(shape)
    linears = layer_linears(shape)
    if quant in ("bf16", "fp16"):
        linear, scales = 2 * params.linear_weights, 0
    elif quant == "int8":
        linear = params.linear_weights
        scales = shape.num_layers * sum(2 * l.out_features for l in linears)  # fp16 per output channel
    else:  # awq: 4-bit weights; per (group of 128 inputs, output): fp16 scale + 4-bit zero
        linear = params.linear_weights // 2
        scales = shape.num_layers * sum(math.ceil(l.in_features / AWQ_GROUP_SIZE) * l.out_features * 5 // 2
                                        for l in linears)
    sixteen_bit = 2 * (params.total - params.linear_weights)
    total = linear + scales + sixteen_bit
    embedding_bytes = 2 * params.embedding
    decode = total - (0 if shape.tie_word_embeddings else embedding_bytes)
    return WeightBytes(quant=quant, total=total, decode=decode, linear=linear, scales=scales,
                       sixteen_bit=sixteen_bit)


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int = KV_DTYPE_BYTES) -> int:
    """K and V of one token across all layers: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes


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


@dataclass(frozen=True)
class DecodeEstimate:
    """Roofline decode speed at one batch size and context length."""

    batch_size: int
    context_len: int
    bytes_per_step: int
    flops_per_step: int
    step_ms: float
    tokens_per_s: float
    bound: str  # "memory" or "compute"
    cache_ratio_needed: float | None  # KV of the batch (whole blocks) / free memory; None if nothing is free


@dataclass(frozen=True)
class PrefillEstimate:
    """Roofline time of one prompt's prefill."""

    prompt_len: int
    flops: int
    seconds: float
    bound: str


@dataclass(frozen=True)
class DecodePrediction:
    """Predicted decode speed at one batch size and context: the roofline scaled by the efficiencies."""

    batch_size: int
    context_len: float
    tokens_per_s: float
    roofline_tokens_per_s: float
    step_ms: float
    bound: str  # which scaled part is the longer: "memory" or "compute"


@dataclass(frozen=True)
class PrefillPrediction:
    """Predicted time of one prompt's prefill on an idle engine (its TTFT)."""

    prompt_len: int
    seconds: float
    roofline_seconds: float
    bound: str


@dataclass(frozen=True)
class ThroughputPrediction:
    """Predicted output tok/s of `batch_size` streams in a closed loop (module docstring)."""

    requested_batch: int
    batch_size: int  # the streams that run at once: requested_batch, or what the KV cache holds
    prompt_len: int
    output_len: int
    output_tokens_per_s: float
    roofline_output_tokens_per_s: float
    prefill_ms_per_request: float
    decode_step_ms: float
    bound: str  # of the decode step
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QuantPlan:
    """Everything about one weight format on the card. A format that does not fit has no speeds."""

    quant: str
    weights: WeightBytes
    kv_bytes_per_token: int
    free_bytes: int  # usable card memory - weights - reserve (may be negative)
    fits: bool
    kv: list[KvFit]
    decode: list[DecodeEstimate]  # roofline
    prefill: list[PrefillEstimate]  # roofline
    predicted_decode: list[DecodePrediction]
    predicted_prefill: list[PrefillPrediction]
    flags: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendation:
    """The format, cache ratio and batch a plan recommends, and the EngineConfig fields that serve it."""

    quant: str
    cache_ratio: float
    batch_size: int
    context_len: int
    tokens_per_s: float  # predicted decode tok/s at that batch and context
    roofline_tokens_per_s: float
    engine: dict  # EngineConfig keyword arguments; EngineConfig(**engine).to_flags() are the serve flags
    why: str


@dataclass(frozen=True)
class Plan:
    """A model on a card in several weight formats; `asdict` of it is the --json output."""

    model: str
    profile: str
    profile_display_name: str
    memory_bytes: int  # usable memory: what the plan sizes with
    memory_source: str  # "measured" (torch's figure from a committed run) or "datasheet"
    datasheet_memory_bytes: int
    reserve_bytes: int
    bandwidth_gbs: float
    bandwidth_source: str  # "measured" or "datasheet"
    tensor_tflops: float
    tensor_tflops_source: str
    efficiency: Efficiency
    session_len: int
    context_len: int
    block_size: int
    batch_sizes: list[int]
    prompt_lens: list[int]
    shape: ModelShape
    params: ParamCounts
    quants: list[QuantPlan]
    recommendation: Recommendation | None
    no_recommendation: str  # why there is none ("" when there is one)
    flag_rules: dict[str, str]
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(config: Any, profile: HardwareProfile, *, quants: Iterable[str] = DEFAULT_QUANTS,
              session_len: int = 4096, cache_ratios: Iterable[float] = (0.5, 0.8, 0.9),
              batch_sizes: Iterable[int] = (1, 8, 32, 128, 256), prompt_lens: Iterable[int] | None = None,
              context_len: int | None = None, reserve_gib: float = DEFAULT_RESERVE_GIB,
              block_size: int = 64, model_name: str = "", efficiency: Efficiency | None = None) -> Plan:
    """Plan `config` on `profile` for each weight format in `quants` (see the module docstring).

    context_len (decode) defaults to session_len // 2; prompt_lens (prefill) to 512, 2048 and
    session_len, those not longer than session_len. efficiency defaults to the profile's
    (toolkit.profiles.efficiency: calibrated, a default from the calibrated cards, or the roofline).
    """
    quants, ratios, batches = list(quants), list(cache_ratios), list(batch_sizes)
    _check_settings(quants, session_len, ratios, batches, reserve_gib, block_size)
    shape = ModelShape.from_config(config)
    context = context_len if context_len is not None else max(session_len // 2, 1)
    if context < 1:
        raise PlanError(f"context length must be >= 1 (got {context})")
    prompts = sorted(set(prompt_lens if prompt_lens is not None
                         else [p for p in (512, 2048, session_len) if p <= session_len]))
    if any(p < 1 for p in prompts):
        raise PlanError(f"prompt lengths must be >= 1 (got {prompts})")
    bandwidth, bandwidth_source = profile.bandwidth()
    tflops, tflops_source = profile.tensor_tflops()
    eff = efficiency if efficiency is not None else profile_efficiency(profile)
    _, memory_source = profile.usable_memory()
    reserve = int(reserve_gib * 2**30)
    params = count_params(shape)
    notes = []
    if shape.quantization:
        notes.append(f"the checkpoint is already quantized ({shape.quantization}); rows are computed from its shapes")
    plans = [_quant_plan(shape, params, profile, q, session_len=session_len, ratios=ratios, batches=batches,
                         prompts=prompts, context=context, reserve=reserve, block_size=block_size,
                         bandwidth=bandwidth, tflops=tflops, efficiency=eff) for q in quants]
    recommendation, why_none = recommend(plans, profile, session_len=session_len, context_len=context,
                                         block_size=block_size)
    return Plan(model=model_name, profile=profile.name, profile_display_name=profile.display_name,
                memory_bytes=profile.usable_memory_bytes, memory_source=memory_source,
                datasheet_memory_bytes=profile.memory_bytes, reserve_bytes=reserve, bandwidth_gbs=bandwidth,
                bandwidth_source=bandwidth_source, tensor_tflops=tflops, tensor_tflops_source=tflops_source,
                efficiency=eff, session_len=session_len, context_len=context, block_size=block_size,
                batch_sizes=batches, prompt_lens=prompts, shape=shape, params=params, quants=plans,
                recommendation=recommendation, no_recommendation=why_none, flag_rules=dict(FLAG_RULES),
                notes=notes)


def decode_estimate(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                    context_len: int, bandwidth_gbs: float, tflops: float, free_bytes: int,
                    block_size: int = 64) -> DecodeEstimate:
    """Roofline decode step of `batch_size` sequences at `context_len` tokens of context each."""
    kv = kv_bytes_per_token(shape)
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch_size, context_len=context_len)
    memory_s, compute_s = nbytes / (bandwidth_gbs * 1e9), flops / (tflops * 1e12)
    step = max(memory_s, compute_s)
    batch_kv = batch_size * math.ceil(context_len / block_size) * block_size * kv
    return DecodeEstimate(batch_size=batch_size, context_len=context_len, bytes_per_step=nbytes,
                          flops_per_step=flops, step_ms=step * 1e3, tokens_per_s=batch_size / step,
                          bound="memory" if memory_s >= compute_s else "compute",
                          cache_ratio_needed=batch_kv / free_bytes if free_bytes > 0 else None)


def decode_work(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                context_len: float) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step of `batch_size` sequences at `context_len` tokens each."""
    nbytes = weights.decode + batch_size * context_len * kv_bytes_per_token(shape)
    attention = 4 * shape.num_layers * shape.num_heads * shape.head_dim * context_len
    return nbytes, batch_size * (2 * params.multiplying + attention)


def prefill_flops(shape: ModelShape, params: ParamCounts, prompt_len: float) -> float:
    """FLOPs of a causal prefill of `prompt_len` tokens (attention over half the square)."""
    return 2 * params.multiplying * prompt_len + 2 * shape.num_layers * shape.num_heads * shape.head_dim * prompt_len**2


def prefill_estimate(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, prompt_len: int,
                     bandwidth_gbs: float, tflops: float) -> PrefillEstimate:
    """Roofline time of a causal prefill of `prompt_len` tokens (weights read once)."""
    flops = prefill_flops(shape, params, prompt_len)
    compute_s, memory_s = flops / (tflops * 1e12), weights.decode / (bandwidth_gbs * 1e9)
    return PrefillEstimate(prompt_len=prompt_len, flops=flops, seconds=max(compute_s, memory_s),
                           bound="compute" if compute_s >= memory_s else "memory")


def predict_decode(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                   context_len: float, bandwidth_gbs: float, tflops: float, efficiency: Efficiency) -> DecodePrediction:
    """Decode tok/s the engine is predicted to reach: the memory part of the step at
    bandwidth x decode_bandwidth, the compute part at tensor FLOP/s x gemm, the longer one wins."""
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch_size, context_len=context_len)
    memory_s = nbytes / (bandwidth_gbs * 1e9 * efficiency.decode_bandwidth)
    compute_s = flops / (tflops * 1e12 * efficiency.gemm)
    step = max(memory_s, compute_s)
    roofline = max(nbytes / (bandwidth_gbs * 1e9), flops / (tflops * 1e12))
    return DecodePrediction(batch_size=batch_size, context_len=context_len, tokens_per_s=batch_size / step,
                            roofline_tokens_per_s=batch_size / roofline, step_ms=step * 1e3,
                            bound="memory" if memory_s >= compute_s else "compute")


def predict_prefill(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, prompt_len: int,
                    bandwidth_gbs: float, tflops: float, efficiency: Efficiency) -> PrefillPrediction:
    """Predicted TTFT of one prompt on an idle engine: FLOPs at tensor FLOP/s x prefill (weights
    read once at bandwidth x decode_bandwidth, for a prompt so short that reading them is longer)."""
    roofline = prefill_estimate(shape, params, weights, prompt_len=prompt_len, bandwidth_gbs=bandwidth_gbs,
                                tflops=tflops)
    compute_s = roofline.flops / (tflops * 1e12 * efficiency.prefill)
    memory_s = weights.decode / (bandwidth_gbs * 1e9 * efficiency.decode_bandwidth)
    return PrefillPrediction(prompt_len=prompt_len, seconds=max(compute_s, memory_s), roofline_seconds=roofline.seconds,
                             bound="compute" if compute_s >= memory_s else "memory")


def predict_throughput(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                       prompt_len: int, output_len: int, bandwidth_gbs: float, tflops: float, efficiency: Efficiency,
                       kv_tokens: int | None = None, block_size: int = 64) -> ThroughputPrediction:
    """Output tok/s of `batch_size` streams of `prompt_len` + `output_len` tokens in a closed loop:
    B x O / (B x prefill + O x decode step at batch B, context P + O/2). The prefills run at the
    gemm efficiency (they share steps with decode, unlike an idle engine's TTFT). With `kv_tokens`
    (the cache's tokens), B is capped by the sequences it holds in whole blocks."""
    if batch_size < 1 or prompt_len < 0 or output_len < 1:
        raise PlanError(f"a throughput prediction needs batch >= 1, prompt >= 0 and output >= 1 tokens "
                        f"(got {batch_size}, {prompt_len}, {output_len})")
    batch, notes = batch_size, []
    if kv_tokens is not None:
        held = kv_tokens // (math.ceil((prompt_len + output_len) / block_size) * block_size)
        if held < batch_size:
            notes.append(f"the KV cache holds {held} sequences of {prompt_len + output_len:,} tokens: "
                         f"{batch_size} streams run {held} at a time")
            batch = held
    if batch == 0:
        return ThroughputPrediction(requested_batch=batch_size, batch_size=0, prompt_len=prompt_len,
                                    output_len=output_len, output_tokens_per_s=0.0, roofline_output_tokens_per_s=0.0,
                                    prefill_ms_per_request=0.0, decode_step_ms=0.0, bound="memory", notes=notes)
    context = prompt_len + output_len / 2
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch, context_len=context)
    prompt_flops = prefill_flops(shape, params, prompt_len)

    def rate(eff: Efficiency) -> tuple[float, float, float, str]:
        prefill_s = prompt_flops / (tflops * 1e12 * eff.gemm)
        memory_s = nbytes / (bandwidth_gbs * 1e9 * eff.decode_bandwidth)
        compute_s = flops / (tflops * 1e12 * eff.gemm)
        step = max(memory_s, compute_s)
        return (batch * output_len / (batch * prefill_s + output_len * step), prefill_s, step,
                "memory" if memory_s >= compute_s else "compute")

    tok_s, prefill_s, step, bound = rate(efficiency)
    return ThroughputPrediction(requested_batch=batch_size, batch_size=batch, prompt_len=prompt_len,
                                output_len=output_len, output_tokens_per_s=tok_s,
                                roofline_output_tokens_per_s=rate(Efficiency.roofline())[0],
                                prefill_ms_per_request=prefill_s * 1e3, decode_step_ms=step * 1e3, bound=bound,
                                notes=notes)


@dataclass(frozen=True)
class ServingPrediction:
    """What predict_serving says about one configuration (the tuner's first filter)."""

    quant: str
    fits: bool
    weights_bytes: int
    free_bytes: int
    kv_tokens: int
    decode_b1: DecodePrediction | None  # batch-1 decode at context prompt + output / 2
    throughput: ThroughputPrediction | None
    efficiency: Efficiency


def predict_serving(config: Any, profile: HardwareProfile, *, quant: str, batch_size: int, prompt_len: int,
                    output_len: int, cache_ratio: float = FLAG_CACHE_RATIO, reserve_gib: float = DEFAULT_RESERVE_GIB,
                    block_size: int = 64, efficiency: Efficiency | None = None) -> ServingPrediction:
    """Batch-1 decode and closed-loop throughput of `config` on `profile` in weight format `quant`,
    with the KV cache at `cache_ratio` of the usable memory left after weights and reserve. A
    format that does not fit gets no speeds."""
    shape = ModelShape.from_config(config)
    params, weights = count_params(shape), weight_bytes(shape, quant)
    eff = efficiency if efficiency is not None else profile_efficiency(profile)
    free = profile.usable_memory_bytes - weights.total - int(reserve_gib * 2**30)
    kv = kv_fit(free, kv_bytes_per_token(shape), cache_ratio, max(prompt_len + output_len, 1), block_size)
    if free <= 0:
        return ServingPrediction(quant=quant, fits=False, weights_bytes=weights.total, free_bytes=free, kv_tokens=0,
                                 decode_b1=None, throughput=None, efficiency=eff)
    bandwidth, tflops = profile.bandwidth()[0], profile.tensor_tflops()[0]
    one = predict_decode(shape, params, weights, batch_size=1, context_len=prompt_len + output_len / 2,
                         bandwidth_gbs=bandwidth, tflops=tflops, efficiency=eff)
    many = predict_throughput(shape, params, weights, batch_size=batch_size, prompt_len=prompt_len,
                              output_len=output_len, bandwidth_gbs=bandwidth, tflops=tflops, efficiency=eff,
                              kv_tokens=kv.tokens, block_size=block_size)
    return ServingPrediction(quant=quant, fits=True, weights_bytes=weights.total, free_bytes=free, kv_tokens=kv.tokens,
                             decode_b1=one, throughput=many, efficiency=eff)


def recommend(plans: list[QuantPlan], profile: HardwareProfile, *, session_len: int, context_len: int,
              block_size: int) -> tuple[Recommendation | None, str]:
    """(the plan's recommendation, "") or (None, why there is none): see the module docstring."""
    candidates = []
    for q in plans:
        if q.quant not in ENGINE_DTYPES or not q.fits or (q.quant == "bf16" and not profile.bf16_supported):
            continue
        for kv in q.kv:
            if kv.sequences_in_blocks < 1:  # the engine refuses a cache that cannot hold one session
                continue
            for roof, pred in zip(q.decode, q.predicted_decode):
                if roof.cache_ratio_needed is not None and roof.cache_ratio_needed <= kv.cache_ratio:
                    # On a tie the ratio nearest the engine's default wins (its flag can be left out), then the smaller.
                    candidates.append((pred.tokens_per_s, -abs(kv.cache_ratio - FLAG_CACHE_RATIO), -kv.cache_ratio,
                                       q, kv, roof, pred))
    if not candidates:
        runnable = [q.quant for q in plans if q.quant in ENGINE_DTYPES]
        if not runnable:
            return None, (f"none of the formats planned is one the engine runs today ({', '.join(ENGINE_DTYPES)}; "
                          f"int8 and AWQ weights are not available yet)")
        return None, (f"no {'/'.join(runnable)} row fits: weights + reserve leave no cache for one session of "
                      f"{session_len:,} tokens and a batch at {context_len:,} tokens of context")
    *_, q, kv, roof, pred = max(candidates, key=lambda c: c[:3])
    engine = {"max_batch_size": pred.batch_size, "cache_max_entry_count": kv.cache_ratio, "session_len": session_len,
              "dtype": ENGINE_DTYPES[q.quant], "cache_block_seq_len": block_size}
    why = (f"the highest predicted decode speed of the rows planned whose batch KV fits its cache ratio: "
           f"{pred.tokens_per_s:,.0f} tok/s at batch {pred.batch_size}, context {context_len:,} "
           f"(roofline {roof.tokens_per_s:,.0f}); the cache holds {kv.sequences_in_blocks} sessions of "
           f"{session_len:,}")
    return Recommendation(quant=q.quant, cache_ratio=kv.cache_ratio, batch_size=pred.batch_size,
                          context_len=context_len, tokens_per_s=pred.tokens_per_s,
                          roofline_tokens_per_s=roof.tokens_per_s, engine=engine, why=why), ""


def _quant_plan(shape, params, profile, quant, *, session_len, ratios, batches, prompts, context, reserve,
                block_size, bandwidth, tflops, efficiency) -> QuantPlan:
    weights = weight_bytes(shape, quant)
    kv = kv_bytes_per_token(shape)
    memory = profile.usable_memory_bytes
    free = memory - weights.total - reserve
    fits = free > 0
    kv_rows = [kv_fit(free, kv, r, session_len, block_size) for r in ratios]
    speed = dict(bandwidth_gbs=bandwidth, tflops=tflops)
    # A format that does not fit runs at no speed: its rows stay empty rather than show a roofline.
    decode = [decode_estimate(shape, params, weights, batch_size=b, context_len=context, free_bytes=free,
                              block_size=block_size, **speed) for b in batches] if fits else []
    prefill = [prefill_estimate(shape, params, weights, prompt_len=p, **speed) for p in prompts] if fits else []
    predicted_decode = [predict_decode(shape, params, weights, batch_size=b, context_len=context,
                                       efficiency=efficiency, **speed) for b in batches] if fits else []
    predicted_prefill = [predict_prefill(shape, params, weights, prompt_len=p, efficiency=efficiency, **speed)
                         for p in prompts] if fits else []
    flags, notes = [], []
    gib = 2**30
    if not fits:
        flags.append(f"does not fit: weights {weights.total / gib:.1f} GiB + reserve {reserve / gib:.1f} GiB "
                     f"> {memory / gib:.1f} GiB")
    else:
        ref = kv_fit(free, kv, FLAG_CACHE_RATIO, session_len, block_size)
        if ref.tokens < MIN_SESSIONS * session_len:
            flags.append(f"little KV: {ref.tokens:,} tokens at ratio {FLAG_CACHE_RATIO}, fewer than "
                         f"{MIN_SESSIONS} sessions of {session_len:,}")
        elif ref.kv_bytes < weights.total:
            flags.append(f"little KV: {ref.kv_bytes / gib:.1f} GiB of cache at ratio {FLAG_CACHE_RATIO} < "
                         f"{weights.total / gib:.1f} GiB of weights ({ref.sequences_in_blocks} sessions of "
                         f"{session_len:,})")
    if quant == "bf16" and not profile.bf16_supported:
        notes.append(f"{profile.name} has no bf16 support: use fp16")
    return QuantPlan(quant=quant, weights=weights, kv_bytes_per_token=kv, free_bytes=free, fits=fits,
                     kv=kv_rows, decode=decode, prefill=prefill, predicted_decode=predicted_decode,
                     predicted_prefill=predicted_prefill, flags=flags, notes=notes)


def _check_settings(quants, session_len, ratios, batches, reserve_gib, block_size) -> None:
    if not quants:
        raise PlanError(f"no weight format given: choose from {', '.join(QUANTS)}")
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise PlanError(f"unknown weight format {bad[0]!r}: choose from {', '.join(QUANTS)}")
    if session_len < 1:
        raise PlanError(f"session length must be >= 1 (got {session_len})")
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise PlanError(f"cache ratios must be fractions in (0, 1] (got {ratios})")
    if not batches or any(b < 1 for b in batches):
        raise PlanError(f"batch sizes must be >= 1 (got {batches})")
    if reserve_gib < 0:
        raise PlanError(f"the runtime reserve must be >= 0 GiB (got {reserve_gib})")
    if block_size < 1:
        raise PlanError(f"block size must be >= 1 (got {block_size})")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _getter(config: Any):
    if isinstance(config, Mapping):
        return config.get
    return lambda key: getattr(config, key, None)
