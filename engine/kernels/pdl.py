"""Early launch of the next kernel (programmatic dependent launch, Hopper and newer) from the Triton kernels
whose output feeds a CUDA W4A16 kernel: the RMSNorms (-> qkv, gate_up), SiLU-and-mul (-> down) and the decode
attention's split reduction (-> o).

The CUDA kernels (engine/kernels/cuda/w4_mma.cu) are launched with the programmatic-serialization attribute:
they may start as soon as every program of the kernel before them has signalled (gdc_launch_dependents, first
thing in these kernels), load their weights, which no kernel writes, and wait (griddepcontrol.wait: the
earlier kernel complete, its writes visible) before they read x or write anything. So the weight loads of a
linear overlap the small kernel before it instead of starting after it. The signal is a no-op when the next
kernel is an ordinary launch (cuBLAS, another Triton kernel), so it is safe whatever follows.
"""
from __future__ import annotations

import functools
import os

import torch

_enabled = True


def _triton_has_gdc() -> bool:
    # A Triton from before gdc_launch_dependents keeps the plain launch (pyproject allows triton >= 3.0).
    try:
        from triton.language.extra import cuda
    except ImportError:
        return False
    return hasattr(cuda, "gdc_launch_dependents")


_HAS_GDC = _triton_has_gdc()


def set_enabled(on: bool) -> None:
    """Switch the early-launch signal off or on (for A / B timing; the kernels compile one variant each way)."""
    global _enabled
    _enabled = on


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def early_launch(t: torch.Tensor) -> bool:
    """Whether a Triton kernel writing t signals the next kernel to start early: on a 9.0+ GPU with a Triton
    that has the signal, not under the Triton interpreter (CPU tests), unless switched off."""
    if not (_enabled and _HAS_GDC) or t.device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _capable(t.device.index if t.device.index is not None else torch.cuda.current_device())
