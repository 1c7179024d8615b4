"""HTML pages comparing result files: `render_report(inputs, output)`.

Inputs are result.json files, run folders, run ids under reports/, or folders of runs (every
result.json below the folder, and the result JSON files in it and in its folders that are not
runs). Besides opsctl bench's result.json, the JSON of http_vs_offline, engine.kernels.bench and
profile_step is read through foreign.py. Each result is read with the schema and its per-request CSVs with pandas (only from
the result's own folder: paths.py); runs are grouped by workload (words.group_of) so a chart never
puts unrelated workloads on one axis; each run's headline is the figure its workload is about
(words.py). The page is filled from templates/report.html.j2 (jinja2, autoescaped).

Where plotly.js goes (4.6 MB, so never once per page in a folder of pages):
  output FILE.html, no script_root   one self-contained page with plotly.js inlined (to mail, archive)
  output FILE.html, script_root DIR  the page loads DIR/plotly.min.js by a relative path, written
                                     once and shared by every page under DIR (opsctl bench writes
                                     reports/<run-id>/report.html with reports/plotly.min.js)
  output DIR (no .html suffix)       DIR/index.html beside DIR/plotly.min.js: a folder to move as one
Nothing is written when an input cannot be read.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jinja2
import pandas as pd
from pydantic import ValidationError

from . import charts, words
from .foreign import Table, convert
from .paths import UnsafePathError, file_in_result_dir
from .schema import BenchResult, Run

REPORTS_DIR = Path("reports")
RESULT_FILE = "result.json"
INDEX_FILE = "index.html"
PAGE_SUFFIXES = (".html", ".htm")


class ReportError(Exception):
    """A run that cannot be found or read; the message is one line for the user."""


@dataclass
class LoadedResult:
    name: str  # the run id, made unique among the results on the page
    path: Path
    result: BenchResult
    requests: list[pd.DataFrame | None]  # per run, None where there are no per-request rows
    notes: list[str] = field(default_factory=list)  # what the page could not show, and why
    tables: list[Table] = field(default_factory=list)  # results of other scripts: their own tables
    headline: str | None = None  # set where words.result_headline cannot work it out (no runs)


# ---------------------------------------------------------------- finding and reading results

def _is_bench_result(data) -> bool:
    return isinstance(data, dict) and bool({"run_id", "kind", "runs", "schema_version"} & set(data))


def _folder_results(folder: Path, seen: set[Path] | None = None) -> tuple[list[Path], list[str]]:
    """The results below `folder`: a folder holding a result.json is a run (that file, nothing under
    it: its raw/ JSON is not a result); in any other folder, every JSON file of a known kind (schema.py,
    foreign.py), then its subfolders. Notes name the JSON files left out. Hidden folders are skipped,
    and a folder reached twice through links is read once."""
    seen = set() if seen is None else seen
    if folder.resolve() in seen:
        return [], []
    seen.add(folder.resolve())
    found, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if (path / RESULT_FILE).is_file():
                found.append(path / RESULT_FILE)
            elif (path / "tune.json").is_file():  # an opsctl tune folder: its own report.html shows it
                skipped.append(f"{path}: a tune (opsctl tune writes its report.html there), left out")
            else:
                more, notes = _folder_results(path, seen)
                found.extend(more)
                skipped.extend(notes)
        elif path.suffix == ".json" and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                skipped.append(f"{path}: not JSON, left out")
                continue
            if convert(data, path.stem) is not None or _is_bench_result(data):
                found.append(path)
            else:
                skipped.append(f"{path}: not a result file, left out")
    return found, skipped


def resolve(run: str | Path, reports_dir: Path = REPORTS_DIR) -> list[Path]:
    """Result files from a file, a run folder, a folder of runs, or a run id under reports_dir."""
    return resolve_with_notes(run, reports_dir)[0]


def resolve_with_notes(run: str | Path, reports_dir: Path = REPORTS_DIR) -> tuple[list[Path], list[str]]:
    path = Path(run)
    if path.is_dir():
        if (path / RESULT_FILE).is_file():
            return [path / RESULT_FILE], []
        found, skipped = _folder_results(path)
        if not found:
            raise ReportError(f"{run}: no result files in that folder (looked for {RESULT_FILE} and result JSON "
                              f"files below it); give run folders written by opsctl bench")
        return found, skipped
    if path.is_file():
        return [path], []
    by_id = Path(reports_dir) / str(run) / RESULT_FILE
    if by_id.is_file():
        return [by_id], []
    raise ReportError(f"no run {str(run)!r}: give a result.json, a run folder, a folder of runs, or a run id "
                      f"under {reports_dir}/ (looked for {by_id})")


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
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read it as a result file ({str(e).splitlines()[0]})") from None
    converted = convert(data, Path(path).stem) if not _is_bench_result(data) else None
    tables, headline, notes = [], None, []
    if converted is not None:
        result, tables, headline = converted.result, converted.tables, converted.headline
    elif _is_bench_result(data):
        try:
            result = BenchResult.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ReportError(f"{path}: not a valid result file ({where}: {first['msg']})") from None
    else:
        raise ReportError(f"{path}: not a result file (neither opsctl bench's result.json nor the JSON of "
                          f"http_vs_offline, engine.kernels.bench or profile_step)")
    name, n = result.run_id, 2
    while name in taken:
        name, n = f"{result.run_id} ({n})", n + 1
    taken.add(name)
    try:
        requests = [_read_requests(run, path.parent, notes) if converted is None else None for run in result.runs]
    except UnsafePathError as e:
        # Refused, not skipped: opsctl writes bare names beside result.json, so this result was edited
        # or made elsewhere, and a page that quietly left the part out would hide that.
        raise ReportError(f"{path}: {e}; fix that field or remove it") from None
    return LoadedResult(name=name, path=path, result=result, requests=requests, notes=notes, tables=tables,
                        headline=headline)


def load_results(runs: list[str | Path], reports_dir: Path = REPORTS_DIR) -> tuple[list[LoadedResult], list[str]]:
    """(results, notes on files a folder held that are not results)."""
    if not runs:
        raise ReportError("no runs given: name at least one result.json, run folder, folder of runs or run id")
    taken: set[str] = set()
    loaded, skipped = [], []
    for run in runs:
        paths, notes = resolve_with_notes(run, Path(reports_dir))
        skipped.extend(notes)
        loaded.extend(load_result(p, taken) for p in paths)
    return loaded, skipped


# ---------------------------------------------------------------- numbers as table cells

_ms = words.ms


def _num(value: float | None, digits: int = 1) -> str:
    return words.number(value, digits)


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
        parts = [f"{k}={v}" for k, v in load.items() if v is not None]
    return ", ".join(parts) or "–"


def _stat(stats, name: str) -> float | None:
    return getattr(stats, name) if stats is not None else None


def run_row(run: Run, result: BenchResult | None = None) -> dict[str, str]:
    s = run.summary
    result = result or BenchResult(run_id="-", kind="offline", runs=[run])
    verdict = "–"
    if s.slo_checks:
        failed = [c.name for c in s.slo_checks if not c.passed]
        verdict = "failed: " + ", ".join(failed) if failed else "met"
    return {
        "Run": run.label, "Load": load_text(run.load), "Headline": words.run_headline(result, run),
        "Requests": f"{s.num_completed}/{s.num_requests}",
        "Errors": str(s.num_errors), "Duration s": _num(s.duration_s, 2), "Req/s": _num(s.request_throughput, 2),
        "Rate asked / sent / completed": words.rate_words(run) or "–",
        "Output tok/s": _num(s.output_throughput), "Total tok/s": _num(s.total_token_throughput),
        "TTFT p50": _ms(_stat(s.ttft, "p50")), "TTFT p90": _ms(_stat(s.ttft, "p90")),
        "TTFT p99": _ms(_stat(s.ttft, "p99")), "TPOT p50": _ms(_stat(s.tpot, "p50")),
        "TPOT p99": _ms(_stat(s.tpot, "p99")), "ITL p50": _ms(_stat(s.itl, "p50")),
        "ITL p99": _ms(_stat(s.itl, "p99")), "E2E p50": _ms(_stat(s.e2e, "p50")),
        "E2E p99": _ms(_stat(s.e2e, "p99")), "Goodput req/s": _num(s.goodput, 2), "SLO": verdict,
    }


RUN_COLUMNS = ("Run", "Load", "Headline", "Requests", "Errors", "Duration s", "Req/s", "Rate asked / sent / completed",
               "Output tok/s", "Total tok/s", "TTFT p50", "TTFT p90", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50",
               "ITL p99", "E2E p50", "E2E p99", "Goodput req/s", "SLO")
TEXT_COLUMNS = ("Run", "Load", "Headline", "Rate asked / sent / completed", "SLO")
# Shown only where some run of the result has a value in them.
OPTIONAL_COLUMNS = ("Rate asked / sent / completed", "Goodput req/s", "SLO")


def _pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def result_view(loaded: LoadedResult, anchor: str) -> dict:
    """What the template shows of one result: headline, warnings, tables, extra figures, configuration."""
    r = loaded.result
    runs, slo_rows, goodput = [], [], set()
    for run in r.runs:
        runs.append({
            "label": run.label, "target": run.target, "model": run.model,
            "extra": [(label, key, value) for (label, value), key in
                      zip(words.extra_items(run.summary.extra), run.summary.extra)],
            "workload": _pretty(run.workload), "load": _pretty(run.load), "config": _pretty(run.config),
            "goodput_limits": run.summary.goodput_limits,
        })
        for check in run.summary.slo_checks or ():
            slo_rows.append({"run": run.label, "name": check.name, "words": words.slo_check_words(check),
                             "passed": check.passed})
        if run.summary.goodput_limits:
            goodput.add(words.goodput_words(run.summary))
    rows = [run_row(run, r) for run in r.runs]
    columns = [c for c in RUN_COLUMNS
               if c not in OPTIONAL_COLUMNS or any(row[c] != "–" for row in rows)]
    warnings = [w for run in r.runs for w in words.run_warnings(run)]
    return {
        "name": loaded.name, "anchor": anchor, "path": str(loaded.path),
        "kind": r.kind, "created_at": r.created_at, "command": r.command, "git_commit": r.git_commit,
        "device": r.device, "device_name": r.device.get("name", "?"), "versions": r.versions,
        "rows": rows, "columns": columns, "text_columns": TEXT_COLUMNS, "runs": runs,
        "goodput": sorted(goodput), "slo_rows": slo_rows, "warnings": warnings,
        "headline": loaded.headline or words.result_headline(r),
        "num_requests": sum(x.summary.num_requests for x in r.runs),
        "num_errors": sum(x.summary.num_errors for x in r.runs),
        "tables": [t.__dict__ for t in loaded.tables],
        "telemetry_samples": len(r.telemetry), "notes": list(r.notes), "render_notes": loaded.notes,
    }


# ---------------------------------------------------------------- charts, one group per workload

@dataclass
class _Group:
    title: str
    kind: str
    members: list[tuple[LoadedResult, Run, pd.DataFrame | None]] = field(default_factory=list)


def workload_groups(results: list[LoadedResult]) -> list[_Group]:
    """Runs grouped by workload (words.group_of), in the order they first appear."""
    groups: dict[str, _Group] = {}
    for x in results:
        for run, frame in zip(x.result.runs, x.requests):
            key, title = words.group_of(x.result, run)
            group = groups.setdefault(key, _Group(title, words.workload_of(x.result, run)))
            group.members.append((x, run, frame))
    return list(groups.values())


def _bar_text(value: float, unit: str, versus: str | None) -> str:
    number = words.rate(value) if unit == "tok/s" else f"{value:,.3g}" if unit == "s" else f"{value:,.1f}"
    return f"{number} {unit}" + (f" ({versus})" if versus else "")


def group_view(group: _Group, index: int) -> dict:
    """One workload's charts (id, title, caption, HTML) and notes on those with nothing to draw."""
    names = list(dict.fromkeys(x.name for x, _, _ in group.members))
    several = len(names) > 1
    models = len({run.model for _, run, _ in group.members}) > 1  # the same workload on other models

    def label(x: LoadedResult, run: Run) -> str:
        text = f"{x.name} · {run.label}" if several else run.label
        return f"{text} [{run.model}]" if models else text

    figure, unit, lower = words.headline_metric(group.kind)
    bars = []
    for x, run, _ in group.members:
        value = words.headline_value(x.result, run)
        if value is not None:
            bars.append((label(x, run), run.target, value,
                         _bar_text(value, unit, words.comparison(x.result, run))))
    by_result: dict[str, list[Run]] = {}
    samples: dict[str, pd.DataFrame] = {}
    for x, run, frame in group.members:
        by_result.setdefault(x.name, []).append(run)
        if frame is not None and not frame.empty:
            samples[label(x, run)] = frame
    members = {x.name: x for x, _, _ in group.members}
    telemetry = {name: x.result.telemetry for name, x in members.items()}
    windows = {name: [(run.label, *run.window_s) for run in by_result[name]
                      if len(getattr(run, "window_s", None) or ()) == 2] for name in members}
    specs = [("headline", f"{figure.capitalize()} per run", charts.headline_bars(bars, figure, unit, lower),
              f"The figure this workload is about, one bar per run, {'lower' if lower else 'higher'} is better; "
              "comparisons in words name their direction.")]
    if group.kind == "http":
        specs.append(("throughput-latency", "Throughput against latency", charts.throughput_latency(by_result),
                      "Output tokens/s against TTFT (p50 filled, p99 open) and TPOT p50, one line per result "
                      "through its rungs ordered by load. Log latency axes."))
    specs.append(("latency-distributions", "Latency distributions", charts.latency_distributions(samples),
                  "Per-request TTFT, TPOT, ITL (each request's mean gap) and end-to-end latency; errored "
                  "requests left out. Log axes."))
    specs.append(("gpu-telemetry", "GPU telemetry over time", charts.gpu_telemetry(telemetry, windows),
                  "Memory used, utilisation and power of each GPU, sampled during the runs (each run's span "
                  "shaded when recorded)."))
    shown, missing = [], []
    for kind, title, fig, caption in specs:
        div_id = f"{kind}-{index}"
        if fig is not None:
            shown.append({"id": div_id, "kind": kind, "title": title, "caption": caption,
                          "html": charts.to_div(fig, div_id)})
        elif kind == "latency-distributions" and any(x.result.kind in ("offline", "http") for x in members.values()):
            missing.append(f"{title}: no per-request rows could be read.")
        elif kind == "headline":
            missing.append(f"{title}: the results hold no numbers for it.")
    has_telemetry = any(telemetry.values())
    return {"id": f"group-{index}", "title": group.title, "results": names, "charts": shown,
            "missing": missing, "has_telemetry": has_telemetry}


def chart_views(results: list[LoadedResult]) -> tuple[list[dict], list[str]]:
    """The page's chart groups and notes on what no group could draw."""
    groups = [group_view(g, i + 1) for i, g in enumerate(workload_groups(results))]
    missing = []
    if groups and not any(g["has_telemetry"] for g in groups):
        missing.append("GPU telemetry over time: no GPU telemetry was recorded in these results "
                       "(CPU runs, another machine's server, or no NVML).")
    return groups, missing


# ---------------------------------------------------------------- the page

def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("toolkit.report", "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _opsctl_version() -> str:
    try:
        return metadata.version("opsctl")
    except metadata.PackageNotFoundError:
        return "source tree"


def render_html(results: list[LoadedResult], *, plotly_src: str | None = None,
                skipped: list[str] | None = None) -> str:
    """The page; plotly.js inline, or loaded from `plotly_src` (a path relative to the page)."""
    groups, missing = chart_views(results)
    views = [result_view(x, f"result-{i}") for i, x in enumerate(results)]
    names = [x.name for x in results]
    title = "opsctl report: " + (", ".join(names) if len(names) <= 4 else f"{len(names)} results")
    return _environment().get_template("report.html.j2").render(
        title=title,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        opsctl_version=_opsctl_version(),
        results=views,
        groups=groups,
        missing_charts=missing,
        warnings=[w for v in views for w in v["warnings"]],
        skipped=skipped or [],
        plotly_src=plotly_src,
        plotly_js=charts.plotly_js() if plotly_src is None else "",
    )


def page_path(output: str | Path) -> Path:
    """The HTML file `output` names: itself when it ends in .html, else output/index.html."""
    output = Path(output)
    return output if output.suffix.lower() in PAGE_SUFFIXES else output / INDEX_FILE


def render_report(result_paths: list[str | Path], output: str | Path, *,
                  reports_dir: str | Path = REPORTS_DIR, script_root: str | Path | None = None) -> Path:
    """Write the page comparing the given results; returns its path (see the module docstring for
    where plotly.js goes). Raises ReportError (one line) for an input that cannot be found or read,
    before anything is written."""
    results, skipped = load_results(list(result_paths), Path(reports_dir))
    output = Path(output)
    page = page_path(output)
    if page != output:  # a folder: the page and its script together
        script_root = output
    src = None
    if script_root is not None:
        script = Path(script_root) / charts.PLOTLY_FILE
        src = Path(os.path.relpath(script.resolve(), page.parent.resolve())).as_posix()
    html = render_html(results, plotly_src=src, skipped=skipped)
    try:
        if script_root is not None:
            charts.write_plotly_js(Path(script_root))
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(html, encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write {page}: {e.strerror or e}") from None
    return page
