"""The model runner: device and dtype, the model, the KV-cache tensors, and one forward per step.

`run(plan)` flattens a StepPlan (plain data, engine/step_plan.py) into 1-D inputs (input_ids,
positions, slot_mapping) plus per-request metadata (query_start_loc, seq_lens, block_tables) in
preallocated buffers, runs the model under a forward context (decode steps replay a CUDA graph),
computes logits only for the rows that sample, samples on the device, and returns the sampled ids:
the one host sync of the step. It writes nothing onto requests; the scheduler puts the ids in place.

Under tensor parallelism every rank runs one ModelRunner over its shard of the model (`tp_rank`), on
the same plan and in the same order of collectives: rank 0 gets the gathered logits, samples, and
broadcasts the sampled ids, which every rank needs to feed the next step's placeholder inputs.

Two lifetimes: the weights are loaded once, in the constructor; what the runtime settings shape (the
KV-cache tensors, the input buffers, the decode CUDA graphs) is made by `allocate(config, max_batch)`
and dropped by `release()`, so an engine can take new runtime settings without reloading its weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..errors import EngineError, InvalidRequestError, OutOfMemoryError, error_from_name
from ..forward_context import forward_context
from ..kernels import kernel_head_dim_ok, kernels_wanted
from ..layers.options import LayerOptions
from ..models.llama import head_dim_of
from ..models.loader import build_model
from ..models.weight_format import resolve_weight_format
from ..step_plan import StepPlan
from .cuda_graph import DecodeGraphs
from .input_batch import InputBuffers
from .sampler import Sampler
from .sampling_inputs import build_sampling_metadata
from . import weight_kernels

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of a rank: the `local_rank`-th GPU from the one named (tensor-parallel ranks of one
    machine take consecutive GPUs), or the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OutOfMemoryError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
        first = torch.cuda.current_device() if device.index is None else device.index
        index = first + local_rank
        if index >= torch.cuda.device_count():
            raise InvalidRequestError(f"tensor-parallel rank {local_rank} needs GPU {index} but "
                                      f"{torch.cuda.device_count()} are visible: lower --tp or the --device index",
                                      "tp")
        device = torch.device("cuda", index)
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
    def __init__(self, config: EngineConfig, source, session_len: int, tp_rank: int = 0, local_rank: int = 0):
        """Load the weights (this rank's shard); `allocate` then makes the KV cache, buffers and graphs.

        tp_rank: this runner's tensor-parallel rank of config.tp (the process group is joined already);
        local_rank: its index among the ranks of this machine, which picks its GPU.
        """
        self.config = config
        self.hf_config = source.hf_config
        self.session_len = session_len
        self.tp_rank, self.tp_size = tp_rank, config.tp
        self.device = pick_device(config.device, local_rank)
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
        kernels = weight_kernels.choose(self.config, fmt, use_kernels=self.use_kernels,
                                        dtype=str(self.dtype).removeprefix("torch."), device=self.device)
        return LayerOptions(use_kernels=self.use_kernels, batch_invariant=self.config.deterministic,
                            weight_format=fmt.name, group_size=fmt.group_size, device_type=self.device.type,
                            w4_kernel=kernels.w4, w8_kernel=kernels.w8, kernel_fallback=kernels.fallback,
                            head_int8=weight_kernels.head_int8(self.config, fmt, kernels),
                            kv_quant=self.config.quant_policy, tp_rank=self.tp_rank, tp_size=self.tp_size)

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

    def _planned_blocks(self) -> int:
        """How many KV blocks this rank's memory takes (its heads only: a block costs 1/tp per rank; on CPU
        each rank has its own --cpu-memory-gb)."""
        cfg = self.config
        if cfg.cache_is_block_count:
            return int(cfg.cache_max_entry_count)
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
        return int(free * cfg.cache_max_entry_count) // self.block_bytes

    def _agreed(self, compute) -> int:
        """compute() on this rank; under tensor parallelism the smallest result of all ranks, or on every
        rank the error of the first rank that failed, so the ranks never part ways (an error raised on
        one rank alone would leave the others waiting in the next collective)."""
        try:
            value, error = compute(), None
        except EngineError as e:
            value, error = 0, e
        if self.tp_size == 1:
            if error is not None:
                raise error
            return value
        from .. import distributed

        told = None if error is None else (type(error).__name__, str(error), getattr(error, "param", None))
        results = distributed.gather_objects((value, told))
        if error is not None:
            raise error
        for _, other in results:
            if other is not None:
                raise error_from_name(*other)
        return min(v for v, _ in results)

    def _init_kv_cache(self) -> None:
        cfg = self.config
        num_blocks = self._agreed(self._planned_blocks)  # every rank's cache has the same blocks
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

        def allocate() -> int:
            try:
                # zeros, not empty: unused slots are masked out, but 0 * NaN garbage would still be NaN.
                self.kv_cache = torch.zeros(shape, dtype=torch.uint8 if bits else self.dtype, device=self.device)
                if bits:  # indexed by the same slots as the codes: a block's scales move with the block
                    self.kv_scales = torch.zeros(shape[:-1] + (2,), dtype=torch.float32, device=self.device)
            except torch.OutOfMemoryError:
                self.kv_cache = self.kv_scales = None
                raise OutOfMemoryError(
                    f"the KV cache of {num_blocks} blocks does not fit: lower --cache-max-entry-count") from None
            return 1

        try:
            self._agreed(allocate)
        except EngineError:
            self.kv_cache = self.kv_scales = None  # another rank's failed: none keeps a cache
            raise
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
            if bits:
                attn.k_scale, attn.v_scale = self.kv_scales[0, i], self.kv_scales[1, i]
        self.num_blocks = num_blocks
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB, %s)", num_blocks, cfg.cache_block_seq_len,
                 num_blocks * self.block_bytes / 2**30, f"int{bits} + scales" if bits else str(self.dtype))

    # -- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def launch(self, plan: StepPlan) -> "InFlightStep | None":
        """Queue the step's forward and sampling on the device; nothing here waits for the GPU.

        Under tensor parallelism every rank calls it with the same plan; ranks other than 0 get None
        (they sample nothing: their part ends with receiving the sampled ids).
        """
        graph_batch = None
        if self.graphs is not None and plan.num_tokens == len(plan.requests):
            graph_batch = self.graphs.bucket(len(plan.requests))
        inputs = self.buffers.prepare(plan, graph_batch)
        if inputs.num_patches:
            inputs.input_ids.index_copy_(0, inputs.patch_dst, self._last_sampled.index_select(0, inputs.patch_src))
        if graph_batch is not None:
            hidden = self.graphs.replay(graph_batch)
        else:
            with forward_context(inputs.context):
                hidden = self.model(inputs.input_ids, inputs.positions)
        prompt_scores = self._score_prompts(plan, hidden)
        n = plan.num_sampling
        if not n:
            return InFlightStep(plan, None, None, None, prompt_scores) if self.tp_rank == 0 else None
        # When every token samples (a pure decode step), the rows are simply the first ones.
        rows = hidden[:n] if n == inputs.num_tokens else hidden[inputs.logits_rows]
        logits = self.model.compute_logits(rows)  # under tensor parallelism: gathered on rank 0
        out = None
        if self.tp_rank == 0:
            out = self.sampler(logits, build_sampling_metadata(plan.sampling, self.vocab_size, self.device))
            sampled = out.token_ids
        else:
            sampled = torch.empty(n, dtype=torch.int64, device=self.device)
        if self.tp_size > 1:  # every rank patches the next step's placeholder inputs from these
            from ..distributed import broadcast_from_first

            broadcast_from_first(sampled)
        self._last_sampled = sampled
        if out is None:
            return None
        host = self._sampled_host[self._flip][:n]
        self._flip ^= 1
        host.copy_(sampled, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return InFlightStep(plan, out, host, event, prompt_scores)

    def _score_prompts(self, plan: StepPlan, hidden: torch.Tensor) -> list | None:
        """Log-probabilities of the next prompt token at every prompt row of requests that ask for them
        (gen.prompt_logprobs): all of a chunk's rows go through the LM head, not only the sampled one."""
        if not any(item.prompt_targets for item in plan.requests):
            return None
        scores: list = [None] * len(plan.requests)
        row = 0
        for i, item in enumerate(plan.requests):
            targets = item.prompt_targets
            if targets:  # rows start .. start + len - 1 predict the prompt tokens start + 1 ..
                logits = self.model.compute_logits(hidden[row:row + len(targets)])
                if logits is not None:  # None: a tensor-parallel rank other than 0
                    wanted = torch.tensor(targets, device=logits.device)
                    chosen = torch.log_softmax(logits, dim=-1).gather(1, wanted.view(-1, 1)).view(-1)
                    scores[i] = (item.start, chosen)
            row += item.num_new_tokens
        return scores

    def collect(self, step: "InFlightStep") -> StepResult:
        """Wait for a launched step and hand back its tokens: the one host sync of the step."""
        plan = step.plan
        tokens: list[int | None] = [None] * len(plan.requests)
        logprobs: list = [None] * len(plan.requests)
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
        specs = plan.sampling.specs
        j = 0
        for i, item in enumerate(plan.requests):
            if not item.sample:
                continue
            tokens[i] = sampled[j]
            k = specs[j].gen.logprobs
            if k is not None and chosen is not None:
                alternatives = list(zip(top[0][j][:k], top[1][j][:k])) if top and k else []
                logprobs[i] = (chosen[j], alternatives)
            j += 1
        return StepResult(tokens, logprobs, prompt)

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> StepResult:
        """launch + collect: one step, synchronously (rank 0)."""
        return self.collect(self.launch(plan))


@dataclass
class InFlightStep:
    plan: StepPlan
    out: object  # SamplerOutput on the device, None when nothing samples
    host: torch.Tensor | None  # pinned copy of the sampled ids, valid once `event` has passed
    event: object
    prompt_scores: list | None = None  # per planned request: (first index, log-probabilities on the device)
