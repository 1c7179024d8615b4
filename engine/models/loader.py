"""Build our model for a ModelSource on a device and fill its weights (safetensors or random preset).

Errors name the file or tensor at fault: a corrupt safetensors file, a missing or misshapen tensor.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ModelLoadError, first_line
from ..layers.options import LayerOptions
from .registry import model_class


def iter_safetensors(weights_dir: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    files = sorted(glob.glob(os.path.join(weights_dir, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {weights_dir}")
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            from .source import repair_hint

            raise ModelLoadError(f"corrupt model file {path}: {first_line(e)}: {repair_hint(weights_dir)}") from None


def load_weights(model: nn.Module, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for ckpt_name, tensor in weights:
        target = model.checkpoint_to_param(ckpt_name)
        if target is None:
            continue
        name, shard = target
        param = params.get(name)
        if param is None:
            raise ModelLoadError(f"checkpoint tensor {ckpt_name!r} has no place in {type(model).__name__}")
        loader = getattr(param, "weight_loader", None)
        try:
            if loader is None:
                if param.shape != tensor.shape:
                    raise ValueError(f"shape {tuple(tensor.shape)} does not match the model's {tuple(param.shape)}")
                param.data.copy_(tensor)
            else:
                loader(param, tensor, shard)
        except ValueError as e:
            raise ModelLoadError(f"checkpoint tensor {ckpt_name!r}: {e}") from None
        loaded.add(name)
    missing = [n for n, p in params.items()
               if n not in loaded and not _is_tied(model, n) and not getattr(p, "derived", False)]
    if missing:
        raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")


def _is_tied(model: nn.Module, name: str) -> bool:
    return name == "lm_head.weight" and getattr(model, "tie_word_embeddings", False)


_LINEAR_WEIGHTS = tuple(f".{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"))


def _packed_as_awq(weights: Iterator[tuple[str, torch.Tensor]], group_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """A 16-bit preset's linear weights rounded to AWQ's layout (engine/quant/int4_pack.py), on the fly."""
    from ..quant.int4_pack import pack_awq

    for name, tensor in weights:
        if name.endswith(_LINEAR_WEIGHTS):
            base = name[:-len("weight")]
            qweight, qzeros, scales = pack_awq(tensor, group_size)
            yield base + "qweight", qweight
            yield base + "qzeros", qzeros
            yield base + "scales", scales
        else:
            yield name, tensor


def build_model(source, dtype: torch.dtype, device: torch.device, options: LayerOptions | None = None,
                seed: int = 0) -> nn.Module:
    """Instantiate the architecture on `device` in `dtype` with `options` and load its weights.

    model.weight_bytes: the bytes of the weights in their stored format (int8 codes and scales, packed
    int4 and its scales), counted before any device-specific repacking.
    """
    options = options or LayerOptions(device_type=torch.device(device).type)
    cls = model_class(source.hf_config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(source.hf_config, options)
    finally:
        torch.set_default_dtype(previous)
    if source.kind == "preset":
        from .presets import iter_random_weights

        weights = iter_random_weights(source.hf_config, seed=seed, dtype=dtype, device=device)
        if options.weight_format == "awq":
            weights = _packed_as_awq(weights, options.group_size)
    else:
        weights = iter_safetensors(source.weights_path)
    with torch.no_grad():
        load_weights(model, weights)
        model.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
        for module in model.modules():
            if hasattr(module, "after_loading"):
                module.after_loading()
    return model.eval()
