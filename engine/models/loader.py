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
    missing = [n for n in params if n not in loaded and not _is_tied(model, n)]
    if missing:
        raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")


def _is_tied(model: nn.Module, name: str) -> bool:
    return name == "lm_head.weight" and getattr(model, "tie_word_embeddings", False)


def build_model(source, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """Instantiate the architecture on `device` in `dtype` and load its weights."""
    cls = model_class(source.hf_config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(source.hf_config)
    finally:
        torch.set_default_dtype(previous)
    if source.kind == "preset":
        from .presets import iter_random_weights

        weights = iter_random_weights(source.hf_config, seed=seed, dtype=dtype, device=device)
    else:
        weights = iter_safetensors(source.weights_path)
    with torch.no_grad():
        load_weights(model, weights)
        if torch.device(device).type == "cpu":
            for module in model.modules():
                if hasattr(module, "prepare_for_cpu"):
                    module.prepare_for_cpu()
    return model.eval()
