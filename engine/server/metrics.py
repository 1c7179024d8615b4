"""Prometheus metrics of one server: a registry per app, vLLM's shapes under the `opsctl:` prefix.

Latency histograms (TTFT, inter-token latency, end-to-end) are observed by the serving code per
engine request; engine state (running/waiting requests, KV-cache usage and blocks, prefix-cache hit
rate, preemptions, prompt/generation token totals) is read from `EngineStats` at scrape time by a
custom collector, so the engine thread pays nothing for metrics.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Buckets as vLLM's (seconds), so dashboards built for it read ours.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)


class EngineStatsCollector(Collector):
    """Gauges and counters read from the engine's stats when Prometheus scrapes."""

    def __init__(self, stats_fn, model_name: str):
        self._stats_fn = stats_fn
        self._labels = [model_name]

    def collect(self):
        s = self._stats_fn()
        labels = ["model_name"]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(self._labels, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(self._labels, value)
            return c

        yield gauge("opsctl:num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("opsctl:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge("opsctl:kv_cache_usage_perc", "Fraction of KV-cache blocks held by requests (1 = full).",
                    s.kv_cache_usage)
        yield gauge("opsctl:kv_cache_num_blocks", "KV-cache blocks in the pool.", s.num_blocks)
        yield gauge("opsctl:kv_cache_free_blocks", "KV-cache blocks not held by any request.", s.num_free_blocks)
        yield gauge("opsctl:prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / looked up.",
                    s.prefix_cache_hit_rate)
        yield counter("opsctl:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.prefix_cache_queries)
        yield counter("opsctl:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield counter("opsctl:num_preemptions", "Requests preempted (blocks freed, recomputed later).",
                      s.num_preemptions)
        yield counter("opsctl:prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens_total)
        yield counter("opsctl:generation_tokens", "Tokens generated.", s.generation_tokens_total)
        yield counter("opsctl:num_engine_steps", "Engine steps (forwards) run.", s.num_steps)


class ServerMetrics:
    def __init__(self, stats_fn, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        self.ttft = Histogram("opsctl:time_to_first_token_seconds", "Time from request arrival to its first token.",
                              labels, buckets=TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.itl = Histogram("opsctl:inter_token_latency_seconds", "Gap between consecutive tokens of a request.",
                             labels, buckets=ITL_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("opsctl:e2e_request_latency_seconds", "Time from request arrival to its last token.",
                             labels, buckets=E2E_BUCKETS, registry=self.registry).labels(model_name)
        self._success = Counter("opsctl:request_success", "Finished requests by finish reason.",
                                labels + ["finished_reason"], registry=self.registry)
        self._success_by_reason = {r: self._success.labels(model_name, r)
                                   for r in ("stop", "length", "abort", "error")}
        self._model_name = model_name
        self.registry.register(EngineStatsCollector(stats_fn, model_name))

    def request_finished(self, reason: str | None) -> None:
        reason = reason or "abort"
        counter = self._success_by_reason.get(reason)
        if counter is None:
            counter = self._success_by_reason[reason] = self._success.labels(self._model_name, reason)
        counter.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """TTFT, inter-token gaps and end-to-end time of one engine request; counted once when it ends."""

    __slots__ = ("metrics", "arrival", "last", "done")

    def __init__(self, metrics: ServerMetrics, arrival: float | None = None):
        self.metrics = metrics
        self.arrival = time.perf_counter() if arrival is None else arrival
        self.last: float | None = None
        self.done = False

    def on_tokens(self, num_tokens: int) -> None:
        if not num_tokens:
            return
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.arrival)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def on_finish(self, reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        self.metrics.e2e.observe(time.perf_counter() - self.arrival)
        self.metrics.request_finished(reason)

    def on_abandoned(self) -> None:
        """The response ended before the request did (the client left, the engine failed): an abort."""
        if not self.done:
            self.done = True
            self.metrics.request_finished("abort")
