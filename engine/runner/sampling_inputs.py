"""Per-step sampling tensors for the rows that sample a token this step (a plan's SamplingBatch).

Penalty and ban masks are built only when some row needs them, so a greedy batch costs one small
host-to-device copy.
"""
from __future__ import annotations

import torch

from ..step_plan import SamplingBatch
from .sampler import SamplingMetadata


def _device_tensor(values, dtype, device) -> torch.Tensor:
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _row_index_mask(rows: list[list[int]], vocab_size: int, device, counts: bool = False) -> torch.Tensor:
    """[B, V] bool mask (or int counts) of the token ids listed per row."""
    row_idx = [r for r, ids in enumerate(rows) for _ in ids]
    col_idx = [t for ids in rows for t in ids]
    out = torch.zeros(len(rows), vocab_size, dtype=torch.int32 if counts else torch.bool, device=device)
    if not col_idx:
        return out
    r = _device_tensor(row_idx, torch.int64, device)
    c = _device_tensor(col_idx, torch.int64, device)
    if counts:
        out.index_put_((r, c), torch.ones_like(c, dtype=torch.int32), accumulate=True)
    else:
        out[r, c] = True
    return out


def _greedy_only(batch: SamplingBatch) -> bool:
    """True when argmax of the raw logits is the whole job: no sampling, penalties, bans or logprobs."""
    for spec, index in zip(batch.specs, batch.output_indices):
        if not spec.plain_greedy or index < spec.gen.min_new_tokens:
            return False
    return True


def build_sampling_metadata(batch: SamplingBatch, vocab_size: int, device: torch.device) -> SamplingMetadata:
    if _greedy_only(batch):  # the common benchmark case: no per-row tensors at all
        return SamplingMetadata(all_greedy=True)
    specs, steps = batch.specs, batch.output_indices
    gens = [s.gen for s in specs]
    all_greedy = all(g.greedy for g in gens)
    temperature = [0.0 if g.greedy else float(g.temperature) for g in gens]
    use_top_k = not all_greedy and any(0 < g.top_k < vocab_size for g in gens if not g.greedy)
    use_top_p = not all_greedy and any(g.top_p < 1.0 for g in gens if not g.greedy)
    use_min_p = not all_greedy and any(g.min_p > 0.0 for g in gens if not g.greedy)
    meta = SamplingMetadata(
        all_greedy=all_greedy,
        temperature=_device_tensor(temperature, torch.float32, device),
        top_k=_device_tensor([g.top_k if 0 < g.top_k < vocab_size else vocab_size for g in gens],
                             torch.int64, device) if use_top_k else None,
        top_p=_device_tensor([float(g.top_p) for g in gens], torch.float32, device) if use_top_p else None,
        min_p=_device_tensor([float(g.min_p) for g in gens], torch.float32, device) if use_min_p else None,
        seeds=_device_tensor([s.seed for s in specs], torch.int64, device),
        steps=_device_tensor(steps, torch.int64, device),
    )
    if any(g.repetition_penalty != 1.0 for g in gens):
        meta.repetition_penalty = _device_tensor([float(g.repetition_penalty) for g in gens], torch.float32, device)
        # Penalties need the real history: the engine never overlaps steps while a request uses them.
        meta.seen_mask = _row_index_mask(batch.seen, vocab_size, device)
    if any(g.presence_penalty or g.frequency_penalty for g in gens):
        meta.presence_penalty = _device_tensor([float(g.presence_penalty) for g in gens], torch.float32, device)
        meta.frequency_penalty = _device_tensor([float(g.frequency_penalty) for g in gens], torch.float32, device)
        meta.output_counts = _row_index_mask(batch.outputs, vocab_size, device, counts=True)
    banned = [list(s.bad_token_ids) + (list(s.stop_token_ids) if step < s.gen.min_new_tokens else [])
              for s, step in zip(specs, steps)]
    if any(banned):
        banned = [[t for t in ids if t < vocab_size] for ids in banned]
        meta.banned = _row_index_mask(banned, vocab_size, device)
    asked = [g.logprobs for g in gens if g.logprobs is not None]
    meta.max_logprobs = max(asked) if asked else None
    return meta
