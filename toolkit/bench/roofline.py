"""How far a measured figure is from the card's physical limit (memory bandwidth, tensor FLOP/s).

Decode is bandwidth-bound: every step reads all weights the step uses plus each request's KV cache.
Prefill is compute-bound: about 2 FLOPs per parameter per token, plus attention.
The card's limits come from its hardware profile (toolkit.profiles, profiles/*.yaml): one table of
card figures for the planner, check-env and these fractions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..profiles import ProfileError, load_profiles, profile_for_gpu_name


def device_limits(device_name: str) -> dict | None:
    """{"bandwidth_gbs", "bf16_tflops", "source"} of the card called `device_name` (as torch or NVML
    names it), from its hardware profile (profiles/*.yaml, matched by the profile's pynvml_names):
    the measured figures where the profile has them, else the datasheet's. None for a device no
    profile matches, or when the profiles cannot be read (a bench must not fail over a limit)."""
    if not device_name:
        return None
    try:
        profile = profile_for_gpu_name(device_name, load_profiles())
    except ProfileError:
        return None
    if profile is None:
        return None
    bandwidth, bandwidth_from = profile.bandwidth()
    tflops, tflops_from = profile.tensor_tflops()
    # Which figures are measured and which the datasheet's, in a few words; the profile says by whom.
    kinds = {bandwidth_from, tflops_from}
    source = (f"{kinds.pop()} ({profile.name} profile)" if len(kinds) == 1 else
              f"bandwidth {bandwidth_from}, TFLOP/s {tflops_from} ({profile.name} profile)")
    return {"bandwidth_gbs": bandwidth, "bf16_tflops": tflops, "source": source, "profile": profile.name}


@dataclass(frozen=True)
class ModelCosts:
    """Per-token costs of a model as the engine holds it."""

    decode_weight_bytes: int  # weights read by one decode step (all but the embedding table lookup)
    kv_bytes_per_token: int  # K and V of one token, all layers
    flops_per_token: int  # 2 x parameters that multiply (the embedding lookup does not)
    attn_flops_per_token_pair: int  # 4 x layers x heads x head_dim: QK^T and PV for one (query, key)

    @classmethod
    def from_engine(cls, engine) -> "ModelCosts":
        from ..model_sizes import ModelShape, count_params

        runner = engine.runner
        model = runner.model
        embed = model.embed_tokens.weight
        embed_bytes = embed.numel() * embed.element_size()
        tied = model.tie_word_embeddings
        # A tied table is read whole by the LM head; an untied one only row by row. Bytes are the
        # stored format's (int8 codes, packed int4 and their scales); parameters come from the shape,
        # since bytes / element size is wrong for packed int4.
        decode_bytes = runner.weight_bytes - (0 if tied else embed_bytes)
        attn = model.attention_layers()[0]
        return cls(decode_weight_bytes=decode_bytes,
                   kv_bytes_per_token=runner.block_bytes // engine.config.cache_block_seq_len,
                   flops_per_token=2 * count_params(ModelShape.from_config(runner.hf_config)).multiplying,
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
