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
from ..layers.options import LayerOptions
from ..models.llama import head_dim_of
from ..models.loader import build_model
from ..models.weight_format import resolve_weight_format
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
    # gen.prompt_logprobs: (first prompt index scored, log-probabilities) per scheduled request, or None
    prompt_logprobs: list[tuple[int, list[float]] | None] | None = None


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
        self.kv_scales: torch.Tensor | None = None  # quant_policy 8/4: (scale, min) per token and kv head
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
            attn.k_cache = attn.v_cache = attn.k_scale = attn.v_scale = None
        self.kv_cache = self.kv_scales = None
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
        self.options = self._layer_options(source)
        try:
            self.model = build_model(source, self.dtype, self.device, self.options, seed=self.config.seed)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(
                f"the weights of {source.name} do not fit on {self.device}: use a GPU with more memory, "
                "a 4-bit AWQ checkpoint (opsctl quantize awq) or --model-format int8") from None
        self.vocab_size = self.hf_config.vocab_size
        attn = self.model.attention_layers()
        self.num_layers = len(attn)
        self.num_kv_heads, self.head_dim = attn[0].num_kv_heads, attn[0].head_dim
        self.weight_bytes = self.model.weight_bytes

    def _layer_options(self, source) -> LayerOptions:
        """How every layer runs, from the config and the checkpoint, before any weight is read."""
        head_dim = head_dim_of(self.hf_config)
        self.use_kernels = kernels_wanted(self.device.type, self.config.kernels) and kernel_head_dim_ok(head_dim)
        if self.config.deterministic and not self.use_kernels:
            raise InvalidRequestError(
                f"deterministic mode needs the Triton attention kernels, which take power-of-two head sizes "
                f"(this model's is {head_dim})", "deterministic")
        fmt = resolve_weight_format(source, self.config.model_format)
        if self.config.deterministic and fmt.name != "hf":
            raise InvalidRequestError(
                f"deterministic mode runs 16-bit weights only (this model loads as {fmt.name})", "deterministic")
        return LayerOptions(use_kernels=self.use_kernels, batch_invariant=self.config.deterministic,
                            weight_format=fmt.name, group_size=fmt.group_size, device_type=self.device.type,
                            kv_quant=self.config.quant_policy)

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V for one block across all layers; with quant_policy 8/4 the codes and the scales.

        A quantized row (token, kv head) is head_dim codes of quant_policy bits plus its fp32 (scale,
        min): SmolLM2's head_dim 64 takes 72 bytes at 8 bits against 128 in bf16 (256 in fp32).
        """
        rows = 2 * self.num_layers * self.config.cache_block_seq_len * self.num_kv_heads
        if self.config.quant_policy:
            return rows * (self.head_dim * self.config.quant_policy // 8 + 2 * 4)
        return rows * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

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
        bits = cfg.quant_policy
        if bits == 4 and self.head_dim % 2:
            raise InvalidRequestError(f"quant_policy 4 packs two values a byte and needs an even head size "
                                      f"(this model's is {self.head_dim}); use quant_policy 8", "quant_policy")
        width = self.head_dim * bits // 8 if bits else self.head_dim
        shape = (2, self.num_layers, num_blocks, cfg.cache_block_seq_len, self.num_kv_heads, width)
        try:
            # zeros, not empty: unused slots are masked out, but 0 * NaN garbage would still be NaN.
            self.kv_cache = torch.zeros(shape, dtype=torch.uint8 if bits else self.dtype, device=self.device)
            if bits:  # indexed by the same slots as the codes: a block's scales move with the block
                self.kv_scales = torch.zeros(shape[:-1] + (2,), dtype=torch.float32, device=self.device)
        except torch.OutOfMemoryError:
            self.kv_cache = self.kv_scales = None
            raise OutOfMemoryError(
                f"the KV cache of {num_blocks} blocks does not fit: lower --cache-max-entry-count") from None
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
            if bits:
                attn.k_scale, attn.v_scale = self.kv_scales[0, i], self.kv_scales[1, i]
        self.num_blocks = num_blocks
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB, %s)", num_blocks, cfg.cache_block_seq_len,
                 num_blocks * self.block_bytes / 2**30, f"int{bits} + scales" if bits else str(self.dtype))

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
        prompt_scores = self._score_prompts(plan, hidden)
        sampling = [item.request for item in plan.scheduled if item.sample]
        if not sampling:
            return InFlightStep(plan, None, None, None, prompt_scores)
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
        return InFlightStep(plan, out, host, event, prompt_scores)

    def _score_prompts(self, plan: SchedulerOutput, hidden: torch.Tensor) -> list | None:
        """Log-probabilities of the next prompt token at every prompt row of requests that ask for them
        (gen.prompt_logprobs): all of a chunk's rows go through the LM head, not only the sampled one."""
        if not any(item.request.gen.prompt_logprobs for item in plan.scheduled):
            return None
        scores: list = [None] * len(plan.scheduled)
        row = 0
        for i, item in enumerate(plan.scheduled):
            request, n = item.request, item.num_new_tokens
            # rows start .. start + n - 1 predict tokens start + 1 .. start + n; only prompt ones are scored
            last = min(item.start + n, request.num_prompt_tokens - 1)
            if request.gen.prompt_logprobs and last > item.start:
                count = last - item.start
                logits = self.model.compute_logits(hidden[row:row + count])
                targets = torch.tensor(request.token_ids[item.start + 1:last + 1], device=logits.device)
                chosen = torch.log_softmax(logits, dim=-1).gather(1, targets.view(-1, 1)).view(-1)
                scores[i] = (item.start, chosen)
            row += n
        return scores

    def collect(self, step: "InFlightStep") -> StepResult:
        """Wait for a launched step and hand back its tokens: the one host sync of the step."""
        plan = step.plan
        tokens: list[int | None] = [None] * len(plan.scheduled)
        logprobs: list = [None] * len(plan.scheduled)
        prompt = None
        if step.prompt_scores is not None:  # a prefill step: the sync costs nothing extra here
            prompt = [None if s is None else (s[0], s[1].tolist()) for s in step.prompt_scores]
        if step.out is None:
            return StepResult(tokens, logprobs, prompt)
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
        return StepResult(tokens, logprobs, prompt)

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
    prompt_scores: list | None = None  # per scheduled request: (first index, log-probabilities on the device)
