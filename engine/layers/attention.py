"""Attention over the paged KV cache: writes this step's K/V, then attends with the active backend.

The runner hands each layer its cache views (k_cache, v_cache: [num_blocks, block_size, Hkv, D]) and
sets the forward context; the backend is the torch reference now, Triton kernels on CUDA later.
With KV quantization (kv_quant = EngineConfig.quant_policy 8 or 4) the caches hold uint8 codes and
k_scale, v_scale [num_blocks, block_size, Hkv, 2] fp32 each token's (scale, min) per kv head (the
format: kernels/kv_write.py); K/V are quantized as they are written and dequantized as they are read.
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels import reference
from .options import PLAIN, LayerOptions
from ..forward_context import get_forward_context


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 options: LayerOptions = PLAIN):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.use_kernels = options.use_kernels
        # EngineConfig.deterministic: decode rows take the prefill kernel too, whose one pass over the keys
        # in fixed tiles from position 0 gives a row the same bits whether it is a decode token, part of a
        # prompt chunk or a prompt whose prefix came from the cache (split-KV decode would not).
        self.batch_invariant = options.batch_invariant
        self.kv_quant = options.kv_quant  # EngineConfig.quant_policy: the KV cache's format
        self.k_cache = self.v_cache = None  # set by the model runner once the pool is allocated
        self.k_scale = self.v_scale = None  # likewise, with kv_quant only

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None = None,
                rotary: nn.Module | None = None) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]. rotary (a RotaryEmbedding, with positions [T]): q and k are
        rotated first; with the kernels on, inside the KV write's kernel (one launch a layer fewer)."""
        ctx = get_forward_context()
        if rotary is not None and not self.use_kernels:
            q, k = rotary(positions, q, k)
        if self.use_kernels:
            from ..kernels.decode_attention import paged_decode_attention
            from ..kernels.kv_write import write_kv
            from ..kernels.prefill_attention import paged_prefill_attention

            scales = {"k_scale": self.k_scale, "v_scale": self.v_scale}
            rope = None if rotary is None else (q, positions, rotary.cos, rotary.sin)
            write_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping, **scales, rotary=rope)
            if ctx.is_decode_only and not self.batch_invariant:
                return paged_decode_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.seq_lens,
                                              self.scale, **scales)
            return paged_prefill_attention(q, self.k_cache, self.v_cache, ctx.query_start_loc, ctx.seq_lens,
                                           ctx.block_tables, self.scale, ctx.max_query_len,
                                           batch_invariant=self.batch_invariant, **scales)
        reference.write_kv_ref(k, v, self.k_cache, self.v_cache, ctx.slot_mapping, self.k_scale, self.v_scale)
        return reference.paged_attention_ref(q, self.k_cache, self.v_cache, ctx, self.scale,
                                             self.k_scale, self.v_scale)
