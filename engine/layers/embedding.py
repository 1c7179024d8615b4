"""Token embedding and the LM head (tied to the embedding when the model says so), vocab-parallel.

With tensor parallelism each rank holds ceil(V/tp) vocab rows (engine/layers/partition.py): the
embedding looks up the ids in its rows, zeroes the others and one all-reduce completes every row;
the LM head computes its rows' logits and rank 0 gathers them (it alone samples), cutting the padding.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .linear import narrow_checked
from .linear_method import linear
from .options import PLAIN, LayerOptions
from .partition import vocab_part


class _VocabRows:
    """This rank's rows of a [vocab, hidden] weight, and their loader."""

    def _init_rows(self, vocab_size: int, hidden_size: int, options: LayerOptions) -> nn.Parameter:
        self.vocab_size, self.tp = vocab_size, options.tp_size
        self.row_start, rows, self.real_rows = vocab_part(vocab_size, options.tp_size, options.tp_rank)
        weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)
        if self.tp > 1:
            weight.weight_loader = self._load_rows
        return weight

    def _load_rows(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if loaded.dim() != 2 or loaded.shape[1] != param.shape[1] or loaded.shape[0] != self.vocab_size:
            raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's "
                             f"{(self.vocab_size, param.shape[1])}")
        param.data[:self.real_rows].copy_(narrow_checked(loaded, 0, self.row_start, self.real_rows))
        param.data[self.real_rows:].zero_()  # padding rows: never looked up, their logits cut off


class VocabEmbedding(nn.Module, _VocabRows):
    def __init__(self, vocab_size: int, hidden_size: int, options: LayerOptions = PLAIN):
        super().__init__()
        self.weight = self._init_rows(vocab_size, hidden_size, options)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return F.embedding(input_ids, self.weight)
        from ..distributed import all_reduce

        local = input_ids - self.row_start
        outside = (local < 0) | (local >= self.real_rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill_(outside[:, None], 0.0))


class LMHead(nn.Module, _VocabRows):
    """Logits in fp32 for the rows given (only the last token of each sampling request); one row goes
    through the Triton GEMV when kernels are on (9% faster than cuBLAS for Qwen2.5-7B's 152k x 3584).
    Under tensor parallelism only rank 0 gets the logits (the other ranks get None).

    With options.head_int8 the head is per-row int8, held and computed by the int8 linear layers' own method
    (linear_method.Int8Method: codes and scales, the CPU's dequantized copy, the CUDA W8A16 kernel or the
    Triton ones). Only the rows' arrival is the head's: an untied head is quantized row by row as its vocab
    rows load (the 16-bit weight is never held); a tied one is quantized from the embedding after loading
    (the embedding keeps its 16-bit rows for lookups). The CUDA kernel runs it wherever the extension is in
    use (w4_kernel or w8_kernel "cuda") and the shape fits; a shape it cannot take runs on Triton."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None,
                 options: LayerOptions = PLAIN):
        super().__init__()
        self.options = options
        self.tied = tied_to is not None
        if tied_to is not None:
            self.vocab_size, self.tp = vocab_size, options.tp_size
            self.row_start, self.real_rows = tied_to.row_start, tied_to.real_rows
            self.weight = tied_to.weight
        else:
            self.weight = self._init_rows(vocab_size, hidden_size, options)
        self.cpu_weight = self.int8 = None
        if options.head_int8:
            from .linear_method import Int8Method

            cuda = "cuda" in (options.w4_kernel, options.w8_kernel)  # the extension is built, the model bf16
            self.int8 = Int8Method(replace(options, w8_kernel="cuda" if cuda else options.w8_kernel,
                                           kernel_fallback=True))
            tied_weight = self.weight
            self.int8.create_weights(self, hidden_size, self.weight.shape[0], bias=False)
            if self.tied:
                self.weight = tied_weight  # quantized in after_loading
            else:
                self.weight.weight_loader = self._load_quantized

    def _load_quantized(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        rows = torch.empty(self.qweight.shape, dtype=loaded.dtype, device=self.qweight.device)
        self._load_rows(rows, loaded)  # this rank's rows (all of them at tp 1), shape checked, padding zeroed
        self._quantize(rows)

    def _quantize(self, rows: torch.Tensor) -> None:
        from ..quant.int8 import quantize_per_channel

        q, scales = quantize_per_channel(rows)
        self.qweight.data.copy_(q)
        self.weight_scale.data.copy_(scales)

    def after_loading(self) -> None:
        """On CPU, a packed copy for oneDNN GEMMs (engine/layers/cpu_gemm.py): 22 -> 6.6 ms for
        SmolLM2's head at 16 rows. The tied embedding keeps its own weight for lookups. An int8 head is
        quantized from a tied embedding here, then prepared by its method."""
        if self.int8 is not None:
            if self.tied:
                self._quantize(self.weight.data)
            self.int8.after_loading(self)
        elif self.options.device_type == "cpu":
            from .cpu_gemm import CpuWeight

            self.cpu_weight = CpuWeight(self.weight.data)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.int8 is not None:
            logits = self.int8.apply(self, hidden).float()
        elif self.cpu_weight is not None:
            logits = self.cpu_weight.apply(hidden).float()
        else:
            logits = linear(hidden, self.weight, None, use_kernels=self.options.use_kernels,
                            batch_invariant=self.options.batch_invariant).float()
        if self.tp == 1:
            return logits
        from ..distributed import gather_last_dim

        full = gather_last_dim(logits)
        return None if full is None else full[:, :self.vocab_size]
