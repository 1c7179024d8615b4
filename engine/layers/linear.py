"""Linear layers with fused weights: qkv (q, k, v in one matmul) and merged gate/up.

Checkpoints store q_proj/k_proj/v_proj and gate_proj/up_proj separately; each fused parameter has a
`weight_loader` that copies one checkpoint tensor into its slice, so one GEMM replaces three (two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, use_kernels: bool,
           batch_invariant: bool) -> torch.Tensor:
    """x W^T (+ b) on the path the runner chose: the fixed-tile GEMM in deterministic mode, the Triton
    GEMV for one row with kernels on (batch-1 decode), cuBLAS otherwise."""
    if batch_invariant:
        from ..kernels.matmul import matmul_invariant

        return matmul_invariant(x, weight, bias)
    if use_kernels and x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous():
        from ..kernels.gemv import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(param.shape)}")
    param.data.copy_(loaded)


class Linear(nn.Module):
    """y = x W^T (+ b); output slices named by shard ids are filled from separate checkpoint tensors.

    With kernels on (CUDA), a single row (batch-1 decode) goes through the Triton GEMV, which reads
    the weight 7-14% faster than cuBLAS's M=1 GEMMs on an H100 (engine/kernels/gemv.py).
    """

    use_kernels = False  # set by the model runner
    batch_invariant = False  # set by the model runner (EngineConfig.deterministic)

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 shard_sizes: dict | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        # shard id -> (offset, size) along the output dimension
        self.shards: dict = {}
        offset = 0
        for shard_id, size in (shard_sizes or {}).items():
            self.shards[shard_id] = (offset, size)
            offset += size
        if self.shards and offset != out_features:
            raise ValueError("shard sizes must add up to out_features")
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded)
        offset, size = self.shards[shard_id]
        target = param.data.narrow(0, offset, size)
        if target.shape != loaded.shape:
            raise ValueError(f"shard {shard_id!r}: shape {tuple(loaded.shape)} does not match {tuple(target.shape)}")
        target.copy_(loaded)

    def prepare_for_cpu(self) -> None:
        """Swap the weight for a CPU-packed one (engine/layers/cpu_gemm.py: oneDNN, 1.3-2.8x faster
        than F.linear on the dev machine's 2 cores); the [out, in] parameter is dropped."""
        from .cpu_gemm import CpuWeight

        self.cpu_weight = CpuWeight(self.weight.data, None if self.bias is None else self.bias.data)
        self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return self.cpu_weight.apply(x)
        return linear(x, self.weight, self.bias, use_kernels=self.use_kernels, batch_invariant=self.batch_invariant)


class QKVLinear(Linear):
    """q, k and v projections in one weight: [(heads + 2 * kv_heads) * head_dim, hidden]."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool):
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias,
                         {"q": self.q_size, "k": self.kv_size, "v": self.kv_size})


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output: gate and up of the MLP."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False):
        super().__init__(in_features, sum(out_sizes), bias, dict(enumerate(out_sizes)))
