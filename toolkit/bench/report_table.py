"""What a bench run leaves behind: its runs as a terminal table with their verdicts in words (rich),
its per-request rows as CSV files (pandas), and its HTML report beside the result.

The table carries the figures a `vllm bench serve` user looks for: requests, errors, request and
output throughput, TTFT/TPOT/E2E, goodput (--goodput) and, for runs at an asked --request-rate,
the rate asked, sent and completed. Below it, in sentences (never a dict repr): each result's
headline (words.py), further figures, the SLO verdict per run (--slo), and warnings where the
figures are not the server's (a saturated client, a server that fell behind its load).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..report import words
from ..report.schema import BenchResult


def write_requests_csv(result: BenchResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(result.runs):
        if run._records:
            name = f"requests-{i}.csv"
            pd.DataFrame([r.row() for r in run._records]).to_csv(out_dir / name, index=False)
            run.requests_file = name


def _ms(stats, field: str = "p50") -> str:
    return f"{getattr(stats, field) * 1000:.1f}" if stats else "-"


def print_runs(result: BenchResult, console: Console | None = None) -> None:
    console = console or Console(width=160)
    runs = result.runs
    rated = any(words.asked_rate(r) is not None for r in runs)
    with_goodput = any(r.summary.goodput is not None for r in runs)
    with_slo = any(r.summary.slo_checks for r in runs)
    table = Table(title=f"{escape(result.run_id)} on {escape(str(result.device.get('name', '?')))}")
    columns = ["run", "requests", "errors", "req/s"]
    columns += ["req/s asked / sent / done"] if rated else []
    columns += ["output tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "E2E p50 ms"]
    columns += ["goodput req/s"] if with_goodput else []
    columns += ["SLO"] if with_slo else []
    for col in columns:
        table.add_column(col, justify="left" if col in ("run", "SLO") else "right")
    for run in runs:
        s = run.summary
        row = [escape(run.label), str(s.num_requests), str(s.num_errors), f"{s.request_throughput:.2f}"]
        if rated:
            row.append(_rates(run))
        row += [f"{s.output_throughput:.1f}", _ms(s.ttft), _ms(s.ttft, "p99"), _ms(s.tpot), _ms(s.e2e)]
        if with_goodput:
            row.append(f"{s.goodput:.2f}" if s.goodput is not None else "-")
        if with_slo:
            row.append(_slo_cell(run))
        table.add_row(*row)
    console.print(table)
    console.print(f"[bold]headline[/bold]: {escape(words.result_headline(result))}")
    for run in runs:
        figures = words.extra_items(run.summary.extra)
        if figures:
            console.print(f"[bold]{escape(run.label)}[/bold]: "
                          + escape("; ".join(f"{label} {value}" for label, value in figures)))
    limits = {words.goodput_words(r.summary) for r in runs if r.summary.goodput_limits}
    for text in sorted(limits):
        console.print(f"goodput: completed requests per second each meeting {escape(text)} (per request, --goodput)")
    for run in runs:
        for check in run.summary.slo_checks or ():
            colour = "green" if check.passed else "red"
            console.print(f"[{colour}]SLO {escape(run.label)}: {escape(check.name)}: "
                          f"{escape(words.slo_check_words(check))}: {'met' if check.passed else 'failed'}[/]")
    for run in runs:
        for warning in words.run_warnings(run, slo=False):
            console.print(f"[yellow]warning: {escape(warning)}[/]")
    if with_slo:
        failed = [r.label for r in runs if any(not c.passed for c in r.summary.slo_checks or ())]
        checked = [r for r in runs if r.summary.slo_checks]
        console.print(f"[bold red]SLO failed at {escape(', '.join(failed))}[/]" if failed
                      else f"[bold green]SLO met by {'every run' if len(checked) > 1 else escape(checked[0].label)}[/]")


def _rates(run) -> str:
    """'16 / 15.8 / 10.1': the request rate asked, sent and completed (words.rate_words, short)."""
    asked, s = words.asked_rate(run), run.summary
    if asked is None:
        return "-"
    return " / ".join([f"{asked:g}"] + [words.rate(x) if x is not None else "-"
                                        for x in (s.sent_rate, s.completion_rate)])


def _slo_cell(run) -> str:
    checks = run.summary.slo_checks or ()
    if not checks:
        return "-"
    failed = [c.name for c in checks if not c.passed]
    return "[red]failed: " + escape(", ".join(failed)) + "[/]" if failed else "[green]met[/]"


def write_html_report(out_dir: Path, console: Console | None = None) -> Path | None:
    """out_dir/report.html from out_dir/result.json, loading plotly.min.js from the output folder
    above it (written once, shared by every run's page there). The measurements are already written,
    so a failure here is a warning, never a lost run."""
    from ..report.render import render_report

    console = console or Console(width=160)
    html = out_dir / "report.html"
    try:
        render_report([out_dir / "result.json"], html, script_root=out_dir.parent)
    except Exception as e:  # noqa: BLE001
        console.print(f"[yellow]warning: HTML report failed: {escape(type(e).__name__)}: {escape(str(e))}[/]")
        return None
    console.print(f"wrote {escape(str(html))}")
    return html
