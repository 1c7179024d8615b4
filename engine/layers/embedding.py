"""Token embedding and the LM head (tied to the embedding when the model says so)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Logits in fp32 for the rows given (only the last token of each sampling request); one row goes
    through the Triton GEMV when kernels are on (9% faster than cuBLAS for Qwen2.5-7B's 152k x 3584)."""

    use_kernels = False  # set by the model runner
    batch_invariant = False  # set by the model runner (EngineConfig.deterministic)

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None):
        super().__init__()
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

        self.weight_t: torch.Tensor | None = None

    def use_transposed_weight(self) -> None:
        """A [hidden, vocab] copy for x @ W on CPU (see Linear.use_transposed_weight): 2.5x faster there."""
        self.weight_t = self.weight.data.t().contiguous()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight_t is not None:
            return (hidden @ self.weight_t).float()
        return linear(hidden, self.weight, None, use_kernels=self.use_kernels,
                      batch_invariant=self.batch_invariant).float()
