"""Latency statistics and throughput from raw per-request samples (never from rounded aggregates),
and the two kinds of limits a run can be held to.

Definitions follow vLLM's benchmarks: TTFT = time to the first streamed token; ITL = gap between
consecutive streamed chunks; TPOT = (E2E - TTFT) / (output tokens - 1); goodput = requests per
second that meet every per-request limit.

Two kinds of limits, kept apart:
  --slo ttft_p99_ms=500,tpot_p99_ms=50   run-level: a statistic of the whole run (its p99 TTFT, its
                                         mean TPOT) against a limit; the run passes or fails
                                         (`parse_slo`, `check_slo` -> RunSummary.slo_checks).
  --goodput ttft:500,tpot:50             per request, as vLLM's --goodput: a request is good when its
                                         own TTFT, TPOT and E2E each meet their limit; goodput is good
                                         requests per second (`parse_goodput`, `goodput`).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..report.schema import LatencyStats, RunSummary, SloCheck


@dataclass
class RequestRecord:
    index: int
    start_s: float  # relative to the start of the run
    prompt_tokens: int
    output_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.error or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def row(self) -> dict:
        """A flat row for the per-request table."""
        return {"index": self.index, "start_s": self.start_s, "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
                "e2e_s": self.e2e_s, "itl_mean_s": float(np.mean(self.itl_s)) if self.itl_s else None,
                "itl_max_s": max(self.itl_s) if self.itl_s else None, "error": self.error}


def latency_stats(samples) -> LatencyStats | None:
    values = np.asarray([s for s in samples if s is not None], dtype=np.float64)
    if values.size == 0:
        return None
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return LatencyStats(count=int(values.size), mean=float(values.mean()), p50=float(p50), p90=float(p90),
                        p95=float(p95), p99=float(p99), max=float(values.max()))


# ---------------------------------------------------------------- limits: names and parsing

# Run-level SLO names are METRIC_STAT_ms: a statistic the run's summary holds (LatencyStats' fields).
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")
SLO_STATS = ("p50", "p90", "p95", "p99", "mean", "max")
_SLO_NAME = re.compile(r"(?P<metric>[a-z0-9]+)_(?P<stat>[a-z0-9]+)_ms")
# Per-request goodput limits, as vLLM's --goodput names them (e2el = end-to-end latency; e2e too).
GOODPUT_METRICS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e", "e2e": "e2e"}
# A per-request value by metric. Older results name a goodput limit like an SLO ("ttft_p99_ms"): the
# first word is the metric, so `goodput` takes both spellings.
_PER_REQUEST = {"ttft": lambda r: r.ttft_s, "tpot": lambda r: r.tpot_s, "e2e": lambda r: r.e2e_s}


class LimitError(ValueError):
    """A --slo or --goodput text that names no known limit; the message is one line for the user."""


def _limit_value(text: str, part: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LimitError(f"{option} {part!r}: {text.strip()!r} is not a number of milliseconds") from None
    if not math.isfinite(value) or value <= 0:
        raise LimitError(f"{option} {part!r}: the limit must be a positive number of milliseconds")
    return value


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft_p99_ms=500,tpot_mean_ms=50' -> {'ttft_p99_ms': 500.0, 'tpot_mean_ms': 50.0}.

    Every name must be METRIC_STAT_ms with METRIC in SLO_METRICS and STAT in SLO_STATS; anything
    else (a typo, an unknown percentile such as p77, a missing or non-positive value, a name given
    twice) is a LimitError, never a limit quietly ignored.
    """
    known = [f"{m}_{s}_ms" for m in SLO_METRICS for s in SLO_STATS]
    usage = (f"use METRIC_STAT_ms=LIMIT, e.g. ttft_p99_ms=500 (metrics {', '.join(SLO_METRICS)}; "
             f"statistics {', '.join(SLO_STATS)})")
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep:
            raise LimitError(f"--slo {part.strip()!r}: no limit: {usage}")
        match = _SLO_NAME.fullmatch(name)
        if not match:
            raise LimitError(f"--slo {name!r} is not an SLO name: {usage}{_suggest(name, known)}")
        metric, stat = match["metric"], match["stat"]
        if metric not in SLO_METRICS:
            raise LimitError(f"--slo {name!r}: unknown metric {metric!r}; {usage}{_suggest(name, known)}")
        if stat not in SLO_STATS:
            raise LimitError(f"--slo {name!r}: unknown statistic {stat!r}; {usage}{_suggest(name, known)}")
        if name in out:
            raise LimitError(f"--slo {name} is given twice")
        out[name] = _limit_value(value, part.strip(), "--slo")
    return out


def parse_goodput(text: str | None) -> dict[str, float]:
    """vLLM's --goodput: 'ttft:500,tpot:50' (or space-separated, or '=') -> {'ttft': 500.0, 'tpot': 50.0}.

    Metrics: ttft, tpot, e2el (end-to-end; e2e also accepted). Limits in milliseconds.
    """
    usage = "use METRIC:MS, e.g. ttft:500,tpot:50 (metrics ttft, tpot, e2el)"
    out: dict[str, float] = {}
    for part in re.split(r"[,\s]+", text or ""):
        if not part:
            continue
        match = re.fullmatch(r"([^:=]*)[:=](.*)", part)
        if not match:
            raise LimitError(f"--goodput {part!r}: no limit: {usage}")
        name, value = match[1].lower(), match[2]
        if name not in GOODPUT_METRICS:
            raise LimitError(f"--goodput {part!r}: unknown metric {name!r}; {usage}"
                             f"{_suggest(name, list(GOODPUT_METRICS))}")
        metric = GOODPUT_METRICS[name]
        if metric in out:
            raise LimitError(f"--goodput {name} is given twice")
        out[metric] = _limit_value(value, part, "--goodput")
    return out


# ---------------------------------------------------------------- per request: goodput

def goodput(records: list[RequestRecord], slo: dict[str, float], duration_s: float) -> float:
    """Requests per second whose own TTFT/TPOT/E2E stay within every limit (ms), errors never good.

    A request without a value for a metric (a one-token output has no TPOT) does not miss that limit.
    """
    good = 0
    for r in records:
        if r.error:
            continue
        ok = True
        for name, limit_ms in slo.items():
            value = _PER_REQUEST[name.split("_")[0]](r)
            if value is not None and value * 1000 > limit_ms:
                ok = False
        good += ok
    return good / duration_s if duration_s > 0 else 0.0


# ---------------------------------------------------------------- run level: SLO checks

def check_slo(summary: RunSummary, limits: dict[str, float]) -> list[SloCheck]:
    """Each --slo limit against the run's own statistic: ttft_p99_ms=500 passes when the run's p99
    TTFT is at most 500 ms. A statistic the run has no samples for (every request failed, one-token
    outputs have no TPOT) fails: a gate must not pass on nothing measured."""
    checks = []
    for name, limit_ms in limits.items():
        match = _SLO_NAME.fullmatch(name)
        if not match or match["metric"] not in SLO_METRICS or match["stat"] not in SLO_STATS:
            raise LimitError(f"--slo {name!r} is not an SLO name")  # parse_slo lets none of these through
        stats = getattr(summary, match["metric"])
        measured = getattr(stats, match["stat"]) * 1000 if stats is not None else None
        checks.append(SloCheck(name=name, metric=match["metric"], stat=match["stat"], limit_ms=limit_ms,
                               measured_ms=measured, passed=measured is not None and measured <= limit_ms))
    return checks


def slo_failed(summary: RunSummary) -> bool:
    return any(not c.passed for c in summary.slo_checks or ())


# ---------------------------------------------------------------- rates and the summary

def request_rates(records: list[RequestRecord]) -> tuple[float | None, float | None]:
    """(sent, completed) requests per second, each over its own span: first to last send, first to
    last completion. A server that keeps up completes requests as fast as they are sent, whatever
    each one's latency (the tail of the last request is not in the span, as it is in
    request_throughput); one that falls behind completes them more slowly. None below 2 requests."""
    starts = [r.start_s for r in records]
    ends = [r.start_s + r.e2e_s for r in records if not r.error and r.e2e_s is not None]

    def rate(times):
        span = max(times) - min(times) if len(times) >= 2 else 0.0
        return (len(times) - 1) / span if span > 0 else None

    return rate(starts), rate(ends)


def summarize(records: list[RequestRecord], duration_s: float, goodput_limits: dict[str, float] | None = None,
              extra: dict | None = None, *, slo_limits: dict[str, float] | None = None,
              slo: dict[str, float] | None = None) -> RunSummary:
    """The run's summary. goodput_limits: per-request limits (ms) behind `goodput` (--goodput);
    `slo=` is their older keyword, kept for callers written before --goodput existed. slo_limits:
    run-level limits (--slo), checked into `slo_checks`."""
    goodput_limits = goodput_limits or slo
    done = [r for r in records if not r.error]
    prompt = sum(r.prompt_tokens for r in done)
    output = sum(r.output_tokens for r in done)
    d = max(duration_s, 1e-9)
    sent, completed = request_rates(records)
    summary = RunSummary(
        num_requests=len(records), num_completed=len(done), num_errors=len(records) - len(done),
        duration_s=duration_s, request_throughput=len(done) / d, input_throughput=prompt / d,
        output_throughput=output / d, total_token_throughput=(prompt + output) / d,
        ttft=latency_stats(r.ttft_s for r in done), tpot=latency_stats(r.tpot_s for r in done),
        itl=latency_stats(x for r in done for x in r.itl_s), e2e=latency_stats(r.e2e_s for r in done),
        goodput=goodput(records, goodput_limits, d) if goodput_limits else None,
        goodput_limits=goodput_limits or None, sent_rate=sent, completion_rate=completed, extra=extra or {})
    if slo_limits:
        summary.slo_checks = check_slo(summary, slo_limits)
    return summary
