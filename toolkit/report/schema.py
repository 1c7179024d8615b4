"""The result schema every measuring command writes (bench over HTTP, bench offline, tune trials).

One JSON file per run id: where and with what code it was measured, then one entry per measured
configuration (the engine, a peer, a rung of a concurrency ladder) with its summary. Per-request
rows go to a CSV beside it (pandas). Validated with pydantic on write and on read.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, PrivateAttr, model_validator

SCHEMA_VERSION = 1


class LatencyStats(BaseModel):
    """Seconds; percentiles computed from raw samples."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


class SloCheck(BaseModel):
    """One run-level limit (--slo ttft_p99_ms=500): the run's statistic against it."""

    name: str  # as given: ttft_p99_ms
    metric: str  # ttft | tpot | itl | e2e
    stat: str  # p50 | p90 | p95 | p99 | mean | max
    limit_ms: float
    measured_ms: float | None  # None: the run has no samples of that metric (and so fails)
    passed: bool


class RunSummary(BaseModel):
    num_requests: int
    num_completed: int
    num_errors: int
    duration_s: float
    request_throughput: float  # completed requests / s
    input_throughput: float  # prompt tokens / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float
    ttft: LatencyStats | None = None
    tpot: LatencyStats | None = None  # (e2e - ttft) / (output tokens - 1), first token excluded
    itl: LatencyStats | None = None  # gaps between streamed chunks
    e2e: LatencyStats | None = None
    goodput: float | None = None  # requests / s each meeting every limit in goodput_limits (--goodput)
    goodput_limits: dict[str, float] | None = None  # per-request limits in ms by metric: {"ttft": 500.0}
    slo_checks: list[SloCheck] | None = None  # run-level limits (--slo) and whether the run met each
    # Requests per second over the span of their sends and of their completions (a Poisson rung's
    # realised load, and whether the server kept up with it); None below two requests.
    sent_rate: float | None = None
    completion_rate: float | None = None
    extra: dict = Field(default_factory=dict)  # e.g. achieved GB/s and its fraction of the card's limit

    @model_validator(mode="before")
    @classmethod
    def _older_fields(cls, data):
        # Results written before --goodput stored the per-request limits behind goodput as "slo".
        if isinstance(data, dict) and "slo" in data:
            data = dict(data)
            older = data.pop("slo")
            data.setdefault("goodput_limits", older)
        return data


class Run(BaseModel):
    label: str  # what was measured, e.g. "opsctl engine", "transformers generate", "c=16"
    target: str  # engine | transformers-generate | transformers-generate-batch | http
    model: str
    workload: dict
    load: dict = Field(default_factory=dict)  # concurrency / request rate / number of requests
    config: dict = Field(default_factory=dict)
    summary: RunSummary
    requests_file: str | None = None  # CSV of per-request rows, relative to the result file
    # [start, end] of this run in seconds on the telemetry clock (BenchResult.telemetry's "t"), if sampled.
    window_s: list[float] | None = None
    # Per-request records (toolkit.bench.metrics.RequestRecord) until they are written to the CSV.
    _records: list = PrivateAttr(default_factory=list)

    def with_records(self, records: list) -> "Run":
        self._records = list(records)
        return self


class BenchResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    kind: str  # offline | http | tune
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str = ""
    git_commit: str = "unknown"
    device: dict = Field(default_factory=dict)
    versions: dict = Field(default_factory=dict)
    runs: list[Run] = Field(default_factory=list)
    telemetry: list[dict] = Field(default_factory=list)  # GPU samples over time (pynvml), if any
    notes: list[str] = Field(default_factory=list)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "BenchResult":
        return cls.model_validate(json.loads(Path(path).read_text()))


def new_run_id(prefix: str) -> str:
    return f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
