"""EngineConfig: how the engine is built (memory, batching, cache, device), LMDeploy's names.

Frozen and validated on creation, so a bad value fails before any weights are read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from .errors import InvalidRequestError

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_MODEL_FORMATS = (None, "hf", "awq", "int8", "gguf")


def default_max_batch_size(memory_bytes: float | None) -> int:
    """What max_batch_size None picks: 32 on the CPU (`memory_bytes` None), 256 on a GPU of >= 64 GiB
    (or allowed that much by --gpu-memory-gb), 128 on a smaller one. The tuner uses it too, so it
    knows which explicit batch cap is the same configuration as the default."""
    if memory_bytes is None:
        return 32
    return 256 if memory_bytes >= 64 * 2**30 else 128


def _setting(default, help: str, *, flags: tuple[str, ...] = (), choices: tuple | None = None):
    """A field with what the CLI needs to offer it: its help, its flag names (default: --field-name)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings with LMDeploy's names and meanings; every field is also a CLI flag.

    The defaults live here only: `opsctl serve/chat/bench/tune` make their flags from these fields
    (toolkit/commands/engine_options.py) and `to_flags()` renders a config back as the flags that
    rebuild it, so the tuner's launch.sh, the launcher and the CLI cannot drift apart.

    cache_max_entry_count: fraction (0, 1] of the device memory left free after the weights that the
        KV cache takes (on CPU: of `cpu_memory_gb`); an integer > 1 is a block count instead.
    max_batch_size: None picks by device (256 on >= 64 GiB GPUs, 128 on other GPUs, 32 on CPU).
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
    debug_step_delay_ms: sleep this long after every step, so the engine is slower by a known amount;
        for testing performance gates (`opsctl gate` must fail on such an engine).
    kernels, overlap, engine_process: what were the environment switches OPSCTL_KERNELS,
        OPSCTL_OVERLAP and OPSCTL_ENGINE_PROCESS; as fields they are recorded with every result.
    """

    tp: int = _setting(1, "Tensor-parallel GPUs (ranks): the model's heads, MLP and vocabulary split across them.")
    nnodes: int = _setting(1, "Machines the tensor-parallel ranks span, tp/nnodes on each; $MASTER_ADDR and "
                              "$MASTER_PORT name node 0 (README: Tensor parallelism).")
    node_rank: int = _setting(0, "This machine's index among --nnodes: node 0 serves, the others run only their "
                                 "ranks.")
    max_batch_size: int | None = _setting(
        None, "Most requests running at once (default: 256 on >=64 GiB GPUs, 128 on others, 32 on CPU).")
    cache_max_entry_count: float = _setting(
        0.8, "Fraction of free memory after weights for the KV cache; an integer > 1 is a block count.")
    cache_block_seq_len: int = _setting(64, "Tokens per KV-cache block.")
    session_len: int | None = _setting(None, "Longest prompt + output per request (default: the model's context length).")
    max_prefill_token_num: int = _setting(8192, "Token budget of one forward; longer prompts are split into chunks.")
    enable_prefix_caching: bool = _setting(False, "Reuse KV blocks of identical prompt prefixes across requests.")
    model_format: str | None = _setting(
        None, "Weights: hf (16-bit), awq (a 4-bit AWQ checkpoint; detected when left out), int8 (8-bit per channel, "
              "quantized at load) or gguf (default: detected).", choices=_MODEL_FORMATS[1:])
    quant_policy: int = _setting(0, "KV-cache quantization: 0 (off), 4 or 8.", choices=(0, 4, 8))
    w4_kernel: str = _setting(
        "auto", "AWQ weights' kernels: triton (AWQ layout: any GPU, any batch), cuda (repacked for the tensor cores, "
                "built with nvcc on first use; bf16 models with group size 128; H200, Qwen2.5-7B: 1.2x the Triton "
                "kernels at batch 1 and at 64 requests) or auto (cuda on Hopper where it can run, else triton).",
        choices=("auto", "triton", "cuda"))
    w8_kernel: str = _setting(
        "auto", "int8 weights' kernels: triton (any GPU, any batch), cuda (the AWQ CUDA kernels' int8 variants, "
                "built with nvcc on first use; bf16 models, layer sizes multiples of 64 x 128; H200, Qwen2.5-7B: "
                "1.08x the Triton ones at 64 requests, level at batch 1) or auto (cuda on Hopper where it can run, "
                "else triton).",
        choices=("auto", "triton", "cuda"))
    lm_head_int8: str = _setting(
        "auto", "The output head (lm_head) in per-row int8, quantized at load: on, off, or auto (on where the "
                "linear layers are int8 or AWQ on the CUDA kernels: Hopper). AutoAWQ and LMDeploy keep it 16-bit. "
                "H200, Qwen2.5-7B, batch 1: the head 275 -> 129 us, AWQ 1.86x -> 1.94x bf16, int8 1.43x -> 1.50x; "
                "SmolLM2 perplexity: int8 1.0011x -> 1.0018x, AWQ 1.1119x -> 1.1126x.",
        choices=("auto", "on", "off"))
    dtype: str = _setting("auto", "auto, float32, bfloat16 or float16.", choices=_DTYPES)
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N.")
    eager_mode: bool = _setting(False, "Run every step eagerly (no CUDA graphs).", flags=("--eager", "--eager-mode"))
    deterministic: bool = _setting(
        False, "Batch-invariant kernels: a request's tokens do not depend on its batch, chunking or prefix-cache "
               "hits (CUDA only; slower, implies --eager).")
    kernels: bool = _setting(True, "The Triton kernels on CUDA (--no-kernels: the torch reference path, for debugging).")
    overlap: str = _setting("auto", "Overlap scheduling (plan step N+1 while the GPU runs step N): auto (on CUDA), on, off.",
                            choices=("auto", "on", "off"))
    engine_process: bool = _setting(
        True, "The server's engine in its own process (--no-engine-process: a thread of the API process).")
    gpu_memory_gb: float | None = _setting(
        None, "Use at most this much GPU memory, GiB (weights and KV cache): a smaller card emulated on a bigger "
              "one, as `opsctl tune --gpu rtx4090` does on an H200 (default: the whole card).")
    cpu_memory_gb: float = _setting(4.0, "On CPU: the memory budget that --cache-max-entry-count is a fraction of.")
    seed: int = _setting(0, "Seed of the random weights of preset: models and of unseeded sampling.",
                         flags=("--engine-seed",))
    debug_invariants: bool = _setting(
        False, "Check the scheduler and KV block pool after every step; a step that finds an inconsistency fails "
               "with KVCacheInvariantError (debugging; slower).")
    debug_step_delay_ms: float = _setting(
        0.0, "Sleep this long after every engine step, ms: a deliberately slowed engine for testing performance "
             "gates (opsctl gate).")

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
        if self.nnodes < 1:
            bad("nnodes", "must be >= 1")
        if self.node_rank < 0:
            bad("node_rank", "must be >= 0")
        if self.model_format not in _MODEL_FORMATS:
            bad("model_format", f"must be one of {_MODEL_FORMATS[1:]}")
        if self.quant_policy not in (0, 4, 8):
            bad("quant_policy", "must be 0, 4 or 8")
        if self.w4_kernel not in ("auto", "triton", "cuda"):
            bad("w4_kernel", "must be auto, triton or cuda")
        if self.w8_kernel not in ("auto", "triton", "cuda"):
            bad("w8_kernel", "must be auto, triton or cuda")
        if self.dtype not in _DTYPES:
            bad("dtype", f"must be one of {_DTYPES}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            bad("gpu_memory_gb", "must be > 0")
        if self.cpu_memory_gb <= 0:
            bad("cpu_memory_gb", "must be > 0")
        if not self.debug_step_delay_ms >= 0:  # also rejects NaN
            bad("debug_step_delay_ms", "must be >= 0")
        if self.overlap not in ("auto", "on", "off"):
            bad("overlap", "must be auto, on or off")
        if self.lm_head_int8 not in ("auto", "on", "off"):
            bad("lm_head_int8", "must be auto, on or off")
        if self.deterministic and self.lm_head_int8 == "on":
            bad("lm_head_int8", "deterministic mode runs 16-bit weights only")

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    def to_flags(self) -> list[str]:
        """The CLI flags that rebuild this config from the defaults (only the fields that differ)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = flag_names(f)[0]
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + flag[2:])
            else:
                out += [flag, _number(value) if isinstance(value, float) else str(value)]
        return out

    @property
    def cache_is_block_count(self) -> bool:
        return self.cache_max_entry_count > 1


def flag_names(f) -> tuple[str, ...]:
    """A field's CLI flag names, the first the one to_flags() writes."""
    return f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),)


def _number(value: float) -> str:
    """A float as the shortest text that reads back as the same float (2.0 as "2")."""
    return str(int(value)) if value.is_integer() else repr(value)
