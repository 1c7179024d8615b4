"""LayerOptions: how every layer of one model runs, decided once before the model is built.

The model runner picks the kernel path (Triton kernels on CUDA or the torch reference, batch-invariant
or not), the weight format of the linear layers and the KV-cache format, and the model passes this
one object down to the layers it constructs (vLLM passes its quant_config the same way). Nothing
changes a layer's path after the model exists, so a quantized layer, a tensor-parallel layer or a
new kernel is one more case here and in the layer, not a flag set from outside.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_FORMATS = ("hf", "int8", "awq")


@dataclass(frozen=True)
class LayerOptions:
    """use_kernels: the Triton kernels (CUDA) instead of the torch reference path.
    batch_invariant: EngineConfig.deterministic: every linear layer through the fixed-tile GEMM and
        every attention through the one-pass kernel.
    weight_format: the linear layers' weights: hf (16/32-bit as loaded), int8 (per-channel 8-bit,
        quantized at load), awq (4-bit groups from an AWQ checkpoint, AutoAWQ's GEMM layout).
    group_size: the AWQ checkpoint's group size.
    device_type: where the weights live ("cpu" packs them for oneDNN after loading).
    kv_quant: EngineConfig.quant_policy (0: KV cache in the model dtype, 8: int8).
    tp_rank, tp_size: this process's tensor-parallel rank and their number (EngineConfig.tp): which part
        of each split layer it holds (engine/layers/partition.py).
    w4_kernel: EngineConfig.w4_kernel: AWQ weights through the Triton kernels in AutoAWQ's layout, or
        repacked after loading for the CUDA tensor-core kernel (engine/kernels/w4_mma.py).
    w8_kernel: EngineConfig.w8_kernel: int8 weights through the Triton kernels, or repacked after loading for
        the CUDA kernels' int8 variants (engine/kernels/w8_mma.py). Both come resolved ("triton" or "cuda";
        EngineConfig's "auto" is decided in engine/runner/weight_kernels.py).
    kernel_fallback: "cuda" was auto's choice: a layer whose shape the CUDA kernels cannot take runs the
        Triton ones (asked for explicitly, such a layer is an error when it is built).
    head_int8: EngineConfig.lm_head_int8, resolved: the LM head in per-row int8 (engine/layers/embedding.py).
    """

    use_kernels: bool = False
    batch_invariant: bool = False
    weight_format: str = "hf"
    group_size: int = 128
    device_type: str = "cpu"
    kv_quant: int = 0
    tp_rank: int = 0
    tp_size: int = 1
    w4_kernel: str = "triton"
    w8_kernel: str = "triton"
    kernel_fallback: bool = False
    head_int8: bool = False

    def __post_init__(self):
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight format {self.weight_format!r}: must be one of {', '.join(WEIGHT_FORMATS)}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tensor-parallel rank {self.tp_rank} outside 0..{self.tp_size - 1}")

    def linear_method(self):
        """The LinearMethod of this model's quantizable linear layers (engine/layers/linear_method.py)."""
        from .linear_method import AWQMethod, Int8Method, UnquantizedMethod

        if self.weight_format == "int8":
            return Int8Method(self)
        if self.weight_format == "awq":
            return AWQMethod(self)
        return UnquantizedMethod(self)


PLAIN = LayerOptions()  # the torch reference path with 16/32-bit weights: what tests build by default
