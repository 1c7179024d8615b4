"""The configurations a tune may try: axes from the profile, pruned by the planner before anything runs.

Axes (EngineConfig fields): max_batch_size, cache_max_entry_count, max_prefill_token_num,
enable_prefix_caching, and the weight format. A value is pruned, with its reason kept for the
report, when the planner shows it cannot work on the target card: weights that do not fit, a cache
that cannot hold one session, a batch the cache could never hold at once (more than twice the
sequences of this workload that fit: the scheduler would only preempt). Weight formats the engine
cannot run yet (int8, AWQ: the quantization issue) are listed as "not available yet".
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from toolkit.model_sizes import (DEFAULT_RESERVE_GIB, FLAG_CACHE_RATIO, ModelShape, kv_bytes_per_token, kv_fit,
                                 weight_bytes)
from toolkit.predictions import predict_serving
from toolkit.profiles import HardwareProfile

from .schema import Prediction, Pruned, TuneWorkload

AXES = ("max_batch_size", "cache_max_entry_count", "max_prefill_token_num", "enable_prefix_caching")
GPU_VALUES = {"max_batch_size": [32, 64, 128, 256], "cache_max_entry_count": [0.7, 0.8, 0.9, 0.95],
              "max_prefill_token_num": [2048, 4096, 8192, 16384], "enable_prefix_caching": [False, True]}
# The CPU profile: two cores and a 135M model, loads of 1-8 streams; the values that change something
# there (a batch cap below the load; a prefill budget that splits four 64-token prompts over steps),
# few enough that `make demo` (4 trials) stays under 5 minutes.
CPU_VALUES = {"max_batch_size": [2, 4], "cache_max_entry_count": [0.8], "max_prefill_token_num": [128],
              "enable_prefix_caching": [False]}
FORMATS_AVAILABLE = ("bf16", "fp16", "float32")
FORMATS_LATER = {"int8": "8-bit weights are not available yet (the quantization issue)",
                 "awq": "4-bit AWQ is not available yet (the quantization issue)"}


@dataclass
class Space:
    weight_format: str
    axes: dict[str, list]
    pruned: list[Pruned] = field(default_factory=list)
    kv_tokens: dict[float, int] = field(default_factory=dict)  # planner KV tokens by cache ratio

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def grid(self) -> list[dict]:
        names = list(self.axes)
        return [dict(zip(names, values)) for values in itertools.product(*(self.axes[n] for n in names))]


def parse_axis(text: str) -> tuple[str, list]:
    """`--axis max_batch_size=8,16` -> ("max_batch_size", [8, 16]), values typed like the field."""
    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in AXES or not values:
        raise ValueError(f"--axis {text!r}: use NAME=V1,V2 with NAME one of {', '.join(AXES)}")
    out = []
    for v in values.split(","):
        v = v.strip()
        if name == "enable_prefix_caching":
            if v.lower() not in ("true", "false", "on", "off", "1", "0"):
                raise ValueError(f"--axis {text!r}: {v!r} is not on/off")
            out.append(v.lower() in ("true", "on", "1"))
        else:
            try:
                out.append(float(v) if name == "cache_max_entry_count" else int(v))
            except ValueError:
                raise ValueError(f"--axis {text!r}: {v!r} is not a number") from None
    return name, out


def build_space(hf_config, profile: HardwareProfile, workload: TuneWorkload, *, cpu: bool, weight_format: str,
                session_len: int, block_size: int = 64, overrides: dict[str, list] | None = None,
                usable_gib: float | None = None) -> Space:
    """The axes for this model on this card, pruned; `overrides` replace an axis's values as given
    (unpruned: a user who asks for a value gets it tried, and a failure recorded)."""
    axes = {name: list(values) for name, values in (CPU_VALUES if cpu else GPU_VALUES).items()}
    pruned: list[Pruned] = []
    for fmt, reason in FORMATS_LATER.items():
        pruned.append(Pruned(engine={}, weight_format=fmt, reason=reason))
    space = Space(weight_format, axes, pruned)
    if not cpu and hf_config is not None:
        shape = ModelShape.from_config(hf_config)
        # an emulated card's cap, else what the card shows to torch (the profile's measured figure)
        memory = usable_gib * 2**30 if usable_gib else profile.usable_memory_bytes
        weights = weight_bytes(shape, "fp16" if weight_format == "fp16" else "bf16").total
        free = memory - weights - DEFAULT_RESERVE_GIB * 2**30
        kv_token = kv_bytes_per_token(shape)
        tokens_per_seq = workload.input_len + workload.output_len
        for ratio in list(axes["cache_max_entry_count"]):
            fit = kv_fit(int(free), kv_token, ratio, session_len, block_size)
            space.kv_tokens[ratio] = fit.tokens
            if fit.tokens < session_len:
                axes["cache_max_entry_count"].remove(ratio)
                pruned.append(Pruned(engine={"cache_max_entry_count": ratio}, weight_format=weight_format,
                                     reason=f"the cache holds {fit.tokens:,} tokens, less than one session of "
                                            f"{session_len:,}"))
        if space.kv_tokens:
            most = max(space.kv_tokens.values())
            seqs = most // max(tokens_per_seq, 1)
            for batch in list(axes["max_batch_size"]):
                if batch > 2 * max(seqs, 1) and len(axes["max_batch_size"]) > 1:
                    axes["max_batch_size"].remove(batch)
                    pruned.append(Pruned(engine={"max_batch_size": batch}, weight_format=weight_format,
                                         reason=f"even the largest cache holds {seqs} sequences of "
                                                f"{tokens_per_seq:,} tokens: batch {batch} would only preempt"))
        if free <= 0:
            pruned.append(Pruned(engine={}, weight_format=weight_format,
                                 reason=f"weights {weights / 2**30:.1f} GiB + reserve do not fit in {memory / 2**30:.0f} GiB"))
    for name, values in (overrides or {}).items():
        axes[name] = values
    return space


def predict(hf_config, profile: HardwareProfile, *, weight_format: str, batch: int, workload: TuneWorkload,
            cache_ratio: float) -> Prediction:
    """The calibrated planner's figures for this configuration at `batch` streams (toolkit/predictions.py
    predict_serving: roofline x measured efficiencies of the card), to set beside the measured ones."""
    if hf_config is None:
        return Prediction(notes=["no model config: no prediction"])
    if weight_format not in ("bf16", "fp16"):
        return Prediction(notes=[f"the planner models GPUs in 16-bit formats; no prediction for {weight_format}"])
    p = predict_serving(hf_config, profile, quant=weight_format, batch_size=max(batch, 1),
                        prompt_len=workload.input_len, output_len=workload.output_len,
                        cache_ratio=cache_ratio if cache_ratio <= 1 else FLAG_CACHE_RATIO)
    notes = [f"{figure}: {origin}" for figure, origin in p.efficiency.origins.items()]
    return Prediction(decode_tok_s_b1=p.decode_b1.tokens_per_s if p.decode_b1 else None,
                      output_tok_s=p.throughput.output_tokens_per_s if p.throughput else None,
                      kv_tokens=p.kv_tokens, weights_gib=p.weights_bytes / 2**30, fits=p.fits, notes=notes)
