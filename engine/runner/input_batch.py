"""One step's model inputs, flattened from the step plan (engine/step_plan.py) into preallocated buffers.

Two packed host buffers (int64: ids, positions, slots, ...; int32: query starts, lengths, block
tables) are pinned on CUDA and copied to their device twins with one non-blocking copy each, so a
step allocates nothing. The host side is double-buffered: the next step is prepared while the
previous one's copy may still be queued. Decode CUDA graphs read the same device buffers, padded to
the graph's batch. An input token that is still a placeholder (sampled by the step in flight) is
patched on the device from that step's sampled ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..forward_context import ForwardContext
from ..step_plan import StepPlan


@dataclass
class StepInputs:
    num_tokens: int  # real tokens (graph padding excluded)
    num_reqs: int
    padded_reqs: int  # rows the forward runs: num_reqs, or the graph bucket for decode
    input_ids: torch.Tensor
    positions: torch.Tensor
    context: ForwardContext
    logits_rows: torch.Tensor  # rows of the hidden states whose logits are sampled
    num_patches: int  # input ids to take from the previous step's sampled ids
    patch_dst: torch.Tensor  # [num_patches] positions in input_ids
    patch_src: torch.Tensor  # [num_patches] rows of the previous step's sampled ids


class _HostSet:
    """One pinned staging copy of the packed buffers, with numpy views for cheap writes."""

    def __init__(self, n64: int, n32: int, pin: bool):
        self.t64 = torch.zeros(n64, dtype=torch.int64, pin_memory=pin)
        self.t32 = torch.zeros(n32, dtype=torch.int32, pin_memory=pin)
        self.np64, self.np32 = self.t64.numpy(), self.t32.numpy()
        # Which block list each block-table row holds (the list object: a preempted request gets a new
        # one) and how long it was: a decode step rewrites only rows whose list changed or grew
        # (converting 256 block lists to the table costs ~1 ms a step).
        self.row_owner: list = []
        self.row_blocks: list[int] = []


class InputBuffers:
    def __init__(self, max_tokens: int, max_reqs: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device):
        self.max_tokens, self.max_reqs = max_tokens, max_reqs
        self.max_blocks_per_seq, self.block_size, self.device = max_blocks_per_seq, block_size, device
        t, r = max_tokens, max_reqs
        self._seg64 = {"input_ids": (0, t), "positions": (t, 2 * t), "slot_mapping": (2 * t, 3 * t),
                       "logits_rows": (3 * t, 3 * t + r), "patch_dst": (3 * t + r, 3 * t + 2 * r),
                       "patch_src": (3 * t + 2 * r, 3 * t + 3 * r)}
        n64 = 3 * t + 3 * r
        n32 = 2 * r + 1 + r * max_blocks_per_seq
        self._seg32 = {"query_start_loc": (0, r + 1), "seq_lens": (r + 1, 2 * r + 1),
                       "block_tables": (2 * r + 1, n32)}
        on_gpu = device.type == "cuda"
        self._hosts = [_HostSet(n64, n32, on_gpu) for _ in range(2 if on_gpu else 1)]
        for h in self._hosts:
            h.row_owner, h.row_blocks = [None] * r, [0] * r
        self._next = 0
        first = self._hosts[0]
        self.dev64 = torch.zeros(n64, dtype=torch.int64, device=device) if on_gpu else first.t64
        self.dev32 = torch.zeros(n32, dtype=torch.int32, device=device) if on_gpu else first.t32

    def _host_view(self, h: _HostSet, name: str) -> np.ndarray:
        seg, arr = (self._seg64, h.np64) if name in self._seg64 else (self._seg32, h.np32)
        lo, hi = seg[name]
        view = arr[lo:hi]
        return view.reshape(self.max_reqs, self.max_blocks_per_seq) if name == "block_tables" else view

    def device_view(self, name: str) -> torch.Tensor:
        seg, buf = (self._seg64, self.dev64) if name in self._seg64 else (self._seg32, self.dev32)
        lo, hi = seg[name]
        view = buf[lo:hi]
        return view.view(self.max_reqs, self.max_blocks_per_seq) if name == "block_tables" else view

    def prepare(self, plan: StepPlan, graph_batch: int | None = None) -> StepInputs:
        """Fill the buffers for the plan; graph_batch pads a decode step to a captured batch size."""
        h = self._hosts[self._next]
        self._next = (self._next + 1) % len(self._hosts)
        view = self._host_view
        bs = self.block_size
        ids, pos, slots = view(h, "input_ids"), view(h, "positions"), view(h, "slot_mapping")
        qsl, seq_lens, tables = view(h, "query_start_loc"), view(h, "seq_lens"), view(h, "block_tables")
        rows, dst, src = view(h, "logits_rows"), view(h, "patch_dst"), view(h, "patch_src")
        num_tokens = num_rows = num_patches = 0
        max_blocks = 1
        query_lens, seq_lens_host = [], []
        qsl[0] = 0
        for i, item in enumerate(plan.requests):
            n, start = item.num_new_tokens, item.start
            end = start + n
            blocks = item.block_ids
            if n == 1:  # decode: scalar writes are several times cheaper than array ones
                ids[num_tokens] = item.input_ids[0]
                pos[num_tokens] = start
                slots[num_tokens] = blocks[start // bs] * bs + start % bs
            else:
                ids[num_tokens:num_tokens + n] = item.input_ids
                p = np.arange(start, end)
                pos[num_tokens:num_tokens + n] = p
                slots[num_tokens:num_tokens + n] = np.asarray(blocks, dtype=np.int64)[p // bs] * bs + p % bs
            if item.patch_row >= 0:  # only ever the last input: sampled by the step in flight
                dst[num_patches] = num_tokens + n - 1
                src[num_patches] = item.patch_row
                num_patches += 1
            nb = len(blocks)
            # A plan received from rank 0 holds new lists every step: their rows are rewritten in full.
            if h.row_owner[i] is not blocks or h.row_blocks[i] > nb:
                tables[i, :nb] = blocks
                h.row_owner[i] = blocks
            elif h.row_blocks[i] < nb:
                tables[i, h.row_blocks[i]:nb] = blocks[h.row_blocks[i]:]
            h.row_blocks[i] = nb
            max_blocks = max(max_blocks, nb)
            num_tokens += n
            qsl[i + 1] = num_tokens
            seq_lens[i] = end
            query_lens.append(n)
            seq_lens_host.append(end)
            if item.sample:
                rows[num_rows] = num_tokens - 1
                num_rows += 1
        num_reqs = len(plan.requests)
        padded = num_reqs
        if graph_batch is not None:
            # Padding rows write nowhere (slot -1) and attend to nothing (seq_len 0).
            padded = graph_batch
            ids[num_tokens:padded] = 0
            pos[num_tokens:padded] = 0
            slots[num_tokens:padded] = -1
            seq_lens[num_reqs:padded] = 0
            qsl[num_reqs + 1:padded + 1] = num_tokens
        if self.dev64 is not h.t64:
            self.dev64.copy_(h.t64, non_blocking=True)
            self.dev32.copy_(h.t32, non_blocking=True)
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
                          num_patches, self.device_view("patch_dst")[:num_patches],
                          self.device_view("patch_src")[:num_patches])
