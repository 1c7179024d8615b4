"""How a result's figures read, in words, for the console table and the HTML page alike.

- `ratio_words`: a speed ratio with its direction spelled out ("12.9x faster", "1.10x slower"),
  never a bare quotient that reads "0.1x" where the run was 12.9x faster;
- `workload_of` / `group_of`: what a run measures (ttft, decode, throughput, shared-prefix, an HTTP
  ladder, HTTP against offline), so charts only share an axis within one workload;
- `run_headline` / `result_headline`: the one figure the workload is about (TTFT for a ttft run,
  output tok/s for throughput, the prefill speed-up for shared-prefix, the ratio for HTTP vs offline);
- `run_warnings`: what makes a figure not the server's (a saturated client, a server that fell
  behind its asked rate, an SLO missed);
- `extra_items`: a run's extra figures as (label, value) pairs instead of a dict repr.
"""
from __future__ import annotations

import json

from .schema import BenchResult, Run, RunSummary, SloCheck

# A server completing fewer than this share of the requests sent to it fell behind them.
SATURATION_FRACTION = 0.9
_SAME = 0.005  # ratios within 0.5% of 1 read "as fast as"


# ---------------------------------------------------------------- numbers

def ms(seconds: float | None) -> str:
    """Seconds as milliseconds, with as many digits as make sense: 0.85, 22.8, 1,265."""
    if seconds is None:
        return "–"
    v = seconds * 1000
    return f"{v:,.2f}" if v < 10 else f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def rate(value: float) -> str:
    """Tokens or requests per second: 13,588 / 180.8 / 0.42."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}" if value >= 1 else f"{value:,.2f}"


def times(ratio: float) -> str:
    """A multiple: 12.9x, 1.10x (two decimals below 2, where one would round 1.06 to 1.1)."""
    return f"{ratio:,.1f}x" if ratio >= 2 else f"{ratio:.2f}x"


def ratio_words(subject: float, reference: float, *, lower_is_better: bool = False,
                faster: str = "faster", slower: str = "slower") -> str:
    """How `subject` compares with `reference`, direction explicit: "12.9x faster", "1.10x slower".

    Speeds (tok/s) by default; `lower_is_better` for times (seconds, latency), where half the time
    is "2.0x faster". A reader never has to know which way round a quotient was taken.
    """
    if not subject or not reference or subject < 0 or reference < 0:
        return "not comparable"
    gain = reference / subject if lower_is_better else subject / reference
    if abs(gain - 1) < _SAME:
        return "as fast as" if faster == "faster" else "the same as"
    return f"{times(gain)} {faster}" if gain > 1 else f"{times(1 / gain)} {slower}"


# ---------------------------------------------------------------- what a run measures

def workload_of(result: BenchResult, run: Run) -> str:
    """ttft | shared-prefix | decode | throughput | http | http-vs-offline | the result's kind."""
    if result.kind == "http_vs_offline":
        return "http-vs-offline"
    if result.kind == "http" or run.target == "http":
        return "http"
    if result.kind != "offline":
        return result.kind
    mode = run.workload.get("mode")
    if mode in ("ttft", "shared-prefix"):
        return mode
    if run.workload.get("num_requests") == 1:  # one request: a decode-speed run (bandwidth-bound)
        return "decode"
    return "throughput"


def group_of(result: BenchResult, run: Run) -> tuple[str, str]:
    """(key, title) of the workload a run belongs to: runs of one key are comparable on one axis.

    The key holds what changes the figures: the kind of run, the workload's name and its prompt and
    output lengths (and, offline, the request count); the model and the card may differ within a
    group (that is what comparing results is for).
    """
    w = run.workload
    kind = workload_of(result, run)
    if kind == "http-vs-offline":
        shape = (w.get("input_len"), w.get("output_len"), run.load.get("concurrency"))
        title = (f"HTTP against offline: {w.get('input_len')} prompt / {w.get('output_len')} output tokens, "
                 f"{run.load.get('concurrency')} streams")
    elif kind == "http":
        dataset = w.get("dataset", w.get("name", "?"))
        shape = (dataset, _span(w.get("input_len")), _span(w.get("output_len")))
        lens = ", ".join(x for x in (_lens("prompt", w.get("input_len")), _lens("output", w.get("output_len"))) if x)
        title = f"HTTP load, {dataset} prompts" + (f" ({lens})" if lens else "")
    elif result.kind == "offline":
        shape = (w.get("name"), _span(w.get("input_len")), _span(w.get("output_len")), w.get("num_requests"),
                 w.get("shared_prefix_len"))
        title = f"Offline {offline_workload_words(w)}"
    else:
        shape = (w.get("name"),)
        title = f"{result.kind} {w.get('name', '')}".strip()
    return json.dumps([kind, *shape], default=str), title


def offline_workload_words(w: dict) -> str:
    """'throughput: 256 requests, 100-1024 prompt tokens, 512 output tokens' from a workload's description."""
    prefix = w.get("shared_prefix_len")
    own = "own prompt" if prefix else "prompt"
    lens = ", ".join(x for x in (_lens(own, w.get("input_len")), _lens("output", w.get("output_len"))) if x)
    n = w.get("num_requests", "?")
    return (f"{w.get('name', '?')}: {n} request{'' if n == 1 else 's'}"
            + (f" sharing a {prefix}-token prefix" if prefix else "") + (f", {lens}" if lens else ""))


def _span(value) -> str | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}" if value[0] == value[1] else f"{value[0]}-{value[1]}"
    return None if value is None else str(value)


def _lens(what: str, value) -> str:
    span = _span(value)
    return f"{span} {what} token{'' if span == '1' else 's'}" if span else ""


# ---------------------------------------------------------------- headlines

def _engine_reference(result: BenchResult, run: Run) -> Run | None:
    """The engine run a peer in the same result is compared with (the first engine run)."""
    if run.target == "engine":
        return None
    return next((r for r in result.runs if r.target == "engine"), None)


def headline_metric(kind: str) -> tuple[str, str, bool]:
    """(figure, unit, lower_is_better) of the figure a workload is about, as `headline_value` gives it."""
    if kind == "ttft":
        return "TTFT", "ms", True
    if kind == "shared-prefix":
        return "prefill time", "s", True
    return "output throughput", "tok/s", False


def headline_value(result: BenchResult, run: Run) -> float | None:
    """The number behind the headline of `run`: TTFT ms, prefill seconds, or output tok/s."""
    s, extra, kind = run.summary, run.summary.extra, workload_of(result, run)
    if kind == "ttft":
        if isinstance(extra.get("ttft_ms_median"), (int, float)):
            return float(extra["ttft_ms_median"])
        return s.ttft.p50 * 1000 if s.ttft else None
    if kind == "shared-prefix":
        value = extra.get("prefill_seconds", s.duration_s)
        return float(value) if isinstance(value, (int, float)) else None
    return s.output_throughput


def comparison(result: BenchResult, run: Run) -> str | None:
    """How this run compares with its reference in the same result, direction explicit: a peer with
    the engine ("engine 4.5x faster"), prefix caching on with off ("12.9x faster"), HTTP with the
    offline engine ("1.10x slower than offline"). None for a run with nothing to compare against."""
    s, extra, kind = run.summary, run.summary.extra, workload_of(result, run)
    if kind == "shared-prefix":
        speedup = extra.get("speedup_vs_off")
        return f"{times(speedup)} faster with caching" if isinstance(speedup, (int, float)) and speedup > 0 else None
    if kind == "http-vs-offline":
        ratio = extra.get("ratio_http_over_offline")
        return f"{ratio_words(ratio, 1.0)} than offline" if isinstance(ratio, (int, float)) and ratio > 0 else None
    engine = _engine_reference(result, run)
    if engine is not None and engine.summary.output_throughput > 0 and s.output_throughput > 0:
        return f"engine {ratio_words(engine.summary.output_throughput, s.output_throughput)}"
    return None


def run_headline(result: BenchResult, run: Run) -> str:
    """The figure this run's workload is about, in words."""
    s, extra, kind = run.summary, run.summary.extra, workload_of(result, run)
    value = headline_value(result, run)
    if kind == "ttft":
        text = f"TTFT {ms(value / 1000 if value is not None else None)} ms"
        if isinstance(extra.get("fraction_of_tflops"), (int, float)):
            text += f" ({extra['fraction_of_tflops']:.0%} of the card's TFLOP/s)"
        return text
    if kind == "shared-prefix":
        seconds = f"{value:.3g} s" if value is not None else "–"
        speedup = extra.get("speedup_vs_off")
        if isinstance(speedup, (int, float)):
            text = f"prefill {times(speedup)} faster with prefix caching ({seconds})"
            if extra.get("outputs_identical") is True:
                text += ", outputs identical"
            elif extra.get("outputs_identical") is False:
                n = extra.get("requests_with_different_outputs")
                text += f", {n if n is not None else 'some'} of {s.num_requests} outputs differ"
            return text
        return f"prefill {seconds} {'with' if extra.get('prefix_caching') else 'without'} prefix caching"
    text = f"{rate(s.output_throughput)} output tok/s"
    if kind == "decode" and isinstance(extra.get("fraction_of_bandwidth"), (int, float)):
        text += f" ({extra['fraction_of_bandwidth']:.0%} of the card's bandwidth)"
    if kind == "http":
        if s.ttft is not None:
            text += f", TTFT p99 {ms(s.ttft.p99)} ms"
        if s.goodput is not None:
            text += f", goodput {rate(s.goodput)} req/s"
    versus = comparison(result, run)
    if versus:
        text += f", {versus}" if kind == "http-vs-offline" else f" ({versus})"
    return text


def result_headline(result: BenchResult) -> str:
    """One line for the whole result: its workload's figure for the run that matters."""
    runs = result.runs
    if not runs:
        return "–"
    kinds = {workload_of(result, r) for r in runs}
    if kinds == {"http-vs-offline"}:
        return _http_vs_offline_headline(runs)
    if kinds == {"shared-prefix"}:
        cached = next((r for r in runs if isinstance(r.summary.extra.get("speedup_vs_off"), (int, float))), runs[-1])
        return run_headline(result, cached)
    if kinds == {"http"}:
        best = max(runs, key=lambda r: r.summary.output_throughput)
        text = f"peak {rate(best.summary.output_throughput)} output tok/s at {best.label}"
        checked = [r for r in runs if r.summary.slo_checks]
        if checked:
            failed = [r.label for r in checked if any(not c.passed for c in r.summary.slo_checks)]
            text += (f"; SLO failed at {', '.join(failed)}" if failed
                     else f"; SLO met at {'every rung' if len(checked) > 1 else checked[0].label}")
        return text
    engine = [r for r in runs if r.target == "engine"] or runs
    if kinds <= {"ttft"}:
        return run_headline(result, engine[0])
    best = max(engine, key=lambda r: r.summary.output_throughput)
    text = run_headline(result, best)
    peers = [r for r in runs if r.target != "engine" and r.summary.output_throughput > 0]
    if peers and best.target == "engine":
        fastest = max(peers, key=lambda r: r.summary.output_throughput)
        text += (f"; {ratio_words(best.summary.output_throughput, fastest.summary.output_throughput)} "
                 f"than {fastest.label}")
    return text


def _http_vs_offline_headline(runs: list[Run]) -> str:
    http = next((r for r in runs if r.target == "http"), None)
    if http is None:
        return "–"
    extra = http.summary.extra
    ratio, goal = extra.get("ratio_http_over_offline"), extra.get("goal")
    if not isinstance(ratio, (int, float)) or ratio <= 0:
        return f"HTTP {rate(http.summary.output_throughput)} output tok/s"
    text = f"HTTP {ratio_words(ratio, 1.0)} than the offline engine ({ratio:.0%} of its output tok/s"
    if isinstance(goal, (int, float)):
        text += f"; goal at least {goal:.0%}: {'met' if ratio >= goal else 'missed'}"
    return text + ")"


# ---------------------------------------------------------------- SLOs and warnings

def slo_check_words(check: SloCheck) -> str:
    """'TTFT p99 512.3 ms > 500 ms': the run's statistic against its limit (the verdict is the caller's)."""
    what = f"{check.metric.upper()} {check.stat}"
    if check.measured_ms is None:
        return f"{what} not measured (no samples), limit {check.limit_ms:g} ms"
    sign = "≤" if check.passed else ">"
    return f"{what} {ms(check.measured_ms / 1000)} ms {sign} {check.limit_ms:g} ms"


def goodput_words(summary: RunSummary) -> str:
    """'TTFT ≤ 500 ms and TPOT ≤ 50 ms' for the per-request limits behind goodput."""
    limits = summary.goodput_limits or {}
    return " and ".join(f"{name.split('_')[0].upper()} ≤ {limit:g} ms" for name, limit in limits.items())


def asked_rate(run: Run) -> float | None:
    value = run.load.get("request_rate")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def rate_words(run: Run) -> str | None:
    """'asked 16 req/s, sent 15.8, completed 10.1' for a run at an asked request rate."""
    asked, s = asked_rate(run), run.summary
    if asked is None:
        return None
    parts = [f"asked {asked:g} req/s"]
    if s.sent_rate is not None:
        parts.append(f"sent {rate(s.sent_rate)}")
    if s.completion_rate is not None:
        parts.append(f"completed {rate(s.completion_rate)}")
    return ", ".join(parts)


def run_warnings(run: Run, *, slo: bool = True) -> list[str]:
    """What makes this run's figures something other than the server's plain capacity, in words
    (and, with `slo`, each SLO the run failed)."""
    s, out = run.summary, []
    if s.extra.get("client_saturated"):
        cpu = s.extra.get("client_cpu")
        cpu_text = f" ({client_cpu_words(cpu, busiest=True)})" if cpu is not None else ""
        out.append(f"{run.label}: the load generator's CPU was saturated{cpu_text}: these figures are the "
                   f"client's limit, not the server's (rerun with more --client-processes or from a bigger "
                   f"client machine)")
    asked = asked_rate(run)
    if asked is not None and s.sent_rate and s.completion_rate is not None and s.num_completed >= 2:
        # Against what was sent, not the asked rate: a Poisson draw of a few hundred arrivals is
        # itself 5-10% off its mean, while a server that keeps up completes as fast as it is sent to.
        if s.completion_rate < SATURATION_FRACTION * s.sent_rate:
            out.append(f"{run.label}: the server completed {rate(s.completion_rate)} req/s of the "
                       f"{rate(s.sent_rate)} sent (asked {asked:g}): it was saturated, so its latencies "
                       f"include time queued")
    for check in (s.slo_checks or ()) if slo else ():
        if not check.passed:
            out.append(f"{run.label}: SLO {check.name} failed: {slo_check_words(check)}")
    return out


def client_cpu_words(value, *, busiest: bool = False) -> str:
    """The load generator's CPU (extra["client_cpu"]: one {role, users, busy, ...} per Locust process)
    in words: '78% of a core (worker, 64 users)', every process or only the busiest."""
    rows = [c for c in value if isinstance(c, dict) and isinstance(c.get("busy"), (int, float))] \
        if isinstance(value, list) else []
    if not rows:
        return _plain(value)
    if busiest:
        rows = [max(rows, key=lambda c: c["busy"])]
        hot = rows[0]
        return (f"busiest process: {hot.get('role', 'process')}, {hot.get('users', '?')} users, "
                f"{hot['busy']:.0%} of a core")
    return ", ".join(f"{c.get('role', 'process')} {c['busy']:.0%} of a core"
                     + (f" for {c['users']} users" if c.get("users") else "") for c in rows)


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return str(value)


# ---------------------------------------------------------------- extra figures

# Words for the extra figures runs record (roofline fractions, engine counters, error counts).
EXTRA_LABELS = {
    "decode_tokens_per_s": "decode tok/s", "decode_bytes_per_step_gb": "GB read per decode step",
    "achieved_gbs": "achieved GB/s", "bandwidth_limit_gbs": "card bandwidth GB/s",
    "fraction_of_bandwidth": "of the card's bandwidth", "limit_tokens_per_s": "bandwidth-bound limit tok/s",
    "limit_source": "card limits", "num_preemptions": "preemptions", "gemm_tflops": "GEMM TFLOP/s",
    "ttft_ms_median": "TTFT median ms", "repeats": "repeats", "prefill_tflop": "prefill TFLOP",
    "achieved_tflops": "achieved TFLOP/s", "tflops_limit": "card TFLOP/s",
    "fraction_of_tflops": "of the card's TFLOP/s", "prefix_caching": "prefix caching",
    "prefill_seconds": "prefill s", "prefix_cache_hit_rate": "prefix cache hit rate",
    "speedup_vs_off": "prefill speed-up with caching", "outputs_identical": "outputs identical to caching off",
    "requests_with_different_outputs": "requests with different outputs", "warmup_requests": "warm-up requests",
    "errors": "errors by kind", "usage_missing": "answers without usage",
    "arrival_lag_max_s": "latest arrival lag s", "interrupted": "interrupted", "client_cpu": "client CPU",
    "client_saturated": "client CPU saturated", "client_processes": "client processes",
    "ratio_http_over_offline": "HTTP / offline output tok/s",
    "ratio_http_over_plain": "HTTP / plain engine output tok/s", "goal": "goal (HTTP / offline)",
    "whole_run": "whole run, ramp and drain included", "throughput_window_s": "throughput window s",
    "prompt_tokens_mean": "prompt tokens (server's count), mean",
    "workload_prompt_tokens_mean": "prompt tokens (workload's count), mean",
}


def extra_value(key: str, value) -> str:
    """One extra figure as text: fractions as percentages, speed-ups as Nx, dicts as 'k n, k n'."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.startswith("speedup"):
        return times(value) if isinstance(value, (int, float)) else str(value)
    if key.startswith("ratio_") and isinstance(value, (int, float)) and value > 0:
        return f"{value:.2f} ({ratio_words(value, 1.0)})"
    if key == "client_cpu":
        return client_cpu_words(value)
    if isinstance(value, float):
        if key.startswith("fraction") or key.endswith("_rate") or key == "goal":
            return f"{value:.1%}"
        if value.is_integer() or abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, (dict, list, tuple)):
        return _plain(value)
    return str(value)


def extra_items(extra: dict) -> list[tuple[str, str]]:
    """(label, value) of every extra figure, in the order recorded."""
    return [(EXTRA_LABELS.get(k, k.replace("_", " ")), extra_value(k, v)) for k, v in extra.items()]
