"""`opsctl bench`: load tests over HTTP (`opsctl bench --url URL`) and `opsctl bench offline [MODEL]`.

`--url` drives any OpenAI-compatible server with Locust in its own process (toolkit.bench.load_runner);
`offline` measures the engine without HTTP beside plain transformers. Both write one JSON (device,
versions, git commit, config, every run) under reports/<run-id>/ with a per-request CSV per run, and
print a table.

Limits (toolkit.bench.metrics), two kinds as in vLLM's and GuideLLM's benches:
  --slo ttft_p99_ms=500,tpot_p99_ms=50   run-level: the run's own p99 TTFT, p99 TPOT... against each
                                         limit; a rung that misses one fails (exit code 1)
  --goodput ttft:500,tpot:50             per request (vLLM's --goodput): goodput = requests/s each
                                         meeting every limit; a figure, never a failure

Exit codes, the same for every command here:
  0    measured (and every --slo met)
  1    measured, but an SLO failed; or nothing could be measured (server unreachable, every request
       failed, Locust died)
  2    bad input: an option's value, a file it names, a run id; one `error:` line, nothing is run
       (click's own type errors, e.g. --num-requests abc, also exit 2, in click's format)
  130  interrupted (Ctrl-C); what was measured is kept
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import engine_options as eo

app = typer.Typer(help="Measure serving performance: `opsctl bench --url URL` load-tests a server, `opsctl bench "
                       "offline` the engine without HTTP. Exit codes: 0 measured (and every --slo met); 1 an SLO "
                       "failed, or nothing could be measured; 2 bad input, nothing run; 130 interrupted.",
                  no_args_is_help=True)

PEERS = ("generate", "generate-static", "generate-batch")


def _bad_input(message: str) -> typer.Exit:
    """One `error:` line on stderr and exit code 2 (bad input), to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _split(values: list[str], name: str, kind):
    """Repeated options and comma lists alike: ['1,2', '4'] -> [1, 2, 4]."""
    out = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    out.append(kind(part))
                except ValueError:
                    raise _bad_input(f"{name} {part.strip()!r} is not a number") from None
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
    slo: Annotated[Optional[str], typer.Option(metavar="NAME=MS,...", help="Run-level limits: the run's own statistic against each, e.g. ttft_p99_ms=500,tpot_p99_ms=50 (metrics ttft, tpot, itl, e2e; statistics p50, p90, p95, p99, mean, max). A rung that misses one fails the run: exit code 1.")] = None,
    goodput: Annotated[Optional[str], typer.Option(metavar="METRIC:MS,...", help="Per-request limits, as vLLM's --goodput, e.g. ttft:500,tpot:50 (metrics ttft, tpot, e2el): goodput = requests/s that each meet every limit. Reported, never a failure.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompts, lengths and arrivals.")] = 0,
    api_key: Annotated[Optional[str], typer.Option(help="Bearer token for the server.", envvar="OPENAI_API_KEY")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Send ignore_eos (vLLM/LMDeploy/opsctl extension) so outputs reach max_tokens.")] = False,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Sampling temperature sent with every request (0: greedy; default: not sent, the server's default).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Local tokenizer directory for prompt lengths (default: the served model's if found, else SmolLM2's).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each request may take, from sending it to the end of its stream, before it counts as an error.")] = 600.0,
    think_time_ms: Annotated[float, typer.Option(min=0.0, help="Closed loop: each user waits a random 0..MS ms after an answer before sending its next request (Locust's wait_time). Users with equal-length requests that a batching server finishes in the same step otherwise resend together and stay in lockstep; a few ms keeps them apart, as real users are. Default 0: back to back.")] = 0.0,
    client_processes: Annotated[Optional[int], typer.Option(min=1, help="Locust worker processes per rung (default: one per 64 users on the first rung, then from the CPU the previous rung used; at most the cores less one).")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Name of the result folder (default: http-<time>).")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where reports/<run-id>/ goes.")] = Path("reports"),
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
) -> None:
    """Load-test an OpenAI-compatible server with Locust (opsctl bench --url URL), or run a subcommand.

    Exit codes: 0 measured (every --slo met); 1 an SLO failed, or nothing could be measured; 2 bad
    input (an option, a file, a run id), nothing run; 130 interrupted.
    """
    if ctx.invoked_subcommand is not None:
        return
    if url is None:  # options but no --url (a bare `opsctl bench` prints the help before this runs)
        typer.echo(ctx.get_help())
        typer.echo("error: give --url URL (or a subcommand such as offline)", err=True)
        raise typer.Exit(2)
    from rich.console import Console

    from ..bench.load_runner import (BenchError, HttpBenchOptions, normalize_url, plan_rungs, report_outcome,
                                     run_http_bench, was_interrupted)
    from ..bench.metrics import LimitError, parse_goodput, parse_slo, slo_failed
    from ..bench.workloads import WorkloadError, parse_range

    # Bad input first, all of it exit code 2 with one line, before the server is asked anything.
    if endpoint not in ("chat", "completions"):
        raise _bad_input(f"--endpoint {endpoint!r}: use chat or completions")
    run_id = _checked_run_id(output_dir, run_id, "http")
    try:
        slo_limits, goodput_limits = parse_slo(slo), parse_goodput(goodput)
        opts = HttpBenchOptions(
            url=url, model=model, endpoint=endpoint, dataset=dataset,
            input_len=parse_range(input_len, "--input-len"), output_len=parse_range(output_len, "--output-len"),
            num_requests=num_requests if num_requests is not None or duration is not None else 200,
            duration_s=duration, concurrency=_split(concurrency, "--concurrency", int),
            request_rate=_split(request_rate, "--request-rate", float), warmup=warmup, slo=slo_limits,
            goodput=goodput_limits, seed=seed, api_key=api_key, run_id=run_id, output_dir=output_dir,
            timeout_s=timeout, ignore_eos=ignore_eos, temperature=temperature, tokenizer=tokenizer,
            client_processes=client_processes, think_time_ms=think_time_ms)
        _check_http_options(opts, num_requests, duration)
        normalize_url(url)
        plan_rungs(opts)
    except (LimitError, WorkloadError, BenchError) as e:
        raise _bad_input(str(e)) from None
    console = Console(stderr=True)
    try:
        result, out_dir = run_http_bench(opts, console)
    except WorkloadError as e:  # the dataset file or tokenizer named on the command line
        raise _bad_input(str(e)) from None
    except BenchError as e:  # nothing could be measured: the server, Locust
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted before any request was measured", err=True)
        raise typer.Exit(130) from None
    code = report_outcome(result, out_dir, Console(width=160), render=not no_report)
    if code == 0 and any(slo_failed(r.summary) for r in result.runs):
        code = 1
    raise typer.Exit(130 if was_interrupted(result) else code)


def _check_http_options(opts, num_requests: int | None, duration: float | None) -> None:
    """The command line's numbers, as BenchError (exit code 2 above)."""
    from ..bench.load_runner import BenchError

    if num_requests is not None and duration is not None:
        raise BenchError("give --num-requests or --duration, not both")
    if num_requests is not None and num_requests < 1:
        raise BenchError(f"--num-requests {num_requests}: must be >= 1")
    if duration is not None and not duration > 0:
        raise BenchError(f"--duration {duration:g}: must be > 0 (seconds per rung)")
    if not opts.timeout_s > 0:
        raise BenchError(f"--timeout {opts.timeout_s:g}: must be > 0 (seconds each request may take)")
    if opts.warmup is not None and opts.warmup < 0:
        raise BenchError(f"--warmup {opts.warmup}: must be >= 0")
    if opts.think_time_ms and opts.request_rate:
        raise BenchError("--think-time-ms is a closed loop's wait between a user's requests; with --request-rate "
                         "the arrivals are timed by the rate")


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


@app.command("fake-server", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def fake_server(ctx: typer.Context) -> None:
    """A fake OpenAI server of known timing (no model) to measure load generators against; see --help.

    Its options are those of `python -m toolkit.bench.fake_server`: --port, --ttft-ms, --itl-ms,
    --output-len, --workers, --chat-template-tokens, --stats-dir.
    """
    from ..bench.fake_server import main

    raise typer.Exit(main(list(ctx.args), prog="opsctl bench fake-server"))


def _range(text: str | None, name: str) -> tuple[int, int] | None:
    if text is None:
        return None
    low, _, high = text.partition(":")
    try:
        low, high = int(low), int(high or low)
    except ValueError:
        raise _bad_input(f"{name} {text!r}: use N or MIN:MAX") from None
    if not 1 <= low <= high:
        raise _bad_input(f"{name} {text!r}: need 1 <= MIN <= MAX")
    return low, high


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
    runs: Annotated[int, typer.Option(min=1, help="Write this many result folders, <run-id>-1 .. -N, from one process "
                                                  "(each model loads once; with --peer on a GPU the engine's N runs "
                                                  "come first, then the peer's).")] = 1,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where reports/<run-id>/ goes.")] = Path("reports"),
    run_id: Annotated[Optional[str], typer.Option(help="Name of the result folder (default: offline-<time>).")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    engine_config=None,
) -> None:
    """Benchmark the engine offline (no HTTP) and, with --peer, transformers on the same workload."""
    from ..bench.offline import bench_engine, build_workload
    from ..bench.peers import load_hf_model, run_generate, run_generate_batch
    from ..bench.report_table import print_runs, write_html_report, write_requests_csv
    from ..report.words import offline_workload_words
    from ..report.schema import BenchResult
    from ..system_info import command_line, device_info, git_commit, versions

    from ..bench.offline import WORKLOADS

    # Bad input is exit code 2 and one line, before the model loads (fail in a second).
    peer = peer or []
    bad = [p for p in peer if p not in PEERS]
    if bad:
        raise _bad_input(f"--peer {bad[0]!r}: unknown; choose from {', '.join(PEERS)}")
    if workload not in WORKLOADS:
        raise _bad_input(f"--workload {workload!r}: unknown; choose from {', '.join(WORKLOADS)}")
    for option, value in (("--num-requests", num_requests), ("--peer-batch-size", peer_batch_size)):
        if value is not None and value < 1:
            raise _bad_input(f"{option} {value}: must be >= 1")
    input_range, output_range = _range(input_len, "--input-len"), _range(output_len, "--output-len")
    run_id = _checked_run_id(output_dir, run_id, "offline")
    # --runs N: N result files from one process, so the repeats a gate takes the median of cost one
    # interpreter start and one model load a side. On the CPU each run is the engine then its peers, both
    # models loaded; on a GPU the engine's KV pool leaves no room for the peer's weights, so the engine
    # runs N times, is freed, then the peers run N times.
    run_ids = [run_id] if runs == 1 else [_checked_run_id(output_dir, f"{run_id}-{i}", "offline")
                                          for i in range(1, runs + 1)]
    from engine.engine import LLMEngine

    engine = LLMEngine(model, engine_config)
    dev = device_info()
    work = build_workload(workload, engine.vocab_size, seed=seed, num_requests=num_requests,
                          input_len=input_range, output_len=output_range, max_len=engine.session_len)
    name = engine.source.name
    source, torch_device, torch_dtype = engine.source, str(engine.runner.device), engine.runner.dtype
    interleave = torch_device == "cpu"
    typer.echo(f"engine: {name} on {engine.runner.device} ({engine.runner.dtype}), "
               f"workload {offline_workload_words(work.describe())}")
    hf, pad = None, 0

    def free_engine() -> None:
        nonlocal engine
        if engine is not None:
            engine.shutdown()  # --tp: its worker processes and their GPUs
            engine = None  # free the engine's memory (weights, KV pool) for the peer
            _free_device_memory()

    def run_peers(result: BenchResult, last: bool) -> None:
        nonlocal hf, pad
        if hf is None:
            if last:
                free_engine()
            hf = load_hf_model(source, torch_device, torch_dtype)
            pad = source.load_tokenizer().pad_token_id or 0
        for p in peer:
            typer.echo(f"peer: transformers {p}")
            if p == "generate-batch":
                result.runs.append(run_generate_batch(hf, work, torch_device, name))
            else:
                result.runs.append(run_generate(hf, work, torch_device, peer_batch_size or len(work.prompts),
                                                name, pad, static_cache=p == "generate-static", repeats=repeats))

    def write(result: BenchResult) -> None:
        out_dir = output_dir / result.run_id
        write_requests_csv(result, out_dir)
        result.write(out_dir / "result.json")
        print_runs(result)
        typer.echo(f"wrote {out_dir / 'result.json'}")
        if not no_report:
            write_html_report(out_dir)

    pending = []
    command, commit, vers = command_line(), git_commit(), versions()  # the same for every run
    for i, rid in enumerate(run_ids):
        if runs > 1:
            typer.echo(f"run {i + 1} of {runs}: {rid}")
        result = BenchResult(run_id=rid, kind="offline", command=command, git_commit=commit, device=dev,
                             versions=vers)
        result.runs.extend(bench_engine(engine, name, work, dev.get("name", ""), repeats=repeats))
        if peer and not interleave:
            pending.append(result)
            continue
        if peer:
            run_peers(result, last=i == len(run_ids) - 1)
        write(result)
    free_engine()
    for result in pending:
        run_peers(result, last=True)
        write(result)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
