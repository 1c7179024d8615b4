"""`opsctl bench --url`: Locust against any OpenAI-compatible server, Locust processes per ladder rung.

Locust monkey-patches with gevent at import, so it never runs in this process: each rung is
`python -m locust -f locustfile.py --headless` in its own process, or a Locust master and W workers
(see "Client processes"), handed a JSON plan (prompts, load shape, records and CPU paths; the API
key travels in the environment, not in a file). The locustfile appends one JSON line per request to
raw/records-<i>.jsonl (per worker raw/records-<i>.w<k>.jsonl, merged into the first when the rung
ends); this side follows those files for the progress bar, then turns the lines into RequestRecords
and summarizes them (percentiles from the raw samples).

Throughput is measured over the steady window of a closed-loop rung: from the moment every user has
sent its first measured request to the moment the first user finds nothing left to send, i.e. while
all C users are busy. Output tokens count by when each chunk arrived (a request streaming across
an edge counts only its tokens inside); requests and prompt tokens count by the fraction of each
request's time inside. A closed loop of exactly N requests ends in a drain, fewer and fewer requests
in flight, that the server did not slow down for: on this 2-core machine (the fake server at 32
users, 50 ms TTFT, 10 ms ITL, 64 tokens, 200 requests) first send to last finish read 0.885 of
the server's rate and the steady window 0.986, in the same run. The whole span's figures stay in
summary.extra["whole_run"]; duration_s is the window the rates are over. Poisson rungs (and a
closed loop too short to have a steady window, N < C: noted) use the whole span.

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
  the cheaper client, until the users were spread over processes (below).

Client processes. One gevent process spends ~30 us of CPU per streamed token, more with the
requests around them: at 64 users of a 7 ms-ITL server (9,100 token events/s) the H200 machine's
CPU was 48% busy, at 256 (36,500/s) saturated, and every latency then includes the client's own
queueing. A rung runs in W processes (a Locust master and W workers, --expect-workers W): the
first rung gets one per USERS_PER_PROCESS users (64: a server at 5 ms per token sends them
12,800 events/s); later rungs scale the CPU the previous rung actually used per user to the new
user count, for at most TARGET_BUSY of a core each; W is capped at the cores this process may use,
less one, and at the users. --client-processes N sets W. Every result records each Locust
process's CPU over the measured phase in summary.extra["client_cpu"] (busy: user+sys seconds over
wall seconds; runnable: the share of the time its loop was on a CPU or waiting for one); above
SATURATED_BUSY in a process that has users the run is flagged (extra["client_saturated"], a note,
a console warning).

What lands in <output-dir>/<run-id>/:
  result.json        BenchResult kind "http", one Run per rung
  requests-<i>.csv   measured requests of rung i (warm-up excluded), one row each
  raw/               the plan, the JSON-lines records (with every inter-token gap), each Locust
                     process's CPU (cpu-<i>*.json), log and CSVs

Prompt tokens are the server's count (usage.prompt_tokens: a chat template adds ~30 tokens to a
64-token prompt) when it reports one; the workload's own count stays in workload_prompt_tokens.

Failures keep what was measured: errored requests are counted and kept in the table, an interrupted
run (Ctrl-C) or a Locust process that dies writes the records it has, and the run says so in notes.
An unreachable server fails before Locust starts, with one line.

Misbehaving servers. Every request has one deadline, --timeout from its start to the end of its
stream (the locustfile enforces it), so whatever a server does (no headers, keep-alive comments
forever, a body that is not SSE, JSON that is not JSON, no [DONE], only 500s) each request ends by
then as a record; the failures are counted by kind in result.json (summary.extra.errors) and a note
says in words what the server did. GET /v1/models is checked: an answer that is not a model list
(not JSON, no "data" list, an entry without a string "id") stops the run with one line naming the
URL and the problem, unless --model names the model, in which case the run goes on with a warning
and a note (the list is then only needed for the default model and its tokenizer). A models
endpoint that does not answer within PROBE_TIMEOUT_S, or refuses the key, stops the run either way.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..report.schema import BenchResult, Run, new_run_id
from ..system_info import command_line, device_info, git_commit, versions
from ..telemetry import GpuSampler, is_local_url
from .metrics import RequestRecord, goodput, summarize
from .report_table import print_runs, write_html_report, write_requests_csv
from .workloads import build_workload, describe, find_tokenizer, load_tokenizer

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
PLAN_ENV = "OPSCTL_BENCH_PLAN"  # same names as in the locustfile, which imports nothing from toolkit
ROLE_ENV = "OPSCTL_BENCH_ROLE"
API_KEY_ENV = "OPSCTL_BENCH_API_KEY"
USERS_PER_PROCESS = 64  # first rung: one Locust process per this many users (see the docstring)
TARGET_BUSY = 0.5  # later rungs: processes so that each is predicted to use at most this much of a core
SATURATED_BUSY = 0.9  # a process above this fraction of a core over the measured phase: the client set the pace
SATURATED_WORDS = "the load generator was saturated"
_WORKERS_WAIT_S = 60  # --expect-workers-max-wait: the workers connect within seconds
MAX_POISSON_USERS = 512  # users for a Poisson rung without --concurrency (see the locustfile)
DURATION_ITEMS = 1000  # distinct prompts per closed-loop rung in --duration mode (then they repeat)
PROBE_TIMEOUT_S = 5.0
_MAX_MODELS_BYTES = 4 << 20  # a model list is a few KB; past this the server is not sending one
_LATE_ARRIVAL_S = 0.05  # a Poisson arrival sent later than this says the users were all busy
# No record for timeout + this while Locust runs: give up on the rung. Only a backstop: the locustfile
# ends every request at its --timeout deadline, so this fires only if Locust itself hangs.
_STALL_GRACE_S = 60.0


class BenchError(Exception):
    """A problem the user must fix; its message is one line."""


@dataclass
class HttpBenchOptions:
    url: str
    model: str | None = None
    endpoint: str = "chat"  # chat | completions
    dataset: str = "random"
    input_len: tuple[int, int] = (1024, 1024)
    output_len: tuple[int, int] | None = None  # None: 128 (random, chat) or the dataset's answers (sharegpt)
    num_requests: int | None = 200
    duration_s: float | None = None
    concurrency: list[int] = field(default_factory=list)
    request_rate: list[float] = field(default_factory=list)
    warmup: int | None = None
    slo: dict[str, float] = field(default_factory=dict)  # run-level limits (--slo): each rung passes or fails
    goodput: dict[str, float] = field(default_factory=dict)  # per-request limits (--goodput) behind goodput
    seed: int = 0
    api_key: str | None = None
    run_id: str | None = None
    output_dir: Path = Path("reports")
    timeout_s: float = 600.0  # per request, sending it to the end of its stream (not per read)
    ignore_eos: bool = False
    temperature: float | None = None  # None: not sent, the server's default applies
    tokenizer: str | None = None
    client_processes: int | None = None  # Locust worker processes per rung; None: decided per rung


@dataclass
class Rung:
    label: str
    concurrency: int | None  # closed loop (or the user cap of a Poisson rung)
    request_rate: float | None  # Poisson arrivals
    users: int
    warmup: int


@dataclass
class RungOutcome:
    raw: list[dict]
    window_s: list[float]
    returncode: int | None
    interrupted: bool = False
    stalled: bool = False
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # Locust processes with users (workers, or the one local process)
    cpu: list[dict] = field(default_factory=list)  # what each Locust process wrote to raw/cpu-<i>*.json


class HttpRequestRecord(RequestRecord):
    """A RequestRecord plus what only an HTTP run knows (for the per-request table)."""

    def __init__(self, *args, scheduled_s=None, status=None, usage=False, finish_reason=None, user=None,
                 workload_prompt_tokens=None, chunks=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduled_s, self.status, self.usage, self.finish_reason = scheduled_s, status, usage, finish_reason
        self.user, self.workload_prompt_tokens, self.chunks = user, workload_prompt_tokens, chunks

    def row(self) -> dict:
        return {**super().row(), "workload_prompt_tokens": self.workload_prompt_tokens,
                "scheduled_s": self.scheduled_s, "status": self.status, "usage_reported": self.usage,
                "finish_reason": self.finish_reason, "user": self.user}

    def chunk_times(self) -> list[float]:
        """When each content chunk arrived, seconds from the run's start."""
        if self.ttft_s is None:
            return []
        t = self.start_s + self.ttft_s
        out = [t]
        for gap in self.itl_s:
            t += gap
            out.append(t)
        return out


# -- the server ----------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    """'http://h:8000/v1/' -> 'http://h:8000' (the locustfile adds /v1/...)."""
    base = url.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    if not base.startswith(("http://", "https://")):
        raise BenchError(f"bad --url {url!r}: use http://HOST:PORT (or https://)")
    return base


def probe(base: str, api_key: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[list[dict], str]:
    """(models GET /v1/models lists, "" or what is wrong with its answer, one line naming the URL).

    BenchError when the server cannot be asked at all: unreachable, no complete answer within
    timeout_s, or the key refused. Every model returned has a non-empty string "id".
    """
    import httpx

    url = f"{base}/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout_s) as resp:
            if resp.status_code in (401, 403):
                raise BenchError(f"{base} refused the request (HTTP {resp.status_code}): pass the right --api-key")
            if resp.status_code != 200:
                return [], f"GET {url} answered HTTP {resp.status_code}"
            body = bytearray()
            # Read by hand: httpx's timeout is per read, and a server may dribble bytes forever.
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > _MAX_MODELS_BYTES:
                    return [], f"GET {url} answered over {_MAX_MODELS_BYTES >> 20} MiB, not a model list"
                if time.monotonic() > deadline:
                    raise BenchError(f"GET {url} sent no complete answer within {timeout_s:g} s")
            content_type = resp.headers.get("content-type", "no Content-Type").split(";")[0]
    except httpx.ConnectTimeout:
        raise BenchError(f"cannot reach {base}: no connection within {timeout_s:g} s") from None
    except httpx.TimeoutException:  # connected, but the answer did not come (or not all of it)
        raise BenchError(f"GET {url} sent no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach {base}: {str(e) or type(e).__name__}") from None
    return _model_list(url, bytes(body), content_type)


def _model_list(url: str, body: bytes, content_type: str) -> tuple[list[dict], str]:
    """The models of an OpenAI model list, or ([], what is wrong with it)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return [], f"GET {url} answered something not JSON ({content_type}): {_quote(body)}"
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return [], f'GET {url} answered JSON with no "data" list: {_quote(body)}'
    for j, m in enumerate(data):
        if not isinstance(m, dict):
            return [], f"GET {url} answered a model list whose data[{j}] is {_quote(m)}, not an object"
        if not isinstance(m.get("id"), str) or not m["id"].strip():
            return [], f"GET {url} answered a model list whose data[{j}].id is {_quote(m.get('id'))}, not a name"
    if not data:
        return [], f"GET {url} lists no model"
    return [{**m, "root": m.get("root") if isinstance(m.get("root"), str) else None} for m in data], ""


def _quote(value, limit: int = 80) -> str:
    """A short one-line rendering of what the server sent, for an error message."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
        text = repr(" ".join(value.split()))
    else:
        text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- planning ------------------------------------------------------------------------------------

def plan_rungs(opts: HttpBenchOptions) -> list[Rung]:
    """One rung per concurrency (closed loop) or per request rate (Poisson, --concurrency caps its users)."""
    if opts.request_rate:
        if len(opts.concurrency) > 1:
            raise BenchError("give a ladder of --concurrency or of --request-rate, not both "
                             "(with --request-rate, one --concurrency caps the users in flight)")
        cap = opts.concurrency[0] if opts.concurrency else None
        rungs = []
        for rate in opts.request_rate:
            if rate <= 0:
                raise BenchError(f"--request-rate {rate:g}: must be > 0")
            if math.isinf(rate) and opts.num_requests is None:
                raise BenchError("--request-rate inf (all requests at once) needs --num-requests")
            warmup = opts.warmup if opts.warmup is not None else min(4, math.ceil(min(rate, 4)))
            expected = (opts.num_requests + warmup if opts.num_requests is not None
                        else math.ceil(rate * opts.duration_s) + warmup)
            users = max(1, min(cap or MAX_POISSON_USERS, expected))
            rungs.append(Rung(f"rate={rate:g}", cap, rate, users, warmup))
        return rungs
    concurrency = opts.concurrency or [1]
    if any(c < 1 for c in concurrency):
        raise BenchError("--concurrency must be >= 1")
    return [Rung(f"c={c}", c, None, c, opts.warmup if opts.warmup is not None else min(c, 4)) for c in concurrency]


def _items_per_rung(opts: HttpBenchOptions, rung: Rung) -> int:
    if opts.num_requests is not None:
        return opts.num_requests + rung.warmup
    if rung.request_rate:
        return min(math.ceil(rung.request_rate * opts.duration_s * 1.2) + rung.warmup + 8, 5 * DURATION_ITEMS)
    return DURATION_ITEMS


# -- running -------------------------------------------------------------------------------------

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

    counts = [_items_per_rung(opts, r) for r in rungs]
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
                outcome = _run_rung(i, rung, rung_items, opts, base, model, out_dir, progress, sampler, processes)
            except BenchError as e:
                if not result.runs:
                    raise
                result.notes.append(f"{rung.label} failed, rungs after it not run: {e}")
                break
            previous = (rung, outcome)
            run = _make_run(i, rung, outcome, describe(rung_items, base_desc), opts, base, model)
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
    return any(run.summary.extra.get("interrupted") for run in result.runs)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, transient=False)


def client_processes(users: int, asked: int | None, previous: tuple[Rung, RungOutcome] | None = None,
                     cores: int | None = None) -> int:
    """Locust worker processes for a rung of `users` (1: one local process); see the module docstring."""
    if asked:
        return max(1, min(asked, users))
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = [c["measured"]["busy"] for c in (previous[1].cpu if previous else [])
            if c.get("users") and c.get("measured")]
    if busy and previous[0].users:
        per_user = sum(busy) / previous[0].users  # cores per user at the previous rung
        wanted = math.ceil(per_user * users / TARGET_BUSY)
    else:
        wanted = math.ceil(users / USERS_PER_PROCESS)
    return max(1, min(wanted, users, max(1, cores - 1)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _locust_commands(rung: Rung, base: str, raw_dir: Path, i: int, processes: int) -> list[tuple[list[str], str]]:
    """(command, role) per Locust process: one local process, or a master and `processes` workers."""
    head = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", "--host", base]
    # -r users: every user starts at once (the locustfile's gate holds the measured requests until then).
    main = head + ["--headless", "-u", str(rung.users), "-r", str(rung.users), "--csv", str(raw_dir / f"locust-{i}"),
                   "--only-summary", "--exit-code-on-error", "0"]
    if processes == 1:
        return [(main, "local")]
    port = _free_port()
    master = main + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                     "--expect-workers", str(processes), "--expect-workers-max-wait", str(_WORKERS_WAIT_S)]
    workers = [(head + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                f"worker {k} {processes}") for k in range(processes)]
    return [(master, f"master {processes}")] + workers


def _run_rung(i: int, rung: Rung, items, opts: HttpBenchOptions, base: str, model: str, out_dir: Path,
              progress: Progress, sampler: GpuSampler, processes: int = 1) -> RungOutcome:
    raw_dir = out_dir / "raw"
    records_path = raw_dir / f"records-{i}.jsonl"
    records_path.write_text("")
    for old in [*raw_dir.glob(f"records-{i}.w*.jsonl"), *raw_dir.glob(f"cpu-{i}*.json")]:
        old.unlink()
    plan = {"endpoint": opts.endpoint, "model": model, "items": [it.to_json() for it in items],
            "num_requests": opts.num_requests, "duration_s": opts.duration_s, "warmup": rung.warmup,
            "request_rate": rung.request_rate, "seed": opts.seed + i, "records_path": str(records_path.resolve()),
            "cpu_path": str((raw_dir / f"cpu-{i}.json").resolve()), "origin": time.monotonic(),
            "timeout_s": opts.timeout_s, "ignore_eos": opts.ignore_eos, "temperature": opts.temperature}
    plan_path = raw_dir / f"plan-{i}.json"
    plan_path.write_text(json.dumps(plan))
    env = {**os.environ, PLAN_ENV: str(plan_path.resolve())}
    env.pop(API_KEY_ENV, None)
    if opts.api_key:
        env[API_KEY_ENV] = opts.api_key
    total = (opts.num_requests + rung.warmup) if opts.num_requests is not None else None
    how = f"{processes} Locust workers" if processes > 1 else "Locust"
    task = progress.add_task(rung.label, total=total or opts.duration_s, status=f"starting {how}")
    tail = _Tail(records_path if processes == 1 else [raw_dir / f"records-{i}.w{k}.jsonl" for k in range(processes)])
    log_path = raw_dir / f"locust-{i}.log"
    outcome = RungOutcome(raw=[], window_s=[round(sampler.now(), 3)], returncode=None, processes=processes)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for cmd, role in _locust_commands(rung, base, raw_dir, i, processes):
            kind, *rest = role.split()
            log = open(log_path if kind in ("local", "master") else raw_dir / f"locust-{i}.w{rest[0]}.log", "w")
            logs.append(log)
            # Own session: a Ctrl-C reaches this process only, which then stops Locust with SIGTERM (its
            # handler writes Locust's stats) and keeps the records written so far.
            procs.append(subprocess.Popen(cmd, env={**env, ROLE_ENV: role}, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        main = procs[0]
        started, last_record = time.monotonic(), time.monotonic()
        limit = (opts.duration_s + opts.timeout_s + _STALL_GRACE_S) if opts.duration_s is not None else None
        try:
            while main.poll() is None:
                time.sleep(0.2)
                if tail.poll():
                    last_record = time.monotonic()
                _advance(progress, task, tail, total, opts.duration_s, started)
                now = time.monotonic()
                stalled = now - last_record > opts.timeout_s + _STALL_GRACE_S
                # A worker that quit cleanly was told to by the master, which ends in a moment too.
                dead = next((k for k, p in enumerate(procs[1:]) if p.poll() not in (None, 0)), None)
                if stalled or (limit and now - started > limit) or dead is not None:
                    outcome.stalled = True
                    if dead is not None:
                        why = (f"Locust worker {dead} ended early (exit {procs[dead + 1].returncode}): "
                               f"{_last_line(raw_dir / f'locust-{i}.w{dead}.log')}")
                    elif stalled:
                        why = f"no request finished for {now - last_record:.0f} s"
                    else:
                        why = f"still running {now - started:.0f} s after the start of a {opts.duration_s:g} s run"
                    outcome.notes.append(f"{rung.label}: {why}; stopped Locust (partial results)")
                    break
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            _stop(main)  # the master first: it tells its workers to quit (they write their records and CPU)
            for p in procs[1:]:
                _stop(p, grace_s=5.0)
        outcome.returncode = main.returncode
    finally:
        for log in logs:
            log.close()
    tail.poll()
    _advance(progress, task, tail, total, opts.duration_s, started)
    outcome.raw = tail.records
    if processes > 1:  # one records file per rung, as with one process
        records_path.write_text("".join(json.dumps(r) + "\n" for r in sorted(tail.records, key=lambda r: r["index"])))
        for path in raw_dir.glob(f"records-{i}.w*.jsonl"):
            path.unlink()
    outcome.cpu = _read_cpu(raw_dir, i)
    outcome.window_s.append(round(sampler.now(), 3))
    expected = total
    if not outcome.raw and not outcome.interrupted and not outcome.stalled:
        raise BenchError(f"Locust ended (exit {outcome.returncode}) without a single request: "
                         f"{_last_line(log_path)} (log: {log_path})")
    if (expected is not None and len(outcome.raw) < expected and not outcome.interrupted
            and not outcome.stalled):
        outcome.notes.append(f"{rung.label}: Locust ended after {len(outcome.raw)} of {expected} requests "
                             f"(exit {outcome.returncode}): {_last_line(log_path)}")
    return outcome


def _read_cpu(raw_dir: Path, i: int) -> list[dict]:
    out = []
    for path in sorted(raw_dir.glob(f"cpu-{i}.json")) + sorted(raw_dir.glob(f"cpu-{i}.*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _advance(progress: Progress, task, tail: "_Tail", total: int | None, duration_s: float | None,
             started: float) -> None:
    """Requests done of warm-up + N, or seconds of the duration; errors so far beside the bar."""
    completed = len(tail.records) if total is not None else min(time.monotonic() - started, duration_s or 0)
    progress.update(task, completed=completed, status=f"{tail.errors} errors" if tail.errors else "")


def _stop(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """After grace_s to end by itself, SIGTERM (Locust writes its stats and exits), then SIGKILL if it lingers."""
    if grace_s:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        proc.kill()
        proc.wait(timeout=5)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


class _Tail:
    """Follows JSON-lines files that other processes append to; keeps the complete lines parsed."""

    def __init__(self, paths: Path | list[Path]):
        self.paths = [paths] if isinstance(paths, Path) else list(paths)
        self.offsets, self._partial = [0] * len(self.paths), [b""] * len(self.paths)
        self.records, self.errors = [], 0

    def poll(self) -> int:
        return sum(self._poll(k) for k in range(len(self.paths)))

    def _poll(self, k: int) -> int:
        try:
            with open(self.paths[k], "rb") as f:
                f.seek(self.offsets[k])
                data = f.read()
        except OSError:
            return 0
        self.offsets[k] += len(data)
        data = self._partial[k] + data
        *lines, self._partial[k] = data.split(b"\n")
        new = 0
        for line in lines:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                self.records.append(record)
                self.errors += bool(record.get("error"))
                new += 1
        return new


# -- results -------------------------------------------------------------------------------------

def to_records(raw: list[dict]) -> list[HttpRequestRecord]:
    """Measured (non-warm-up) requests in index order; start times from the first measured start."""
    measured = sorted((r for r in raw if not r.get("warmup") and r.get("start_s") is not None),
                      key=lambda r: r["index"])
    if not measured:
        return []
    t0 = min(r["start_s"] for r in measured)
    first = measured[0]["index"]
    out = []
    for r in measured:
        workload = r.get("workload_prompt_tokens")
        prompt = r.get("prompt_tokens")
        out.append(HttpRequestRecord(
            index=r["index"] - first, start_s=r["start_s"] - t0,
            prompt_tokens=int(prompt if prompt is not None else workload or 0),
            output_tokens=int(r.get("output_tokens") or 0), ttft_s=r.get("ttft_s"), e2e_s=r.get("e2e_s"),
            itl_s=[g / 1e6 for g in r["itl_us"]] if "itl_us" in r else list(r.get("itl_s") or []), error=r.get("error"),
            scheduled_s=(r["scheduled_s"] - t0) if r.get("scheduled_s") is not None else None,
            status=r.get("status"), usage=bool(r.get("usage")), finish_reason=r.get("finish_reason"),
            user=r.get("user"), workload_prompt_tokens=workload, chunks=r.get("chunks")))
    return out


def _window(records: list[HttpRequestRecord]) -> float:
    ends = [r.start_s + r.e2e_s for r in records if r.e2e_s is not None]
    return max(ends) if ends else 0.0


def steady_window(records: list[HttpRequestRecord], users: int) -> tuple[float, float] | None:
    """(start, end) while every user of a closed loop was busy: from the last user's first measured send
    to the first user's last measured finish; None when there is no such span (a user sent no measured
    request, or the records carry no user ids)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in records:
        if r.user is None or r.e2e_s is None:
            return None
        first[r.user] = min(first.get(r.user, math.inf), r.start_s)
        last[r.user] = max(last.get(r.user, -math.inf), r.start_s + r.e2e_s)
    if len(first) < users or not first:
        return None
    start, end = max(first.values()), min(last.values())
    return (start, end) if end > start else None


def steady_rates(records: list[HttpRequestRecord], start: float, end: float, slo: dict | None) -> dict:
    """Throughputs over [start, end]: output tokens by chunk arrival, requests (completed ones, as in
    summarize) and their prompt tokens by the fraction of each request's time inside the window."""
    span = end - start
    requests = prompt = output = good = 0.0
    for r in records:
        if r.error or r.e2e_s is None:
            continue
        inside = max(0.0, min(end, r.start_s + r.e2e_s) - max(start, r.start_s))
        frac = inside / r.e2e_s if r.e2e_s > 0 else float(start <= r.start_s <= end)
        requests += frac
        prompt += frac * r.prompt_tokens
        times = r.chunk_times()
        if times:  # usage may count more tokens than chunks (several per chunk): scale
            output += sum(start <= t <= end for t in times) * r.output_tokens / len(times)
        if slo and goodput([r], slo, 1.0) == 1.0:
            good += frac
    return {"duration_s": span, "request_throughput": requests / span, "input_throughput": prompt / span,
            "output_throughput": output / span, "total_token_throughput": (prompt + output) / span,
            "goodput": good / span if slo else None}


def client_cpu(outcome: RungOutcome) -> tuple[list[dict], bool]:
    """Per Locust process: role, users, CPU seconds and fraction of a core over the measured phase; saturated?"""
    rows = []
    for c in outcome.cpu:
        phase = c.get("measured") or c.get("whole") or {}
        runnable = phase.get("runnable")
        rows.append({"role": c.get("role"), "users": c.get("users"), "cpu_s": round(phase.get("cpu_s", 0.0), 3),
                     "wall_s": round(phase.get("to_s", 0.0) - phase.get("from_s", 0.0), 3),
                     "busy": round(phase.get("busy", 0.0), 3),
                     "runnable": round(runnable, 3) if runnable is not None else None})
    saturated = any(r["users"] and max(r["busy"], r["runnable"] or 0.0) > SATURATED_BUSY for r in rows)
    return rows, saturated


def _make_run(i: int, rung: Rung, outcome: RungOutcome, workload: dict, opts: HttpBenchOptions, base: str,
              model: str) -> Run:
    records = to_records(outcome.raw)
    extra: dict = {"warmup_requests": sum(1 for r in outcome.raw if r.get("warmup"))}
    errors = Counter(_error_kind(r.error) for r in records if r.error)
    if errors:
        extra["errors"] = dict(errors.most_common(5))
        outcome.notes.append(_explain_errors(rung.label, errors, len(records), opts.timeout_s))
    if records and not all(r.usage for r in records if not r.error):
        extra["usage_missing"] = sum(1 for r in records if not r.error and not r.usage)
    counted = [r for r in records if not r.error and r.workload_prompt_tokens is not None]
    if counted:
        extra["prompt_tokens_mean"] = sum(r.prompt_tokens for r in counted) / len(counted)
        extra["workload_prompt_tokens_mean"] = sum(r.workload_prompt_tokens for r in counted) / len(counted)
    lags = [r.start_s - r.scheduled_s for r in records if r.scheduled_s is not None]
    if lags:
        extra["arrival_lag_max_s"] = max(lags)
        if max(lags) > _LATE_ARRIVAL_S:
            outcome.notes.append(f"{rung.label}: arrivals were sent up to {max(lags):.3f} s late (every user busy); "
                                 "raise --concurrency or lower --request-rate for a true Poisson load")
    if outcome.interrupted:
        extra["interrupted"] = True
    extra["client_processes"] = outcome.processes
    extra["client_cpu"], extra["client_saturated"] = client_cpu(outcome)
    whole = _window(records)
    summary = summarize(records, whole, opts.goodput or None, extra, slo_limits=opts.slo or None)
    steady = steady_window(records, rung.users) if rung.request_rate is None else None
    if steady:
        update = steady_rates(records, *steady, opts.goodput or None)
        update["extra"] = {**summary.extra, "throughput_window_s": [round(steady[0], 6), round(steady[1], 6)],
                           "whole_run": {"duration_s": whole, "request_throughput": summary.request_throughput,
                                         "output_throughput": summary.output_throughput}}
        summary = summary.model_copy(update=update)
    elif rung.request_rate is None and records:
        outcome.notes.append(f"{rung.label}: no steady window (every user busy) to measure throughput over "
                             f"({len(records)} measured requests at {rung.users} users): throughput is over the "
                             "whole run, ramp and drain included; ask for more requests")
    if extra["client_saturated"]:
        hot = max((c for c in extra["client_cpu"] if c["users"]), key=lambda c: max(c["busy"], c["runnable"] or 0))
        runnable = f", runnable {hot['runnable']:.0%} of the time" if hot["runnable"] is not None else ""
        outcome.notes.append(f"{rung.label}: {SATURATED_WORDS} ({hot['role']}: {hot['busy']:.0%} of a core"
                             f"{runnable}, {hot['users']} users, over the measured phase): latencies include its "
                             f"own queueing and throughput may be its limit; rerun with --client-processes "
                             f"{2 * outcome.processes} or more (this rung had {outcome.processes}) or on a less "
                             "loaded machine")
    load = {"concurrency": rung.concurrency if rung.request_rate is None else None,
            "request_rate": "inf" if rung.request_rate and math.isinf(rung.request_rate) else rung.request_rate,
            "max_concurrency": rung.concurrency if rung.request_rate else None,
            "users": rung.users, "num_requests": opts.num_requests, "duration": opts.duration_s,
            "warmup": rung.warmup, "arrivals": "poisson" if rung.request_rate else "closed-loop",
            "client_processes": outcome.processes}
    config = {"url": base, "endpoint": "/v1/chat/completions" if opts.endpoint == "chat" else "/v1/completions",
              "stream": True, "include_usage": True, "ignore_eos": opts.ignore_eos, "temperature": opts.temperature,
              "timeout_s": opts.timeout_s,
              "seed": opts.seed + i, "raw_records": f"raw/records-{i}.jsonl", "locust_stats": f"raw/locust-{i}_stats.csv",
              "locust_exit_code": outcome.returncode}
    run = Run(label=rung.label, target="http", model=model, workload=workload, load=load, config=config,
              summary=summary, window_s=outcome.window_s)
    return run.with_records(records)


def _error_kind(error: str) -> str:
    """Errors grouped by their start, up to the first colon (the kinds the locustfile docstring lists)."""
    head = error.split(":", 1)[0]
    return head if len(head) <= 60 else head[:57] + "..."


# What each kind of failure says about the server, for the run's notes ({t}: --timeout).
_ERROR_WORDS = {
    "no response before the timeout": "the server accepted the connection but sent no response headers within {t} s",
    "no content before the timeout": "the server kept the stream open without a single token for {t} s "
                                     "(keep-alive comments or empty events only)",
    "stream unfinished at the timeout": "the server was still streaming at the {t} s timeout "
                                        "(raise --timeout if its answers take that long)",
    "not an SSE stream": "the server answered 200 with a body that is not an SSE stream "
                         "(did it ignore \"stream\": true?)",
    "malformed event": "the server sent data: events that are not JSON or not OpenAI chunks",
    "error event in stream": "the server reported errors inside the stream",
    "stream broken": "the connection broke in the middle of the stream",
    "stream ended before [DONE]": "the server ended streams without data: [DONE]",
    "no content": "the server finished streams without a single token",
    "connection failed": "no connection to the server",
    "client error": "the bench client failed (a bug in opsctl: see raw/records-*.jsonl)",
}


def _explain_errors(label: str, errors: Counter, total: int, timeout_s: float) -> str:
    """One note: how many requests failed and, per kind, what the server did, in words."""
    parts = []
    for kind, n in errors.most_common():
        if kind in _ERROR_WORDS:
            words = _ERROR_WORDS[kind].format(t=f"{timeout_s:g}")
        else:
            words = f"the server answered {kind}" if kind.startswith("HTTP ") else kind
        parts.append(f"{words} ({kind} x{n})")
    return f"{label}: {sum(errors.values())} of {total} requests failed: " + "; ".join(parts)


def report_outcome(result: BenchResult, out_dir: Path, console: Console, *, render: bool = True) -> int:
    """Print the table, say where the files are, render the HTML report; the exit code for the CLI."""
    print_runs(result, console)
    for note in result.notes:
        console.print(f"note: {escape(note)}")  # notes quote servers: no rich markup in them
    failed = sum(r.summary.num_errors for r in result.runs)
    total = sum(r.summary.num_requests for r in result.runs)
    if failed:
        kinds = Counter()
        for r in result.runs:
            kinds.update(r.summary.extra.get("errors", {}))
        shown = escape(", ".join(f"{k} x{n}" for k, n in kinds.most_common(3)))
        console.print(f"[yellow]warning: {failed} of {total} requests failed ({shown}); partial results kept[/]")
    console.print(f"wrote {out_dir / 'result.json'}")
    if render:
        write_html_report(out_dir, console)
    return 1 if failed == total else 0  # nothing succeeded (or nothing was measured at all)
