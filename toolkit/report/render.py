"""One self-contained HTML page comparing result files: `render_report(results, output)`.

Finds each result (a result.json, its run directory, or a run id under reports/), reads it with
the schema and its per-request CSVs with pandas (only from the result's own folder: paths.py),
turns runs into table rows, draws the charts (charts.py) and fills templates/report.html.j2
(jinja2, autoescaped). plotly.js is inlined once, so the file opens offline and can be mailed or
archived as it is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jinja2
import pandas as pd
from pydantic import ValidationError

from . import charts
from .paths import UnsafePathError, file_in_result_dir
from .schema import BenchResult, Run

REPORTS_DIR = Path("reports")
RESULT_FILE = "result.json"


class ReportError(Exception):
    """A run that cannot be found or read; the message is one line for the user."""


@dataclass
class LoadedResult:
    name: str  # the run id, made unique among the results on the page
    path: Path
    result: BenchResult
    requests: list[pd.DataFrame | None]  # per run, None where there are no per-request rows
    notes: list[str] = field(default_factory=list)  # what the page could not show, and why


# ---------------------------------------------------------------- finding and reading results

def resolve(run: str | Path, reports_dir: Path = REPORTS_DIR) -> Path:
    """A result.json path from a file, a run directory or a run id under reports_dir."""
    path = Path(run)
    if path.is_dir():
        path = path / RESULT_FILE
        if not path.is_file():
            raise ReportError(f"{run}: no {RESULT_FILE} in that directory; give a run directory written by "
                              f"opsctl bench or tune")
        return path
    if path.is_file():
        return path
    by_id = Path(reports_dir) / str(run) / RESULT_FILE
    if by_id.is_file():
        return by_id
    raise ReportError(f"no run {str(run)!r}: give a result.json, a run directory, or a run id under "
                      f"{reports_dir}/ (looked for {by_id})")


def _read_requests(run: Run, base: Path, notes: list[str]) -> pd.DataFrame | None:
    if not run.requests_file:
        notes.append(f"{run.label}: no per-request rows were recorded; its charts use the summary only.")
        return None
    csv = file_in_result_dir(base, run.requests_file, f"run {run.label!r}: requests_file")
    if not csv.is_file():
        notes.append(f"{run.label}: per-request file {run.requests_file} is missing; "
                     f"its charts use the summary only.")
        return None
    try:
        return pd.read_csv(csv)
    except (OSError, ValueError) as e:
        notes.append(f"{run.label}: cannot read {run.requests_file} ({str(e).splitlines()[0]}); "
                     f"its charts use the summary only.")
        return None


def load_result(path: Path, taken: set[str]) -> LoadedResult:
    try:
        result = BenchResult.read(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read it as a result file ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReportError(f"{path}: not a valid result file ({where}: {first['msg']})") from None
    name, n = result.run_id, 2
    while name in taken:
        name, n = f"{result.run_id} ({n})", n + 1
    taken.add(name)
    notes: list[str] = []
    try:
        requests = [_read_requests(run, path.parent, notes) for run in result.runs]
    except UnsafePathError as e:
        # Refused, not skipped: opsctl writes bare names beside result.json, so this result was edited
        # or made elsewhere, and a page that quietly left the part out would hide that.
        raise ReportError(f"{path}: {e}; fix that field or remove it") from None
    return LoadedResult(name=name, path=path, result=result, requests=requests, notes=notes)


def load_results(runs: list[str | Path], reports_dir: Path = REPORTS_DIR) -> list[LoadedResult]:
    if not runs:
        raise ReportError("no runs given: name at least one result.json, run directory or run id")
    taken: set[str] = set()
    return [load_result(resolve(run, reports_dir), taken) for run in runs]


# ---------------------------------------------------------------- numbers as table cells

def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    ms = value * 1000
    return f"{ms:,.2f}" if ms < 10 else f"{ms:,.1f}" if ms < 1000 else f"{ms:,.0f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _value(key: str, value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key.startswith("fraction") or key.endswith("_rate"):
            return f"{value:.1%}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def load_text(load: dict) -> str:
    """A rung's load in a few characters: c=16, 8 req/s, batch 1, 256 at once."""
    parts = []
    if load.get("concurrency") is not None:
        parts.append(f"c={load['concurrency']}")
    if load.get("request_rate") is not None:
        parts.append(f"{load['request_rate']} req/s")
    if load.get("batch_size") is not None:
        parts.append(f"batch {load['batch_size']}")
    if not parts and load.get("num_requests") is not None:
        arrival = load.get("arrival")
        parts.append(f"{load['num_requests']} {arrival}" if arrival else f"n={load['num_requests']}")
    if not parts:
        parts = [f"{k}={v}" for k, v in load.items()]
    return ", ".join(parts) or "–"


def _stat(stats, name: str) -> float | None:
    return getattr(stats, name) if stats is not None else None


def run_row(run: Run) -> dict[str, str]:
    s = run.summary
    return {
        "Run": run.label, "Load": load_text(run.load), "Requests": f"{s.num_completed}/{s.num_requests}",
        "Errors": str(s.num_errors), "Duration s": _num(s.duration_s, 2), "Req/s": _num(s.request_throughput, 2),
        "Output tok/s": _num(s.output_throughput), "Total tok/s": _num(s.total_token_throughput),
        "TTFT p50": _ms(_stat(s.ttft, "p50")), "TTFT p90": _ms(_stat(s.ttft, "p90")),
        "TTFT p99": _ms(_stat(s.ttft, "p99")), "TPOT p50": _ms(_stat(s.tpot, "p50")),
        "TPOT p99": _ms(_stat(s.tpot, "p99")), "ITL p50": _ms(_stat(s.itl, "p50")),
        "ITL p99": _ms(_stat(s.itl, "p99")), "E2E p50": _ms(_stat(s.e2e, "p50")),
        "E2E p99": _ms(_stat(s.e2e, "p99")), "Goodput req/s": _num(s.goodput, 2),
    }


RUN_COLUMNS = ("Run", "Load", "Requests", "Errors", "Duration s", "Req/s", "Output tok/s", "Total tok/s",
               "TTFT p50", "TTFT p90", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50", "ITL p99", "E2E p50",
               "E2E p99", "Goodput req/s")


def _pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def result_view(loaded: LoadedResult, anchor: str) -> dict:
    """What the template shows of one result: tables, extra figures, configuration, notes."""
    r = loaded.result
    runs = []
    for run in r.runs:
        runs.append({
            "label": run.label, "target": run.target, "model": run.model,
            "extra": [(k, _value(k, v)) for k, v in run.summary.extra.items()],
            "slo": run.summary.slo,
            "workload": _pretty(run.workload), "load": _pretty(run.load), "config": _pretty(run.config),
        })
    best = max(r.runs, key=lambda x: x.summary.output_throughput, default=None)
    slos = {", ".join(f"{k} ≤ {v:g}" for k, v in run.summary.slo.items()) for run in r.runs if run.summary.slo}
    return {
        "name": loaded.name, "anchor": anchor, "path": str(loaded.path),
        "kind": r.kind, "created_at": r.created_at, "command": r.command, "git_commit": r.git_commit,
        "device": r.device, "device_name": r.device.get("name", "?"), "versions": r.versions,
        "rows": [run_row(run) for run in r.runs], "runs": runs, "slos": sorted(slos),
        "num_requests": sum(x.summary.num_requests for x in r.runs),
        "num_errors": sum(x.summary.num_errors for x in r.runs),
        "best": f"{best.summary.output_throughput:,.1f} ({best.label})" if best else "–",
        "telemetry_samples": len(r.telemetry), "notes": list(r.notes), "render_notes": loaded.notes,
    }


# ---------------------------------------------------------------- charts and page

def chart_views(results: list[LoadedResult]) -> tuple[list[dict], list[str]]:
    """The page's charts (id, title, caption, HTML) and a note for each one with nothing to draw."""
    by_result = {x.name: x.result.runs for x in results}
    samples = {}
    for x in results:
        for run, frame in zip(x.result.runs, x.requests):
            if frame is not None and not frame.empty:
                key = run.label if len(results) == 1 else f"{x.name}: {run.label}"
                samples[key] = frame
    telemetry = {x.name: x.result.telemetry for x in results}
    windows = {x.name: [(run.label, *run.window_s) for run in x.result.runs
                        if len(getattr(run, "window_s", None) or ()) == 2] for x in results}
    specs = (
        ("throughput-latency", "Throughput against latency", charts.throughput_latency(by_result),
         "Output tokens/s against TTFT (p50 filled, p99 open) and TPOT p50, one line per result through its "
         "runs ordered by load. Log latency axes."),
        ("throughput-bars", "Output throughput per run", charts.throughput_bars(by_result),
         "Every run's output tokens/s, grouped by result and coloured by target (engine and peers)."),
        ("latency-distributions", "Latency distributions", charts.latency_distributions(samples),
         "Per-request TTFT, TPOT, ITL (each request's mean gap) and end-to-end latency; errored requests "
         "left out. Log axes."),
        ("gpu-telemetry", "GPU telemetry over time", charts.gpu_telemetry(telemetry, windows),
         "Memory used, utilisation and power of each GPU, sampled during the runs (each run's span shaded "
         "when recorded)."),
    )
    shown, missing = [], []
    for div_id, title, fig, caption in specs:
        if fig is None:
            missing.append(_missing_note(div_id, title))
        else:
            shown.append({"id": div_id, "title": title, "caption": caption, "html": charts.to_div(fig, div_id)})
    return shown, missing


def _missing_note(div_id: str, title: str) -> str:
    why = {
        "gpu-telemetry": "no GPU telemetry was recorded in these results (CPU runs, or no NVML).",
        "latency-distributions": "no per-request rows could be read.",
    }.get(div_id, "the results hold no numbers for it.")
    return f"{title}: {why}"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("toolkit.report", "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _opsctl_version() -> str:
    try:
        return metadata.version("opsctl")
    except metadata.PackageNotFoundError:
        return "source tree"


def render_html(results: list[LoadedResult]) -> str:
    shown, missing = chart_views(results)
    names = [x.name for x in results]
    return _environment().get_template("report.html.j2").render(
        title="opsctl report: " + ", ".join(names),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        opsctl_version=_opsctl_version(),
        results=[result_view(x, f"result-{i}") for i, x in enumerate(results)],
        run_columns=RUN_COLUMNS,
        charts=shown,
        missing_charts=missing,
        plotly_js=charts.plotly_js(),
    )


def render_report(result_paths: list[str | Path], output: str | Path, *,
                  reports_dir: str | Path = REPORTS_DIR) -> Path:
    """Write one self-contained HTML page comparing the given results; returns its path.

    Each item is a result.json, a run directory holding one, or a run id under reports_dir.
    Raises ReportError (one line) for a run that cannot be found or read.
    """
    results = load_results(list(result_paths), Path(reports_dir))
    html = render_html(results)
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write {output}: {e.strerror or e}") from None
    return output
