"""What a bench run leaves behind: its runs as a terminal table (rich), its per-request rows as CSV
files (pandas), and its HTML report beside the result."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

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
    table = Table(title=f"{result.run_id} on {result.device.get('name', '?')}")
    for col in ("run", "requests", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "E2E p50 ms",
                "errors"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run in result.runs:
        s = run.summary
        table.add_row(run.label, str(s.num_requests), f"{s.output_throughput:.1f}", _ms(s.ttft), _ms(s.ttft, "p99"),
                      _ms(s.tpot), _ms(s.e2e), str(s.num_errors))
    console.print(table)
    for run in result.runs:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.summary.extra.items()}
        if shown:
            console.print(f"[bold]{run.label}[/bold]: {shown}")


def write_html_report(out_dir: Path, console: Console | None = None) -> Path | None:
    """out_dir/report.html from out_dir/result.json. The measurements are already written, so a
    failure here is a warning, never a lost run."""
    from ..report.render import render_report

    console = console or Console(width=160)
    html = out_dir / "report.html"
    try:
        render_report([out_dir / "result.json"], html)
    except Exception as e:  # noqa: BLE001
        console.print(f"[yellow]warning: HTML report failed: {type(e).__name__}: {e}[/]")
        return None
    console.print(f"wrote {html}")
    return html
