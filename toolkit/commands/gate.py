"""`opsctl gate`: judge bench results against performance gates (ci/gates.yaml) and a baseline.

    opsctl gate --current r1 --current r2 --current r3 --baseline ci/baselines/cpu-smollm2.json
    opsctl gate reports/run-a reports/run-b reports/run-c --baseline B.json --markdown gate.md --html gate.html
    opsctl gate --calibrate r1 r2 r3 r4 r5     # propose tolerances from the spread of N results

Each RESULT is a result.json or a run folder holding one (repeats of the same bench: each gate is
judged on their median). Exit codes: 0 every gate holds; 1 a gate failed; 2 inputs missing or
malformed (one `error:` line, nothing judged).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_GATES = Path("ci/gates.yaml")


def gate(
    results: Annotated[Optional[list[Path]], typer.Argument(
        help="Result files or run folders (repeats of one bench), as well as or instead of --current.",
        show_default=False)] = None,
    *,
    current: Annotated[Optional[list[Path]], typer.Option(
        "--current", help="A result file or run folder to judge; repeat for each repeat.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        help="The result the gates with a tolerance compare with (same workload; same device class for "
             "absolute gates).")] = None,
    gates: Annotated[Path, typer.Option(help="The gates file.")] = DEFAULT_GATES,
    min_repeats: Annotated[Optional[int], typer.Option(
        min=1, help="Fewest result files to judge (default: the gates file's min_repeats).")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the table as markdown (a PR comment).")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Also write the table as an HTML page.")] = None,
    benchmark_json: Annotated[Optional[Path], typer.Option(
        help="A folder for github-action-benchmark's JSON: bigger_is_better.json (tool customBiggerIsBetter) "
             "and smaller_is_better.json (customSmallerIsBetter).")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Judge nothing: propose each gate's tolerance from the spread of the results "
                            "(max(3 x the MAD spread of a median of min_repeats runs, 5 %)).")] = False,
) -> None:
    """Judge results against performance gates: exit 0 all hold, 1 a gate failed, 2 bad input."""
    from dataclasses import replace

    from rich.console import Console

    from .. import gate_report
    from ..gate import GateInputError, all_passed, judge, load_gates, load_result
    from ..gate import calibrate as propose

    paths = [*(current or []), *(results or [])]
    console = Console(width=160)
    try:
        if not paths:
            raise GateInputError("give the results to judge: --current RESULT (repeat it) or RESULT...")
        spec = load_gates(gates)
        if min_repeats is not None:
            spec = replace(spec, min_repeats=min_repeats)
        loaded = {str(p): load_result(p) for p in paths}
        if len(loaded) < len(paths):
            raise GateInputError("a result file is given twice: each repeat counts once")
        if calibrate:
            gate_report.print_proposals(propose(spec, loaded), len(loaded), spec.min_repeats, console)
            return
        base = load_result(baseline, "baseline") if baseline is not None else None
        verdicts = judge(spec, loaded, base, str(baseline))
    except GateInputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    gate_report.print_console(verdicts, console)
    if markdown is not None:
        _write(markdown, gate_report.markdown(verdicts))
    if html is not None:
        _write(html, gate_report.html(verdicts, list(loaded), str(baseline) if baseline else None))
    if benchmark_json is not None:
        for path in gate_report.write_benchmark_json(verdicts, benchmark_json):
            typer.echo(f"wrote {path}")
    raise typer.Exit(0 if all_passed(verdicts) else 1)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    typer.echo(f"wrote {path}")
