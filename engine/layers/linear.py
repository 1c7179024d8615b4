"""Linear layers with fused weights: qkv (q, k, v in one matmul) and merged gate/up.

Checkpoints store q_proj/k_proj/v_proj and gate_proj/up_proj separately; each fused parameter has a
`weight_loader` that copies one checkpoint tensor into its slice of the output dimension, so one GEMM
replaces three (two). How the weight is stored and multiplied (16-bit, int8, AWQ int4; cuBLAS, Triton
or oneDNN) is the layer's LinearMethod (engine/layers/linear_method.py), given when it is built.
"""
from __future__ import annotations

import torch
from torch import nn

from .options import PLAIN, LayerOptions


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(param.shape)}")
    param.data.copy_(loaded)


class Linear(nn.Module):
    """y = x W^T (+ b); output slices named by shard ids are filled from separate checkpoint tensors."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 shard_sizes: dict | None = None, options: LayerOptions = PLAIN):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # shard id -> (offset, size) along the output dimension
        self.shards: dict = {}
        offset = 0
        for shard_id, size in (shard_sizes or {}).items():
            self.shards[shard_id] = (offset, size)
            offset += size
        if self.shards and offset != out_features:
            raise ValueError("shard sizes must add up to out_features")
        self.cpu_weight = None
        self.method = options.linear_method()
        self.method.create_weights(self, in_features, out_features, bias)
        for p in self.parameters(recurse=False):
            if not hasattr(p, "weight_loader"):
                p.weight_loader = self.weight_loader

    def shard_range(self, shard_id, total: int) -> tuple[int, int]:
        """(offset, size) of a shard along the output dimension (the whole of it for None)."""
        return (0, total) if shard_id is None else self.shards[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded)
        offset, size = self.shards[shard_id]
        dim, pack = getattr(param, "output_dim", 0), getattr(param, "pack", 1)
        target = param.data.narrow(dim, offset // pack, size // pack)
        if target.shape != loaded.shape:
            raise ValueError(f"shard {shard_id!r}: shape {tuple(loaded.shape)} does not match {tuple(target.shape)}")
        target.copy_(loaded)

    def after_loading(self) -> None:
        self.method.after_loading(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)


class QKVLinear(Linear):
    """q, k and v projections in one weight: [(heads + 2 * kv_heads) * head_dim, hidden]."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool,
                 options: LayerOptions = PLAIN):
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias,
                         {"q": self.q_size, "k": self.kv_size, "v": self.kv_size}, options)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output: gate and up of the MLP."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False, options: LayerOptions = PLAIN):
        super().__init__(in_features, sum(out_sizes), bias, dict(enumerate(out_sizes)), options)
