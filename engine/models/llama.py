"""Our Llama decoder (SmolLM2, Llama 2/3), the base that Qwen2/Qwen2.5/Qwen3 specialise.

Fused weights: one qkv GEMM and one gate/up GEMM per layer; the residual add is fused into RMSNorm.
Model code sees (input_ids, positions) only; attention reads the forward context. Every layer is
built with the model's LayerOptions (kernel path, weight format, KV format, tensor-parallel rank):
nothing is set afterwards. Under tensor parallelism a rank's attention holds its heads and its MLP its
columns (engine/layers/partition.py); o_proj and down_proj end with the block's one all-reduce.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import PagedAttention
from ..layers.embedding import LMHead, VocabEmbedding
from ..layers.linear import GateUpLinear, Linear, QKVLinear
from ..layers.norm import RMSNorm
from ..layers.linear import ROW
from ..layers.options import PLAIN, LayerOptions
from ..layers.partition import kv_heads_part
from ..layers.rotary import RotaryEmbedding, rope_inv_freq


def head_dim_of(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class LlamaAttention(nn.Module):
    qkv_bias = False
    qk_norm = False

    def __init__(self, cfg, rotary: RotaryEmbedding, options: LayerOptions = PLAIN):
        super().__init__()
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.head_dim = head_dim_of(cfg)
        # this rank's heads (all of them at tp 1)
        self.num_heads = heads // options.tp_size
        self.num_kv_heads = kv_heads_part(kv_heads, options.tp_size, options.tp_rank)[1]
        bias = self.qkv_bias or bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = QKVLinear(cfg.hidden_size, self.head_dim, heads, kv_heads, bias, options)
        self.o_proj = Linear(heads * self.head_dim, cfg.hidden_size,
                             bias=bool(getattr(cfg, "attention_bias", False)) and not self.qkv_bias, options=options,
                             parallel=ROW)
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, use_kernels=options.use_kernels)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, use_kernels=options.use_kernels)
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim ** -0.5,
                                   options)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        out = self.attn(q, k, v, positions, self.rotary)  # rotary applied there (fused into the KV write)
        return self.o_proj(out.flatten(1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg, options: LayerOptions = PLAIN):
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_up_proj = GateUpLinear(cfg.hidden_size, cfg.intermediate_size, bias, options)  # silu(gate) * up
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias, options=options, parallel=ROW)
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention

    def __init__(self, cfg, rotary: RotaryEmbedding, options: LayerOptions = PLAIN):
        super().__init__()
        self.self_attn = self.attention_cls(cfg, rotary, options)
        self.mlp = LlamaMLP(cfg, options)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, use_kernels=options.use_kernels)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, use_kernels=options.use_kernels)

    def forward(self, positions, hidden, residual):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM. forward(input_ids [T], positions [T]) -> hidden [T, hidden]; logits separately."""

    layer_cls = LlamaDecoderLayer
    # checkpoint name -> (our fused parameter, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg, options: LayerOptions = PLAIN):
        super().__init__()
        self.config = cfg
        self.options = options
        head_dim = head_dim_of(cfg)
        inv_freq, scaling = rope_inv_freq(cfg, head_dim)
        max_pos = getattr(cfg, "max_position_embeddings", 8192)
        self.rotary = RotaryEmbedding(head_dim, max_pos, inv_freq, scaling)
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size, options)
        self.layers = nn.ModuleList(self.layer_cls(cfg, self.rotary, options) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, use_kernels=options.use_kernels)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        self.lm_head = LMHead(cfg.vocab_size, cfg.hidden_size,
                              self.embed_tokens if self.tie_word_embeddings else None, options)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[rows, vocab] fp32 logits; under tensor parallelism on rank 0 only (other ranks: None)."""
        return self.lm_head(hidden)

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.layers]

    def checkpoint_to_param(self, name: str) -> tuple[str, object] | None:
        """Map a checkpoint tensor name to (our parameter name, shard id); None to skip it."""
        if "rotary_emb.inv_freq" in name:
            return None
        if name.startswith("model."):
            name = name[len("model."):]
        if name == "lm_head.weight" and self.tie_word_embeddings:
            return None
        for ckpt, (ours, shard) in self.packed_modules.items():
            if f".{ckpt}." in name:
                return name.replace(f".{ckpt}.", f".{ours}."), shard
        return name, None
