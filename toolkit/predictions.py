"""The calibrated predictions: what the engine will reach on a card, not only what the card allows.

Each prediction is the roofline with its two parts scaled by the profile's efficiencies
(toolkit.profiles.efficiency: calibrated from committed runs by `python -m toolkit.calibrate`, else
a default from the calibrated cards, else 1). The model's sizes come from toolkit.model_sizes; the
work of a step, shared with the plan's roofline estimates (toolkit.planner), is here:

- Decode at batch B and context C, per step: bytes = decode weights (all but the embedding table,
  which is looked up row by row; a tied table counts once, read whole as the lm_head) +
  B x C x kv_bytes_per_token; FLOPs = B x (2 x multiplying params + 4 x layers x heads x d x C).
- Prefill of P tokens: FLOPs = 2 x multiplying params x P + 2 x layers x heads x d x P^2 (causal
  attention: QK^T and PV over half the square).
- Tensor FLOP/s is the 16-bit dense figure for every format (weight-only int8 and AWQ dequantize
  to 16 bits and multiply there); the profile's measured figures win over the datasheet ones.
- Tensor parallelism (weights and params of one rank: model_sizes' tp): bytes and FLOPs are one GPU's
  (its weights, its KV heads, its query heads), and each forward over T tokens adds the collectives the
  engine runs (engine/distributed.py): 2 x layers + 1 all-reduces (after every attention and MLP block,
  and after the vocab-parallel embedding) of T x hidden x 2 bytes, each a ring moving 2 (tp - 1) / tp of
  its buffer over every GPU's link, plus the fp32 logits of the sampled rows gathered on rank 0 and the
  sampled ids broadcast back; each collective also pays the link's fixed latency (TpLink). The step is
  the longer of memory and compute plus that communication: the engine does not overlap them. Not
  counted: the pickled step plan rank 0 sends the workers over gloo (host side).

The predictions:
- Decode step = max(bytes / (bandwidth x decode_bandwidth), FLOPs / (tensor FLOP/s x gemm)).
- Prefill of one prompt = max(FLOPs / (tensor FLOP/s x prefill), weight bytes / (bandwidth x
  decode_bandwidth)): the TTFT of an idle engine.
- Serving throughput of B streams, each a prompt of P tokens then O output tokens, in a closed loop
  (a finished stream is replaced): per round of B requests, B prefills at the gemm efficiency plus
  O decode steps at batch B and mean context P + O/2, so output tok/s = B x O / (B x prefill +
  O x step). B is capped by the sequences of P + O tokens the KV cache holds, where known.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .model_sizes import (DEFAULT_RESERVE_GIB, FLAG_CACHE_RATIO, ModelShape, ParamCounts, PlanError, WeightBytes,
                          count_params, head_int8_by_default, kv_bytes_per_token, kv_fit, vocab_rows_per_rank,
                          weight_bytes)
from .profiles import Efficiency, HardwareProfile, TpLink, efficiency as profile_efficiency

ACTIVATION_BYTES = 2  # hidden states are 16-bit in every weight format (int8 and AWQ are weight-only)
LOGIT_BYTES = 4  # the LM head's logits are fp32 before rank 0 gathers them (engine/layers/embedding.py)


@dataclass(frozen=True)
class DecodePrediction:
    """Predicted decode speed at one batch size and context: the roofline scaled by the efficiencies."""

    batch_size: int
    context_len: float
    tokens_per_s: float
    roofline_tokens_per_s: float
    step_ms: float
    bound: str  # which scaled part is the longer: "memory" or "compute"
    comm_ms: float = 0.0  # tensor-parallel collectives in step_ms (0 at tp 1)


@dataclass(frozen=True)
class PrefillPrediction:
    """Predicted time of one prompt's prefill on an idle engine (its TTFT)."""

    prompt_len: int
    seconds: float
    roofline_seconds: float
    bound: str
    comm_ms: float = 0.0  # tensor-parallel collectives in seconds (0 at tp 1)


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
    decode_comm_ms: float = 0.0  # tensor-parallel collectives in decode_step_ms (0 at tp 1)


@dataclass(frozen=True)
class TpComm:
    """The tensor-parallel collectives of one forward of `tokens` tokens sampling `sampled_rows` of them."""

    tp: int
    allreduces: int  # 2 x layers + 1
    allreduce_bytes: int  # the buffer of one: tokens x hidden x ACTIVATION_BYTES
    allreduce_seconds: float  # one of them
    gather_bytes: int  # the other ranks' logits that reach rank 0 over its link
    seconds: float  # everything: all-reduces, the logits gather, the sampled ids broadcast

    @classmethod
    def none(cls) -> "TpComm":
        return cls(tp=1, allreduces=0, allreduce_bytes=0, allreduce_seconds=0.0, gather_bytes=0, seconds=0.0)


def allreduce_seconds(nbytes: float, tp: int, link: TpLink) -> float:
    """A ring all-reduce of an `nbytes` buffer over `tp` ranks: every GPU sends (and receives) 2 (tp - 1)
    / tp of it over its link, at link.gbs per direction, plus the link's fixed latency. 0 at tp 1."""
    if tp == 1:
        return 0.0
    return 2 * (tp - 1) / tp * nbytes / (link.gbs * 1e9) + link.latency_us * 1e-6


def tp_comm(shape: ModelShape, *, tokens: float, sampled_rows: float, tp: int, link: TpLink | None) -> TpComm:
    """The collectives of one forward over `tokens` tokens at tensor parallelism `tp` (module docstring):
    (2 x layers + 1) all-reduces of tokens x hidden x 2 bytes, the (tp - 1) other ranks' fp32 logits of
    `sampled_rows` rows (ceil(V / tp) each) into rank 0's link, the sampled ids broadcast (latency only)."""
    if tp == 1:
        return TpComm.none()
    if link is None:
        raise PlanError(f"tp {tp} needs the link between the cards, and the profile names none (nvlink_gbs, "
                        f"pcie_gen or tp_link_gbs)")
    allreduces = 2 * shape.num_layers + 1
    buffer = int(tokens * shape.hidden_size * ACTIVATION_BYTES)
    one = allreduce_seconds(buffer, tp, link)
    gather = int((tp - 1) * sampled_rows * vocab_rows_per_rank(shape, tp) * LOGIT_BYTES)
    latency = link.latency_us * 1e-6
    seconds = allreduces * one + (gather / (link.gbs * 1e9) + latency) + latency
    return TpComm(tp=tp, allreduces=allreduces, allreduce_bytes=buffer, allreduce_seconds=one, gather_bytes=gather,
                  seconds=seconds)


def _tp_of(params: ParamCounts, weights: WeightBytes | None = None) -> int:
    """The tp that `params` (and `weights`) were counted at: both must be one rank's of the same tp."""
    if weights is not None and weights.tp != params.tp:
        raise PlanError(f"parameters counted at tp {params.tp} but weights at tp {weights.tp}")
    return params.tp


def decode_work(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                context_len: float, quant_policy: int = 0) -> tuple[float, float]:
    """(bytes, FLOPs) of one decode step of `batch_size` sequences at `context_len` tokens each, the
    KV cache 16-bit or (quant_policy 8 / 4) int8 / int4 with its scales; at tp > 1 (params and weights
    of one rank) one GPU's: its weights, its KV heads, its query heads."""
    tp = _tp_of(params, weights)
    nbytes = weights.decode + batch_size * context_len * kv_bytes_per_token(shape, quant_policy, tp)
    attention = 4 * shape.num_layers * (shape.num_heads // tp) * shape.head_dim * context_len
    return nbytes, batch_size * (2 * params.multiplying + attention)


def prefill_flops(shape: ModelShape, params: ParamCounts, prompt_len: float) -> float:
    """FLOPs of a causal prefill of `prompt_len` tokens (attention over half the square); one GPU's at tp > 1."""
    heads = shape.num_heads // _tp_of(params)
    return 2 * params.multiplying * prompt_len + 2 * shape.num_layers * heads * shape.head_dim * prompt_len**2


def predict_decode(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                   context_len: float, bandwidth_gbs: float, tflops: float, efficiency: Efficiency,
                   quant_policy: int = 0, link: TpLink | None = None) -> DecodePrediction:
    """Decode tok/s the engine is predicted to reach: the memory part of the step at
    bandwidth x decode_bandwidth, the compute part at tensor FLOP/s x gemm, the longer one wins; at
    tp > 1 plus the step's collectives over `link` (tp_comm)."""
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch_size, context_len=context_len,
                                quant_policy=quant_policy)
    comm = tp_comm(shape, tokens=batch_size, sampled_rows=batch_size, tp=params.tp, link=link).seconds
    memory_s = nbytes / (bandwidth_gbs * 1e9 * efficiency.decode_bandwidth)
    compute_s = flops / (tflops * 1e12 * efficiency.gemm)
    step = max(memory_s, compute_s) + comm
    roofline = max(nbytes / (bandwidth_gbs * 1e9), flops / (tflops * 1e12)) + comm
    return DecodePrediction(batch_size=batch_size, context_len=context_len, tokens_per_s=batch_size / step,
                            roofline_tokens_per_s=batch_size / roofline, step_ms=step * 1e3,
                            bound="memory" if memory_s >= compute_s else "compute", comm_ms=comm * 1e3)


def predict_prefill(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, prompt_len: int,
                    bandwidth_gbs: float, tflops: float, efficiency: Efficiency,
                    link: TpLink | None = None) -> PrefillPrediction:
    """Predicted TTFT of one prompt on an idle engine: FLOPs at tensor FLOP/s x prefill (weights
    read once at bandwidth x decode_bandwidth, for a prompt so short that reading them is longer);
    at tp > 1 plus the forward's collectives over `link`."""
    flops = prefill_flops(shape, params, prompt_len)
    comm = tp_comm(shape, tokens=prompt_len, sampled_rows=1, tp=_tp_of(params, weights), link=link).seconds
    # The unscaled roofline is worked out here, as toolkit.planner.prefill_estimate does, rather than
    # called: the planner imports this module, so calling back into it would be an import cycle.
    roofline_s = max(flops / (tflops * 1e12), weights.decode / (bandwidth_gbs * 1e9)) + comm
    compute_s = flops / (tflops * 1e12 * efficiency.prefill)
    memory_s = weights.decode / (bandwidth_gbs * 1e9 * efficiency.decode_bandwidth)
    return PrefillPrediction(prompt_len=prompt_len, seconds=max(compute_s, memory_s) + comm,
                             roofline_seconds=roofline_s, bound="compute" if compute_s >= memory_s else "memory",
                             comm_ms=comm * 1e3)


def predict_throughput(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                       prompt_len: int, output_len: int, bandwidth_gbs: float, tflops: float, efficiency: Efficiency,
                       kv_tokens: int | None = None, block_size: int = 64, quant_policy: int = 0,
                       link: TpLink | None = None) -> ThroughputPrediction:
    """Output tok/s of `batch_size` streams of `prompt_len` + `output_len` tokens in a closed loop:
    B x O / (B x prefill + O x decode step at batch B, context P + O/2). The prefills run at the
    gemm efficiency (they share steps with decode, unlike an idle engine's TTFT). With `kv_tokens`
    (the cache's tokens), B is capped by the sequences it holds in whole blocks. At tp > 1 (params
    and weights of one rank) each prefill and step adds its collectives over `link`."""
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
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch, context_len=context, quant_policy=quant_policy)
    prompt_flops = prefill_flops(shape, params, prompt_len)
    prefill_comm = tp_comm(shape, tokens=prompt_len, sampled_rows=1, tp=params.tp, link=link).seconds
    step_comm = tp_comm(shape, tokens=batch, sampled_rows=batch, tp=params.tp, link=link).seconds

    def rate(eff: Efficiency) -> tuple[float, float, float, str]:
        prefill_s = prompt_flops / (tflops * 1e12 * eff.gemm) + prefill_comm
        memory_s = nbytes / (bandwidth_gbs * 1e9 * eff.decode_bandwidth)
        compute_s = flops / (tflops * 1e12 * eff.gemm)
        step = max(memory_s, compute_s) + step_comm
        return (batch * output_len / (batch * prefill_s + output_len * step), prefill_s, step,
                "memory" if memory_s >= compute_s else "compute")

    tok_s, prefill_s, step, bound = rate(efficiency)
    return ThroughputPrediction(requested_batch=batch_size, batch_size=batch, prompt_len=prompt_len,
                                output_len=output_len, output_tokens_per_s=tok_s,
                                roofline_output_tokens_per_s=rate(Efficiency.roofline())[0],
                                prefill_ms_per_request=prefill_s * 1e3, decode_step_ms=step * 1e3, bound=bound,
                                notes=notes, decode_comm_ms=step_comm * 1e3)


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
    tp: int = 1  # > 1: weights_bytes and free_bytes are one GPU's


def predict_serving(config: Any, profile: HardwareProfile, *, quant: str, batch_size: int, prompt_len: int,
                    output_len: int, cache_ratio: float = FLAG_CACHE_RATIO, reserve_gib: float = DEFAULT_RESERVE_GIB,
                    block_size: int = 64, efficiency: Efficiency | None = None,
                    quant_policy: int = 0, tp: int = 1) -> ServingPrediction:
    """Batch-1 decode and closed-loop throughput of `config` on `profile` in weight format `quant`,
    with the KV cache (16-bit, or int8/int4 by quant_policy) at `cache_ratio` of the usable memory
    left after weights and reserve. A format that does not fit gets no speeds. With tp > 1 the model
    is split over `tp` such cards (memory per GPU, collectives over profile.tp_link(tp)); a tp the
    engine refuses for the model is a PlanError with its reason."""
    shape = ModelShape.from_config(config)
    params = count_params(shape, tp)
    weights = weight_bytes(shape, quant, tp, head_int8=head_int8_by_default(quant, profile.arch))
    eff = efficiency if efficiency is not None else profile_efficiency(profile)
    free = profile.usable_memory_bytes - weights.total - int(reserve_gib * 2**30)
    kv = kv_fit(free, kv_bytes_per_token(shape, quant_policy, tp), cache_ratio, max(prompt_len + output_len, 1),
                block_size)
    if free <= 0:
        return ServingPrediction(quant=quant, fits=False, weights_bytes=weights.total, free_bytes=free, kv_tokens=0,
                                 decode_b1=None, throughput=None, efficiency=eff, tp=tp)
    bandwidth, tflops = profile.bandwidth()[0], profile.tensor_tflops()[0]
    link = profile.tp_link(tp) if tp > 1 else None
    one = predict_decode(shape, params, weights, batch_size=1, context_len=prompt_len + output_len / 2,
                         bandwidth_gbs=bandwidth, tflops=tflops, efficiency=eff, quant_policy=quant_policy, link=link)
    many = predict_throughput(shape, params, weights, batch_size=batch_size, prompt_len=prompt_len,
                              output_len=output_len, bandwidth_gbs=bandwidth, tflops=tflops, efficiency=eff,
                              kv_tokens=kv.tokens, block_size=block_size, quant_policy=quant_policy, link=link)
    return ServingPrediction(quant=quant, fits=True, weights_bytes=weights.total, free_bytes=free, kv_tokens=kv.tokens,
                             decode_b1=one, throughput=many, efficiency=eff, tp=tp)

