"""`opsctl bench offline [MODEL]`: engine throughput and latency without HTTP, beside plain transformers.

Writes one JSON (device, versions, git commit, config, every run) under reports/<run-id>/ and a
per-request CSV per run, and prints a table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import engine_options as eo

app = typer.Typer(help="Measure serving performance.", no_args_is_help=True)

PEERS = ("generate", "generate-static", "generate-batch")


def _range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    low, _, high = text.partition(":")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use N or MIN:MAX") from None


@app.command("offline")
def offline(
    model: eo.ModelArg = None,
    *,
    workload: Annotated[str, typer.Option(help="mixed, decode-b1, throughput, long-context, ttft, shared-prefix.")] = "mixed",
    num_requests: Annotated[Optional[int], typer.Option(help="Override the workload's request count.")] = None,
    input_len: Annotated[Optional[str], typer.Option(help="Prompt tokens: N or MIN:MAX (uniform).")] = None,
    output_len: Annotated[Optional[str], typer.Option(help="Output tokens: N or MIN:MAX (uniform).")] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    peer: Annotated[list[str], typer.Option(help=f"Also run a peer on the same workload: {', '.join(PEERS)}.")] = [],
    peer_batch_size: Annotated[Optional[int], typer.Option(help="Batch size of the generate peer (default: all).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where reports/<run-id>/ goes.")] = Path("reports"),
    run_id: Annotated[Optional[str], typer.Option(help="Name of the result folder (default: offline-<time>).")] = None,
    max_batch_size: eo.MaxBatchSize = None,
    cache_max_entry_count: eo.CacheMaxEntryCount = 0.8,
    cache_block_seq_len: eo.CacheBlockSeqLen = 64,
    session_len: eo.SessionLen = None,
    max_prefill_token_num: eo.MaxPrefillTokenNum = 8192,
    enable_prefix_caching: eo.EnablePrefixCaching = False,
    tp: eo.Tp = 1,
    model_format: eo.ModelFormat = None,
    quant_policy: eo.QuantPolicy = 0,
    dtype: eo.Dtype = "auto",
    device: eo.Device = "auto",
    eager: eo.Eager = False,
    cpu_memory_gb: eo.CpuMemoryGb = 4.0,
) -> None:
    """Benchmark the engine offline (no HTTP) and, with --peer, transformers on the same workload."""
    from ..bench.offline import bench_engine, build_workload
    from ..bench.peers import load_hf_model, run_generate, run_generate_batch
    from ..report.schema import BenchResult, new_run_id
    from ..bench.report_table import print_runs, write_requests_csv
    from ..system_info import command_line, device_info, git_commit, versions

    bad = [p for p in peer if p not in PEERS]
    if bad:
        raise typer.BadParameter(f"unknown peer {bad[0]!r}; choose from {', '.join(PEERS)}", param_hint="--peer")
    from engine.engine import LLMEngine

    config = eo.engine_config(
        max_batch_size=max_batch_size, cache_max_entry_count=cache_max_entry_count,
        cache_block_seq_len=cache_block_seq_len, session_len=session_len,
        max_prefill_token_num=max_prefill_token_num, enable_prefix_caching=enable_prefix_caching, tp=tp,
        model_format=model_format, quant_policy=quant_policy, dtype=dtype, device=device, eager=eager,
        cpu_memory_gb=cpu_memory_gb)
    engine = LLMEngine(model, config)
    dev = device_info()
    work = build_workload(workload, engine.vocab_size, seed=seed, num_requests=num_requests,
                          input_len=_range(input_len), output_len=_range(output_len), max_len=engine.session_len)
    name = engine.source.name
    result = BenchResult(run_id=run_id or new_run_id("offline"), kind="offline", command=command_line(),
                         git_commit=git_commit(), device=dev, versions=versions())
    typer.echo(f"engine: {name} on {engine.runner.device} ({engine.runner.dtype}), workload {work.describe()}")
    result.runs.extend(bench_engine(engine, name, work, dev.get("name", "")))
    if peer:
        source, torch_device, torch_dtype = engine.source, str(engine.runner.device), engine.runner.dtype
        del engine  # free the engine's memory (weights, KV pool) for the peer
        _free_device_memory()
        hf = load_hf_model(source, torch_device, torch_dtype)
        pad = source.load_tokenizer().pad_token_id or 0
        for p in peer:
            typer.echo(f"peer: transformers {p}")
            if p == "generate-batch":
                result.runs.append(run_generate_batch(hf, work, torch_device, name))
            else:
                result.runs.append(run_generate(hf, work, torch_device, peer_batch_size or len(work.prompts), name,
                                                pad, static_cache=p == "generate-static"))
    out_dir = output_dir / result.run_id
    write_requests_csv(result, out_dir)
    result.write(out_dir / "result.json")
    print_runs(result)
    typer.echo(f"wrote {out_dir / 'result.json'}")


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
