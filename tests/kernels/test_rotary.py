"""apply_rotary against rotary_ref: full and partial rotary, odd head counts, strided q/k views, in place."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.reference import rotary_ref
from engine.kernels.rotary import apply_rotary
from engine.layers.rotary import RotaryEmbedding

from .conftest import tolerance


def _run(num_tokens, num_heads, num_kv_heads, head_dim, rot_dim, dtype, device, max_pos=300):
    gen = torch.Generator().manual_seed(0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    rope = RotaryEmbedding(head_dim, max_pos, inv_freq).to(device)
    # q and k as views of a fused qkv output: token stride != H * D.
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    q, k = qkv[:, :num_heads], qkv[:, num_heads:num_heads + num_kv_heads]
    v_before = qkv[:, num_heads + num_kv_heads:].clone()
    positions = torch.randint(0, max_pos, (num_tokens,), generator=gen).to(device)
    q_ref, k_ref = rotary_ref(q, k, positions, rope.cos, rope.sin)
    q_out, k_out = apply_rotary(q, k, positions, rope.cos, rope.sin)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    torch.testing.assert_close(q, q_ref, **tolerance(dtype))
    torch.testing.assert_close(k, k_ref, **tolerance(dtype))
    assert torch.equal(qkv[:, num_heads + num_kv_heads:], v_before)  # v untouched
    if rot_dim < head_dim:
        assert torch.equal(q[..., rot_dim:], q_ref[..., rot_dim:])  # pass-through dims bit-exact


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,rot_dim,dtype", [
    (7, 1, 64, 64, torch.float32), (28, 4, 128, 128, torch.bfloat16), (6, 2, 64, 32, torch.float32),
    (4, 4, 16, 16, torch.float16),
])
def test_rotary(num_heads, num_kv_heads, head_dim, rot_dim, dtype, device):
    _run(11, num_heads, num_kv_heads, head_dim, rot_dim, dtype, device)


def test_rotary_matches_layer_in_fp32(device):
    """In fp32 the kernel and RotaryEmbedding.forward agree (the layer computes in the input dtype)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
    rope = RotaryEmbedding(32, 64, inv_freq).to(device)
    q, k = torch.randn(9, 3, 32, device=device), torch.randn(9, 1, 32, device=device)
    positions = torch.arange(9, device=device) * 5
    q_layer, k_layer = rope(positions, q, k)
    apply_rotary(q, k, positions, rope.cos, rope.sin)
    torch.testing.assert_close(q, q_layer, **tolerance(torch.float32))
    torch.testing.assert_close(k, k_layer, **tolerance(torch.float32))


@pytest.mark.gpu
def test_rotary_gpu_realistic():
    _run(2048, 28, 4, 128, 128, torch.bfloat16, "cuda", max_pos=32768)
    _run(2048, 32, 8, 128, 128, torch.bfloat16, "cuda", max_pos=8192)
