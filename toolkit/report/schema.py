"""The result schema every measuring command writes (bench over HTTP, bench offline, tune trials).

One JSON file per run id: where and with what code it was measured, then one entry per measured
configuration (the engine, a peer, a rung of a concurrency ladder) with its summary. Per-request
rows go to a CSV beside it (pandas). Validated with pydantic on write and on read.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, PrivateAttr

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
    goodput: float | None = None  # requests / s meeting every SLO
    slo: dict[str, float] | None = None
    extra: dict = Field(default_factory=dict)  # e.g. achieved GB/s and its fraction of the card's limit


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
