"""EngineConfig flags shared by every command that starts the engine (chat, serve, bench offline).

Flag names and defaults are LMDeploy's. `@with_engine_flags()` adds them to a command's signature
(typer reads `__signature__`) and hands the command one validated EngineConfig as `engine_config`,
so each command lists only its own options.
"""
from __future__ import annotations

import functools
import inspect
from typing import Annotated, Optional

import typer

ModelArg = Annotated[Optional[str], typer.Argument(
    help="Local HF directory, .gguf file, or preset:NAME; the embedded SmolLM2-135M-Instruct when left out.")]
MaxBatchSize = Annotated[Optional[int], typer.Option(
    "--max-batch-size", help="Most requests running at once (default: 256 on >=64 GiB GPUs, 128 on others, 32 on CPU).")]
CacheMaxEntryCount = Annotated[float, typer.Option(
    "--cache-max-entry-count", help="Fraction of free memory after weights for the KV cache; an integer > 1 is a block count.")]
CacheBlockSeqLen = Annotated[int, typer.Option("--cache-block-seq-len", help="Tokens per KV-cache block.")]
SessionLen = Annotated[Optional[int], typer.Option(
    "--session-len", help="Longest prompt + output per request (default: the model's context length).")]
MaxPrefillTokenNum = Annotated[int, typer.Option(
    "--max-prefill-token-num", help="Token budget of one forward; longer prompts are split into chunks.")]
EnablePrefixCaching = Annotated[bool, typer.Option(
    "--enable-prefix-caching", help="Reuse KV blocks of identical prompt prefixes across requests.")]
Tp = Annotated[int, typer.Option("--tp", help="Tensor-parallel GPUs.")]
ModelFormat = Annotated[Optional[str], typer.Option("--model-format", help="hf, awq or gguf (default: detected).")]
QuantPolicy = Annotated[int, typer.Option("--quant-policy", help="KV-cache quantization: 0 (off), 4 or 8.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Eager = Annotated[bool, typer.Option("--eager", "--eager-mode", help="Run every step eagerly (no CUDA graphs).")]
Deterministic = Annotated[bool, typer.Option(
    "--deterministic", help="Batch-invariant kernels: a request's tokens do not depend on its batch, chunking or "
                            "prefix-cache hits (CUDA only; slower, implies --eager).")]
DebugInvariants = Annotated[bool, typer.Option(
    "--debug-invariants", help="Check the scheduler and KV block pool after every step; a step that finds "
                               "an inconsistency fails with KVCacheInvariantError (debugging; slower).")]
CpuMemoryGb = Annotated[float, typer.Option(
    "--cpu-memory-gb", help="On CPU: the memory budget that --cache-max-entry-count is a fraction of.")]


# (parameter name, typer annotation, default) of every engine flag, in --help order.
ENGINE_FLAGS = [
    ("tp", Tp, 1),
    ("max_batch_size", MaxBatchSize, None),
    ("cache_max_entry_count", CacheMaxEntryCount, 0.8),
    ("cache_block_seq_len", CacheBlockSeqLen, 64),
    ("session_len", SessionLen, None),
    ("max_prefill_token_num", MaxPrefillTokenNum, 8192),
    ("enable_prefix_caching", EnablePrefixCaching, False),
    ("model_format", ModelFormat, None),
    ("quant_policy", QuantPolicy, 0),
    ("dtype", Dtype, "auto"),
    ("device", Device, "auto"),
    ("eager", Eager, False),
    ("deterministic", Deterministic, False),
    ("cpu_memory_gb", CpuMemoryGb, 4.0),
    ("debug_invariants", DebugInvariants, False),
]


def with_engine_flags(**defaults):
    """Decorate a command taking `engine_config`: it gains every engine flag (defaults overridable)."""
    def decorate(func):
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "engine_config"]
        flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                   default=defaults.get(name, default)) for name, ann, default in ENGINE_FLAGS]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in ENGINE_FLAGS}
            return func(*args, engine_config=engine_config(**values), **kwargs)

        wrapper.__signature__ = inspect.Signature(own + flags)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + flags}
        del wrapper.__wrapped__  # typer must see the new signature, not the wrapped one
        return wrapper
    return decorate


def engine_config(*, max_batch_size=None, cache_max_entry_count=0.8, cache_block_seq_len=64, session_len=None,
                  max_prefill_token_num=8192, enable_prefix_caching=False, tp=1, model_format=None,
                  quant_policy=0, dtype="auto", device="auto", eager=False, deterministic=False,
                  cpu_memory_gb=4.0, debug_invariants=False):
    from engine import EngineConfig

    return EngineConfig(
        max_batch_size=max_batch_size, cache_max_entry_count=cache_max_entry_count,
        cache_block_seq_len=cache_block_seq_len, session_len=session_len,
        max_prefill_token_num=max_prefill_token_num, enable_prefix_caching=enable_prefix_caching, tp=tp,
        model_format=model_format, quant_policy=quant_policy, dtype=dtype, device=device, eager_mode=eager,
        deterministic=deterministic, cpu_memory_gb=cpu_memory_gb,
        debug_invariants=debug_invariants)
