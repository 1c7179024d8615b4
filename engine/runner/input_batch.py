"""One step's model inputs, flattened from the scheduler's plan into preallocated buffers.

Two packed host buffers (int64: ids, positions, slots; int32: query starts, lengths, block tables)
are pinned on CUDA and copied to their device twins with one non-blocking copy each, so a step
allocates nothing. Decode CUDA graphs read the same device buffers, padded to the graph's batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..scheduler import SchedulerOutput
from .forward_context import ForwardContext


@dataclass
class StepInputs:
    num_tokens: int  # real tokens (graph padding excluded)
    num_reqs: int
    padded_reqs: int  # rows the forward runs: num_reqs, or the graph bucket for decode
    input_ids: torch.Tensor
    positions: torch.Tensor
    context: ForwardContext
    logits_rows: torch.Tensor  # rows of the hidden states whose logits are sampled
    decode_only: bool


class InputBuffers:
    def __init__(self, max_tokens: int, max_reqs: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device):
        self.max_tokens, self.max_reqs = max_tokens, max_reqs
        self.max_blocks_per_seq, self.block_size, self.device = max_blocks_per_seq, block_size, device
        pin = device.type == "cuda"
        # int64 segments: input_ids, positions, slot_mapping [max_tokens each], logits_rows [max_reqs]
        n64 = 3 * max_tokens + max_reqs
        # int32 segments: query_start_loc [max_reqs + 1], seq_lens [max_reqs], block_tables [max_reqs, blocks]
        n32 = 2 * max_reqs + 1 + max_reqs * max_blocks_per_seq
        self.host64 = torch.zeros(n64, dtype=torch.int64, pin_memory=pin)
        self.host32 = torch.zeros(n32, dtype=torch.int32, pin_memory=pin)
        self.dev64 = self.host64 if device.type == "cpu" else torch.zeros(n64, dtype=torch.int64, device=device)
        self.dev32 = self.host32 if device.type == "cpu" else torch.zeros(n32, dtype=torch.int32, device=device)
        self.np64, self.np32 = self.host64.numpy(), self.host32.numpy()
        t, r = max_tokens, max_reqs
        self._seg64 = {"input_ids": (0, t), "positions": (t, 2 * t), "slot_mapping": (2 * t, 3 * t),
                       "logits_rows": (3 * t, 3 * t + r)}
        self._seg32 = {"query_start_loc": (0, r + 1), "seq_lens": (r + 1, 2 * r + 1),
                       "block_tables": (2 * r + 1, n32)}
        # Which block list each block-table row holds (the list object: a preempted request gets a new
        # one), and how long it was: a decode step rewrites only rows whose list changed or grew
        # (converting 256 block lists to the table costs ~1 ms a step).
        self._row_owner: list = [None] * max_reqs
        self._row_blocks = [0] * max_reqs

    def host(self, name: str) -> np.ndarray:
        seg, arr = (self._seg64, self.np64) if name in self._seg64 else (self._seg32, self.np32)
        lo, hi = seg[name]
        view = arr[lo:hi]
        return view.reshape(self.max_reqs, self.max_blocks_per_seq) if name == "block_tables" else view

    def device_view(self, name: str) -> torch.Tensor:
        seg, buf = (self._seg64, self.dev64) if name in self._seg64 else (self._seg32, self.dev32)
        lo, hi = seg[name]
        view = buf[lo:hi]
        return view.view(self.max_reqs, self.max_blocks_per_seq) if name == "block_tables" else view

    def prepare(self, plan: SchedulerOutput, graph_batch: int | None = None) -> StepInputs:
        """Fill the buffers for the plan; graph_batch pads a decode step to a captured batch size."""
        bs = self.block_size
        ids, pos, slots = self.host("input_ids"), self.host("positions"), self.host("slot_mapping")
        qsl, seq_lens, tables = self.host("query_start_loc"), self.host("seq_lens"), self.host("block_tables")
        rows = self.host("logits_rows")
        num_tokens = 0
        num_rows = 0
        max_blocks = 1
        query_lens, seq_lens_host = [], []
        qsl[0] = 0
        for i, item in enumerate(plan.scheduled):
            r, n = item.request, item.num_new_tokens
            start, end = r.num_computed_tokens, r.num_computed_tokens + n
            blocks = r.block_ids
            if n == 1:  # decode: scalar writes are several times cheaper than array ones
                ids[num_tokens] = r.token_ids[start]
                pos[num_tokens] = start
                slots[num_tokens] = blocks[start // bs] * bs + start % bs
            else:
                ids[num_tokens:num_tokens + n] = r.token_ids[start:end]
                p = np.arange(start, end)
                pos[num_tokens:num_tokens + n] = p
                slots[num_tokens:num_tokens + n] = np.asarray(blocks, dtype=np.int64)[p // bs] * bs + p % bs
            nb = len(blocks)
            if self._row_owner[i] is not blocks or self._row_blocks[i] > nb:
                tables[i, :nb] = blocks
                self._row_owner[i] = blocks
            elif self._row_blocks[i] < nb:
                tables[i, self._row_blocks[i]:nb] = blocks[self._row_blocks[i]:]
            self._row_blocks[i] = nb
            max_blocks = max(max_blocks, nb)
            num_tokens += n
            qsl[i + 1] = num_tokens
            seq_lens[i] = end
            query_lens.append(n)
            seq_lens_host.append(end)
            if item.sample:
                rows[num_rows] = num_tokens - 1
                num_rows += 1
        num_reqs = len(plan.scheduled)
        decode_only = num_tokens == num_reqs
        padded = num_reqs
        if graph_batch is not None:
            # Padding rows write nowhere (slot -1) and attend to nothing (seq_len 0).
            padded = graph_batch
            ids[num_tokens:padded] = 0
            pos[num_tokens:padded] = 0
            slots[num_tokens:padded] = -1
            seq_lens[num_reqs:padded] = 0
            qsl[num_reqs + 1:padded + 1] = num_tokens
        self._copy_to_device()
        width = self.max_blocks_per_seq if graph_batch is not None else max_blocks
        ctx = ForwardContext(
            slot_mapping=self.device_view("slot_mapping")[:max(num_tokens, padded)],
            query_start_loc=self.device_view("query_start_loc")[:padded + 1],
            seq_lens=self.device_view("seq_lens")[:padded],
            block_tables=self.device_view("block_tables")[:padded, :width],
            query_lens=query_lens, seq_lens_host=seq_lens_host, block_size=bs,
            max_query_len=max(query_lens), max_seq_len=max(seq_lens_host))
        n = max(num_tokens, padded)
        return StepInputs(num_tokens, num_reqs, padded, self.device_view("input_ids")[:n],
                          self.device_view("positions")[:n], ctx, self.device_view("logits_rows")[:num_rows],
                          decode_only)

    def _copy_to_device(self) -> None:
        if self.dev64 is not self.host64:
            self.dev64.copy_(self.host64, non_blocking=True)
            self.dev32.copy_(self.host32, non_blocking=True)
