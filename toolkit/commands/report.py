"""`opsctl report INPUT [INPUT ...] [-o OUT]`: one HTML page comparing results.

    opsctl report reports/gpu-20260101-120000                 # a folder of runs, every result in it
    opsctl report reports/offline-1 http-2 -o compare.html    # one self-contained file, to mail or archive
    opsctl report reports/examples/h100 -o h100-report        # a folder: index.html + plotly.min.js

Each INPUT is a result.json, a run folder holding one, a run id under reports/, or a folder of runs:
every result.json below it and the result JSON files directly in it (http_vs_offline, kernel bench
and profile_step JSON included). Charts are grouped by workload; each result's headline is the
figure its workload is about.

Where the page and plotly.js (4.6 MB) go:
  -o FILE.html   one self-contained page, plotly.js inlined
  -o DIR         DIR/index.html beside DIR/plotly.min.js (the folder moves as one)
  no -o          reports/report-<time>.html, loading reports/plotly.min.js: the one copy every page
                 under reports/ shares (opsctl bench's reports/<run-id>/report.html too)
An input that cannot be found or read is one `error:` line on stderr and exit code 2, and nothing
is written.
"""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    runs: Annotated[list[str], typer.Argument(
        help="Results: result.json files, run folders, folders of runs, or run ids under reports/.",
        show_default=False)],
    *,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="FILE.html: one self-contained page; DIR: DIR/index.html + DIR/plotly.min.js "
                               "(default: reports/report-<time>.html sharing reports/plotly.min.js).")] = None,
    open_browser: Annotated[bool, typer.Option(
        "--open", help="Open the page in the default web browser when written.")] = False,
) -> None:
    """Write one HTML page (headlines, charts per workload, per-run tables, configuration) comparing runs."""
    from ..report.render import REPORTS_DIR, ReportError, render_report

    script_root = None
    if output is None:
        output = REPORTS_DIR / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}.html"
        script_root = REPORTS_DIR
    try:
        path = render_report(runs, output, script_root=script_root)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
