"""Rotary position embedding (neox / rotate-half layout, as transformers' Llama and Qwen use).

The frequencies come from transformers' rope functions, so llama3, yarn, linear and dynamic scaling
in a model's config mean exactly what they mean there. cos/sin are tabulated once per position.
"""
from __future__ import annotations

import torch
from torch import nn

from ..forward_context import get_forward_context


def rope_inv_freq(hf_config, head_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        partial = params.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0))
        dim = int(head_dim * partial)
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv_freq, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unsupported rope_type {rope_type!r}")
    return ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, inv_freq: torch.Tensor, scaling: float = 1.0):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = inv_freq.numel() * 2
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    @staticmethod
    def _swap_halves(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x2, x1), dim=-1)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        # transformers' x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): negating x2 or the sin
        # it meets is the same exact product, so the sign lives in signed_sin = (-sin1, sin2), made once
        if self.rotary_dim == self.head_dim:
            return x * cos + self._swap_halves(x) * signed_sin
        rot, passthrough = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        return torch.cat((rot * cos + self._swap_halves(rot) * signed_sin, passthrough), dim=-1)

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) [T, 1, rot] at positions: every layer of a step asks for the same ones, so
        inside a forward they are gathered once and kept in the step's ForwardContext.cache."""
        try:
            cache = get_forward_context().cache
        except RuntimeError:  # a layer run on its own, outside a step
            cache = {}
        key = ("rotary", id(self), dtype)
        if key not in cache:
            cos = self.cos[positions].to(dtype).unsqueeze(1)
            sin = self.sin[positions].to(dtype).unsqueeze(1)
            half = self.rotary_dim // 2
            cache[key] = (cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1))
        return cache[key]

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q [T, H, D], k [T, Hkv, D], positions [T] -> rotated (q, k) in the input dtype: the torch path. With the
        kernels on, the attention rotates inside the KV write instead (kernels/kv_write.py, from cos and sin)."""
        cos, signed_sin = self._cos_sin(positions, q.dtype)
        return self._rotate(q, cos, signed_sin), self._rotate(k, cos, signed_sin)
