"""Linear methods: how a linear layer stores its weight and computes y = x W^T (+ b), per format.

A Linear is given its method when it is built (LayerOptions.linear_method(), as vLLM's LinearMethod /
QuantizeMethodBase): the method registers the layer's parameters in the shapes the checkpoint holds,
says how a checkpoint tensor (or one shard of a fused qkv / gate-up weight) lands in them, prepares
them once after loading, and runs the forward on the kernel path chosen for the model.

- UnquantizedMethod: W [N, K] as loaded; the fixed-tile GEMM in deterministic mode, the Triton GEMV
  for one row with kernels on, cuBLAS otherwise; on CPU packed once for oneDNN.
- Int8Method: per-output-channel int8 codes and scales (engine/quant/int8.py), quantized from the
  16-bit checkpoint as each tensor loads (the full-precision weight is never held), W8A16 kernel; with
  w8_kernel "cuda" repacked after loading for the CUDA kernels (engine/kernels/w8_mma.py), a gate_up's
  halves interleaved as AWQ's below.
- AWQMethod: an AutoAWQ GEMM checkpoint (engine/quant/int4_pack.py: qweight/qzeros/scales), W4A16
  kernel; on the CUDA kernel a gate_up layer is stored with its halves interleaved so that the few-row
  kernel writes silu(gate) * up itself (apply_silu_and_mul).
Both quantized methods compute on the CPU (and on CUDA with --no-kernels) from the dequantized codes,
so every path gives the numbers of the quantized weights, not of the original ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .options import LayerOptions


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, use_kernels: bool,
           batch_invariant: bool) -> torch.Tensor:
    """x W^T (+ b) for a 16/32-bit W on the chosen path: the fixed-tile GEMM in deterministic mode, the
    Triton GEMV for one row with kernels on (batch-1 decode), cuBLAS otherwise."""
    if batch_invariant:
        from ..kernels.matmul import matmul_invariant

        return matmul_invariant(x, weight, bias)
    if use_kernels and x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous():
        from ..kernels.gemv import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _param(*shape, dtype=None, output_dim: int = 0, pack: int = 1, input_dim: int | None = None,
           input_pack: int = 1, device=None, derived: bool = False) -> nn.Parameter:
    """A parameter with the loader's layout facts: which dims are the output and input ones, and how many
    output columns (8 for packed int4) or input rows (a quantization group) one stored element holds, so
    shards of fused layers and tensor-parallel parts land right (Linear.rank_part).
    derived: filled by another parameter's loader (int8 codes from the checkpoint's weight), so the
    loader does not expect it in the checkpoint."""
    p = nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)
    p.output_dim, p.pack, p.input_dim, p.input_pack, p.derived = output_dim, pack, input_dim, input_pack, derived
    return p


class LinearMethod:
    """The interface; `layer` is the Linear (engine/layers/linear.py) that owns the parameters."""

    def __init__(self, options: LayerOptions):
        self.options = options
        self.cuda = False  # the quantized methods: this layer runs the CUDA kernels (decided in create_weights)

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, bias: bool) -> None:
        raise NotImplementedError

    def after_loading(self, layer: nn.Module) -> None:
        """Once every checkpoint tensor is in: repack for the device (default: nothing)."""

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_silu_and_mul(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of a GateUpLinear (engine/layers/linear.py): by default the product, then the
        activation (Triton with kernels on); a method whose kernel applies it in its epilogue overrides this."""
        from .activation import silu_and_mul

        return silu_and_mul(self.apply(layer, x), use_kernels=self.options.use_kernels)

    def _add_bias(self, layer: nn.Module, out_features: int, bias: bool) -> None:
        layer.compute_dtype = torch.get_default_dtype()  # the model's dtype while it is being built
        layer.bias = _param(out_features) if bias else None

    def _takes_cuda(self, kernel: str, shape_problem: str | None, refusal: str) -> bool:
        """Whether this layer runs the CUDA kernels: chosen for the model (`kernel`, on a GPU with kernels on) and
        its shape fits (`shape_problem` None). Where it does not fit, a choice made explicitly is an error now,
        before any weight is read; auto's (options.kernel_fallback) leaves this layer on the Triton kernels."""
        if not (kernel == "cuda" and self.options.device_type == "cuda" and self.options.use_kernels):
            return False
        if shape_problem and not self.options.kernel_fallback:
            raise ValueError(f"{refusal} {shape_problem}")
        return shape_problem is None

    def _cpu_weight(self, layer: nn.Module, weight: torch.Tensor) -> None:
        """A dequantized weight packed for CPU GEMMs: the quantized numbers at oneDNN's speed."""
        from .cpu_gemm import CpuWeight

        bias = None if layer.bias is None else layer.bias.data
        layer.cpu_weight = CpuWeight(weight.to(layer.compute_dtype), bias)


class UnquantizedMethod(LinearMethod):
    def create_weights(self, layer, in_features, out_features, bias):
        layer.weight = _param(out_features, in_features, input_dim=1)
        self._add_bias(layer, out_features, bias)

    def after_loading(self, layer):
        if self.options.device_type == "cpu":  # oneDNN on a packed copy: 1.3-3.8x F.linear (cpu_gemm.py)
            from .cpu_gemm import CpuWeight

            layer.cpu_weight = CpuWeight(layer.weight.data, None if layer.bias is None else layer.bias.data)
            layer.weight = None

    def apply(self, layer, x):
        if layer.weight is None:
            return layer.cpu_weight.apply(x)
        return linear(x, layer.weight, layer.bias, use_kernels=self.options.use_kernels,
                      batch_invariant=self.options.batch_invariant)


class Int8Method(LinearMethod):
    """`weight` is a placeholder on the meta device: its loader quantizes each incoming tensor (whole or
    one shard's rows) into `qweight` / `weight_scale`, and it is dropped after loading. A tensor-parallel
    rank quantizes the whole checkpoint tensor and keeps its part of the codes: a row-parallel rank's
    columns then share the scale of their whole row, so every tp gives the same quantized weight."""

    def create_weights(self, layer, in_features, out_features, bias):
        from ..kernels.w8_mma import unsupported

        # this rank's part of the layer
        self.cuda = self._takes_cuda(self.options.w8_kernel, unsupported(out_features, in_features),
                                     "--w8-kernel cuda: the CUDA W8A16 kernel")
        layer.qweight = _param(out_features, in_features, dtype=torch.int8, derived=True)
        layer.weight_scale = _param(out_features, dtype=torch.float32, derived=True)
        layer.weight = _param(out_features, in_features, device="meta")
        layer.weight.weight_loader = self._load_weight(layer)
        self._add_bias(layer, out_features, bias)

    @staticmethod
    def _load_weight(layer):
        def load(param, loaded: torch.Tensor, shard_id=None) -> None:
            from ..quant.int8 import quantize_per_channel

            offset, size = layer.shard_range(shard_id, layer.out_features)
            if loaded.dim() != 2:
                raise ValueError(f"shape {tuple(loaded.shape)} is not a matrix")
            q, scales = quantize_per_channel(loaded.to(layer.qweight.device))
            q = layer.rank_part(q, shard_id, output_dim=0, input_dim=1)
            scales = layer.rank_part(scales, shard_id, output_dim=0)
            if tuple(q.shape) != (size, layer.in_features):
                raise ValueError(f"shape {tuple(q.shape)} does not match {(size, layer.in_features)}")
            layer.qweight.data[offset:offset + size].copy_(q)
            layer.weight_scale.data[offset:offset + size].copy_(scales)
        return load

    def after_loading(self, layer):
        del layer.weight  # the placeholder: every row is in qweight now
        layer.weight = None
        if self.options.device_type == "cpu":
            from ..quant.int8 import dequantize_per_channel

            self._cpu_weight(layer, dequantize_per_channel(layer.qweight.data, layer.weight_scale.data))
        elif self.cuda:  # one layout in memory: the kernels' fragment order
            from ..kernels.w8_mma import repack

            if getattr(layer, "gated", False):  # as AWQ's below (the int8 LM head is no Linear: no `gated`)
                from ..kernels.w4_mma import gate_up_order

                order = gate_up_order(layer.out_features).to(layer.qweight.device)
                layer.qweight.data = layer.qweight.data[order]
                layer.weight_scale.data = layer.weight_scale.data[order]
                if layer.bias is not None:
                    layer.bias.data = layer.bias.data[order]
            layer.w8_qw = repack(layer.qweight.data)
            layer.qweight = None
            if layer.bias is not None:
                layer.bias.data = layer.bias.data.to(torch.bfloat16)

    def apply(self, layer, x):
        if getattr(layer, "cpu_weight", None) is not None:
            return layer.cpu_weight.apply(x)
        if getattr(layer, "w8_qw", None) is not None:
            from ..kernels.w8_mma import w8_mma_linear

            if getattr(layer, "gated", False):
                raise RuntimeError("a CUDA int8 gate_up layer is stored interleaved: call apply_silu_and_mul")
            return w8_mma_linear(x, layer.w8_qw, layer.weight_scale, layer.bias)
        if self.options.use_kernels:
            from ..kernels.quant_gemm import w8a16_linear

            return w8a16_linear(x, layer.qweight, layer.weight_scale, layer.bias)
        from ..quant.int8 import dequantize_per_channel

        return F.linear(x, dequantize_per_channel(layer.qweight, layer.weight_scale).to(x.dtype), layer.bias)

    def apply_silu_and_mul(self, layer, x):
        if getattr(layer, "w8_qw", None) is None:
            return super().apply_silu_and_mul(layer, x)
        from ..kernels.w8_mma import w8_mma_linear

        return w8_mma_linear(x, layer.w8_qw, layer.weight_scale, layer.bias, gated=True)


class AWQMethod(LinearMethod):
    """AutoAWQ GEMM layout: qweight int32 [K, N/8], qzeros int32 [K/G, N/8], scales fp16 [K/G, N].

    With w4_kernel "cuda" (on a GPU) the three are repacked after loading into the CUDA kernel's fragment
    order (layer.w4_qw, layer.w4_sz; engine/kernels/w4_mma.py) and the AWQ tensors dropped: one layout in
    memory, every batch size through that kernel or its dequantize + cuBLAS path."""

    def create_weights(self, layer, in_features, out_features, bias):
        from ..quant.int4_pack import PACK, check_group_size

        g = self.options.group_size
        check_group_size(in_features, g)
        from ..kernels.w4_mma import shape_unsupported

        self.cuda = self._takes_cuda(self.options.w4_kernel, shape_unsupported(out_features, in_features, g),
                                     "--w4-kernel cuda: the CUDA W4A16 kernel")  # this rank's part
        if out_features % PACK or any(size % PACK for _, size in layer.shards.values()):
            raise ValueError(f"AWQ: output sizes must be multiples of {PACK} (got {out_features})")
        layer.qweight = _param(in_features, out_features // PACK, dtype=torch.int32, output_dim=1, pack=PACK,
                               input_dim=0)
        layer.qzeros = _param(in_features // g, out_features // PACK, dtype=torch.int32, output_dim=1, pack=PACK,
                              input_dim=0, input_pack=g)
        layer.scales = _param(in_features // g, out_features, dtype=torch.float16, output_dim=1, input_dim=0,
                              input_pack=g)
        self._add_bias(layer, out_features, bias)

    def _dequantized(self, layer) -> torch.Tensor:
        from ..quant.int4_pack import dequantize_awq

        return dequantize_awq(layer.qweight, layer.qzeros, layer.scales, self.options.group_size)

    def after_loading(self, layer):
        if self.options.device_type == "cpu":
            self._cpu_weight(layer, self._dequantized(layer))
            layer.qweight = layer.qzeros = layer.scales = None
        elif self.cuda:
            from ..kernels.w4_mma import awq_in_gate_up_order, gate_up_order, repack

            awq = layer.qweight.data, layer.qzeros.data, layer.scales.data
            if getattr(layer, "gated", False):  # the epilogue needs each 32 gate columns beside their up ones
                awq = awq_in_gate_up_order(*awq)
                if layer.bias is not None:
                    layer.bias.data = layer.bias.data[gate_up_order(layer.out_features).to(layer.bias.device)]
            layer.w4_qw, layer.w4_sz = repack(*awq, self.options.group_size)
            layer.w4_scale_dtype = layer.scales.dtype
            layer.qweight = layer.qzeros = layer.scales = None
            if layer.bias is not None:
                layer.bias.data = layer.bias.data.to(torch.bfloat16)

    def apply(self, layer, x):
        if getattr(layer, "cpu_weight", None) is not None:
            return layer.cpu_weight.apply(x)
        if getattr(layer, "w4_qw", None) is not None:
            from ..kernels.w4_mma import w4_mma_linear

            if getattr(layer, "gated", False):
                raise RuntimeError("a CUDA AWQ gate_up layer is stored interleaved: call apply_silu_and_mul")
            return w4_mma_linear(x, layer.w4_qw, layer.w4_sz, layer.w4_scale_dtype, layer.bias)
        if self.options.use_kernels:
            from ..kernels.quant_gemm import w4a16_linear

            return w4a16_linear(x, layer.qweight, layer.qzeros, layer.scales, self.options.group_size, layer.bias)
        return F.linear(x, self._dequantized(layer).to(x.dtype), layer.bias)

    def apply_silu_and_mul(self, layer, x):
        if getattr(layer, "w4_qw", None) is None:
            return super().apply_silu_and_mul(layer, x)
        from ..kernels.w4_mma import w4_mma_linear

        return w4_mma_linear(x, layer.w4_qw, layer.w4_sz, layer.w4_scale_dtype, layer.bias, gated=True)
