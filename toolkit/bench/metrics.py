"""Latency statistics and throughput from raw per-request samples (never from rounded aggregates).

Definitions follow vLLM's benchmarks: TTFT = time to the first streamed token; ITL = gap between
consecutive streamed chunks; TPOT = (E2E - TTFT) / (output tokens - 1); goodput = requests per
second that meet every SLO.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..report.schema import LatencyStats, RunSummary


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


# SLO names map to (metric, percentile) of the per-request samples.
_SLO_METRICS = {"ttft": lambda r: r.ttft_s, "tpot": lambda r: r.tpot_s, "e2e": lambda r: r.e2e_s}


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft_p99_ms=500,tpot_p99_ms=50' -> {'ttft_p99_ms': 500.0, 'tpot_p99_ms': 50.0}."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        metric = name.split("_")[0]
        if metric not in _SLO_METRICS or not name.endswith("_ms") or not value:
            raise ValueError(f"bad SLO {part!r}: use e.g. ttft_p99_ms=500,tpot_p99_ms=50 (metrics: ttft, tpot, e2e)")
        out[name] = float(value)
    return out


def goodput(records: list[RequestRecord], slo: dict[str, float], duration_s: float) -> float:
    """Requests per second whose own TTFT/TPOT/E2E stay within every SLO limit."""
    good = 0
    for r in records:
        if r.error:
            continue
        ok = True
        for name, limit_ms in slo.items():
            value = _SLO_METRICS[name.split("_")[0]](r)
            if value is not None and value * 1000 > limit_ms:
                ok = False
        good += ok
    return good / duration_s if duration_s > 0 else 0.0


def summarize(records: list[RequestRecord], duration_s: float, slo: dict[str, float] | None = None,
              extra: dict | None = None) -> RunSummary:
    done = [r for r in records if not r.error]
    prompt = sum(r.prompt_tokens for r in done)
    output = sum(r.output_tokens for r in done)
    d = max(duration_s, 1e-9)
    return RunSummary(
        num_requests=len(records), num_completed=len(done), num_errors=len(records) - len(done),
        duration_s=duration_s, request_throughput=len(done) / d, input_throughput=prompt / d,
        output_throughput=output / d, total_token_throughput=(prompt + output) / d,
        ttft=latency_stats(r.ttft_s for r in done), tpot=latency_stats(r.tpot_s for r in done),
        itl=latency_stats(x for r in done for x in r.itl_s), e2e=latency_stats(r.e2e_s for r in done),
        goodput=goodput(records, slo, d) if slo else None, slo=slo or None, extra=extra or {})
