"""`opsctl quantize awq` and `opsctl quantize rtn` as library calls: checks, calibration, output.

`quantize_awq(model, work_dir, AwqOptions(...))`:
 1. `prepare` checks everything before any weight is read (options, --work-dir, the model's config,
    shapes against the group size, safetensors headers, the calibration text), one QuantizeError /
    ModelLoadError / CalibDataError line each;
 2. loads the model with transformers on the CPU in float32 (Llama, Mistral, Qwen2, Qwen3 layouts);
 3. runs the calibration windows layer by layer: the embeddings of every window are computed once,
    then each decoder layer is run on the previous layer's float outputs (as AutoAWQ does), so only
    one layer's activations are alive. Hooks on its linears gather per-channel |x| mean and max over
    all tokens, the inputs of a few whole windows for the scale search (`search_tokens`) and, for the
    clipping search, the inputs' per-group second moment over all tokens;
 4. per layer: scales for (input_layernorm -> q,k,v), (v_proj -> o_proj, only when v and o have the
    same shape, as AutoAWQ: not under GQA), (post_attention_layernorm -> gate,up), (up_proj ->
    down_proj): with --search-scale, the best of 20 ratios in each of AwqOptions.scale_forms (AutoAWQ's duo
    scaling and the paper's activation-only scales), else LMDeploy's fixed ratio 0.5;
    folded into the previous op; then the clipping search on v, o, gate, up, down (AutoAWQ skips q, k:
    their errors meet in q.k^T); then each linear rounded and packed (int4_pack.pack_awq);
 5. writes the directory (checkpoint.write_checkpoint).

`quantize_rtn` is the baseline: every linear of the decoder layers rounded to nearest, no calibration,
read and written one tensor at a time. awq_search.py holds the arithmetic of step 4.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError
from . import calib_data
from .awq_search import (SCALE_FORMS, ScaleGroup, ScaleSearch, apply_clip, check_scale_forms, fold_scale,
                         scale_moment, search_clip, search_scale, second_moment, smooth_scale)
from .checkpoint import QuantizeError, check_work_dir, read_safetensors_headers, write_checkpoint
from .int4_pack import PACK, pack_awq

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LINEAR_WEIGHT = re.compile(r"^model\.layers\.(\d+)\.(" + "|".join(re.escape(n) for n in LINEARS) + r")\.weight$")
# The linears whose input the hooks record (k, v read q's input; up reads gate's).
_INPUTS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
_CLIPPED = ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
__all__ = ["AwqOptions", "QuantizeError", "QuantizeResult", "layer_groups", "prepare", "quantize_awq", "quantize_rtn"]


@dataclass(frozen=True)
class AwqOptions:
    """LMDeploy's `lite auto_awq` options (same names and defaults), plus the CPU budget of the searches."""

    calib_dataset: str = calib_data.BUILTIN
    calib_samples: int = 128
    calib_seqlen: int = 2048
    w_bits: int = 4
    w_group_size: int | None = None  # None: 128, or the largest power of two below that fits (see prepare)
    batch_size: int = 1
    search_scale: bool = False
    search_clip: bool = True  # AutoAWQ's apply_clip; LMDeploy has no clipping
    # The forms of scale the search tries (awq_search.SCALE_FORMS), each on the grid of 20 ratios, keeping
    # the best per group: "duo" s = x^a / w^(1-a) (AutoAWQ's and LMDeploy's default, duo_scaling) and "x"
    # s = x^a (the AWQ paper's). Both: twice the search's time; see tests/engine/test_quant_quality.py.
    scale_forms: tuple[str, ...] = SCALE_FORMS
    # Tokens the scale search scores each ratio on (whole windows, evenly spread). The grid runs the
    # attention and MLP 20 times per layer and form: on all 128 x 2048 tokens that is ~20 h on 2 CPU cores.
    # Half as many (2048) halved the search's time on SmolLM2 (128 x 512) and read 1.102x, not 1.098x.
    search_tokens: int = 4096
    seed: int = 0


@dataclass
class Prepared:
    """What `prepare` found: the model's pieces and the calibration windows (tokens, no weights)."""

    source: object  # engine.models.source.ModelSource
    weights_dir: Path
    work_dir: Path
    config: dict
    group_size: int
    samples: calib_data.CalibSamples | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class QuantizeResult:
    work_dir: Path
    seconds: float
    layers: int
    group_size: int
    samples: int = 0
    seqlen: int = 0
    notes: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # "layers.3.qkv" -> the chosen ratio
    forms: dict[str, str] = field(default_factory=dict)  # "layers.3.qkv" -> its scales' form ("duo" or "x")
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: load, forward, scales, clip, pack


DEFAULT_GROUP_SIZE = 128


def prepare(model: str | None, work_dir, *, w_bits: int = 4, w_group_size: int | None = None,
            options: AwqOptions | None = None) -> Prepared:
    """Every check that needs no weight, cheapest first; with `options`, the calibration windows too.

    `w_group_size` None is LMDeploy's 128 where it divides every linear's input size, else the largest
    power of two that does (64 for SmolLM2-135M, whose hidden size 576 is 4.5 x 128), with a note.
    """
    from ..models.source import read_config_json, resolve_model

    if w_bits != 4:
        raise QuantizeError(f"--w-bits {w_bits}: only 4-bit weights are written (AutoAWQ's GEMM layout); "
                            f"use --w-bits 4")
    if w_group_size is not None and w_group_size <= 0:
        raise QuantizeError(f"--w-group-size {w_group_size}: give a positive group size such as 128")
    if options is not None:
        for flag, value in (("--calib-samples", options.calib_samples), ("--calib-seqlen", options.calib_seqlen),
                            ("--batch-size", options.batch_size)):
            if value <= 0:
                raise QuantizeError(f"{flag} {value}: give a positive number")
        try:
            check_scale_forms(options.scale_forms)
        except ValueError as e:
            raise QuantizeError(str(e)) from None
        calib_data.check_calib_dataset(options.calib_dataset)
    out = check_work_dir(work_dir)
    if model is not None and str(model).strip().startswith("preset:"):
        raise QuantizeError(f"{model} has random weights: quantize a model directory, a .gguf file or a hub id")
    source = resolve_model(model)
    weights_dir = Path(source.weights_path)
    if out == weights_dir.resolve() or weights_dir.resolve() in out.parents:
        raise QuantizeError(f"--work-dir {out} is inside the model directory {weights_dir}: pass a directory elsewhere")
    config = read_config_json(weights_dir / "config.json")
    notes = []
    if w_group_size is None:
        _check_config(config, weights_dir, 1)
        w_group_size = _fitting_group_size(config)
        if w_group_size != DEFAULT_GROUP_SIZE:
            notes.append(f"group size {w_group_size}: the default {DEFAULT_GROUP_SIZE} does not divide the model's "
                         f"input sizes {', '.join(map(str, _input_sizes(config)))}")
    _check_config(config, weights_dir, w_group_size)
    _check_tensors(read_safetensors_headers(weights_dir), config, weights_dir)
    prepared = Prepared(source, weights_dir, out, config, w_group_size, notes=notes)
    if options is not None:
        tokenizer = source.load_tokenizer()
        prepared.samples = calib_data.calib_samples(
            options.calib_dataset, tokenizer, options.calib_samples, options.calib_seqlen,
            vocab_size=int(config["vocab_size"]), seed=options.seed)
    return prepared


def _check_config(config: dict, directory: Path, group_size: int) -> None:
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        raise QuantizeError(f"{directory} is already quantized (quantization_config.quant_method {method}): "
                            f"quantize the original float16/bfloat16 model instead")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise QuantizeError(f"{directory}: model_type {model_type!r} is not supported by opsctl quantize "
                            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    for name, (n, k) in _linear_shapes(config).items():
        if k % group_size:
            raise QuantizeError(f"--w-group-size {group_size} does not divide {name}'s input size {k} (the model's "
                                f"input sizes: {', '.join(map(str, _input_sizes(config)))}): use a divisor of all, "
                                f"e.g. {_fitting_group_size(config)}")
        if n % PACK:
            raise QuantizeError(f"{name}'s output size {n} is not a multiple of {PACK}: the AWQ layout packs "
                                f"{PACK} output columns per int32")


def _input_sizes(config: dict) -> list[int]:
    return sorted({k for _, k in _linear_shapes(config).values()})


def _fitting_group_size(config: dict) -> int:
    common = math.gcd(*_input_sizes(config))
    return max(g for g in (128, 64, 32, 16, 8, 4, 2, 1) if common % g == 0)


def _linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear of a decoder layer, from config.json."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
        int(config["num_hidden_layers"]), int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise QuantizeError(f"config.json lacks a usable {e}: it does not describe a decoder model") from None
    return {"q_proj": (heads * head_dim, hidden), "k_proj": (kv_heads * head_dim, hidden),
            "v_proj": (kv_heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
            "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}


def _check_tensors(headers: dict, config: dict, directory: Path) -> None:
    shapes = _linear_shapes(config)
    for layer in range(int(config["num_hidden_layers"])):
        for name in LINEARS:
            key = f"model.layers.{layer}.{name}.weight"
            if key not in headers:
                raise ModelLoadError(f"{directory} lacks the tensor {key}: not a complete "
                                     f"{config.get('model_type')} checkpoint")
            expected = shapes[name.rsplit(".", 1)[1]]
            if tuple(headers[key][1]) != expected:
                raise ModelLoadError(f"{directory}: {key} has shape {list(headers[key][1])}, config.json says "
                                     f"{list(expected)}")


def quantize_rtn(model: str | None, work_dir, *, w_bits: int = 4, w_group_size: int | None = None,
                 progress: bool = True) -> QuantizeResult:
    """Round every decoder-layer linear to nearest into the AWQ layout (no calibration)."""
    from ..models.loader import iter_safetensors

    started = time.monotonic()
    prepared = prepare(model, work_dir, w_bits=w_bits, w_group_size=w_group_size)
    w_group_size = prepared.group_size
    for note in prepared.notes:
        _say(f"note: {note}", progress)
    tied = bool(prepared.config.get("tie_word_embeddings", False))
    headers = read_safetensors_headers(prepared.weights_dir)
    tensors: dict[str, torch.Tensor] = {}
    bar = _bar(len(headers), "RTN", "tensor", progress)
    for name, tensor in iter_safetensors(str(prepared.weights_dir)):
        bar.update(1)
        if tied and name == "lm_head.weight":
            continue
        match = _LINEAR_WEIGHT.match(name)
        if match:
            base = name[:-len(".weight")]
            tensors[f"{base}.qweight"], tensors[f"{base}.qzeros"], tensors[f"{base}.scales"] = pack_awq(
                tensor.float(), w_group_size)
        else:
            tensors[name] = _half(name, tensor)
    bar.close()
    out = write_checkpoint(prepared.work_dir, tensors, prepared.weights_dir, prepared.config,
                           bits=w_bits, group_size=w_group_size)
    return QuantizeResult(out, time.monotonic() - started, int(prepared.config["num_hidden_layers"]), w_group_size,
                          notes=prepared.notes)


def quantize_awq(model: str | None, work_dir, options: AwqOptions = AwqOptions(), *,
                 progress: bool = True) -> QuantizeResult:
    """AWQ-quantize `model` (a local HF directory, .gguf, hub id in the cache, None: the default) into work_dir."""
    started = time.monotonic()
    prepared = prepare(model, work_dir, w_bits=options.w_bits, w_group_size=options.w_group_size, options=options)
    options = dataclasses.replace(options, w_group_size=prepared.group_size)
    samples = prepared.samples
    notes = prepared.notes + ([samples.note] if samples.note else [])
    for note in notes:
        _say(f"note: {note}", progress)
    timings = {"prepare": time.monotonic() - started}
    clock = time.monotonic()
    hf_model = _load_hf_model(prepared.weights_dir)
    timings["load"] = time.monotonic() - clock
    ids = samples.input_ids
    _say(f"AWQ: {ids.shape[0]} windows x {ids.shape[1]} tokens of {options.calib_dataset}, group size "
         f"{options.w_group_size}, {'scale search' if options.search_scale else 'fixed ratio 0.5 (LMDeploy default)'}"
         f"{', clipping search' if options.search_clip else ''}", progress)
    packed, searched = _calibrate(hf_model, ids, options, progress, timings)
    clock = time.monotonic()
    tensors = _output_tensors(hf_model, packed, bool(prepared.config.get("tie_word_embeddings", False)))
    out = write_checkpoint(prepared.work_dir, tensors, prepared.weights_dir, prepared.config,
                           bits=options.w_bits, group_size=options.w_group_size)
    timings["write"] = time.monotonic() - clock
    return QuantizeResult(out, time.monotonic() - started, len(hf_model.model.layers), options.w_group_size,
                          ids.shape[0], ids.shape[1], notes, {name: found.ratio for name, found in searched.items()},
                          {name: found.form for name, found in searched.items()}, timings)


def _load_hf_model(directory: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would sit between our own lines
    try:
        # sdpa: with attention_mask=None it is causal (is_causal), which the layer-by-layer calls rely on
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="sdpa")
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.eval()


@torch.no_grad()
def _calibrate(model, ids: torch.Tensor, options: AwqOptions, progress: bool, timings: dict[str, float]):
    """Run the windows through the decoder layers one at a time; quantize each layer after its run."""
    for phase in ("forward", "scales", "clip", "pack"):
        timings[phase] = 0.0
    n, seqlen = ids.shape
    bs = options.batch_size
    hidden = torch.cat([model.model.embed_tokens(ids[b:b + bs]) for b in range(0, n, bs)])
    positions = torch.arange(seqlen)[None]
    rotary = model.model.rotary_emb(hidden[:1], positions)  # (cos, sin), broadcast over the batch
    n_search = max(1, min(n, math.ceil(options.search_tokens / seqlen)))
    search_rows = sorted({round(i * (n - 1) / max(1, n_search - 1)) for i in range(n_search)})
    packed: dict[str, tuple[torch.Tensor, ...]] = {}
    searched: dict[str, ScaleSearch] = {}  # "layers.3.qkv" -> what its scale search chose
    layers = model.model.layers
    bar = _bar(len(layers), "AWQ", "layer", progress)
    for index, layer in enumerate(layers):
        clock = time.monotonic()
        recorder = _InputRecorder(layer, search_rows, options.w_group_size if options.search_clip else None)
        with recorder:
            for b in range(0, n, bs):
                recorder.batch_rows = range(b, min(b + bs, n))
                # AutoAWQ's order: the float output feeds the next layer (feeding it the quantized
                # layer's output instead, GPTQ's order, measured no better on SmolLM2: 12.30 vs 12.25)
                hidden[b:b + bs] = _run_layer(layer, hidden[b:b + bs], positions, rotary)
        timings["forward"] += time.monotonic() - clock
        for name, found in _quantize_layer(layer, recorder, rotary, options, timings).items():
            searched[f"layers.{index}.{name}"] = found
        clock = time.monotonic()
        for name in LINEARS:
            fc = layer.get_submodule(name)
            packed[f"model.layers.{index}.{name}"] = pack_awq(fc.weight.data, options.w_group_size)
        timings["pack"] += time.monotonic() - clock
        bar.update(1)
    bar.close()
    return packed, searched


def _run_layer(layer, hidden, positions, rotary):
    out = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    return out[0] if isinstance(out, tuple) else out


class _InputRecorder:
    """Forward pre-hooks on a layer's linears: |x| statistics and the clipping search's second moment over
    all tokens, and the scale search's sample windows."""

    def __init__(self, layer, search_rows: list[int], group_size: int | None):
        self.layer = layer
        self.search_rows = set(search_rows)
        self.group_size = group_size  # None: no clipping search, no moment
        self.batch_rows: range = range(0)
        self.sum: dict[str, torch.Tensor] = {}
        self.max: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.moment: dict[str, torch.Tensor] = {}
        self.search: dict[str, list[torch.Tensor]] = {n: [] for n in _INPUTS}
        self._handles = []

    def __enter__(self):
        for name in _INPUTS:
            module = self.layer.get_submodule(name)
            self._handles.append(module.register_forward_pre_hook(
                lambda _module, args, name=name: self._record(name, args[0])))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _record(self, name: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        absx = flat.abs()
        self.sum[name] = self.sum.get(name, 0) + absx.sum(0, dtype=torch.float64)
        self.max[name] = torch.maximum(self.max[name], absx.amax(0)) if name in self.max else absx.amax(0)
        self.count[name] = self.count.get(name, 0) + flat.shape[0]
        if self.group_size:
            moment = second_moment(flat, self.group_size)
            self.moment[name] = self.moment[name] + moment if name in self.moment else moment
        keep = [i for i, row in enumerate(self.batch_rows) if row in self.search_rows]
        if keep:
            self.search[name].append(x[keep].detach().clone())

    def absmean(self, name: str) -> torch.Tensor:
        return (self.sum[name] / self.count[name]).float()


def layer_groups(layer, rotary) -> list[ScaleGroup]:
    """A decoder layer's scale groups, without inputs: prev op -> the linears that read its output.

    `rotary` is the (cos, sin) pair the attention needs when the search runs it.
    """
    attn, mlp = layer.self_attn, layer.mlp

    def attention(x):
        return attn(hidden_states=x, position_embeddings=rotary, attention_mask=None)

    groups = [ScaleGroup("qkv", layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], attention),
              ScaleGroup("o", attn.v_proj, [attn.o_proj], attn.o_proj),
              ScaleGroup("gate_up", layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], mlp),
              ScaleGroup("down", mlp.up_proj, [mlp.down_proj], mlp.down_proj)]
    if attn.v_proj.weight.shape != attn.o_proj.weight.shape:
        # GQA: o_proj reads num_heads x head_dim channels, v_proj writes fewer; AutoAWQ and LMDeploy skip
        groups = [g for g in groups if g.name != "o"]
    return groups


def _quantize_layer(layer, rec: _InputRecorder, rotary, options: AwqOptions,
                    timings: dict[str, float]) -> dict[str, ScaleSearch]:
    """Scales (searched or fixed), folded; clipping; leaves the layer's linears ready to round.

    Returns what each group's scale search chose (nothing without --search-scale)."""
    clock = time.monotonic()
    groups = layer_groups(layer, rotary)
    inputs = dict(zip(("qkv", "o", "gate_up", "down"), _INPUTS))
    chosen: list[tuple[ScaleGroup, torch.Tensor]] = []
    searched = {}
    for group in groups:  # every search sees the layer's original weights (AutoAWQ: apply after all)
        feat = inputs[group.name]
        group.x_absmean, group.x_absmax = rec.absmean(feat), rec.max[feat]
        if options.search_scale:
            group.x = torch.cat(rec.search[feat])
            searched[group.name] = search_scale(group, options.w_group_size, forms=options.scale_forms)
            scales = searched[group.name].scales
        else:
            scales = smooth_scale(group, options.w_group_size)
        chosen.append((group, scales))
    moments = dict(rec.moment)
    for group, scales in chosen:
        fold_scale(group.prev, group.linears, scales)
        feat = inputs[group.name]
        moments[feat] = scale_moment(moments[feat], scales)  # what the scaled linears will see
    timings["scales"] += time.monotonic() - clock
    clock = time.monotonic()
    if options.search_clip:
        readers = {"self_attn.v_proj": "self_attn.q_proj", "mlp.up_proj": "mlp.gate_proj"}
        for name in _CLIPPED:
            fc = layer.get_submodule(name)
            limit = search_clip(fc.weight.data, moments[readers.get(name, name)], options.w_group_size)
            apply_clip(fc, limit)
    timings["clip"] += time.monotonic() - clock
    return searched


def _output_tensors(model, packed: dict, tied: bool) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, tensor in model.state_dict().items():
        base = name[:-len(".weight")] if name.endswith(".weight") else None
        if base in packed:
            tensors[f"{base}.qweight"], tensors[f"{base}.qzeros"], tensors[f"{base}.scales"] = packed[base]
        elif tied and name == "lm_head.weight":
            continue
        elif "rotary_emb" not in name:
            tensors[name] = _half(name, tensor)
    return tensors


def _half(name: str, tensor: torch.Tensor) -> torch.Tensor:
    half = tensor.detach().to(torch.float16).contiguous()
    if tensor.is_floating_point() and not torch.isfinite(half).all():
        raise QuantizeError(f"{name} has values beyond float16's range (65504): it cannot be stored as AWQ float16")
    return half


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(f"opsctl: {text}", file=sys.stderr, flush=True)
