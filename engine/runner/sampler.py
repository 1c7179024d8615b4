"""Sampling on the device for the whole batch: penalties, temperature, top-k, top-p, min-p, seeds, logprobs.

Randomness is counter-based: a request's noise for its n-th output token is a hash of (seed, n, token
id), so a seeded request samples the same tokens whatever else is in the batch, and after a
preemption and recompute. Sampling draws argmax(p / E) with E ~ Exp(1) (the exponential race, the
same distribution as multinomial) from that noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (Thomas Mueller's) on int64 tensors; products stay below 2^63."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def seeded_uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniform noise in (0, 1) of shape [B, V], a pure function of (seed, step, column)."""
    seed_mix = _hash32(seeds & _MASK32) ^ _hash32(((seeds >> 32) & _MASK32) ^ 0x5BD1E995)
    row = _hash32(seed_mix ^ _hash32(steps * 0x9E3779B1 & _MASK32))  # [B]
    cols = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    bits = _hash32((row[:, None] * 0x27D4EB2F + cols[None, :]) & _MASK32)
    return (bits.double() + 0.5) / 4294967296.0


@dataclass
class SamplingMetadata:
    """Per-row sampling parameters (rows = requests that sample this step), all on the device."""

    all_greedy: bool
    temperature: torch.Tensor | None = None  # [B] float32, 0 for greedy rows
    top_k: torch.Tensor | None = None  # [B] int64, vocab size where off; None when no row uses it
    top_p: torch.Tensor | None = None  # [B] float32
    min_p: torch.Tensor | None = None  # [B] float32
    seeds: torch.Tensor | None = None  # [B] int64
    steps: torch.Tensor | None = None  # [B] int64: index of the token being sampled in the request's output
    # Penalties (None when no row uses them): counts of each token in the output / prompt+output.
    output_counts: torch.Tensor | None = None  # [B, V] int
    seen_mask: torch.Tensor | None = None  # [B, V] bool: in prompt or output
    repetition_penalty: torch.Tensor | None = None  # [B]
    presence_penalty: torch.Tensor | None = None  # [B]
    frequency_penalty: torch.Tensor | None = None  # [B]
    banned: torch.Tensor | None = None  # [B, V] bool: EOS before min_new_tokens, bad words
    max_logprobs: int | None = None  # top-k alternatives to return; None when no row asks


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] chosen token's logprob
    top_ids: torch.Tensor | None = None  # [B, K]
    top_logprobs: torch.Tensor | None = None  # [B, K]


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    if meta.repetition_penalty is not None:
        penalty = meta.repetition_penalty[:, None].expand_as(logits)
        # HF/CTRL: divide positive logits, multiply negative ones, for every token seen so far.
        scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(meta.seen_mask, scaled, logits)
    if meta.frequency_penalty is not None:
        counts = meta.output_counts.to(logits.dtype)
        logits = logits - meta.frequency_penalty[:, None] * counts
        logits = logits - meta.presence_penalty[:, None] * (counts > 0).to(logits.dtype)
    return logits


def _top_k_top_p_min_p(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k, top-p nucleus and min-p floor.

    Each filter is HF's (TopK/TopP/MinPLogitsWarper); the order is vLLM v1's: min-p first, then
    top-k and top-p (HF runs min-p last, which differs only when min-p and top-p are both set).
    """
    if meta.min_p is not None:
        probs = logits.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * meta.min_p[:, None]
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if meta.top_k is None and meta.top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if meta.top_k is not None:
        # Tokens tied with the k-th stay (as HF and vLLM keep them): a cut by rank would keep an
        # arbitrary subset of the tie, which the sort order (not stable on GPU) picks.
        kth = sorted_logits.gather(-1, (meta.top_k[:, None] - 1).clamp(0, logits.shape[-1] - 1))
        drop |= sorted_logits < kth
    if meta.top_p is not None:
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the tokens from it to
        # the tail hold at most 1 - top_p. Summed from the tail, as HF does: a float32 cumsum from the
        # head reaches 1.0 early and then cut thousands of tail tokens from rows with top_p = 1 (off).
        mass_from_here = probs.flip(-1).cumsum(dim=-1).flip(-1)
        drop |= mass_from_here <= 1 - meta.top_p[:, None]
        drop[:, 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class Sampler:
    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """logits [B, V] float32 -> one token per row (plus logprobs of the raw model distribution)."""
        raw = logits
        if meta.output_counts is not None or meta.seen_mask is not None:
            logits = apply_penalties(logits, meta)
        if meta.banned is not None:
            logits = logits.masked_fill(meta.banned, float("-inf"))
        if meta.all_greedy:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample(logits, meta)
        return self._with_logprobs(SamplerOutput(tokens), raw, meta)

    @staticmethod
    def _sample(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        greedy_rows = meta.temperature == 0
        greedy_tokens = logits.argmax(dim=-1)
        temperature = torch.where(greedy_rows, torch.ones_like(meta.temperature), meta.temperature)
        logits = _top_k_top_p_min_p(logits / temperature[:, None], meta)
        probs = logits.softmax(dim=-1)
        noise = seeded_uniform(meta.seeds, meta.steps, logits.shape[-1])
        exponential = -torch.log(noise).to(probs.dtype)
        sampled = (probs / exponential).argmax(dim=-1)
        return torch.where(greedy_rows, greedy_tokens, sampled)

    @staticmethod
    def _with_logprobs(out: SamplerOutput, raw: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        if meta.max_logprobs is None:
            return out
        logprobs = raw.log_softmax(dim=-1)
        out.logprobs = logprobs.gather(-1, out.token_ids[:, None]).squeeze(-1)
        if meta.max_logprobs > 0:
            out.top_logprobs, out.top_ids = logprobs.topk(meta.max_logprobs, dim=-1)
        return out
