"""Which weight format a model loads in (hf, int8, awq), decided from its config and --model-format.

Everything here reads config.json only, so a wrong bit width, group size or format request fails in
one line before any weight is read. LMDeploy's meaning of --model-format: hf (16-bit checkpoints),
awq (an AutoAWQ 4-bit checkpoint; detected from quantization_config when left out); we add int8
(per-channel 8-bit weights quantized from a 16-bit checkpoint at load).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError, ModelLoadError

AWQ_PRESET_GROUP = 128  # random AWQ weights of preset: models use AutoAWQ's default group size


@dataclass(frozen=True)
class WeightFormat:
    name: str  # hf | int8 | awq
    group_size: int = 0  # awq only


def _quant_config(hf_config) -> dict | None:
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return None
    return qc if isinstance(qc, dict) else qc.to_dict()


def resolve_weight_format(source, model_format: str | None) -> WeightFormat:
    """The format to load `source` in; `model_format` is EngineConfig.model_format (None: detect)."""
    qc = _quant_config(source.hf_config)
    if qc is not None:
        method = qc.get("quant_method")
        if method != "awq":
            raise ModelLoadError(f"{source.name}: quantization method {method!r} is not supported (AWQ is)")
        if model_format not in (None, "awq"):
            raise InvalidRequestError(
                f"{source.name} is an AWQ checkpoint: leave out --model-format or pass --model-format awq "
                f"(got {model_format})", "model_format")
        return WeightFormat("awq", check_awq_config(qc, source.hf_config, source.name))
    if model_format == "awq":
        if source.kind == "preset":  # random weights packed as AWQ: for speed, as LMDeploy's benchmarks do
            check_group_size(source.hf_config, AWQ_PRESET_GROUP, source.name)
            return WeightFormat("awq", AWQ_PRESET_GROUP)
        raise InvalidRequestError(
            f"--model-format awq needs an AWQ checkpoint (config.json's quantization_config with quant_method "
            f"awq); {source.name} is a 16-bit one: make one with `opsctl quantize awq`, or use --model-format int8",
            "model_format")
    if model_format == "int8":
        return WeightFormat("int8")
    return WeightFormat("hf")


def check_awq_config(qc: dict, hf_config, name: str) -> int:
    """The group size of a valid AutoAWQ GEMM config; one line naming the problem otherwise."""
    bits = qc.get("bits", qc.get("w_bit"))
    if bits != 4:
        raise ModelLoadError(f"{name}: AWQ with {bits} bits is not supported (4 is)")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise ModelLoadError(f"{name}: AWQ version {version!r} is not supported (AutoAWQ's gemm layout is)")
    if qc.get("zero_point", True) is not True:
        raise ModelLoadError(f"{name}: AWQ without zero points is not supported")
    group = qc.get("group_size", qc.get("q_group_size"))
    if not isinstance(group, int) or isinstance(group, bool) or group <= 0:
        raise ModelLoadError(f"{name}: AWQ group size {group!r} is not supported (a positive integer, e.g. 128)")
    check_group_size(hf_config, group, name)
    return group


def check_group_size(hf_config, group: int, name: str) -> None:
    """Every quantized linear's input size (hidden, intermediate, heads x head_dim) must divide by it."""
    from .llama import head_dim_of

    sizes = {"hidden_size": hf_config.hidden_size, "intermediate_size": hf_config.intermediate_size,
             "num_attention_heads x head_dim": hf_config.num_attention_heads * head_dim_of(hf_config)}
    for what, size in sizes.items():
        if size % group:
            raise ModelLoadError(f"{name}: {what} {size} is not divisible by the AWQ group size {group}")
