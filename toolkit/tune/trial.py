"""One configuration under load: serve it (live_server.py), find the highest load within the SLO.

A configuration that cannot be served (too little memory, a cache smaller than a session, a crash)
is recorded as failed with the server's own one-line reason; so is one whose server dies mid-ladder
(that server is then stopped, not reused). The tune stops its server at the end, also on Ctrl-C.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from engine.config import EngineConfig
from toolkit.bench.load_runner import BenchError, HttpBenchOptions, run_http_bench, was_interrupted

from .live_server import LiveServer, SetupFailed
from .load_search import LoadSearch, attainment, score
from .schema import LoadPoint, Slo, Trial, TuneWorkload


class ServerFailed(Exception):
    """The trial's server died while it was being measured."""


@dataclass
class TrialSettings:
    """What every trial of a tune shares."""

    model: str | None
    workload: TuneWorkload
    slo: Slo
    out_dir: Path  # the tune's folder; bench runs land in out_dir/bench/
    min_requests: int = 32
    max_streams: int = 256
    max_probes: int = 10
    initial_streams: int = 4
    tolerance: float = 0.1  # the load search stops when pass and fail are this close (GuideLLM's default)
    seed: int = 0
    console: Console | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _telemetry(samples: list[dict]) -> tuple[float | None, float | None]:
    """(peak GPU memory used GiB, mean utilization %) over a probe's pynvml samples."""
    memory = [s["memory_used_gib"] for s in samples if s.get("memory_used_gib") is not None]
    util = [s["utilization_pct"] for s in samples if s.get("utilization_pct") is not None]
    return (max(memory) if memory else None), (sum(util) / len(util) if util else None)


def run_trial(trial: Trial, config: EngineConfig, settings: TrialSettings, server: LiveServer) -> Trial:
    """Serve `config` on the tune's live server and measure it: `trial` filled in with its points,
    best load, status and set-up time. The server is left running for the next trial."""
    trial = trial.model_copy(update={"started_at": _now(), "points": [], "best": None})
    try:
        trial.setup_s, trial.setup_kind = server.serve(config, trial.trial_id)
    except SetupFailed as e:
        return _failed(trial, str(e))
    # Past twice the batch cap, more streams only queue: TTFT grows, throughput does not.
    cap = config.max_batch_size
    most = min(settings.max_streams, 2 * cap) if cap else settings.max_streams
    search = LoadSearch(lambda c, n: _probe(trial, settings, server, c, n), settings.slo,
                        initial=min(settings.initial_streams, most), max_streams=most, tolerance=settings.tolerance,
                        max_probes=settings.max_probes, requests_for=lambda c: max(settings.min_requests, 3 * c))
    try:
        trial.best = search.run()
    except (BenchError, ServerFailed) as e:
        server.stop()  # a server that died or misbehaved is not reused
        trial.points = search.points
        return _failed(trial, str(e))
    trial.points, trial.stop_reason = search.points, search.stop_reason
    trial.finished_at = _now()
    return trial


def _failed(trial: Trial, reason: str) -> Trial:
    return trial.model_copy(update={"status": "failed", "reason": " ".join(reason.split())[:400],
                                    "finished_at": _now()})


def _probe(trial: Trial, settings: TrialSettings, server: LiveServer, concurrency: int, requests: int) -> LoadPoint:
    if not server.running():
        raise ServerFailed(f"the server died: {server.last_words()}")
    w = settings.workload
    run_id = f"{trial.trial_id}-c{concurrency}-n{requests}"
    opts = HttpBenchOptions(url=server.url, endpoint="completions", dataset=w.dataset and "sharegpt" or "random",
                            input_len=(w.input_len, w.input_len), output_len=(w.output_len, w.output_len),
                            num_requests=requests, concurrency=[concurrency], ignore_eos=True, temperature=0.0,
                            seed=settings.seed, run_id=run_id, output_dir=settings.out_dir / "bench",
                            tokenizer=None, api_key=server.api_key)
    if w.dataset:
        opts.dataset, opts.output_len = f"sharegpt:{w.dataset}", None
    started = time.monotonic()
    try:
        result, folder = run_http_bench(opts, console=settings.console or Console(stderr=True, quiet=True))
    except BenchError:
        if not server.running():
            raise ServerFailed(f"the server died: {server.last_words()}") from None
        raise
    if was_interrupted(result):  # the bench caught the Ctrl-C to keep its partial run: the tune stops too
        raise KeyboardInterrupt
    if not server.running():
        raise ServerFailed(f"the server died during {concurrency} streams: {server.last_words()}")
    run = result.runs[0]
    s = run.summary
    memory, util = _telemetry(result.telemetry)
    point = LoadPoint(
        concurrency=concurrency, requests=s.num_requests, errors=s.num_errors, output_tok_s=s.output_throughput,
        request_s=s.request_throughput,
        ttft_p50_ms=s.ttft.p50 * 1000 if s.ttft else None, ttft_p99_ms=s.ttft.p99 * 1000 if s.ttft else None,
        tpot_p50_ms=s.tpot.p50 * 1000 if s.tpot else None, tpot_p99_ms=s.tpot.p99 * 1000 if s.tpot else None,
        e2e_p50_ms=s.e2e.p50 * 1000 if s.e2e else None,
        client_saturated=bool(s.extra.get("client_saturated")),
        bench_dir=str(folder.relative_to(settings.out_dir)), gpu_memory_used_gib=memory, gpu_util_pct=util)
    good, judged = attainment(run._records, settings.slo)
    point = score(point, good, judged, settings.slo)
    if settings.console is not None:
        verdict = "meets" if point.meets_slo else "misses"
        settings.console.print(
            f"  {trial.trial_id} c={concurrency}: {point.output_tok_s:,.1f} tok/s, TTFT p99 "
            f"{point.ttft_p99_ms or 0:,.0f} ms, TPOT p99 {point.tpot_p99_ms or 0:,.1f} ms, "
            f"{point.slo_fraction:.0%} within the SLO -> {verdict} ({time.monotonic() - started:.0f} s)")
    return point
