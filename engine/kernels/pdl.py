"""Early launch (programmatic dependent launch, Hopper and newer) for the kernels of a decode step.

A step at batch 1 is ~340 kernels of a few microseconds each, and the gap between two of them (the next one's
launch and ramp, after the last program of the one before has finished) costs ~0.2 ms a step on an H200
(reports/examples/h200/kernel-lab-w8, "Where batch-1 decode's time goes"). With early launch a kernel may be
launched while the one before it finishes; its programs then wait (griddepcontrol.wait: the kernel before
complete, its writes visible) before they read anything a kernel writes, or write anything. What no kernel of
the step writes they may read before the wait: the weights, and the inputs the host copies in before the step
(positions, slot mappings, sequence lengths). Every kernel waits before it signals (below), so when a kernel
starts, every kernel but the one just before it has completed: an input written by an earlier kernel would be
safe too, one written by the kernel just before would not.

- The Triton kernels of the step (the RMSNorms, rotary, the KV write, decode attention and its split
  reduction, SiLU-and-mul, the batch-1 GEMV) are launched with `launch_options(out)` and call
  `enter(EARLY_LAUNCH)` before their first read of another kernel's output (the RMSNorm reads its weight, rotary
  and the KV write their positions, tables and slots, decode attention its sequence lengths before it): wait for
  the kernel before, then let the next one launch. Waiting first keeps at
  most one kernel waiting at a time (a signal before the wait let chains of early kernels pile up on the SMs:
  lab 9's GEMVs lost up to 3 µs that way). The order holds transitively: a kernel completes only after its
  own wait returned, so whatever waits for it also sees the writes of every kernel before.
- The CUDA W4A16 / W8A16 kernels (engine/kernels/cuda/w4_mma.cu) are launched with the same attribute, load
  their first weights (which no kernel writes) before their wait, and signal after their main loop.
- A kernel launched the ordinary way (cuBLAS, torch's own) starts after the one before it has completed, and
  the signal of the one before does nothing to it, so the scheme is safe whatever comes next.
OPSCTL_PDL=0 in the environment switches it off (A / B timing; a suspected race).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_enabled = os.environ.get("OPSCTL_PDL", "1") != "0"


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


def launch_options(t: torch.Tensor) -> dict:
    """The keyword arguments a Triton kernel writing t and beginning with `enter` is launched with: its
    EARLY_LAUNCH constexpr and, where that is on, the launch option (the interpreter and older Triton versions
    know no such option)."""
    on = early_launch(t)
    return {"EARLY_LAUNCH": on, "launch_pdl": True} if on else {"EARLY_LAUNCH": False}


@triton.jit
def enter(EARLY_LAUNCH: tl.constexpr):
    """First thing in a kernel launched with launch_options: wait for the kernel before it (its writes visible),
    then let the next kernel launch."""
    if EARLY_LAUNCH:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
