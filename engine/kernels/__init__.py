"""Triton kernels of the GPU fast path, each with a torch reference in reference.py.

Layers use them when the model runner turns them on (CUDA, and EngineConfig.kernels); on CPU the
torch references serve as the implementation.
"""
from __future__ import annotations

import os


def kernels_wanted(device_type: str, enabled: bool = True) -> bool:
    """Whether a model on this device should run the Triton kernels (EngineConfig.kernels=False: never)."""
    return device_type == "cuda" and enabled


def kernel_head_dim_ok(head_dim: int) -> bool:
    """The attention kernels tile head_dim as one power-of-two block."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def inline_ptx_ok(device) -> bool:
    """Whether tl.inline_asm_elementwise can run for tensors on `device`: CUDA, outside Triton's CPU
    interpreter (which cannot execute PTX; the kernels take their plain-Triton path there)."""
    return getattr(device, "type", device) == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
