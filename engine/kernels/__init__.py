"""Triton kernels of the GPU fast path, each with a torch reference in reference.py.

Layers use them when the model runner turns them on (CUDA, and EngineConfig.kernels); on CPU the
torch references serve as the implementation.
"""
from __future__ import annotations


def kernels_wanted(device_type: str, enabled: bool = True) -> bool:
    """Whether a model on this device should run the Triton kernels (EngineConfig.kernels=False: never)."""
    return device_type == "cuda" and enabled


def kernel_head_dim_ok(head_dim: int) -> bool:
    """The attention kernels tile head_dim as one power-of-two block."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0
