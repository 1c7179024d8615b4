"""The model runner: device and dtype, the model, the KV-cache tensors, and one forward per step.

`run(plan)` flattens the scheduled requests into 1-D inputs (input_ids, positions, slot_mapping) plus
per-request metadata (query_start_loc, seq_lens, block_tables), runs the model under a forward
context, computes logits only for the rows that sample, samples on the device, and returns the
sampled ids: the one host sync of the step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..errors import OutOfMemoryError
from ..models.loader import build_model
from ..scheduler import SchedulerOutput
from .forward_context import ForwardContext, forward_context
from .sampler import Sampler
from .sampling_inputs import build_sampling_metadata

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OutOfMemoryError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def pick_dtype(name: str, device: torch.device, hf_config) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # CPU half precision matmuls are slow and inexact
    wanted = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if wanted in (torch.float16, "float16"):
        return torch.float16
    return torch.bfloat16


@dataclass
class StepResult:
    """Per scheduled request: the sampled token (None for a chunk that samples nothing) and logprobs."""

    tokens: list[int | None]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


class ModelRunner:
    def __init__(self, config: EngineConfig, source):
        self.config = config
        self.hf_config = source.hf_config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device, self.hf_config)
        self._init_model(source)
        self._init_kv_cache()
        self.sampler = Sampler()

    # -- initialisation --------------------------------------------------------------------------
    def _init_model(self, source) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        try:
            self.model = build_model(source, self.dtype, self.device, seed=self.config.seed)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"the weights of {source.name} do not fit on {self.device}: use a GPU with more memory, "
                "a 4-bit AWQ checkpoint (--model-format awq), or --tp 2") from None
        self.vocab_size = self.hf_config.vocab_size
        attn = self.model.attention_layers()
        self.num_layers = len(attn)
        self.num_kv_heads, self.head_dim = attn[0].num_kv_heads, attn[0].head_dim
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V for one block across all layers."""
        return (2 * self.num_layers * self.config.cache_block_seq_len * self.num_kv_heads * self.head_dim
                * torch.empty((), dtype=self.dtype).element_size())

    def _init_kv_cache(self) -> None:
        cfg = self.config
        if cfg.cache_is_block_count:
            num_blocks = int(cfg.cache_max_entry_count)
        else:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                free, _ = torch.cuda.mem_get_info(self.device)
            else:
                free = cfg.cpu_memory_gb * 2**30
            num_blocks = int(free * cfg.cache_max_entry_count) // self.block_bytes
        if num_blocks < 1:
            raise OutOfMemoryError(
                "no memory is left for the KV cache after the weights: raise --cache-max-entry-count, "
                "use a 4-bit AWQ checkpoint, or a GPU with more memory")
        shape = (2, self.num_layers, num_blocks, cfg.cache_block_seq_len, self.num_kv_heads, self.head_dim)
        try:
            # zeros, not empty: unused slots are masked out, but 0 * NaN garbage would still be NaN.
            self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"the KV cache of {num_blocks} blocks does not fit: lower --cache-max-entry-count") from None
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
        self.num_blocks = num_blocks
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB)", num_blocks, cfg.cache_block_seq_len,
                 num_blocks * self.block_bytes / 2**30)

    # -- one step --------------------------------------------------------------------------------
    def _to_device(self, values, dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _prepare(self, plan: SchedulerOutput):
        block_size = self.config.cache_block_seq_len
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        logits_rows: list[int] = []
        for item in plan.scheduled:
            r, n = item.request, item.num_new_tokens
            start = r.num_computed_tokens
            input_ids.extend(r.token_ids[start:start + n])
            pos = range(start, start + n)
            positions.extend(pos)
            blocks = r.block_ids
            slots.extend(blocks[p // block_size] * block_size + p % block_size for p in pos)
            query_lens.append(n)
            seq_lens.append(start + n)
            tables.append(blocks)
            if item.sample:
                logits_rows.append(len(input_ids) - 1)
        max_blocks = max(len(t) for t in tables)
        padded = [t + [0] * (max_blocks - len(t)) for t in tables]
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        ctx = ForwardContext(
            slot_mapping=self._to_device(slots, torch.int64),
            query_start_loc=self._to_device(starts, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_tables=self._to_device(padded, torch.int32),
            query_lens=query_lens, seq_lens_host=seq_lens, block_size=block_size,
            max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        )
        ids = self._to_device(input_ids, torch.int64)
        pos = self._to_device(positions, torch.int64)
        return ids, pos, ctx, self._to_device(logits_rows, torch.int64)

    @torch.inference_mode()
    def run(self, plan: SchedulerOutput) -> StepResult:
        input_ids, positions, ctx, logits_rows = self._prepare(plan)
        with forward_context(ctx):
            hidden = self.model(input_ids, positions)
        sampling = [item.request for item in plan.scheduled if item.sample]
        tokens: list[int | None] = [None] * len(plan.scheduled)
        logprobs: list = [None] * len(plan.scheduled)
        if not sampling:
            return StepResult(tokens, logprobs)
        logits = self.model.compute_logits(hidden[logits_rows])
        meta = build_sampling_metadata(sampling, self.vocab_size, self.device)
        out = self.sampler(logits, meta)
        sampled = out.token_ids.tolist()  # the one host sync of the step
        chosen = out.logprobs.tolist() if out.logprobs is not None else None
        top = (out.top_ids.tolist(), out.top_logprobs.tolist()) if out.top_ids is not None else None
        j = 0
        for i, item in enumerate(plan.scheduled):
            if not item.sample:
                continue
            tokens[i] = sampled[j]
            k = item.request.gen.logprobs
            if k is not None and chosen is not None:
                alternatives = list(zip(top[0][j][:k], top[1][j][:k])) if top and k else []
                logprobs[i] = (chosen[j], alternatives)
            j += 1
        return StepResult(tokens, logprobs)
