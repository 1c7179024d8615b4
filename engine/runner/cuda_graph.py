"""CUDA graphs for decode steps: one graph per bucketed batch size, replayed with new inputs.

A decode step of a 7B model launches ~300 kernels; on the GPU machine's slow CPU, launching them
eagerly costs more than the GPU work itself at small batches. Each graph is captured once against
the input buffers' device tensors; a replay needs only those buffers refilled (padding rows write
to slot -1 and attend to nothing). Graphs for other buffers (new runtime settings) are new graphs:
`release` frees these and their memory pool first.
"""
from __future__ import annotations

import logging
import time

import torch

from ..forward_context import ForwardContext, forward_context
from .input_batch import InputBuffers

log = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_batch (vLLM's buckets): at most 7 padded rows per step."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch + 1, 8))
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    def __init__(self, model, buffers: InputBuffers, max_batch: int):
        self.model, self.buffers = model, buffers
        self.sizes = graph_batch_sizes(max_batch)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def bucket(self, batch: int) -> int | None:
        for size in self.sizes:
            if size >= batch:
                return size
        return None

    def _context(self, batch: int) -> ForwardContext:
        b = self.buffers
        return ForwardContext(
            slot_mapping=b.device_view("slot_mapping")[:batch], query_start_loc=b.device_view("query_start_loc")[:batch + 1],
            seq_lens=b.device_view("seq_lens")[:batch], block_tables=b.device_view("block_tables")[:batch],
            query_lens=[1] * batch, seq_lens_host=[1] * batch, block_size=b.block_size,
            max_query_len=1, max_seq_len=b.max_blocks_per_seq * b.block_size)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture largest first so smaller graphs reuse the biggest one's memory pool."""
        b = self.buffers
        start = time.perf_counter()
        # Dummy decode inputs: every row attends to one token in block 0 and writes nowhere.
        b.device_view("seq_lens").fill_(1)
        b.device_view("slot_mapping").fill_(-1)
        b.device_view("block_tables").zero_()
        b.device_view("query_start_loc").copy_(torch.arange(b.max_reqs + 1, dtype=torch.int32))
        for size in reversed(self.sizes):
            ids, pos = b.device_view("input_ids")[:size], b.device_view("positions")[:size]
            with forward_context(self._context(size)):
                self.model(ids, pos)  # warm-up: compiles the Triton kernels for this shape outside capture
            torch.cuda.synchronize()
            # A fresh context for the capture: what layers keep in ctx.cache during the warm-up was computed
            # outside the graph, and a replay must recompute it from the static buffers.
            with forward_context(self._context(size)):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self.outputs[size] = self.model(ids, pos)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
        log.info("captured %d decode CUDA graphs (batch %d..%d) in %.1f s", len(self.sizes), self.sizes[0],
                 self.sizes[-1], time.perf_counter() - start)

    def release(self) -> None:
        """Free every graph, its outputs and the shared memory pool (before graphs for new buffers are captured)."""
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.outputs.clear()  # the outputs live in the pool: the pool is freed only once they are gone too
        self.pool = None

    def replay(self, size: int) -> torch.Tensor:
        self.graphs[size].replay()
        return self.outputs[size]
