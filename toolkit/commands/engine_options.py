"""EngineConfig flags shared by every command that starts the engine (chat, serve, bench offline).

Flag names and defaults are LMDeploy's; `engine_config(...)` turns the parsed values into an
EngineConfig (validated there, so a bad value is one clear error line).
"""
from __future__ import annotations

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
CpuMemoryGb = Annotated[float, typer.Option(
    "--cpu-memory-gb", help="On CPU: the memory budget that --cache-max-entry-count is a fraction of.")]


def engine_config(*, max_batch_size=None, cache_max_entry_count=0.8, cache_block_seq_len=64, session_len=None,
                  max_prefill_token_num=8192, enable_prefix_caching=False, tp=1, model_format=None,
                  quant_policy=0, dtype="auto", device="auto", eager=False, cpu_memory_gb=4.0):
    from engine import EngineConfig

    return EngineConfig(
        max_batch_size=max_batch_size, cache_max_entry_count=cache_max_entry_count,
        cache_block_seq_len=cache_block_seq_len, session_len=session_len,
        max_prefill_token_num=max_prefill_token_num, enable_prefix_caching=enable_prefix_caching, tp=tp,
        model_format=model_format, quant_policy=quant_policy, dtype=dtype, device=device, eager_mode=eager,
        cpu_memory_gb=cpu_memory_gb)
