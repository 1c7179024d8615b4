"""Which kernels run the quantized weights: EngineConfig.w4_kernel (AWQ) and w8_kernel (int8), resolved once
before the model is built.

- "triton": the Triton W4A16 / W8A16 kernels (any GPU, any batch, the checkpoint's layout).
- "cuda": the CUDA C++ tensor-core kernels (engine/kernels/w4_mma.py, w8_mma.py). Asked for explicitly, every
  reason it cannot run is one clear error before any weight is read, and so is a layer whose shape it cannot
  take (when the layer is built).
- "auto" (the default): "cuda" where it is measured at least level with Triton at every batch size and can run
  here, otherwise "triton", with the reason logged. vLLM upgrades AWQ checkpoints to its Marlin kernels the
  same way. "Measured" means Hopper (compute capability 9.0): there the few-row kernel runs 1-32 rows and the
  warpgroup kernel 33-128 (H200, Qwen2.5-7B, output tok/s against bf16: AWQ at batch 1 1.79x on CUDA against
  1.50x on Triton, at 64 requests 1.03x against 0.79x; int8 1.40x / 1.37x and 1.004x / 0.93x;
  reports/examples/h200/kernel-lab-{wgmma,pdl,w8}). On Ampere / Ada 33-64 rows would run
  as 32-row launches that re-read the weights, never measured against Triton there, so auto stays on Triton.
  auto also builds the extension (nvcc, ~1 min on first use, cached) here, and falls back to Triton if that
  fails; a layer whose shape the CUDA kernels cannot take runs Triton (LayerOptions.kernel_fallback).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import InvalidRequestError

log = logging.getLogger(__name__)

MEASURED_CAPABILITY = (9, 0)  # where auto takes the CUDA kernels (see the module docstring)


@dataclass(frozen=True)
class WeightKernels:
    w4: str  # "triton" or "cuda"
    w8: str
    fallback: bool  # auto chose "cuda": a layer the CUDA kernels cannot take runs Triton instead of failing


def _obstacle(fmt, kind: str, use_kernels: bool, dtype: str, device: torch.device) -> str | None:
    """Why the CUDA kernels cannot run this model here (None: they can), completing "--w4-kernel cuda ...";
    kind: "awq" or "int8"."""
    from ..kernels import w4_mma

    if fmt.name != kind:
        return f"applies to {'AWQ' if kind == 'awq' else 'int8'} weights (this model loads as {fmt.name})"
    if not use_kernels:
        return "needs the GPU kernels (CUDA, without --no-kernels)"
    if kind == "awq":
        why = w4_mma.unsupported(fmt.group_size, dtype)
    else:
        from ..kernels import w8_mma

        why = w8_mma.dtype_unsupported(dtype)
    if why:
        return why
    reason = w4_mma.unavailable_reason(device)  # the int8 kernels are variants in the same build
    return reason and reason.removeprefix("the CUDA W4A16 kernel ")


def _not_measured_here(device: torch.device, flag: str) -> str | None:
    """Why auto keeps weights the CUDA kernels could run on Triton on this GPU (None: it does not), completing
    "the CUDA kernels ..." as _obstacle's reasons do."""
    if torch.cuda.get_device_capability(device) != MEASURED_CAPABILITY:
        return ("are measured level with Triton or faster at every batch size only on Hopper (set "
                f"{flag} cuda to use them here)")
    return None


def _auto(fmt, kind: str, flag: str, use_kernels: bool, dtype: str, device: torch.device) -> str:
    """auto's choice for the weights of `kind`, logged with its reason."""
    if fmt.name != kind:
        return "triton"  # nothing runs these kernels
    why = _obstacle(fmt, kind, use_kernels, dtype, device) or _not_measured_here(device, flag)
    if why is None:
        from ..kernels import w4_mma

        try:
            w4_mma.extension()
        except Exception as exc:  # a broken toolkit must not stop a model that Triton can run
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            why = f"could not be built ({type(exc).__name__}: {first_line})"
    if why:
        log.info("%s auto: the Triton kernels; the CUDA ones %s", flag, why)
        return "triton"
    log.info("%s auto: the CUDA tensor-core kernels (%s triton for the Triton ones)", flag, flag)
    return "cuda"


def choose(config, fmt, *, use_kernels: bool, dtype: str, device: torch.device) -> WeightKernels:
    """The kernels of this model's quantized weights; an explicit "cuda" that cannot run is an error here.

    fmt: the resolved weight format (engine/models/weight_format.py); dtype: what the model runs in
    ("bfloat16", ...)."""
    chosen = {}
    for kind, field, flag in (("awq", "w4_kernel", "--w4-kernel"), ("int8", "w8_kernel", "--w8-kernel")):
        requested = getattr(config, field)
        if requested == "cuda":
            why = _obstacle(fmt, kind, use_kernels, dtype, device)
            if why:
                raise InvalidRequestError(f"{flag} cuda {why}", field)
        chosen[field] = _auto(fmt, kind, flag, use_kernels, dtype, device) if requested == "auto" else requested
    auto_cuda = any(getattr(config, f) == "auto" and chosen[f] == "cuda" for f in chosen)
    return WeightKernels(w4=chosen["w4_kernel"], w8=chosen["w8_kernel"], fallback=auto_cuda)


def head_int8(config, fmt, kernels: WeightKernels) -> bool:
    """EngineConfig.lm_head_int8 resolved: on / off as asked; auto on where the linear layers run the CUDA
    kernels of their quantized format (int8 or AWQ): there the head's int8 codes are read by the same build's
    W8A16 kernel. Measured on an H200 (Qwen2.5-7B, reports/examples/h200/int8-head/): the head alone 275 µs in
    bf16 against 129 µs in int8 at one row (83% / 88% of 4.8 TB/s), the batch-1 decode step AWQ 470.6 -> 490.6
    tok/s and int8 361.9 -> 380.0 (bf16 252.8), at 64 requests +1% both."""
    if config.lm_head_int8 != "auto":
        return config.lm_head_int8 == "on"
    return (fmt.name == "awq" and kernels.w4 == "cuda") or (fmt.name == "int8" and kernels.w8 == "cuda")
