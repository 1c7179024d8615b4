"""The model runner: device and dtype, the model, the KV-cache tensors, and one forward per step.

`run(plan)` flattens the scheduled requests into 1-D inputs (input_ids, positions, slot_mapping) plus
per-request metadata (query_start_loc, seq_lens, block_tables) in preallocated buffers, runs the
model under a forward context (decode steps replay a CUDA graph), computes logits only for the rows
that sample, samples on the device, and returns the sampled ids: the one host sync of the step.

Two lifetimes: the weights are loaded once, in the constructor; what the runtime settings shape (the
KV-cache tensors, the input buffers, the decode CUDA graphs) is made by `allocate(config, max_batch)`
and dropped by `release()`, so an engine can take new runtime settings without reloading its weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..errors import InvalidRequestError, OutOfMemoryError
from ..kernels import kernel_head_dim_ok, kernels_wanted
from ..models.loader import build_model
from ..scheduler import SchedulerOutput
from .cuda_graph import DecodeGraphs
from .forward_context import forward_context
from .input_batch import InputBuffers
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
    def __init__(self, config: EngineConfig, source, session_len: int):
        """Load the weights; `allocate` then makes the KV cache, buffers and graphs for a configuration."""
        self.config = config
        self.hf_config = source.hf_config
        self.session_len = session_len
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device, self.hf_config)
        if config.deterministic and not kernels_wanted(self.device.type, config.kernels):
            raise InvalidRequestError(
                "deterministic mode needs the Triton kernels on a CUDA device (and kernels not turned off); "
                f"this engine runs on {self.device.type}", "deterministic")
        self._init_model(source)
        self.sampler = Sampler()
        self.kv_cache: torch.Tensor | None = None
        self.num_blocks = 0
        self.buffers: InputBuffers | None = None
        self.graphs: DecodeGraphs | None = None
        self._sampled_host: list[torch.Tensor] = []
        self._last_sampled: torch.Tensor | None = None  # the previous step's sampled ids, on the device
        self._flip = 0

    # -- per-configuration state -----------------------------------------------------------------
    def allocate(self, config: EngineConfig, max_batch_size: int) -> None:
        """The KV cache, input buffers and (CUDA, not eager) decode graphs for `config`.

        `config` may differ from the one the weights were loaded with only in runtime settings (cache
        size and block length, batch and prefill limits); whatever was allocated before is released
        first, since on a GPU the old and the new cache would not fit together.
        """
        self.release()
        self.config = config
        self._init_kv_cache()
        self._init_batching(max_batch_size)

    def release(self) -> None:
        """Drop the KV cache, the decode graphs and the input buffers, and hand their memory back.

        The attention layers hold views of the cache: they are cleared too, or the old tensor would
        stay alive through them.
        """
        if self.graphs is not None:
            self.graphs.release()
            self.graphs = None
        for attn in self.model.attention_layers():
            attn.k_cache = attn.v_cache = None
        self.kv_cache = None
        self.num_blocks = 0
        self.buffers = None
        self._sampled_host = []
        self._last_sampled = None
        self._flip = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # nothing queued may still read what is freed
            torch.cuda.empty_cache()  # back to the device, so the next cache is sized on what is really free

    def _init_batching(self, max_batch_size: int) -> None:
        """Input buffers for the scheduler's limits, then (CUDA, not eager) the decode graphs."""
        block = self.config.cache_block_seq_len
        self.buffers = InputBuffers(self.config.max_prefill_token_num, max_batch_size,
                                    -(-self.session_len // block), block, self.device)
        # Two pinned landing buffers for sampled ids: a step's copy may land while the previous one is read.
        pin = self.device.type == "cuda"
        self._sampled_host = [torch.zeros(max_batch_size, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        # Deterministic mode runs eager: decode graphs pad the batch, which the prefill kernel that
        # deterministic decode uses does not expect.
        if self.device.type == "cuda" and not self.config.eager_mode and not self.config.deterministic:
            self.graphs = DecodeGraphs(self.model, self.buffers, min(max_batch_size, self.config.max_prefill_token_num))
            self.graphs.capture()

    # -- initialisation --------------------------------------------------------------------------
    def _init_model(self, source) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        try:
            self.model = build_model(source, self.dtype, self.device, seed=self.config.seed)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"the weights of {source.name} do not fit on {self.device}: use a GPU with more memory "
                "or a smaller model (4-bit AWQ and tensor parallelism are not available yet)") from None
        self.vocab_size = self.hf_config.vocab_size
        attn = self.model.attention_layers()
        self.num_layers = len(attn)
        self.num_kv_heads, self.head_dim = attn[0].num_kv_heads, attn[0].head_dim
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.use_kernels = kernels_wanted(self.device.type, self.config.kernels) and kernel_head_dim_ok(self.head_dim)
        if self.config.deterministic and not self.use_kernels:
            raise InvalidRequestError(
                f"deterministic mode needs the Triton attention kernels, which take power-of-two head sizes "
                f"(this model's is {self.head_dim})", "deterministic")
        for module in self.model.modules():
            if hasattr(module, "use_kernels"):
                module.use_kernels = self.use_kernels
            if hasattr(module, "batch_invariant"):
                module.batch_invariant = self.config.deterministic

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
                if cfg.gpu_memory_gb is not None:  # an emulated smaller card: what the weights left of it
                    left = int(cfg.gpu_memory_gb * 2**30) - torch.cuda.memory_reserved(self.device)
                    if left <= 0:
                        raise OutOfMemoryError(
                            f"the weights ({torch.cuda.memory_reserved(self.device) / 2**30:.1f} GiB) fill the "
                            f"{cfg.gpu_memory_gb:g} GiB allowed by --gpu-memory-gb")
                    free = min(free, left)
            else:
                free = cfg.cpu_memory_gb * 2**30
            num_blocks = int(free * cfg.cache_max_entry_count) // self.block_bytes
        if num_blocks < 1:
            raise OutOfMemoryError(
                "no memory is left for the KV cache after the weights: raise --cache-max-entry-count, "
                "use a 4-bit AWQ checkpoint, or a GPU with more memory")
        capacity = num_blocks * cfg.cache_block_seq_len
        if capacity < self.session_len:  # checked before allocating: no point in a cache that serves nobody
            raise OutOfMemoryError(
                f"the KV cache holds {capacity} tokens, less than one session of {self.session_len}: "
                "raise --cache-max-entry-count or lower --session-len")
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
    @torch.inference_mode()
    def launch(self, plan: SchedulerOutput) -> "InFlightStep":
        """Queue the step's forward and sampling on the device; nothing here waits for the GPU."""
        graph_batch = None
        if self.graphs is not None and plan.num_tokens == len(plan.scheduled):
            graph_batch = self.graphs.bucket(len(plan.scheduled))
        inputs = self.buffers.prepare(plan, graph_batch)
        if inputs.num_patches:
            inputs.input_ids.index_copy_(0, inputs.patch_dst, self._last_sampled.index_select(0, inputs.patch_src))
        if graph_batch is not None:
            hidden = self.graphs.replay(graph_batch)
        else:
            with forward_context(inputs.context):
                hidden = self.model(inputs.input_ids, inputs.positions)
        sampling = [item.request for item in plan.scheduled if item.sample]
        if not sampling:
            return InFlightStep(plan, None, None, None)
        # When every token samples (a pure decode step), the rows are simply the first ones.
        rows = hidden[:len(sampling)] if len(sampling) == inputs.num_tokens else hidden[inputs.logits_rows]
        logits = self.model.compute_logits(rows)
        out = self.sampler(logits, build_sampling_metadata(sampling, self.vocab_size, self.device))
        self._last_sampled = out.token_ids
        host = self._sampled_host[self._flip][:len(sampling)]
        self._flip ^= 1
        host.copy_(out.token_ids, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return InFlightStep(plan, out, host, event)

    def collect(self, step: "InFlightStep") -> StepResult:
        """Wait for a launched step and hand back its tokens: the one host sync of the step."""
        plan = step.plan
        tokens: list[int | None] = [None] * len(plan.scheduled)
        logprobs: list = [None] * len(plan.scheduled)
        if step.out is None:
            return StepResult(tokens, logprobs)
        if step.event is not None:
            step.event.synchronize()
        sampled = step.host.tolist()
        out = step.out
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

    @torch.inference_mode()
    def run(self, plan: SchedulerOutput) -> StepResult:
        """launch + collect: one step, synchronously."""
        return self.collect(self.launch(plan))


@dataclass
class InFlightStep:
    plan: SchedulerOutput
    out: object  # SamplerOutput on the device, None when nothing samples
    host: torch.Tensor | None  # pinned copy of the sampled ids, valid once `event` has passed
    event: object
