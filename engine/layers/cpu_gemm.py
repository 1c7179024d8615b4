"""x W^T on the CPU: oneDNN with the weight packed once at load, or x @ W^T kept contiguous.

Measured on the 2-core AMD EPYC (Zen 4) dev machine, fp32, 16 rows (a decode step):
F.linear (MKL) 0.62 ms for 576 -> 3072 and 22 ms for SmolLM2's 576 -> 49,152 head; x @ W with W
stored [in, out] 0.98 and 25 ms; oneDNN on a packed weight 0.35 and 6.6 ms. oneDNN won at every row
count tried (1 to 2,700), so the loader packs every weight on CPU when torch has oneDNN's linear op
(`torch.ops.mkldnn._linear_pointwise`, what torch.compile's CPU backend calls) and keeps a
transposed copy where it does not.
"""
from __future__ import annotations

import torch


def onednn_linear_available() -> bool:
    """torch was built with oneDNN and exposes its packed-weight linear (CPU builds on x86 and arm)."""
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")
            and hasattr(mkldnn, "_reorder_linear_weight"))


class CpuWeight:
    """A weight [out, in] prepared for CPU GEMMs; `apply(x)` is x W^T (+ bias) for x [..., in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, batch_hint: int = 16):
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.packed = None
        if onednn_linear_available() and weight.dtype in (torch.float32, torch.bfloat16):
            try:  # oneDNN's blocked layout, tuned for `batch_hint` rows but valid for any
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
            except RuntimeError:
                self.packed = None
        self.weight_t = None if self.packed is not None else weight.detach().t().contiguous()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.packed is not None:
            out = torch.ops.mkldnn._linear_pointwise(x2.contiguous(), self.packed, self.bias, "none", [], "")
        else:
            out = x2 @ self.weight_t
            if self.bias is not None:
                out = out + self.bias
        return out.view(*lead, self.out_features)
