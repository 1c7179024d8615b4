"""Token embedding and the LM head (tied to the embedding when the model says so)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear_method import linear
from .options import PLAIN, LayerOptions


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Logits in fp32 for the rows given (only the last token of each sampling request); one row goes
    through the Triton GEMV when kernels are on (9% faster than cuBLAS for Qwen2.5-7B's 152k x 3584)."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None,
                 options: LayerOptions = PLAIN):
        super().__init__()
        self.options = options  # the head stays 16/32-bit in every weight format (AutoAWQ keeps it too)
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

        self.cpu_weight = None

    def after_loading(self) -> None:
        """On CPU, a packed copy for oneDNN GEMMs (engine/layers/cpu_gemm.py): 22 -> 6.6 ms for
        SmolLM2's head at 16 rows. The tied embedding keeps its own weight for lookups."""
        if self.options.device_type == "cpu":
            from .cpu_gemm import CpuWeight

            self.cpu_weight = CpuWeight(self.weight.data)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.cpu_weight is not None:
            return self.cpu_weight.apply(hidden).float()
        return linear(hidden, self.weight, None, use_kernels=self.options.use_kernels,
                      batch_invariant=self.options.batch_invariant).float()
