"""`opsctl bench`: load tests over HTTP (`opsctl bench --url URL`) and `opsctl bench offline [MODEL]`.

`--url` drives any OpenAI-compatible server with Locust in its own process (toolkit.bench.load_runner);
`offline` measures the engine without HTTP beside plain transformers. Both write one JSON (device,
versions, git commit, config, every run) under reports/<run-id>/ with a per-request CSV per run, and
print a table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import engine_options as eo

app = typer.Typer(help="Measure serving performance.", no_args_is_help=True)

PEERS = ("generate", "generate-static", "generate-batch")


def _split(values: list[str], name: str, kind):
    """Repeated options and comma lists alike: ['1,2', '4'] -> [1, 2, 4]."""
    out = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    out.append(kind(part))
                except ValueError:
                    raise typer.BadParameter(f"{part!r} is not a number", param_hint=name) from None
    return out


@app.callback(invoke_without_command=True)
def http(
    ctx: typer.Context,
    *,
    url: Annotated[Optional[str], typer.Option(help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:23333.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name sent in requests (default: the first of GET /v1/models).")] = None,
    endpoint: Annotated[str, typer.Option(help="chat (/v1/chat/completions) or completions (/v1/completions).")] = "chat",
    dataset: Annotated[str, typer.Option(help="random, chat (built-in prompts) or sharegpt:PATH.")] = "random",
    input_len: Annotated[str, typer.Option(help="Random prompts' tokens: N or MIN:MAX (uniform).")] = "1024",
    output_len: Annotated[Optional[str], typer.Option(help="max_tokens: N or MIN:MAX (default 128; ShareGPT: each answer's length).")] = None,
    num_requests: Annotated[Optional[int], typer.Option(help="Measured requests per rung, warm-up excluded (default 200 unless --duration).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Seconds per rung instead of --num-requests (requests in flight at the end finish).")] = None,
    concurrency: Annotated[list[str], typer.Option(metavar="N[,N...]", help="Closed-loop users; repeat or comma-list for a ladder (1,4,16). With --request-rate: the cap on users.")] = [],
    request_rate: Annotated[list[str], typer.Option(metavar="R[,R...]", help="Poisson arrivals per second; repeat or comma-list for a ladder.")] = [],
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up requests per rung, not counted (default min(concurrency, 4)).")] = None,
    slo: Annotated[Optional[str], typer.Option(help="Goodput limits, e.g. ttft_p99_ms=500,tpot_p99_ms=50.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompts, lengths and arrivals.")] = 0,
    api_key: Annotated[Optional[str], typer.Option(help="Bearer token for the server.", envvar="OPENAI_API_KEY")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Send ignore_eos (vLLM/LMDeploy/opsctl extension) so outputs reach max_tokens.")] = False,
    tokenizer: Annotated[Optional[str], typer.Option(help="Local tokenizer directory for prompt lengths (default: the served model's if found, else SmolLM2's).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each request may take, from sending it to the end of its stream, before it counts as an error.")] = 600.0,
    run_id: Annotated[Optional[str], typer.Option(help="Name of the result folder (default: http-<time>).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where reports/<run-id>/ goes.")] = Path("reports"),
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
) -> None:
    """Load-test an OpenAI-compatible server with Locust (opsctl bench --url URL), or run a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if url is None:  # options but no --url (a bare `opsctl bench` prints the help before this runs)
        typer.echo(ctx.get_help())
        typer.echo("error: give --url URL (or a subcommand such as offline)", err=True)
        raise typer.Exit(2)
    from rich.console import Console

    from ..bench.load_runner import BenchError, HttpBenchOptions, report_outcome, run_http_bench, was_interrupted
    from ..bench.metrics import parse_slo
    from ..bench.workloads import WorkloadError, parse_range

    if endpoint not in ("chat", "completions"):
        raise typer.BadParameter(f"{endpoint!r}: use chat or completions", param_hint="--endpoint")
    run_id = _checked_run_id(output_dir, run_id, "http")
    try:
        slo_limits = parse_slo(slo)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--slo") from None
    console = Console(stderr=True)
    try:
        opts = HttpBenchOptions(
            url=url, model=model, endpoint=endpoint, dataset=dataset,
            input_len=parse_range(input_len, "--input-len"), output_len=parse_range(output_len, "--output-len"),
            num_requests=num_requests if num_requests is not None or duration is not None else 200,
            duration_s=duration, concurrency=_split(concurrency, "--concurrency", int),
            request_rate=_split(request_rate, "--request-rate", float), warmup=warmup, slo=slo_limits,
            seed=seed, api_key=api_key, run_id=run_id, output_dir=output_dir, timeout_s=timeout,
            ignore_eos=ignore_eos, tokenizer=tokenizer)
        if num_requests is not None and duration is not None:
            raise BenchError("give --num-requests or --duration, not both")
        result, out_dir = run_http_bench(opts, console)
    except (BenchError, WorkloadError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted before any request was measured", err=True)
        raise typer.Exit(130) from None
    code = report_outcome(result, out_dir, Console(width=160), render=not no_report)
    raise typer.Exit(130 if was_interrupted(result) else code)


def _checked_run_id(output_dir: Path, run_id: str | None, prefix: str) -> str:
    """The run id to write under (a new <prefix>-<time> when none was given), or one `error:` line and
    exit 2 when it would put the results anywhere but output_dir/<one folder> (toolkit.report.paths)."""
    from ..report.paths import UnsafePathError, run_dir
    from ..report.schema import new_run_id

    run_id = new_run_id(prefix) if run_id is None else run_id
    try:
        run_dir(output_dir, run_id)
    except UnsafePathError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    return run_id


def _range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    low, _, high = text.partition(":")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use N or MIN:MAX") from None


@app.command("offline")
@eo.with_engine_flags()
def offline(
    model: eo.ModelArg = None,
    *,
    workload: Annotated[str, typer.Option(help="mixed, decode-b1, throughput, long-context, ttft, shared-prefix.")] = "mixed",
    num_requests: Annotated[Optional[int], typer.Option(help="Override the workload's request count.")] = None,
    input_len: Annotated[Optional[str], typer.Option(help="Prompt tokens: N or MIN:MAX (uniform).")] = None,
    output_len: Annotated[Optional[str], typer.Option(help="Output tokens: N or MIN:MAX (uniform).")] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    peer: Annotated[Optional[list[str]], typer.Option(help=f"Also run a peer on the same workload: {', '.join(PEERS)}.")] = None,
    peer_batch_size: Annotated[Optional[int], typer.Option(help="Batch size of the generate peer (default: all).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Measure each system this many times and keep its fastest run.")] = 1,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where reports/<run-id>/ goes.")] = Path("reports"),
    run_id: Annotated[Optional[str], typer.Option(help="Name of the result folder (default: offline-<time>).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    engine_config=None,
) -> None:
    """Benchmark the engine offline (no HTTP) and, with --peer, transformers on the same workload."""
    from ..bench.offline import bench_engine, build_workload
    from ..bench.peers import load_hf_model, run_generate, run_generate_batch
    from ..bench.report_table import print_runs, write_html_report, write_requests_csv
    from ..report.schema import BenchResult
    from ..system_info import command_line, device_info, git_commit, versions

    peer = peer or []
    bad = [p for p in peer if p not in PEERS]
    if bad:
        raise typer.BadParameter(f"unknown peer {bad[0]!r}; choose from {', '.join(PEERS)}", param_hint="--peer")
    run_id = _checked_run_id(output_dir, run_id, "offline")  # before the model loads: fail in a second
    from engine.engine import LLMEngine

    engine = LLMEngine(model, engine_config)
    dev = device_info()
    work = build_workload(workload, engine.vocab_size, seed=seed, num_requests=num_requests,
                          input_len=_range(input_len), output_len=_range(output_len), max_len=engine.session_len)
    name = engine.source.name
    result = BenchResult(run_id=run_id, kind="offline", command=command_line(),
                         git_commit=git_commit(), device=dev, versions=versions())
    typer.echo(f"engine: {name} on {engine.runner.device} ({engine.runner.dtype}), workload {work.describe()}")
    result.runs.extend(bench_engine(engine, name, work, dev.get("name", ""), repeats=repeats))
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
                                                pad, static_cache=p == "generate-static", repeats=repeats))
    out_dir = output_dir / result.run_id
    write_requests_csv(result, out_dir)
    result.write(out_dir / "result.json")
    print_runs(result)
    typer.echo(f"wrote {out_dir / 'result.json'}")
    if not no_report:
        write_html_report(out_dir)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
