"""The configurations a tune may try: axes from the profile, pruned by the planner before anything runs.

Axes (EngineConfig fields): tp (tensor-parallel cards), model_format (the weights: as stored, int8,
AWQ), quant_policy (KV cache: 16-bit or int8), w4_kernel (AWQ's kernels: Triton, or the CUDA ones, on an
H200 1.2x Triton at batch 1 and at 64 requests; offered only where AWQ weights are, tried only with them),
w8_kernel (int8's kernels: Triton, or the CUDA ones, level with bf16 at 64 requests where Triton is 0.93x;
offered and tried only with int8 weights); the engine's default for both, auto, is pinned to one of them
(pin_auto_kernels),
max_batch_size, cache_max_entry_count,
max_prefill_token_num, enable_prefix_caching; on a GPU tp and the formats come first, since they
decide what the other axes can hold (and change what a server must load: a restart, where the later
axes reconfigure it in place). tp is offered from 1 to the profile's card count (`--gpu rtx4090x2`:
1 and 2; one card: 1 only). A value is pruned, with its reason kept for the report, when the planner
shows it cannot work on the target: a tp the engine refuses for the model (its own words), or more
cards than the machine that measures has; weights that do not fit (per GPU), a cache that cannot
hold one session, a batch the cache could never hold at once (more than twice the sequences of this
workload that fit: the scheduler would only preempt). What is pruned for memory is only what fits at
no tp and in no format offered. A 16-bit checkpoint offers int8 (quantized at load); AWQ needs an AWQ
checkpoint (`opsctl quantize awq`), or a preset: model, whose random weights are rounded to AWQ's
layout at load.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from toolkit.model_sizes import (DEFAULT_RESERVE_GIB, FLAG_CACHE_RATIO, ModelShape, PlanError, head_int8_by_default,
                                 kv_bytes_per_token, kv_fit, tp_refusal, weight_bytes)
from toolkit.predictions import predict_serving
from toolkit.profiles import HardwareProfile

from .schema import Prediction, Pruned, TuneWorkload

AXES = ("tp", "model_format", "quant_policy", "w4_kernel", "w8_kernel", "max_batch_size", "cache_max_entry_count",
        "max_prefill_token_num", "enable_prefix_caching")
GPU_VALUES = {"model_format": [None, "int8", "awq"], "quant_policy": [0, 8], "w4_kernel": ["triton", "cuda"],
              "w8_kernel": ["triton", "cuda"],
              "max_batch_size": [32, 64, 128, 256], "cache_max_entry_count": [0.7, 0.8, 0.9, 0.95],
              "max_prefill_token_num": [2048, 4096, 8192, 16384], "enable_prefix_caching": [False, True]}
# tp is not in the tables: build_space offers 1 .. the profile's card count. The CPU space has
# none: tp on two cores only splits them.
# The CPU profile: two cores and a 135M model, loads of 1-8 streams; the values that change something
# there (a batch cap below the load; a prefill budget that splits four 64-token prompts over steps),
# few enough that `make demo` (4 trials) stays under 5 minutes.
CPU_VALUES = {"max_batch_size": [2, 4], "cache_max_entry_count": [0.8], "max_prefill_token_num": [128],
              "enable_prefix_caching": [False]}
FORMATS_AVAILABLE = ("bf16", "fp16", "float32")
KERNEL_AXES = ("w4_kernel", "w8_kernel")  # a weight format's kernels (Space.kernel_formats: which format each is for)


@dataclass
class Space:
    weight_format: str
    axes: dict[str, list]
    pruned: list[Pruned] = field(default_factory=list)
    kv_tokens: dict[float, int] = field(default_factory=dict)  # planner KV tokens by cache ratio
    awq_values: tuple = ("awq",)  # the model_format values that load AWQ weights (None too for an AWQ checkpoint)

    def kernel_formats(self, axis: str) -> tuple:
        """The model_format values a kernel axis means something with: AWQ's for w4_kernel, int8 for w8_kernel."""
        return self.awq_values if axis == "w4_kernel" else ("int8",)

    def applies(self, engine: dict, base) -> bool:
        """Whether a configuration means something: a CUDA kernel choice (w4_kernel / w8_kernel cuda) only with
        the weights it is for. The searches skip the rest instead of running a trial the engine would refuse."""
        fmt = engine.get("model_format", getattr(base, "model_format", None))
        return all(engine.get(axis, getattr(base, axis, "triton")) != "cuda" or fmt in self.kernel_formats(axis)
                   for axis in KERNEL_AXES)

    def with_kernels(self, engine: dict, base) -> list[dict]:
        """`engine` and, where it switches to weights with a kernel choice, the same with each other kernel on
        offer for them.

        The coordinate search takes these in one step: the kernel axis means something only with those
        weights, so searched on its own it would be tried only after the format with the incumbent kernel had
        won the format axis, and a format that wins only with the other kernel would never be measured with it."""
        if "model_format" not in engine:
            return [engine]
        for axis in KERNEL_AXES:
            if engine["model_format"] in self.kernel_formats(axis):
                current = engine.get(axis, getattr(base, axis, "triton"))
                return [engine, *({**engine, axis: k} for k in self.axes.get(axis, []) if k != current)]
        return [engine]

    def grid_axes(self, base=None) -> dict[str, list]:
        """The axes with, given `base` (an EngineConfig), the base's own value first where a list lacks it
        (max_batch_size's default, unset, is in no list): the coordinate search starts from the base and
        keeps a base value no listed one beats, so only this grid holds every configuration it can visit
        (toolkit/tune/replay.py replays it on a grid's measurements)."""
        return {name: values if base is None or getattr(base, name) in values else [getattr(base, name), *values]
                for name, values in self.axes.items()}

    def grid(self, base=None) -> list[dict]:
        """Every configuration of grid_axes(base)."""
        axes = self.grid_axes(base)
        return [engine for values in itertools.product(*axes.values())
                if self.applies(engine := dict(zip(axes, values)), base)]


def parse_axis(text: str) -> tuple[str, list]:
    """`--axis max_batch_size=8,16` -> ("max_batch_size", [8, 16]), values typed like the field."""
    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in AXES or not values:
        raise ValueError(f"--axis {text!r}: use NAME=V1,V2 with NAME one of {', '.join(AXES)}")
    out = []
    for v in values.split(","):
        v = v.strip()
        if name == "tp":
            if not v.isdigit() or int(v) < 1:
                raise ValueError(f"--axis {text!r}: tp {v!r} is not a card count >= 1")
            out.append(int(v))
        elif name == "model_format":
            if v.lower() not in ("hf", "none", "int8", "awq"):
                raise ValueError(f"--axis {text!r}: {v!r} is not hf, int8 or awq")
            out.append(None if v.lower() in ("hf", "none") else v.lower())
        elif name in KERNEL_AXES:
            if v.lower() not in ("triton", "cuda"):
                raise ValueError(f"--axis {text!r}: {v!r} is not triton or cuda")
            out.append(v.lower())
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
                usable_gib: float | None = None, model_kind: str = "hf", local_gpus: int | None = None,
                w4_cuda_unavailable: str | None = None) -> Space:
    """The axes for this model on this card (or profile.gpu_count of them), pruned; `overrides` replace
    an axis's values as given (unpruned: a user who asks for a value gets it tried, and a failure
    recorded). `model_kind`: hf (a 16-bit checkpoint), awq (an AWQ checkpoint) or preset (random
    weights). `local_gpus`: the GPUs of the machine that measures, where known (tps above it pruned).
    `w4_cuda_unavailable`: why the CUDA AWQ kernel cannot run where the tune measures (None: it can)."""
    axes = {name: list(values) for name, values in (CPU_VALUES if cpu else GPU_VALUES).items()}
    pruned: list[Pruned] = []
    if "model_format" in axes:
        _prune_formats(axes, pruned, model_kind)
    if "w4_kernel" in axes:
        _prune_w4_kernel(axes, pruned, hf_config, w4_cuda_unavailable, model_kind)
    if "w8_kernel" in axes:
        _prune_w8_kernel(axes, pruned, hf_config, w4_cuda_unavailable)
    if not cpu:
        axes = {"tp": list(range(1, profile.gpu_count + 1)), **axes}
    space = Space(weight_format, axes, pruned, awq_values=("awq", None) if model_kind == "awq" else ("awq",))
    if not cpu and hf_config is not None:
        shape = ModelShape.from_config(hf_config)
        # an emulated card's cap, else what the card shows to torch (the profile's measured figure)
        memory = usable_gib * 2**30 if usable_gib else profile.usable_memory_bytes
        formats = [f or weight_format for f in axes.get("model_format", [None])]
        sized = [f if f in ("fp16", "int8", "awq") else "bf16" for f in formats]
        _prune_tps(axes, pruned, shape, sized, weight_format, local_gpus)
        # Pruned only what cannot fit at any tp and in any format the axes offer: per tp the smallest
        # weights and KV per GPU tried, and of the tps the one that leaves the cache the most tokens.
        policies = axes.get("quant_policy", [0])
        per_tp = {}
        for tp in axes["tp"]:
            weights = min(weight_bytes(shape, f, tp, head_int8=head_int8_by_default(f, profile.arch)).total
                          for f in sized if not tp_refusal(shape, tp, f))
            per_tp[tp] = (memory - weights - DEFAULT_RESERVE_GIB * 2**30, weights,
                          min(kv_bytes_per_token(shape, policy or 0, tp) for policy in policies))
        _prune_tps_for_memory(axes, pruned, per_tp, memory, session_len, block_size, weight_format)
        free, weights, kv_token = max((per_tp[tp] for tp in axes["tp"]),
                                      key=lambda f: int(max(f[0], 0)) // f[2])
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
                                 reason=f"weights {weights / 2**30:.1f} GiB + reserve do not fit in {memory / 2**30:.0f} GiB"
                                        + (" at any tp offered" if len(per_tp) > 1 else "")))
    for name, values in (overrides or {}).items():
        axes[name] = values
    return space


def pin_auto_kernels(space: Space, base, auto_kernel: str):
    """`base` with each kernel axis the space searches set, where the base leaves it "auto" (the engine's default),
    to what auto would run on the target card (`auto_kernel`: toolkit/tune/runner.auto_kernel), or the axis's
    first value where it does not offer that one.
    The search then measures the kernels by name, never auto beside the kernel it picks (the same configuration
    twice, noise alone choosing between them). The launch command is built on the user's base: it names a
    kernel where the winner switched to one, and leaves auto (the same pick on the same kind of card) where not."""
    pins = {axis: auto_kernel if auto_kernel in space.axes[axis] else space.axes[axis][0]
            for axis in KERNEL_AXES if axis in space.axes and getattr(base, axis, None) == "auto"}
    return base.replace(**pins) if pins else base


def drop_default_batch(space: Space, base, default_batch: int) -> None:
    """Where the base leaves max_batch_size unset, the engine picks `default_batch` on the card that
    measures (engine.config.default_max_batch_size), so that value on the axis is the default
    configuration again: measured twice, noise alone would choose between them (an H200 tune ran
    "--max-batch-size 256" beside its default, 256 there, and read 3% apart). It is dropped, and said."""
    values = space.axes.get("max_batch_size")
    if base.max_batch_size is not None or not values or default_batch not in values:
        return
    values.remove(default_batch)
    space.pruned.append(Pruned(engine={"max_batch_size": default_batch}, weight_format=space.weight_format,
                               reason=f"the default configuration already runs batch {default_batch} on this "
                                      f"card (max_batch_size unset picks it)"))


def _prune_tps(axes: dict, pruned: list[Pruned], shape: ModelShape, formats: list[str], weight_format: str,
               local_gpus: int | None) -> None:
    """Drop the tps the engine refuses for the model (in every format offered), or that need more GPUs
    than the measuring machine has; a tp refused only for some format (AWQ's packing) stays, noted."""
    for tp in list(axes["tp"]):
        reasons = {f: tp_refusal(shape, tp, f) for f in dict.fromkeys(formats)}
        if local_gpus is not None and tp > max(local_gpus, 1):
            reason = f"tp {tp} needs {tp} GPUs; the machine that measures has {local_gpus}"
        elif all(reasons.values()):
            reason = next(iter(reasons.values()))
        else:
            for f, why in reasons.items():
                if why:
                    pruned.append(Pruned(engine={"tp": tp, "model_format": f}, weight_format=f, reason=why))
            continue
        axes["tp"].remove(tp)
        pruned.append(Pruned(engine={"tp": tp}, weight_format=weight_format, reason=reason))


def _prune_tps_for_memory(axes: dict, pruned: list[Pruned], per_tp: dict, memory: float, session_len: int,
                          block_size: int, weight_format: str) -> None:
    """Drop the tps at which even the smallest weights leave no cache for one session at the largest
    ratio offered, while another tp does; when none does, the tps stay (the trials show it)."""
    ratio = max(axes["cache_max_entry_count"])

    def holds_a_session(tp: int) -> bool:
        free, _, kv_token = per_tp[tp]
        return free > 0 and kv_fit(int(free), kv_token, ratio, session_len, block_size).tokens >= session_len

    if not any(holds_a_session(tp) for tp in axes["tp"]):
        return
    for tp in list(axes["tp"]):
        if holds_a_session(tp):
            continue
        free, weights, _ = per_tp[tp]
        axes["tp"].remove(tp)
        what = ("do not fit" if free <= 0 else f"leave a cache smaller than one session of {session_len:,} "
                f"tokens at ratio {ratio:g}")
        pruned.append(Pruned(engine={"tp": tp}, weight_format=weight_format,
                             reason=f"at tp {tp} weights of {weights / 2**30:.1f} GiB per GPU + reserve {what} in "
                                    f"{memory / 2**30:.0f} GiB"))


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


def _prune_w4_kernel(axes: dict, pruned: list[Pruned], hf_config, unavailable: str | None, model_kind: str) -> None:
    """The AWQ kernel choice (engine/kernels/w4_mma.py): offered where AWQ weights are and the CUDA kernel
    can run; the axis goes away entirely where no AWQ format is offered (nothing to choose)."""
    if "awq" not in axes.get("model_format", []) and model_kind != "awq":
        del axes["w4_kernel"]
        return
    from engine.kernels.w4_mma import GROUP, STRIPE, unsupported

    sizes = [] if hf_config is None else [getattr(hf_config, name, 0) for name in ("hidden_size", "intermediate_size")]
    quant = getattr(hf_config, "quantization_config", None) or {}
    group = (quant if isinstance(quant, dict) else quant.to_dict()).get("group_size", GROUP)
    why = unavailable or next((f"the CUDA AWQ kernel takes layers in multiples of {STRIPE} with groups of {GROUP} "
                               f"(this model has a size {size})" for size in sizes if size % GROUP), None)
    refused = unsupported(group, _gpu_dtype(hf_config))  # the engine's own refusal, before any trial
    why = why or (refused and f"the CUDA AWQ kernel {refused}")
    if why:
        axes["w4_kernel"] = ["triton"]
        pruned.append(Pruned(engine={"w4_kernel": "cuda"}, weight_format="awq", reason=why))


def _gpu_dtype(hf_config) -> str:
    """What the engine runs this checkpoint in on a GPU ("bfloat16", "float16"): its own pick_dtype's answer."""
    import torch

    from engine.runner.model_runner import pick_dtype

    return str(pick_dtype("auto", torch.device("cuda"), hf_config)).removeprefix("torch.")


def _prune_w8_kernel(axes: dict, pruned: list[Pruned], hf_config, unavailable: str | None) -> None:
    """int8's kernel choice (engine/kernels/w8_mma.py): offered where int8 weights are and the CUDA kernels can
    run (the same build as AWQ's: `unavailable`); the axis goes away where int8 is not offered."""
    if "int8" not in axes.get("model_format", []):
        del axes["w8_kernel"]
        return
    from engine.kernels.w8_mma import dtype_unsupported, unsupported

    why = unavailable
    if why is None and hf_config is not None:
        hidden, inter = getattr(hf_config, "hidden_size", 0), getattr(hf_config, "intermediate_size", 0)
        heads = getattr(hf_config, "num_attention_heads", 1)
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
        # (N, K) of qkv, o, gate_up and down: the layers the engine would refuse when it builds them
        shapes = [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim), (2 * inter, hidden),
                  (hidden, inter)]
        why = next((f"the CUDA W8A16 kernel {refused}" for n, k in shapes if (refused := unsupported(n, k))), None)
        refused = dtype_unsupported(_gpu_dtype(hf_config))
        why = why or (refused and f"the CUDA W8A16 kernel {refused}")
    if why:
        axes["w8_kernel"] = ["triton"]
        pruned.append(Pruned(engine={"w8_kernel": "cuda"}, weight_format="int8", reason=why))


def predict(hf_config, profile: HardwareProfile, *, weight_format: str, batch: int, workload: TuneWorkload,
            cache_ratio: float, quant_policy: int = 0, tp: int = 1) -> Prediction:
    """The calibrated planner's figures for this configuration at `batch` streams (toolkit/predictions.py
    predict_serving: roofline x measured efficiencies of the card; at tp > 1 one GPU's memory and work
    plus the collectives between the cards), to set beside the measured ones."""
    if hf_config is None:
        return Prediction(notes=["no model config: no prediction"])
    if weight_format not in ("bf16", "fp16"):
        return Prediction(notes=[f"the planner models GPUs in 16-bit formats; no prediction for {weight_format}"])
    try:
        p = predict_serving(hf_config, profile, quant=weight_format, batch_size=max(batch, 1),
                            prompt_len=workload.input_len, output_len=workload.output_len,
                            cache_ratio=cache_ratio if cache_ratio <= 1 else FLAG_CACHE_RATIO,
                            quant_policy=quant_policy, tp=tp)
    except PlanError as e:  # a tp the engine refuses (the trial says so too) or a profile without a link
        return Prediction(notes=[f"no prediction: {e}"])
    notes = [f"{figure}: {origin}" for figure, origin in p.efficiency.origins.items()]
    # The model's whole weights, as the launch files take them (they divide by tp themselves).
    weights = p.weights_bytes if tp == 1 else weight_bytes(ModelShape.from_config(hf_config), weight_format).total
    if tp > 1:
        notes.append(f"tp {tp}: {p.weights_bytes / 2**30:.2f} GiB of weights per GPU; the cache holds {p.kv_tokens:,} "
                     f"tokens, each split over the GPUs by KV head")
    return Prediction(decode_tok_s_b1=p.decode_b1.tokens_per_s if p.decode_b1 else None,
                      output_tok_s=p.throughput.output_tokens_per_s if p.throughput else None,
                      kv_tokens=p.kv_tokens, weights_gib=weights / 2**30, fits=p.fits, notes=notes)
