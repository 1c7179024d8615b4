"""`opsctl report RUN [RUN ...] -o FILE.html`: one self-contained HTML page comparing result files.

    opsctl report reports/offline-20260101-120000 bench-http-20260101-130000 -o compare.html

Each RUN is a result.json, a run directory holding one, or a run id under reports/. A run that
cannot be found or read is one line on stderr and exit code 2.
"""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    runs: Annotated[list[str], typer.Argument(
        help="Results to compare: result.json files, run directories, or run ids under reports/.",
        show_default=False)],
    *,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="HTML file to write (default: reports/report-<time>.html).")] = None,
    open_browser: Annotated[bool, typer.Option(
        "--open", help="Open the page in the default web browser when written.")] = False,
) -> None:
    """Write one HTML page (charts, per-run tables, configuration and versions) comparing runs."""
    from ..report.render import ReportError, render_report

    output = output or Path("reports") / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}.html"
    try:
        path = render_report(runs, output)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
