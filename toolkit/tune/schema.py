"""What a tune records: trials of configurations under load, the pruned ones, the choice and why.

One TuneResult per run, written to reports/<run-id>/tune.json after every trial (so a killed tune
can resume) and read back by the report and `--resume`. Latencies are milliseconds, rates per
second, memory GiB.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, Field

TUNE_SCHEMA_VERSION = 1


class Slo(BaseModel):
    """The latency goal: every limit must hold at the given percentile of the run's requests."""

    ttft_ms: float
    tpot_ms: float
    percentile: int = 99
    # a load point passes when the fraction of its requests meeting every limit is at least
    # `attainment` (the point estimate, as GuideLLM's goodput search; the Wilson interval only says
    # whether the probe had enough requests to tell)
    attainment: float = 0.9

    def words(self) -> str:
        return f"TTFT p{self.percentile} <= {self.ttft_ms:g} ms and TPOT p{self.percentile} <= {self.tpot_ms:g} ms"


class TuneWorkload(BaseModel):
    name: str  # chat | rag | code | batch | sharegpt
    input_len: int
    output_len: int
    dataset: Optional[str] = None  # a ShareGPT file for sharegpt:PATH
    scaled_for_cpu: bool = False  # lengths and SLO scaled down for a CPU profile (said in the report)


class LoadPoint(BaseModel):
    """One rung of a trial's ladder: the server under `concurrency` closed-loop streams."""

    concurrency: int
    requests: int
    errors: int = 0
    output_tok_s: float
    request_s: float
    ttft_p50_ms: Optional[float] = None
    ttft_p99_ms: Optional[float] = None
    tpot_p50_ms: Optional[float] = None
    tpot_p99_ms: Optional[float] = None
    e2e_p50_ms: Optional[float] = None
    slo_fraction: float = 0.0  # fraction of requests meeting every SLO limit
    slo_fraction_low: float = 0.0  # Wilson 95% interval
    slo_fraction_high: float = 0.0
    meets_slo: bool = False
    resolved: bool = True  # the Wilson interval lies wholly on one side of the target
    client_saturated: bool = False
    bench_dir: Optional[str] = None  # the opsctl bench result folder, relative to the tune folder
    gpu_memory_used_gib: Optional[float] = None  # pynvml, peak during the rung
    gpu_util_pct: Optional[float] = None  # pynvml, mean during the rung


class Prediction(BaseModel):
    """The planner's figures for a configuration, to set beside the measured ones: for the device
    that measured (so the error is a real one), and for the target card when that was emulated."""

    decode_tok_s_b1: Optional[float] = None
    output_tok_s: Optional[float] = None  # at the best load point's concurrency, on the measuring device
    target_output_tok_s: Optional[float] = None  # the same on the emulated target card: an estimate
    kv_tokens: Optional[int] = None
    weights_gib: Optional[float] = None
    fits: bool = True
    notes: list[str] = Field(default_factory=list)


class Trial(BaseModel):
    trial_id: str
    weight_format: str  # bf16 | fp16 | float32 | int8 | awq
    engine: dict  # EngineConfig fields that differ from its defaults
    flags: list[str]  # the same as `opsctl serve` flags (EngineConfig.to_flags())
    is_default: bool = False  # the configuration a user gets with no flags, measured the same way
    status: Literal["ok", "failed", "skipped"] = "ok"
    reason: str = ""  # why failed or skipped, in one line
    setup_s: Optional[float] = None  # start to /health answering (or reconfigured and warm)
    setup_kind: Literal["restart", "reconfigure", ""] = ""
    points: list[LoadPoint] = Field(default_factory=list)
    best: Optional[LoadPoint] = None  # the highest load meeting the SLO
    predicted: Optional[Prediction] = None
    stop_reason: str = ""  # why the ladder stopped
    started_at: str = ""
    finished_at: str = ""


class Pruned(BaseModel):
    engine: dict
    weight_format: str
    reason: str


class SearchSummary(BaseModel):
    strategy: str
    grid_size: int  # configurations of the grid after pruning, each axis with the base's own value too (Space.grid)
    trials_run: int
    stop_reason: str


class TuneResult(BaseModel):
    schema_version: int = TUNE_SCHEMA_VERSION
    run_id: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str = ""
    git_commit: str = "unknown"
    model: str  # a name for people
    model_spec: Optional[str] = None  # the MODEL argument as given (None: the embedded default)
    target_profile: str  # the card tuned for (--gpu)
    measured_on: dict = Field(default_factory=dict)  # the device that ran the trials
    emulated: bool = False  # the target card's memory emulated on a bigger device
    versions: dict = Field(default_factory=dict)
    workload: TuneWorkload
    slo: Slo
    space: dict = Field(default_factory=dict)  # the axes searched and their values
    strategy: Optional[str] = None  # --search as given (coordinate or grid): a resume continues the same one
    pruned: list[Pruned] = Field(default_factory=list)
    trials: list[Trial] = Field(default_factory=list)
    chosen: Optional[str] = None  # trial_id
    why: str = ""  # the choice in words
    search: Optional[SearchSummary] = None
    # Perplexity of every (weight format, KV format) that ran, on the built-in held-out text through the
    # engine (toolkit/tune/quality.py): speed is never bought silently with quality.
    quality: list[dict] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def trial(self, trial_id: str) -> Trial | None:
        return next((t for t in self.trials if t.trial_id == trial_id), None)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(path)  # atomic: a tune killed mid-write leaves the previous file whole
        return path

    @classmethod
    def read(cls, path: str | Path) -> "TuneResult":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
