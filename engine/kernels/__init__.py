"""Triton kernels of the GPU fast path, each with a torch reference in reference.py.

Layers use them when the model runner turns them on (CUDA, and OPSCTL_KERNELS is not "0"); on CPU
the torch references serve as the implementation.
"""
from __future__ import annotations

import os


def kernels_wanted(device_type: str) -> bool:
    """Whether a model on this device should run the Triton kernels (OPSCTL_KERNELS=0 turns them off)."""
    return device_type == "cuda" and os.environ.get("OPSCTL_KERNELS", "1") != "0"


def kernel_head_dim_ok(head_dim: int) -> bool:
    """The attention kernels tile head_dim as one power-of-two block."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0
