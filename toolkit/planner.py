"""The plan of a model on a card: memory fit per weight format, roofline estimates, the calibrated
predictions beside them, the flags and the closing recommendation (`opsctl plan`).

Pure functions of an HF config (a transformers PretrainedConfig or a plain dict), a hardware
profile and a weight format; no weights are read and no GPU is needed. What the model weighs
(parameters, weight bytes, KV bytes, the free memory and the KV cache a ratio gives) is
toolkit.model_sizes; the calibrated predictions and the bytes and FLOPs of a step are
toolkit.predictions. Their public names are re-exported here, so `from toolkit.planner import X`
keeps working for them. What this module adds:

- Roofline decode step at batch B and context C = max(bytes / bandwidth, FLOPs / tensor FLOP/s),
  bytes and FLOPs as predictions.decode_work gives them; tokens/s = B / step time.
- Roofline prefill of P tokens = max(FLOPs / tensor FLOP/s, weight bytes / bandwidth), FLOPs as
  predictions.prefill_flops gives them.
- Tensor parallelism: a profile of N cards (`--gpu rtx4090x2`) is planned at every tp from 1 to N
  that the engine accepts for the model (or the tps asked for); each row is one (format, tp), its
  memory, KV cache and sessions per GPU, its speeds one GPU's work plus the collectives over the
  cards' link (predictions.tp_comm). A tp the engine refuses is listed in `tp_pruned` with its reason.
- The closing recommendation of a plan: among the formats the engine runs today (ENGINE_DTYPES)
  that fit, the tp, cache ratio and batch (of the rows planned) with the highest predicted decode
  tok/s whose batch KV fits that ratio and whose cache holds a whole session; on a tie, the ratio
  nearest LMDeploy's default 0.8, then the smaller, then the fewer cards. So a tp > 1 is recommended
  where it is predicted faster (or is the only way to fit); its serve line carries --tp.

Flags (the rule is in FLAG_RULES, repeated in the output):
- "does not fit": weights + reserve exceed the card's memory (per GPU); such a format gets no speeds.
- "little KV": at cache ratio 0.8 (LMDeploy's default) the cache holds fewer than 2 sessions of
  session_len tokens, or takes fewer bytes than the weights (a full batch then reaches less than
  half the decode tokens/s that the bandwidth allows at that context).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from .model_sizes import (AWQ_GROUP_SIZE, DEFAULT_RESERVE_GIB, FLAG_CACHE_RATIO, KV_DTYPE_BYTES, QUANTS, KvFit, Linear,
                          ModelShape, ParamCounts, PlanError, WeightBytes, count_params, head_int8_by_default,
                          kv_bytes_per_token, kv_fit, layer_linears, tp_refusal, weight_bytes)
from .predictions import (DecodePrediction, PrefillPrediction, ServingPrediction, ThroughputPrediction, TpComm,
                          allreduce_seconds, decode_work, predict_decode, predict_prefill, predict_serving,
                          predict_throughput, prefill_flops, tp_comm)
from .profiles import Efficiency, HardwareProfile, TpLink, efficiency as profile_efficiency

DEFAULT_QUANTS = ("bf16", "int8", "awq")
MIN_SESSIONS = 2
FLAG_RULES = {
    "does not fit": "weights + runtime reserve > usable card memory, per GPU (no speeds shown)",
    "little KV": (f"at cache ratio {FLAG_CACHE_RATIO} the KV cache holds fewer than {MIN_SESSIONS} sessions of "
                  f"session_len tokens, or is smaller than the weights"),
}
# Weight formats the engine serves today, as its --dtype; int8 and AWQ weights are not available
# yet (engine/engine.py refuses model_format awq), so a plan recommends neither.
ENGINE_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}

# The plan's own names, and those of model_sizes and predictions that callers (the CLI, calibrate,
# the tuner, the tests) have long imported from here: the split kept every `from toolkit.planner import X`.
__all__ = ["DEFAULT_QUANTS", "MIN_SESSIONS", "FLAG_RULES", "ENGINE_DTYPES", "DecodeEstimate", "PrefillEstimate",
           "QuantPlan", "PrunedTp", "Recommendation", "Plan", "make_plan", "plan_tps", "decode_estimate",
           "prefill_estimate", "recommend",
           # from model_sizes
           "AWQ_GROUP_SIZE", "DEFAULT_RESERVE_GIB", "FLAG_CACHE_RATIO", "KV_DTYPE_BYTES", "QUANTS", "KvFit", "Linear",
           "ModelShape", "ParamCounts", "PlanError", "WeightBytes", "count_params", "kv_bytes_per_token", "kv_fit",
           "layer_linears", "tp_refusal", "weight_bytes",
           # from predictions
           "DecodePrediction", "PrefillPrediction", "ServingPrediction", "ThroughputPrediction", "TpComm",
           "allreduce_seconds", "decode_work", "predict_decode", "predict_prefill", "predict_serving",
           "predict_throughput", "prefill_flops", "tp_comm"]


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
    comm_ms: float = 0.0  # tensor-parallel collectives in step_ms (0 at tp 1)


@dataclass(frozen=True)
class PrefillEstimate:
    """Roofline time of one prompt's prefill."""

    prompt_len: int
    flops: int
    seconds: float
    bound: str
    comm_ms: float = 0.0  # tensor-parallel collectives in seconds (0 at tp 1)


@dataclass(frozen=True)
class QuantPlan:
    """Everything about one weight format at one tp on the card(s). A format that does not fit has no
    speeds. At tp > 1 bytes are per GPU (weights, KV bytes per token, free memory); tokens and sessions
    are the cache's (every GPU holds its heads' share of each token)."""

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
    tp: int = 1
    link: TpLink | None = None  # what the collectives cross at tp > 1


@dataclass(frozen=True)
class PrunedTp:
    """A tp the plan does not show for a format, and why (the engine's refusal, or no link)."""

    tp: int
    quant: str
    reason: str


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
    tp: int = 1


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
    quant_policy: int = 0  # the KV cache of every row: 16-bit (0), int8 (8) or int4 (4)
    gpu_count: int = 1  # cards in the machine (memory and speeds are per card)
    profile_spec: str = ""  # what --gpu takes for it: rtx4090, rtx4090x2
    tps: list[int] = field(default_factory=lambda: [1])  # the tps planned (rows may lack a format a tp refuses)
    tp_pruned: list[PrunedTp] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(config: Any, profile: HardwareProfile, *, quants: Iterable[str] = DEFAULT_QUANTS,
              session_len: int = 4096, cache_ratios: Iterable[float] = (0.5, 0.8, 0.9),
              batch_sizes: Iterable[int] = (1, 8, 32, 128, 256), prompt_lens: Iterable[int] | None = None,
              context_len: int | None = None, reserve_gib: float = DEFAULT_RESERVE_GIB,
              block_size: int = 64, model_name: str = "", efficiency: Efficiency | None = None,
              quant_policy: int = 0, tps: Iterable[int] | None = None) -> Plan:
    """Plan `config` on `profile` for each weight format in `quants` (see the module docstring), the
    KV cache 16-bit or, with quant_policy 8 / 4, int8 / int4 codes and their scales.

    context_len (decode) defaults to session_len // 2; prompt_lens (prefill) to 512, 2048 and
    session_len, those not longer than session_len. efficiency defaults to the profile's
    (toolkit.profiles.efficiency: calibrated, a default from the calibrated cards, or the roofline).
    tps defaults to 1 .. profile.gpu_count (plan_tps); a tp beyond the card count is a PlanError, and
    so is a tp asked for that the engine refuses for every format planned.
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
    asked = tps is not None
    tps = plan_tps(profile, tps)
    plans, pruned = [], []
    for tp in tps:
        link = profile.tp_link(tp) if tp > 1 else None
        for q in quants:
            reason = tp_refusal(shape, tp, q)
            if not reason and tp > 1 and link is None:
                reason = (f"{profile.name} names no link between its cards (nvlink_gbs, pcie_gen or tp_link_gbs): "
                          f"tp {tp} cannot be priced")
            if reason:
                pruned.append(PrunedTp(tp=tp, quant=q, reason=reason))
                continue
            plans.append(_quant_plan(shape, params, profile, q, session_len=session_len, ratios=ratios,
                                     batches=batches, prompts=prompts, context=context, reserve=reserve,
                                     block_size=block_size, bandwidth=bandwidth, tflops=tflops, efficiency=eff,
                                     quant_policy=quant_policy, tp=tp, link=link))
    # A tp asked for that refuses every format is an error; one planned by default is only listed
    # (tp 1 splits nothing, so a default plan always has rows).
    for tp in tps if asked else ():
        if not any(q.tp == tp for q in plans):
            raise PlanError(next(p.reason for p in pruned if p.tp == tp))
    recommendation, why_none = recommend(plans, profile, session_len=session_len, context_len=context,
                                         block_size=block_size, quant_policy=quant_policy)
    return Plan(model=model_name, profile=profile.name, profile_display_name=profile.display_name,
                memory_bytes=profile.usable_memory_bytes, memory_source=memory_source,
                datasheet_memory_bytes=profile.memory_bytes, reserve_bytes=reserve, bandwidth_gbs=bandwidth,
                bandwidth_source=bandwidth_source, tensor_tflops=tflops, tensor_tflops_source=tflops_source,
                efficiency=eff, session_len=session_len, context_len=context, block_size=block_size,
                batch_sizes=batches, prompt_lens=prompts, shape=shape, params=params, quants=plans,
                recommendation=recommendation, no_recommendation=why_none, flag_rules=dict(FLAG_RULES),
                notes=notes, quant_policy=quant_policy, gpu_count=profile.gpu_count, profile_spec=profile.spec,
                tps=tps, tp_pruned=pruned)


def plan_tps(profile: HardwareProfile, tps: Iterable[int] | None = None) -> list[int]:
    """The tps a plan covers: those asked for (each within the machine's cards), else 1 .. gpu_count."""
    if tps is None:
        return list(range(1, profile.gpu_count + 1))
    tps = sorted(set(tps))
    if not tps or tps[0] < 1:
        raise PlanError(f"--tp {tps[0] if tps else '(none)'}: must be >= 1")
    if tps[-1] > profile.gpu_count:
        cards = "one card" if profile.gpu_count == 1 else f"{profile.gpu_count} cards"
        raise PlanError(f"--tp {tps[-1]} needs {tps[-1]} cards and --gpu {profile.spec} has {cards}: ask for the "
                        f"machine as {profile.name}x{tps[-1]} (NAMExN: N cards of a profile)")
    return tps


def decode_estimate(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, batch_size: int,
                    context_len: int, bandwidth_gbs: float, tflops: float, free_bytes: int,
                    block_size: int = 64, quant_policy: int = 0, link: TpLink | None = None) -> DecodeEstimate:
    """Roofline decode step of `batch_size` sequences at `context_len` tokens of context each; at
    tp > 1 (params and weights of one rank) one GPU's bytes and FLOPs plus the collectives over `link`."""
    kv = kv_bytes_per_token(shape, quant_policy, weights.tp)
    nbytes, flops = decode_work(shape, params, weights, batch_size=batch_size, context_len=context_len,
                                quant_policy=quant_policy)
    comm = tp_comm(shape, tokens=batch_size, sampled_rows=batch_size, tp=weights.tp, link=link).seconds
    memory_s, compute_s = nbytes / (bandwidth_gbs * 1e9), flops / (tflops * 1e12)
    step = max(memory_s, compute_s) + comm
    batch_kv = batch_size * math.ceil(context_len / block_size) * block_size * kv
    return DecodeEstimate(batch_size=batch_size, context_len=context_len, bytes_per_step=nbytes,
                          flops_per_step=flops, step_ms=step * 1e3, tokens_per_s=batch_size / step,
                          bound="memory" if memory_s >= compute_s else "compute",
                          cache_ratio_needed=batch_kv / free_bytes if free_bytes > 0 else None, comm_ms=comm * 1e3)


def prefill_estimate(shape: ModelShape, params: ParamCounts, weights: WeightBytes, *, prompt_len: int,
                     bandwidth_gbs: float, tflops: float, link: TpLink | None = None) -> PrefillEstimate:
    """Roofline time of a causal prefill of `prompt_len` tokens (weights read once), plus its
    collectives over `link` at tp > 1."""
    flops = prefill_flops(shape, params, prompt_len)
    comm = tp_comm(shape, tokens=prompt_len, sampled_rows=1, tp=weights.tp, link=link).seconds
    compute_s, memory_s = flops / (tflops * 1e12), weights.decode / (bandwidth_gbs * 1e9)
    return PrefillEstimate(prompt_len=prompt_len, flops=flops, seconds=max(compute_s, memory_s) + comm,
                           bound="compute" if compute_s >= memory_s else "memory", comm_ms=comm * 1e3)


def recommend(plans: list[QuantPlan], profile: HardwareProfile, *, session_len: int, context_len: int,
              block_size: int, quant_policy: int = 0) -> tuple[Recommendation | None, str]:
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
                    # On a tie the ratio nearest the engine's default wins (its flag can be left out), then
                    # the smaller, then the fewer cards.
                    rank = (pred.tokens_per_s, -abs(kv.cache_ratio - FLAG_CACHE_RATIO), -kv.cache_ratio, -q.tp)
                    candidates.append((rank, q, kv, roof, pred))
    if not candidates:
        runnable = [q.quant for q in plans if q.quant in ENGINE_DTYPES]
        if not runnable:
            return None, (f"none of the formats planned is one the engine runs today ({', '.join(ENGINE_DTYPES)}; "
                          f"int8 and AWQ weights are not available yet)")
        return None, (f"no {'/'.join(dict.fromkeys(runnable))} row fits: weights + reserve leave no cache for one "
                      f"session of {session_len:,} tokens and a batch at {context_len:,} tokens of context")
    _, q, kv, roof, pred = max(candidates, key=lambda c: c[0])
    engine = {"max_batch_size": pred.batch_size, "cache_max_entry_count": kv.cache_ratio, "session_len": session_len,
              "dtype": ENGINE_DTYPES[q.quant], "cache_block_seq_len": block_size}
    if quant_policy:
        engine["quant_policy"] = quant_policy
    if q.tp > 1:
        engine["tp"] = q.tp
    why = (f"the highest predicted decode speed of the rows planned whose batch KV fits its cache ratio: "
           f"{pred.tokens_per_s:,.0f} tok/s at batch {pred.batch_size}, context {context_len:,} "
           f"(roofline {roof.tokens_per_s:,.0f}); the cache holds {kv.sequences_in_blocks} sessions of "
           f"{session_len:,}")
    if q.tp > 1:
        why += (f"; tensor parallel over {q.tp} cards, the collectives {pred.comm_ms / pred.step_ms:.0%} of the step "
                f"over {q.link.kind}")
        fewer = [c for c in candidates if c[1].tp < q.tp]
        if fewer:
            _, fewer_q, _, _, fewer_pred = max(fewer, key=lambda c: c[0])
            why += (f"; the best on fewer cards is {fewer_pred.tokens_per_s:,.0f} tok/s (tp {fewer_q.tp}, batch "
                    f"{fewer_pred.batch_size})")
        else:
            why += "; on fewer cards no row fits a session and a batch"
    return Recommendation(quant=q.quant, cache_ratio=kv.cache_ratio, batch_size=pred.batch_size,
                          context_len=context_len, tokens_per_s=pred.tokens_per_s,
                          roofline_tokens_per_s=roof.tokens_per_s, engine=engine, why=why, tp=q.tp), ""


def _quant_plan(shape, params, profile, quant, *, session_len, ratios, batches, prompts, context, reserve,
                block_size, bandwidth, tflops, efficiency, quant_policy=0, tp=1, link=None) -> QuantPlan:
    # One GPU's share at tp > 1: the speeds below are one rank's work plus the collectives over `link`.
    params = count_params(shape, tp) if tp > 1 else params
    weights = weight_bytes(shape, quant, tp, head_int8=head_int8_by_default(quant, profile.arch))
    kv = kv_bytes_per_token(shape, quant_policy, tp)
    memory = profile.usable_memory_bytes
    free = memory - weights.total - reserve
    fits = free > 0
    kv_rows = [kv_fit(free, kv, r, session_len, block_size) for r in ratios]
    speed = dict(bandwidth_gbs=bandwidth, tflops=tflops, link=link)
    # A format that does not fit runs at no speed: its rows stay empty rather than show a roofline.
    decode = [decode_estimate(shape, params, weights, batch_size=b, context_len=context, free_bytes=free,
                              block_size=block_size, quant_policy=quant_policy, **speed) for b in batches] if fits else []
    prefill = [prefill_estimate(shape, params, weights, prompt_len=p, **speed) for p in prompts] if fits else []
    predicted_decode = [predict_decode(shape, params, weights, batch_size=b, context_len=context,
                                       efficiency=efficiency, quant_policy=quant_policy, **speed)
                        for b in batches] if fits else []
    predicted_prefill = [predict_prefill(shape, params, weights, prompt_len=p, efficiency=efficiency, **speed)
                         for p in prompts] if fits else []
    flags, notes = [], []
    gib = 2**30
    per_gpu = " per GPU" if tp > 1 else ""
    if not fits:
        flags.append(f"does not fit: weights {weights.total / gib:.1f} GiB{per_gpu} + reserve {reserve / gib:.1f} GiB "
                     f"> {memory / gib:.1f} GiB")
    else:
        ref = kv_fit(free, kv, FLAG_CACHE_RATIO, session_len, block_size)
        if ref.tokens < MIN_SESSIONS * session_len:
            flags.append(f"little KV: {ref.tokens:,} tokens at ratio {FLAG_CACHE_RATIO}, fewer than "
                         f"{MIN_SESSIONS} sessions of {session_len:,}")
        elif ref.kv_bytes < weights.total:
            flags.append(f"little KV: {ref.kv_bytes / gib:.1f} GiB of cache at ratio {FLAG_CACHE_RATIO} < "
                         f"{weights.total / gib:.1f} GiB of weights{per_gpu} ({ref.sequences_in_blocks} sessions of "
                         f"{session_len:,})")
    if quant == "bf16" and not profile.bf16_supported:
        notes.append(f"{profile.name} has no bf16 support: use fp16")
    return QuantPlan(quant=quant, weights=weights, kv_bytes_per_token=kv, free_bytes=free, fits=fits,
                     kv=kv_rows, decode=decode, prefill=prefill, predicted_decode=predicted_decode,
                     predicted_prefill=predicted_prefill, flags=flags, notes=notes, tp=tp, link=link)


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

