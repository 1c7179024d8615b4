"""The proxy's Prometheus metrics (its own registry, `opsctl_proxy:` prefix, the server's naming style).

Counters are counted where things happen (requests per server and model with their outcome, server
failures by kind, retries, requests refused before any server); per-server gauges (outstanding
requests, live or not) and live servers per model are read from the registry when Prometheus
scrapes, so they never drift from what routing sees.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .registry import ServerRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# seconds from the request's arrival at the proxy to the server's response headers (a stream's start)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _RegistryCollector(Collector):
    def __init__(self, registry: ServerRegistry):
        self._registry = registry

    def collect(self):
        outstanding = GaugeMetricFamily("opsctl_proxy:outstanding_requests",
                                        "Requests sent to a server and not finished yet.", labels=["server"])
        up = GaugeMetricFamily("opsctl_proxy:server_up", "1 while the server is live (routed to), else 0.",
                               labels=["server", "source"])
        per_model = GaugeMetricFamily("opsctl_proxy:live_servers", "Live servers of each model.", labels=["model"])
        counts: dict[str, int] = {}
        for server in self._registry.all():
            outstanding.add_metric([server.url], server.outstanding)
            up.add_metric([server.url, server.source], 1.0 if server.live else 0.0)
            for model in server.models:
                counts[model] = counts.get(model, 0) + (1 if server.live else 0)
        for model in sorted(counts):
            per_model.add_metric([model], counts[model])
        yield outstanding
        yield up
        yield per_model


class ProxyMetrics:
    def __init__(self, registry: ServerRegistry):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("opsctl_proxy:requests", "Requests forwarded, by server, model and outcome "
                                "(the server's HTTP status, or stream_error when it failed mid-stream).",
                                ["server", "model", "outcome"], registry=self.registry)
        self.failures = Counter("opsctl_proxy:server_failures", "Server failures by kind: connect (no answer "
                                "before the first byte), stream (lost mid-response), health (a failed check).",
                                ["server", "kind"], registry=self.registry)
        self.retries = Counter("opsctl_proxy:retries", "Requests sent to another server after a failure before "
                               "the first byte.", ["model"], registry=self.registry)
        self.rejected = Counter("opsctl_proxy:rejected_requests", "Requests answered by the proxy itself with "
                                "an error, by reason.", ["reason"], registry=self.registry)
        self.upstream_latency = Histogram("opsctl_proxy:upstream_response_seconds", "Arrival at the proxy to "
                                          "the server's response headers.", ["model"], buckets=UPSTREAM_BUCKETS,
                                          registry=self.registry)
        self.registry.register(_RegistryCollector(registry))

    def render(self) -> bytes:
        return generate_latest(self.registry)
