"""The int8 LM head (engine/layers/embedding.py, EngineConfig.lm_head_int8) on its Triton path: the W8A16
kernels (GEMV at one row, GEMM above) over the head's codes give the dequantized rows' logits, for an
untied head loaded row by row and a tied one quantized from the embedding. On the CPU in the interpreter."""
from __future__ import annotations

import pytest
import torch

from engine.layers.embedding import LMHead, VocabEmbedding
from engine.layers.options import LayerOptions
from engine.quant.int8 import dequantize_per_channel, quantize_per_channel
from tests.kernels.conftest import DEVICE

VOCAB, HIDDEN = 200, 96  # rows not a multiple of the kernels' tiles


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
def test_int8_head_on_the_triton_kernels_gives_the_dequantized_logits(tied, rows):
    options = LayerOptions(use_kernels=True, device_type="cuda", head_int8=True)  # Triton weight kernels
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05
    with torch.device(DEVICE):
        embedding = VocabEmbedding(VOCAB, HIDDEN, options) if tied else None
        head = LMHead(VOCAB, HIDDEN, embedding, options)
    if tied:
        embedding.weight.data.copy_(weight)
    else:
        head.weight.weight_loader(head.weight, weight.to(DEVICE))
    head.after_loading()
    assert head.weight is None and head.qweight.dtype == torch.int8  # the head holds codes only
    assert not tied or torch.equal(embedding.weight.data, weight.to(DEVICE))  # the embedding keeps its rows
    hidden = torch.randn(rows, HIDDEN, generator=gen)
    expected = hidden @ dequantize_per_channel(*quantize_per_channel(weight)).t()
    logits = head(hidden.to(DEVICE))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.cpu(), expected, rtol=1e-4, atol=1e-4)
