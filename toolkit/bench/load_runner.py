"""`opsctl bench --url`: Locust against any OpenAI-compatible server, Locust processes per ladder rung.

run_http_bench asks the server what it serves (server_probe), plans the rungs and their Locust
processes (http_plan), builds the workload, runs each rung in Locust processes (locust_process,
which runs locustfile.py), turns each rung's records into a Run (http_outcome, over the steady
window of http_records) and writes the result; report_outcome prints it. Those modules say how
each part works; this one holds the run's order and the names other code imports from here.

Where the old bench lost its 21-26% (the issue's server: 50 ms TTFT, 7 ms ITL, 256 tokens, 4
workers; the H200 machine's 16-core CPU; the server's rate is users x 256 / its mean request time):
  c=64, N=256: 0.786 -> 0.991 (TTFT p50 81.5 -> 55.3 ms, the server's own 50.3)
  c=256, N=1024: 0.765 -> 0.996 (TTFT p50 207.7 -> 52.6 ms; 4 client processes, auto)
- the window: warm-ups ran beside the first measured requests and exactly N then spilled into a
  last, nearly empty wave (at c=64: 60 + 3 x 64 + 4 measured over 5 request times, 0.8); now the
  locustfile's gate holds measured requests until all users run and warm-ups are done, and the
  rate is over the steady window;
- the client's time per request: requests/urllib3 1,060 us CPU, a new connection per request, a
  trip through Locust's scheduler between requests, records written inline (216 us of json.dumps
  for 255 gaps): a lockstep wave of 64 requests queued ~30 ms on the client, which every TTFT and
  E2E included (the locustfile's docstring has the numbers after);
- one process for every user: at c=256 the client used 98% of a core, TTFT p50 115.7 ms even with
  the cheaper client, until the users were spread over processes (http_plan).
Later, against GuideLLM (ci/guidellm_compare.sh): users that all sent their first measured request
at the gate stayed in lockstep on a deterministic server, and its intake answered each herd late
(TTFT 15-33% above GuideLLM's); the first sends are now spread over one request time
(locust_dispatch).

What lands in <output-dir>/<run-id>/:
  result.json        BenchResult kind "http", one Run per rung
  requests-<i>.csv   measured requests of rung i (warm-up excluded), one row each
  raw/               the plan, the JSON-lines records (with every inter-token gap), each Locust
                     process's CPU (cpu-<i>*.json), log and CSVs
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..report.schema import BenchResult, new_run_id
from ..system_info import command_line, device_info, git_commit, versions
from ..telemetry import GpuSampler, is_local_url
from .http_outcome import SATURATED_BUSY, SATURATED_WORDS, client_cpu, make_run, report_outcome
from .http_plan import (DURATION_ITEMS, MAX_POISSON_USERS, TARGET_BUSY, USERS_PER_PROCESS, BenchError,
                        HttpBenchOptions, Rung, client_processes, items_per_rung, plan_rungs)
from .http_records import HttpRequestRecord, steady_rates, steady_window, to_records
from .locust_process import API_KEY_ENV, LOCUSTFILE, PLAN_ENV, ROLE_ENV, RungOutcome, _Tail, run_rung
from .report_table import write_requests_csv
from .server_probe import PROBE_TIMEOUT_S, normalize_url, probe
from .workloads import build_workload, describe, find_tokenizer, load_tokenizer

# What other code imports from here (the CLI, the tests, scripts), wherever it now lives; _Tail for the tests.
__all__ = ["run_http_bench", "was_interrupted", "report_outcome", "make_run", "client_cpu", "SATURATED_BUSY",
           "SATURATED_WORDS", "BenchError", "HttpBenchOptions", "Rung", "plan_rungs", "items_per_rung",
           "client_processes", "USERS_PER_PROCESS", "TARGET_BUSY", "MAX_POISSON_USERS", "DURATION_ITEMS",
           "HttpRequestRecord", "to_records", "steady_window", "steady_rates", "RungOutcome", "run_rung",
           "LOCUSTFILE", "PLAN_ENV", "ROLE_ENV", "API_KEY_ENV", "_Tail", "normalize_url", "probe",
           "PROBE_TIMEOUT_S"]


def run_http_bench(opts: HttpBenchOptions, console: Console | None = None) -> tuple[BenchResult, Path]:
    """Probe, build the workload, run every rung, write result.json and the tables; returns (result, out_dir)."""
    console = console or Console(stderr=True)
    if opts.num_requests is None and opts.duration_s is None:
        raise BenchError("give --num-requests or --duration")
    if opts.num_requests is not None and opts.num_requests < 1:
        raise BenchError("--num-requests must be >= 1")
    base = normalize_url(opts.url)
    rungs = plan_rungs(opts)
    if not opts.timeout_s > 0:
        raise BenchError(f"--timeout {opts.timeout_s:g}: must be > 0 (seconds each request may take)")
    models, problem = probe(base, opts.api_key)
    notes = []
    if opts.model:
        model = opts.model
        if problem:  # the user named the model: the list was only needed to pick one
            notes.append(f"{problem}; used --model {model}")
            console.print(f"[yellow]warning: {escape(problem)}; using --model {escape(model)}[/]")
    elif models:
        model = models[0]["id"]
    else:
        raise BenchError(f"{problem}; if {base} serves an OpenAI API anyway, pass --model NAME")
    root = next((m.get("root") for m in models if m["id"] == model), None)
    tok = load_tokenizer(find_tokenizer(opts.tokenizer, model, root))

    counts = [items_per_rung(opts, r) for r in rungs]
    with _progress(console) as progress:
        task = progress.add_task("prompts", total=sum(counts) if opts.dataset == "random" else None, status="")
        items, base_desc = build_workload(opts.dataset, tok, sum(counts), input_len=opts.input_len,
                                          output_len=opts.output_len, default_output_len=(128, 128), seed=opts.seed,
                                          on_item=lambda: progress.advance(task))
        progress.update(task, total=len(items), completed=len(items))
    result = BenchResult(run_id=opts.run_id or new_run_id("http"), kind="http", command=command_line(),
                         git_commit=git_commit(), device=device_info(), versions=versions())
    result.notes.extend(notes)
    out_dir = Path(opts.output_dir) / result.run_id
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    console.print(f"bench {base} model {model}: {len(rungs)} rung(s) {', '.join(r.label for r in rungs)}, "
                  f"dataset {opts.dataset}, tokenizer {tok.path.name}")

    with GpuSampler(interval_s=0.5, enabled=is_local_url(base)) as sampler, _progress(console) as progress:
        offset = 0
        previous: tuple[Rung, RungOutcome] | None = None
        for i, (rung, count) in enumerate(zip(rungs, counts)):
            rung_items = items[offset:offset + count]
            offset += count
            processes = client_processes(rung.users, opts.client_processes, previous)
            try:
                outcome = run_rung(i, rung, rung_items, opts, base, model, out_dir, progress, sampler, processes)
            except BenchError as e:
                if not result.runs:
                    raise
                result.notes.append(f"{rung.label} failed, rungs after it not run: {e}")
                break
            previous = (rung, outcome)
            run = make_run(i, rung, outcome, describe(rung_items, base_desc), opts, base, model)
            result.runs.append(run)
            result.notes.extend(outcome.notes)
            for note in outcome.notes:
                if SATURATED_WORDS in note:
                    console.print(f"[yellow]warning: {escape(note)}[/]")
            if outcome.interrupted:
                result.notes.append(f"interrupted during {rung.label}: partial results"
                                    + (f"; rungs not run: {', '.join(r.label for r in rungs[i + 1:])}"
                                       if i + 1 < len(rungs) else ""))
                break
    if not is_local_url(base):
        result.notes.append(f"no GPU telemetry: {base} is not on this machine")
    result.telemetry = sampler.samples
    result.notes.extend(sampler.notes)
    write_requests_csv(result, out_dir)
    result.write(out_dir / "result.json")
    return result, out_dir


def was_interrupted(result: BenchResult) -> bool:
    """Whether a Ctrl-C cut the run short (the CLI then exits 130)."""
    return any(run.summary.extra.get("interrupted") for run in result.runs)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, transient=False)
