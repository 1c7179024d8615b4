"""On the GPU machine (9.0+): early launch (engine/kernels/pdl.py) changes when the decode step's kernels start,
never what they compute: an engine's greedy tokens are the same with it on and off, token for token, with 16-bit
weights and KV, an int8 KV cache (its own attention kernel), and AWQ weights on the CUDA kernels.

Run there with `python3 -m pytest -m gpu tests/engine/test_gpu_early_launch.py`."""
from __future__ import annotations

import pytest
import torch

from tests.engine.test_gpu_w4_cuda import PROMPTS, greedy_tokens


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [{}, {"quant_policy": 8}, {"model_format": "awq", "w4_kernel": "cuda"}],
                         ids=["bf16", "kv-int8", "awq-cuda"])
def test_early_launch_changes_no_token(settings):
    from engine.kernels import pdl, w4_mma

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("early launch needs a 9.0+ GPU")
    cuda = settings.get("w4_kernel") == "cuda"
    if cuda and w4_mma.unavailable_reason(torch.device("cuda")):
        pytest.skip("needs nvcc for the CUDA kernels")
    prompts = PROMPTS * 3  # 12 requests: batch-1 prefills, decode batches of 12 down to 1
    on, engine = greedy_tokens(prompts, 40, **settings)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    del engine
    try:
        if cuda:
            w4_mma.set_early_launch(False)
        pdl.set_enabled(False)
        off, _ = greedy_tokens(prompts, 40, **settings)
    finally:
        if cuda:
            w4_mma.set_early_launch(True)
        pdl.set_enabled(True)
    assert on == off
