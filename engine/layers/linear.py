"""Linear layers with fused weights: qkv (q, k, v in one matmul) and merged gate/up; tensor-parallel splits.

Checkpoints store q_proj/k_proj/v_proj and gate_proj/up_proj separately; each fused parameter has a
`weight_loader` that copies one checkpoint tensor into its slice of the output dimension, so one GEMM
replaces three (two). How the weight is stored and multiplied (16-bit, int8, AWQ int4; cuBLAS, Triton
or oneDNN) is the layer's LinearMethod (engine/layers/linear_method.py), given when it is built.

With tensor parallelism (LayerOptions.tp_size > 1) a layer is column-parallel (each rank holds some
output rows: qkv, gate/up; no communication) or row-parallel (each rank holds some input columns and
computes a partial product: o_proj, down_proj; one all-reduce sums them). The loader receives the
whole checkpoint tensor and keeps this rank's part (`rank_part`), so the methods see only local shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from .options import PLAIN, LayerOptions
from .partition import even_part, kv_heads_part

COLUMN, ROW = "column", "row"


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(param.shape)}")
    param.data.copy_(loaded)


def narrow_checked(tensor: torch.Tensor, dim: int, start: int, size: int) -> torch.Tensor:
    """tensor.narrow, with a ValueError (the loader's error for a misshapen tensor) when out of range."""
    if start + size > tensor.shape[dim]:
        raise ValueError(f"shape {tuple(tensor.shape)} is too small for this rank's part {start}..{start + size} "
                         f"of dimension {dim}")
    return tensor.narrow(dim, start, size)


class Linear(nn.Module):
    """y = x W^T (+ b); output slices named by shard ids are filled from separate checkpoint tensors.

    in_features, out_features and shard_sizes are the whole layer's (the checkpoint's). parallel: COLUMN
    or ROW splits it across tensor-parallel ranks (ignored at tp 1); shard_parts (column-parallel) gives,
    per shard id, the (start, size) of that checkpoint tensor's rows this rank keeps, by default an even
    1/tp share. After construction in_features / out_features / shards are this rank's.
    """

    gated = False  # GateUpLinear: the output is silu(gate) * up of two equal shards

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 shard_sizes: dict | None = None, options: LayerOptions = PLAIN, parallel: str | None = None,
                 shard_parts: dict | None = None):
        super().__init__()
        tp, rank = options.tp_size, options.tp_rank
        self.parallel = parallel if tp > 1 else None
        self.tp_rank = rank
        shard_sizes = dict(shard_sizes or {})
        # source: shard id -> first row of the checkpoint tensor this rank keeps (column-parallel)
        self.sources: dict = {}
        if self.parallel == COLUMN:
            parts = shard_parts or {sid: even_part(size, tp, rank) for sid, size in shard_sizes.items()}
            if not shard_sizes:
                parts = {None: even_part(out_features, tp, rank)}
            self.sources = {sid: start for sid, (start, _) in parts.items()}
            if shard_sizes:
                shard_sizes = {sid: parts[sid][1] for sid in shard_sizes}
            out_features = sum(size for _, size in parts.values())
        elif self.parallel == ROW:
            in_features //= tp
        self.in_features, self.out_features = in_features, out_features
        # shard id -> (offset, size) along the output dimension
        self.shards: dict = {}
        offset = 0
        for shard_id, size in shard_sizes.items():
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

    def rank_part(self, loaded: torch.Tensor, shard_id=None, *, output_dim: int = 0, input_dim: int | None = None,
                  pack: int = 1, input_pack: int = 1) -> torch.Tensor:
        """This rank's part of a whole checkpoint tensor (itself at tp 1).

        output_dim / input_dim: the tensor's output and input dimensions (None: it has no input one, a
        bias or per-channel scales); pack / input_pack: outputs / inputs one stored element stands for
        (AWQ: 8 outputs per int32 of qweight and qzeros, a group of inputs per row of qzeros and scales).
        """
        if self.parallel == COLUMN:
            _, size = self.shard_range(shard_id, self.out_features)
            return narrow_checked(loaded, output_dim, self.sources[shard_id] // pack, size // pack)
        if self.parallel == ROW and input_dim is not None:
            return narrow_checked(loaded, input_dim, self.tp_rank * self.in_features // input_pack,
                                  self.in_features // input_pack)
        return loaded

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        loaded = self.rank_part(loaded, shard_id, output_dim=getattr(param, "output_dim", 0),
                                input_dim=getattr(param, "input_dim", None), pack=getattr(param, "pack", 1),
                                input_pack=getattr(param, "input_pack", 1))
        if self.parallel == ROW and param is self.bias and self.tp_rank:
            loaded = torch.zeros_like(loaded)  # the all-reduce sums the ranks' outputs: one of them adds the bias
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
        out = self.method.apply(self, x)
        if self.parallel == ROW:
            from ..distributed import all_reduce

            out = all_reduce(out)
        return out


class QKVLinear(Linear):
    """q, k and v projections in one weight: [(heads + 2 * kv_heads) * head_dim, hidden] (this rank's heads)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool,
                 options: LayerOptions = PLAIN):
        tp, rank = options.tp_size, options.tp_rank
        q_start, q_heads = even_part(num_heads, tp, rank)
        kv_start, kv_heads = kv_heads_part(num_kv_heads, tp, rank)
        self.q_size, self.kv_size = q_heads * head_dim, kv_heads * head_dim
        parts = {"q": (q_start * head_dim, self.q_size), "k": (kv_start * head_dim, self.kv_size),
                 "v": (kv_start * head_dim, self.kv_size)}
        super().__init__(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias,
                         {"q": num_heads * head_dim, "k": num_kv_heads * head_dim, "v": num_kv_heads * head_dim},
                         options, parallel=COLUMN, shard_parts=parts)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output."""

    def __init__(self, in_features: int, out_sizes: list[int], bias: bool = False, options: LayerOptions = PLAIN):
        super().__init__(in_features, sum(out_sizes), bias, dict(enumerate(out_sizes)), options, parallel=COLUMN)


class GateUpLinear(MergedLinear):
    """The gated MLP's gate and up projections in one weight (shards 0 and 1), returning silu(gate) * up
    [T, intermediate]: the activation belongs to the layer so that a method whose kernel can apply it in its
    epilogue does (LinearMethod.apply_silu_and_mul; the CUDA AWQ and int8 kernels, one kernel less a decode
    layer)."""

    gated = True  # the methods' after_loading may store the two halves interleaved (w4_mma.gate_up_order)

    def __init__(self, in_features: int, intermediate_size: int, bias: bool = False, options: LayerOptions = PLAIN):
        super().__init__(in_features, [intermediate_size] * 2, bias, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply_silu_and_mul(self, x)
