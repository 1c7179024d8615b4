"""What `opsctl gate` writes: the console table, markdown for a PR comment, an HTML page, and the
JSON that github-action-benchmark charts ("customBiggerIsBetter" / "customSmallerIsBetter" tools).

Judging is toolkit.gate's; this module only renders Verdicts and calibration Proposals.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from rich.console import Console
from rich.table import Table

from .gate import Proposal, Verdict, all_passed

# github-action-benchmark takes one direction per file (its `tool:` input), so each gets its own.
BENCHMARK_FILES = {"higher": "bigger_is_better.json", "lower": "smaller_is_better.json"}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _change(verdict: Verdict) -> str:
    return "-" if verdict.change is None else f"{verdict.change:+.1%}"


def _rule(verdict: Verdict) -> str:
    """The gate in words: `>= 0.85 x baseline`, `>= 1 (limit)`, both joined."""
    g = verdict.gate
    sign = ">=" if g.direction == "higher" else "<="
    parts = []
    if g.tolerance is not None:
        parts.append(f"{sign} {g.tolerance:g} x baseline")
    if g.limit is not None:
        parts.append(f"{sign} {g.limit:g}")
    return " and ".join(parts)


def rows(verdicts: list[Verdict]) -> list[dict]:
    """One dict of display strings per gate, shared by every format."""
    out = []
    for v in verdicts:
        g = v.gate
        what = f"{g.run} / {g.peer} {g.field}" if g.kind == "ratio_to_peer" else f"{g.run} {g.field}"
        out.append({
            "status": v.status, "name": g.name, "what": what, "kind": g.kind, "unit": g.unit,
            "current": _number(v.current), "samples": ", ".join(_number(s) for s in v.samples) or "-",
            "baseline": _number(v.baseline), "change": _change(v), "rule": _rule(v),
            "bound": _number(v.bound), "note": v.note})
    return out


def headline(verdicts: list[Verdict]) -> str:
    failed = [v.gate.name for v in verdicts if v.passed is False]
    judged = sum(v.passed is not None for v in verdicts)
    if failed:
        return f"{len(failed)} of {judged} gates failed: {', '.join(failed)}"
    return f"all {judged} gates hold"


def print_console(verdicts: list[Verdict], console: Console) -> None:
    table = Table(title="performance gates (median of the repeats)")
    for column in ("", "gate", "median", "repeats", "baseline", "change", "rule", "bound", "note"):
        table.add_column(column, justify="right" if column in ("median", "baseline", "change", "bound") else "left")
    styles = {"pass": "green", "FAIL": "bold red", "skip": "dim"}
    for row in rows(verdicts):
        table.add_row(f"[{styles[row['status']]}]{row['status']}[/]", f"{row['name']}\n[dim]{row['what']}[/]",
                      f"{row['current']} {row['unit']}", row["samples"], row["baseline"], row["change"],
                      row["rule"], row["bound"], row["note"])
    console.print(table)
    console.print(("[green]" if all_passed(verdicts) else "[bold red]") + headline(verdicts) + "[/]")


def markdown(verdicts: list[Verdict]) -> str:
    """A GitHub-flavoured table for a PR comment; `|` in free text escaped so cells stay cells."""
    icon = {"pass": "✅ pass", "FAIL": "❌ FAIL", "skip": "⏭ skip"}

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"### Performance gates: {headline(verdicts)}", "",
             "| | gate | median | repeats | baseline | change | rule | note |",
             "|---|---|---:|---|---:|---:|---|---|"]
    for row in rows(verdicts):
        lines.append("| " + " | ".join(cell(c) for c in (
            icon[row["status"]], f"{row['name']} ({row['what']})", f"{row['current']} {row['unit']}",
            row["samples"], row["baseline"], row["change"], row["rule"], row["note"])) + " |")
    return "\n".join(lines) + "\n"


def html(verdicts: list[Verdict], sources: list[str], baseline: str | None) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("toolkit.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("gate.html.j2").render(
        rows=rows(verdicts), headline=headline(verdicts), passed=all_passed(verdicts), sources=sources,
        baseline=baseline, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def benchmark_entries(verdicts: list[Verdict]) -> dict[str, list[dict]]:
    """github-action-benchmark's custom format, by direction: [{"name", "unit", "value", "range", "extra"}]."""
    out: dict[str, list[dict]] = {"higher": [], "lower": []}
    for v in verdicts:
        if v.current is None:
            continue  # skipped: nothing measured to chart
        spread = (max(v.samples) - min(v.samples)) / 2
        out[v.gate.direction].append({
            "name": v.gate.name, "unit": v.gate.unit, "value": v.current, "range": f"± {spread:.4g}",
            "extra": f"median of {len(v.samples)} repeats; gate {v.status}"})
    return out


def write_benchmark_json(verdicts: list[Verdict], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for direction, entries in benchmark_entries(verdicts).items():
        path = directory / BENCHMARK_FILES[direction]
        path.write_text(json.dumps(entries, indent=2) + "\n")
        written.append(path)
    return written


def print_proposals(proposals: list[Proposal], count: int, repeats: int, console: Console) -> None:
    """Calibration: the proposed tolerances, as a table and as YAML lines to paste into the gates file."""
    judged = "one run" if repeats == 1 else f"the median of {repeats} runs"
    table = Table(title=f"proposed tolerances from {count} results: max(3 x MAD spread of {judged}, 5 %)")
    for column in ("gate", "median", "spread", "current tolerance", "proposed"):
        table.add_column(column, justify="left" if column == "gate" else "right")
    for p in proposals:
        table.add_row(p.gate.name, f"{_number(p.median)} {p.gate.unit}", f"{p.spread:.1%}",
                      f"{p.gate.tolerance:g}", f"{p.tolerance:g}")
    console.print(table)
    for p in proposals:
        console.print(f"  {p.gate.name}: tolerance: {p.tolerance:g}", highlight=False)
