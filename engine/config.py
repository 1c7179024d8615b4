"""EngineConfig: how the engine is built (memory, batching, cache, device), LMDeploy's names.

Frozen and validated on creation, so a bad value fails before any weights are read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InvalidRequestError

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_MODEL_FORMATS = (None, "hf", "awq", "gguf")


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings with LMDeploy's names and meanings.

    cache_max_entry_count: fraction (0, 1] of the device memory left free after the weights that the
        KV cache takes (on CPU: of `cpu_memory_gb`); an integer > 1 is a block count instead.
    cache_block_seq_len: tokens per KV block.
    session_len: the longest prompt + output a request may have; None takes the model's context.
    max_batch_size: most requests running at once; None picks by device (256 on >= 64 GiB GPUs,
        128 on other GPUs, 32 on CPU).
    max_prefill_token_num: token budget of one forward (prefill chunks and decode tokens together);
        longer prompts are split across steps (dynamic split & fuse).
    deterministic: batch-invariant kernels (vLLM's VLLM_BATCH_INVARIANT, SGLang's
        --enable-deterministic-inference): a request's tokens do not depend on what it is batched with,
        how its prompt is chunked, or whether its prefix came from the prefix cache. Every linear layer
        runs one fixed-tile Triton GEMM and every attention the one-pass paged kernel; needs CUDA,
        implies eager_mode, and costs speed (cuBLAS, split-KV decode and CUDA graphs are off).
    debug_invariants: after every step, check the scheduler's queues and the KV block pool (free XOR
        referenced, each ref count equal to the live block tables holding the block, prefix-cache
        keys matching their blocks and tokens) and raise KVCacheInvariantError at the first
        inconsistency. For tests and debugging: it costs a pass over every block and table per step.
    """

    max_batch_size: int | None = None
    cache_max_entry_count: float = 0.8
    cache_block_seq_len: int = 64
    session_len: int | None = None
    max_prefill_token_num: int = 8192
    enable_prefix_caching: bool = False
    tp: int = 1
    model_format: str | None = None
    quant_policy: int = 0
    dtype: str = "auto"
    device: str = "auto"
    eager_mode: bool = False
    deterministic: bool = False
    cpu_memory_gb: float = 4.0
    seed: int = 0
    debug_invariants: bool = False

    def __post_init__(self):
        def bad(name, why):
            raise InvalidRequestError(f"EngineConfig.{name}: {why} (got {getattr(self, name)!r})", name)

        if self.max_batch_size is not None and self.max_batch_size < 1:
            bad("max_batch_size", "must be >= 1")
        c = self.cache_max_entry_count
        if not (0 < c <= 1 or (c > 1 and float(c).is_integer())):
            bad("cache_max_entry_count", "must be a fraction in (0, 1] or an integer block count > 1")
        if self.cache_block_seq_len < 1 or self.cache_block_seq_len & (self.cache_block_seq_len - 1):
            bad("cache_block_seq_len", "must be a power of two")
        if self.session_len is not None and self.session_len < 2:
            bad("session_len", "must be >= 2")
        if self.max_prefill_token_num < 1:
            bad("max_prefill_token_num", "must be >= 1")
        if self.tp < 1:
            bad("tp", "must be >= 1")
        if self.model_format not in _MODEL_FORMATS:
            bad("model_format", f"must be one of {_MODEL_FORMATS[1:]}")
        if self.quant_policy not in (0, 4, 8):
            bad("quant_policy", "must be 0, 4 or 8")
        if self.dtype not in _DTYPES:
            bad("dtype", f"must be one of {_DTYPES}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.cpu_memory_gb <= 0:
            bad("cpu_memory_gb", "must be > 0")

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @property
    def cache_is_block_count(self) -> bool:
        return self.cache_max_entry_count > 1
