"""The configurations a tune may try: axes from the profile, pruned by the planner before anything runs.

Axes (EngineConfig fields): model_format (the weights: as stored, int8, AWQ), quant_policy (KV cache:
16-bit or int8), max_batch_size, cache_max_entry_count, max_prefill_token_num, enable_prefix_caching;
on a GPU the formats come first, since they decide what the other axes can hold. A value is pruned,
with its reason kept for the report, when the planner shows it cannot work on the target card:
weights that do not fit, a cache that cannot hold one session, a batch the cache could never hold at
once (more than twice the sequences of this workload that fit: the scheduler would only preempt). A
16-bit checkpoint offers int8 (quantized at load); AWQ needs an AWQ checkpoint (`opsctl quantize
awq`), or a preset: model, whose random weights are rounded to AWQ's layout at load.
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

AXES = ("model_format", "quant_policy", "max_batch_size", "cache_max_entry_count", "max_prefill_token_num",
        "enable_prefix_caching")
GPU_VALUES = {"model_format": [None, "int8", "awq"], "quant_policy": [0, 8],
              "max_batch_size": [32, 64, 128, 256], "cache_max_entry_count": [0.7, 0.8, 0.9, 0.95],
              "max_prefill_token_num": [2048, 4096, 8192, 16384], "enable_prefix_caching": [False, True]}
# The CPU profile: two cores and a 135M model, loads of 1-8 streams; the values that change something
# there (a batch cap below the load; a prefill budget that splits four 64-token prompts over steps),
# few enough that `make demo` (4 trials) stays under 5 minutes.
CPU_VALUES = {"max_batch_size": [2, 4], "cache_max_entry_count": [0.8], "max_prefill_token_num": [128],
              "enable_prefix_caching": [False]}
FORMATS_AVAILABLE = ("bf16", "fp16", "float32")


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
        if name == "model_format":
            if v.lower() not in ("hf", "none", "int8", "awq"):
                raise ValueError(f"--axis {text!r}: {v!r} is not hf, int8 or awq")
            out.append(None if v.lower() in ("hf", "none") else v.lower())
        elif name == "enable_prefix_caching":
            if v.lower() not in ("true", "false", "on", "off", "1", "0"):
                raise ValueError(f"--axis {text!r}: {v!r} is not on/off")
            out.append(v.lower() in ("true", "on", "1"))
        else:
            try:
                out.append(float(v) if name == "cache_max_entry_count" else int(v))
                if name == "quant_policy" and out[-1] not in (0, 8):
                    raise ValueError(f"--axis {text!r}: quant_policy is 0 or 8")
            except ValueError:
                raise ValueError(f"--axis {text!r}: {v!r} is not a number") from None
    return name, out


def build_space(hf_config, profile: HardwareProfile, workload: TuneWorkload, *, cpu: bool, weight_format: str,
                session_len: int, block_size: int = 64, overrides: dict[str, list] | None = None,
                usable_gib: float | None = None, model_kind: str = "hf") -> Space:
    """The axes for this model on this card, pruned; `overrides` replace an axis's values as given
    (unpruned: a user who asks for a value gets it tried, and a failure recorded). `model_kind`: hf
    (a 16-bit checkpoint), awq (an AWQ checkpoint) or preset (random weights)."""
    axes = {name: list(values) for name, values in (CPU_VALUES if cpu else GPU_VALUES).items()}
    pruned: list[Pruned] = []
    if "model_format" in axes:
        _prune_formats(axes, pruned, model_kind)
    space = Space(weight_format, axes, pruned)
    if not cpu and hf_config is not None:
        shape = ModelShape.from_config(hf_config)
        # an emulated card's cap, else what the card shows to torch (the profile's measured figure)
        memory = usable_gib * 2**30 if usable_gib else profile.usable_memory_bytes
        # Pruned only what cannot fit in any format the axes offer: the smallest weights and KV tried.
        formats = [f or weight_format for f in axes.get("model_format", [None])]
        weights = min(weight_bytes(shape, f if f in ("fp16", "int8", "awq") else "bf16").total for f in formats)
        free = memory - weights - DEFAULT_RESERVE_GIB * 2**30
        kv_token = min(kv_bytes_per_token(shape, policy or 0) for policy in axes.get("quant_policy", [0]))
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


def _prune_formats(axes: dict, pruned: list[Pruned], model_kind: str) -> None:
    """The weight formats this checkpoint can load in (engine/models/weight_format.py's rules)."""
    if model_kind == "awq":  # loads as AWQ, and only as AWQ
        axes["model_format"] = [None]
        pruned.append(Pruned(engine={"model_format": "int8"}, weight_format="awq",
                             reason="an AWQ checkpoint loads as AWQ only (int8 needs the 16-bit weights)"))
    elif model_kind != "preset" and "awq" in axes["model_format"]:
        axes["model_format"].remove("awq")
        pruned.append(Pruned(engine={"model_format": "awq"}, weight_format="awq",
                             reason="a 16-bit checkpoint: make an AWQ one with `opsctl quantize awq MODEL` and "
                                    "tune that to include 4-bit weights"))


def predict(hf_config, profile: HardwareProfile, *, weight_format: str, batch: int, workload: TuneWorkload,
            cache_ratio: float, quant_policy: int = 0) -> Prediction:
    """The calibrated planner's figures for this configuration at `batch` streams (toolkit/predictions.py
    predict_serving: roofline x measured efficiencies of the card), to set beside the measured ones."""
    if hf_config is None:
        return Prediction(notes=["no model config: no prediction"])
    if weight_format not in ("bf16", "fp16"):
        return Prediction(notes=[f"the planner models GPUs in 16-bit formats; no prediction for {weight_format}"])
    p = predict_serving(hf_config, profile, quant=weight_format, batch_size=max(batch, 1),
                        prompt_len=workload.input_len, output_len=workload.output_len,
                        cache_ratio=cache_ratio if cache_ratio <= 1 else FLAG_CACHE_RATIO, quant_policy=quant_policy)
    notes = [f"{figure}: {origin}" for figure, origin in p.efficiency.origins.items()]
    return Prediction(decode_tok_s_b1=p.decode_b1.tokens_per_s if p.decode_b1 else None,
                      output_tok_s=p.throughput.output_tokens_per_s if p.throughput else None,
                      kv_tokens=p.kv_tokens, weights_gib=p.weights_bytes / 2**30, fits=p.fits, notes=notes)
