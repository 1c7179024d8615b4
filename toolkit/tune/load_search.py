"""The highest load a configuration carries within the SLO: GuideLLM's goodput search, per trial.

A probe runs `concurrency` closed-loop streams and scores SLO attainment: the fraction of its
requests meeting every limit (an error meets none). It passes when the attainment reaches the
target (the SLO's percentile / 100); a Wilson interval says whether the probe had enough requests to
tell (resolved: the interval lies wholly on one side of the target). An unresolved probe is run
again with twice the requests when twice could resolve it (a perfect record of n requests resolves
a target t only when n >= z^2 t / (1 - t): 35 requests for p90, 381 for p99); otherwise its verdict
is kept and marked unresolved, and the report says so.

The search is GuideLLM 0.8's `goodput` profile (guidellm/benchmark/profiles/goodput.py): double the
streams from `initial` until a level fails (or `max_streams`), then bisect between the highest
passing and the lowest failing level until they are within max(1, 10% of the passing level); a
failing first level walks down by halves to 1. Run on the same server with the same target, both
searches land within one step of each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .schema import LoadPoint, Slo

Z_95 = 1.959964  # two-sided 95% normal quantile, GuideLLM's default confidence


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927), clamped to [0, 1]."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - spread), min(1.0, center + spread)


def attainment(records, slo: Slo) -> tuple[int, int]:
    """(requests meeting every limit, requests judged). A one-token output has no TPOT: that limit
    cannot be missed. Errors are judged and never meet the SLO."""
    good = 0
    for r in records:
        if r.error or r.ttft_s is None:
            continue
        tpot = r.tpot_s
        if r.ttft_s * 1000 <= slo.ttft_ms and (tpot is None or tpot * 1000 <= slo.tpot_ms):
            good += 1
    return good, len(records)


def score(point: LoadPoint, good: int, judged: int, slo: Slo) -> LoadPoint:
    low, high = wilson_interval(good, judged)
    fraction = good / judged if judged else 0.0
    point = point.model_copy(update={"slo_fraction": fraction, "slo_fraction_low": low, "slo_fraction_high": high,
                                     "meets_slo": judged > 0 and fraction >= slo.attainment})
    return point.model_copy(update={"resolved": resolved(point, slo)})


def resolved(point: LoadPoint, slo: Slo) -> bool:
    return point.slo_fraction_low >= slo.attainment or point.slo_fraction_high < slo.attainment


def requests_to_resolve(target: float, z: float = Z_95) -> int:
    """The fewest requests whose perfect record puts the Wilson lower bound at `target`."""
    return math.ceil(z * z * target / (1 - target)) if target < 1 else math.inf


@dataclass
class LoadSearch:
    """The search's state; `probe(concurrency, requests)` runs one probe and returns its scored point."""

    probe: Callable[[int, int], LoadPoint]
    slo: Slo
    initial: int = 4
    max_streams: int = 256
    tolerance: float = 0.1
    max_probes: int = 10
    requests_for: Callable[[int], int] = lambda c: max(32, 3 * c)
    points: list[LoadPoint] = field(default_factory=list)
    best: int | None = None
    worst: int | None = None
    stop_reason: str = ""

    def run(self) -> LoadPoint | None:
        """Probe until converged; the best passing point (None when even 1 stream misses the SLO)."""
        streams: int | None = max(1, min(self.initial, self.max_streams))
        while streams is not None:
            if len(self.points) >= self.max_probes:
                self.stop_reason = f"probe budget of {self.max_probes} spent"
                break
            n = self.requests_for(streams)
            point = self.probe(streams, n)
            if (not point.resolved and 2 * n >= requests_to_resolve(self.slo.attainment)
                    and len(self.points) + 1 < self.max_probes):
                point = self.probe(streams, 2 * n)  # more requests to decide
            self.points.append(point)
            if point.meets_slo:
                self.best = max(self.best or 0, streams)
            else:
                self.worst = min(self.worst or streams, streams)
            streams = self._next()
        passing = [p for p in self.points if p.meets_slo]
        return max(passing, key=lambda p: (p.concurrency, p.output_tok_s)) if passing else None

    def _next(self) -> int | None:
        best, worst = self.best, self.worst
        if worst is None:
            current = best or self.initial
            if current >= self.max_streams:
                self.stop_reason = f"the SLO still held at the most streams tried ({self.max_streams})"
                return None
            return min(current * 2, self.max_streams)
        if best is None:
            if worst <= 1:
                self.stop_reason = "the SLO is missed even at one stream"
                return None
            return worst // 2
        if worst - best <= max(1, self.tolerance * best):
            self.stop_reason = f"converged: {best} streams pass, {worst} fail"
            return None
        return (best + worst) // 2
