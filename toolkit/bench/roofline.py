"""How far a measured figure is from the card's physical limit (memory bandwidth, tensor FLOP/s).

Decode is bandwidth-bound: every step reads all weights the step uses plus each request's KV cache.
Prefill is compute-bound: about 2 FLOPs per parameter per token, plus attention.
"""
from __future__ import annotations

from dataclasses import dataclass

# Measured on this workplace's H100 (copy bandwidth, bf16 8192^3 matmul); datasheet figures beside.
# Cards without a measurement use their datasheet value (profiles/*.yaml carry the full list).
_LIMITS = {
    "H100": {"bandwidth_gbs": 3000.0, "bf16_tflops": 790.0, "source": "measured on this workplace's H100"},
    "H200": {"bandwidth_gbs": 4800.0, "bf16_tflops": 989.0, "source": "datasheet"},
    "A100": {"bandwidth_gbs": 2039.0, "bf16_tflops": 312.0, "source": "datasheet"},
    "L40S": {"bandwidth_gbs": 864.0, "bf16_tflops": 362.0, "source": "datasheet"},
    "4090": {"bandwidth_gbs": 1008.0, "bf16_tflops": 165.2, "source": "datasheet"},
    "3090": {"bandwidth_gbs": 936.0, "bf16_tflops": 71.0, "source": "datasheet"},
    "A10": {"bandwidth_gbs": 600.0, "bf16_tflops": 125.0, "source": "datasheet"},
}


def device_limits(device_name: str) -> dict | None:
    for key, limits in _LIMITS.items():
        if key.lower() in device_name.lower():
            return limits
    return None


@dataclass(frozen=True)
class ModelCosts:
    """Per-token costs of a model as the engine holds it."""

    decode_weight_bytes: int  # weights read by one decode step (all but the embedding table lookup)
    kv_bytes_per_token: int  # K and V of one token, all layers
    flops_per_token: int  # 2 x parameters that multiply (the embedding lookup does not)
    attn_flops_per_token_pair: int  # 4 x layers x heads x head_dim: QK^T and PV for one (query, key)

    @classmethod
    def from_engine(cls, engine) -> "ModelCosts":
        runner = engine.runner
        model = runner.model
        embed = model.embed_tokens.weight
        embed_bytes = embed.numel() * embed.element_size()
        tied = model.tie_word_embeddings
        # A tied table is read whole by the LM head; an untied one only row by row.
        decode_bytes = runner.weight_bytes - (0 if tied else embed_bytes)
        params = runner.weight_bytes // embed.element_size() - (0 if tied else embed.numel())
        attn = model.attention_layers()[0]
        return cls(decode_weight_bytes=decode_bytes,
                   kv_bytes_per_token=runner.block_bytes // engine.config.cache_block_seq_len,
                   flops_per_token=2 * params,
                   attn_flops_per_token_pair=4 * runner.num_layers * attn.num_heads * attn.head_dim)


def decode_figures(costs: ModelCosts, tokens_per_s: float, batch: float, avg_context: float,
                   device_name: str) -> dict:
    """Achieved bandwidth of decode: per step, weights once plus every request's KV."""
    steps_per_s = tokens_per_s / max(batch, 1e-9)
    bytes_per_step = costs.decode_weight_bytes + batch * avg_context * costs.kv_bytes_per_token
    achieved = bytes_per_step * steps_per_s / 1e9
    out = {"decode_bytes_per_step_gb": bytes_per_step / 1e9, "achieved_gbs": achieved}
    limits = device_limits(device_name)
    if limits:
        out["bandwidth_limit_gbs"] = limits["bandwidth_gbs"]
        out["fraction_of_bandwidth"] = achieved / limits["bandwidth_gbs"]
        out["limit_tokens_per_s"] = limits["bandwidth_gbs"] * 1e9 / bytes_per_step * batch
        out["limit_source"] = limits["source"]
    return out


def prefill_figures(costs: ModelCosts, prompt_tokens: int, seconds: float, device_name: str) -> dict:
    """Achieved FLOP/s of a causal prefill of prompt_tokens tokens."""
    flops = costs.flops_per_token * prompt_tokens + costs.attn_flops_per_token_pair * prompt_tokens ** 2 / 2
    achieved = flops / max(seconds, 1e-12) / 1e12
    out = {"prefill_tflop": flops / 1e12, "achieved_tflops": achieved}
    limits = device_limits(device_name)
    if limits:
        out["tflops_limit"] = limits["bf16_tflops"]
        out["fraction_of_tflops"] = achieved / limits["bf16_tflops"]
        out["limit_source"] = limits["source"]
    return out
