"""The forward context: per-step attention metadata that attention layers read during a forward.

Model code sees (input_ids, positions) only; the runner sets this context around each forward so
attention layers can find where to write K/V (slot_mapping) and which blocks to read (block_tables).
It lives outside runner/ because the layers read it: layers import this neutral module, never the
runner, so the runner (and the executor above it) can depend on the layers and not the reverse.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


@dataclass
class ForwardContext:
    """Attention metadata of one step. Tensors live on the model's device.

    slot_mapping [T] int64: cache slot (block * block_size + offset) of each input token.
    query_start_loc [B+1] int32: where each request's tokens start in the flattened batch.
    seq_lens [B] int32: tokens in each request's context after this step (cached + new).
    block_tables [B, max_blocks] int32: each request's blocks, padded with 0.
    query_lens / seq_lens_host: the same on the host, for paths that loop over requests.
    """

    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    query_lens: list[int]
    seq_lens_host: list[int]
    block_size: int
    max_query_len: int
    max_seq_len: int
    # Scratch space for attention backends to keep per-step derived tensors (built once, used per layer).
    cache: dict = field(default_factory=dict)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _context is None:
        raise RuntimeError("attention called outside a forward context")
    return _context


@contextlib.contextmanager
def forward_context(ctx: ForwardContext):
    global _context
    previous, _context = _context, ctx
    try:
        yield ctx
    finally:
        _context = previous
