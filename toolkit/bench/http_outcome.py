"""What a rung of `opsctl bench --url` measured, as a Run with notes, and the run's outcome on the console.

make_run summarizes a rung's measured records (over the steady window of a closed loop,
toolkit.bench.http_records) and says in notes what a reader must know: failed requests by kind and
in words, Poisson arrivals sent late (every user busy), no steady window, first sends that went out
together, and a saturated client.

Client saturation. Every result records each Locust process's CPU over the measured phase in
summary.extra["client_cpu"] (busy: user+sys seconds over wall seconds; runnable: the share of the
time its loop was on a CPU or waiting for one); above SATURATED_BUSY in a process that has users the
run is flagged (extra["client_saturated"], a note, a console warning).

Failures keep what was measured: errored requests are counted and kept in the table, an interrupted
run (Ctrl-C) or a Locust process that dies writes the records it has, and the run says so in notes.
Every request has one deadline, --timeout from its start to the end of its stream (the locustfile
enforces it), so whatever a server does (no headers, keep-alive comments forever, a body that is not
SSE, JSON that is not JSON, no [DONE], only 500s) each request ends by then as a record; the failures
are counted by kind in result.json (summary.extra.errors) and a note says in words what the server
did (_ERROR_WORDS, for the kinds toolkit.bench.locust_sse lists).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..report.schema import BenchResult, Run
from .http_plan import HttpBenchOptions, Rung
from .http_records import steady_rates, steady_window, to_records, whole_span
from .locust_process import RungOutcome
from .metrics import summarize
from .report_table import print_runs, write_html_report

SATURATED_BUSY = 0.9  # a process above this fraction of a core over the measured phase: the client set the pace
SATURATED_WORDS = "the load generator was saturated"
_LATE_ARRIVAL_S = 0.05  # a Poisson arrival sent later than this says the users were all busy


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


def make_run(i: int, rung: Rung, outcome: RungOutcome, workload: dict, opts: HttpBenchOptions, base: str,
             model: str) -> Run:
    """Rung i's Run: its measured records summarized (over the steady window of a closed loop), the load
    and config it ran with, and notes appended to outcome.notes for what went wrong or may mislead."""
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
    if rung.request_rate is None and rung.users > 1 and records and not any(
            r.get("warmup") and not r.get("error") for r in outcome.raw):
        # The locustfile spreads the first sends over a successful warm-up's time; without one it cannot.
        why = "succeeded" if rung.warmup else "ran (--warmup 0)"
        outcome.notes.append(f"{rung.label}: no warm-up {why} to time one request by, so the users' first requests "
                             "went out together: requests that all take the same time then keep the users in "
                             "lockstep, and TTFT includes the server taking each herd at once")
    if outcome.interrupted:
        extra["interrupted"] = True
    extra["client_processes"] = outcome.processes
    extra["client_cpu"], extra["client_saturated"] = client_cpu(outcome)
    whole = whole_span(records)
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
              "timeout_s": opts.timeout_s, "think_time_ms": opts.think_time_ms,
              "seed": opts.seed + i, "raw_records": f"raw/records-{i}.jsonl", "locust_stats": f"raw/locust-{i}_stats.csv",
              "locust_exit_code": outcome.returncode}
    run = Run(label=rung.label, target="http", model=model, workload=workload, load=load, config=config,
              summary=summary, window_s=outcome.window_s)
    return run.with_records(records)


def _error_kind(error: str) -> str:
    """Errors grouped by their start, up to the first colon (the kinds toolkit.bench.locust_sse lists)."""
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
