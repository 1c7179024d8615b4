"""`opsctl profiles list` and `opsctl profiles show NAME`: the hardware profiles in profiles/*.yaml.

Both read and validate every profile, so a broken YAML is reported (one line) before anything uses it.
"""
from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..profiles import (CALIBRATION_SOURCES, Calibration, HardwareProfile, ProfileError, get_profile, load_profiles,
                        profiles_dir)

app = typer.Typer(help="List and show the hardware profiles (one YAML per card under profiles/).",
                  no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("list")
def list_profiles(*, as_json: JsonFlag = False) -> None:
    """Show every profile: memory, bandwidth, tensor throughput, FP8, power and links."""
    profiles = _or_exit(load_profiles)
    if as_json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles.values()], indent=2))
        return
    table = Table(title=f"Hardware profiles ({profiles_dir()})", title_justify="left")
    for column, justify in (("name", "left"), ("card", "left"), ("memory", "right"), ("bandwidth", "right"),
                            ("bf16 TFLOPS", "right"), ("int8 TOPS", "right"), ("fp8", "center"),
                            ("TDP", "right"), ("links", "left")):
        table.add_column(column, justify=justify, no_wrap=column in ("name", "memory", "bandwidth"))
    for p in profiles.values():
        table.add_row(p.name, p.display_name, f"{p.memory_gib:g} GiB", f"{p.memory_bandwidth_gbs:g} GB/s",
                      f"{p.bf16_tflops:g}", f"{p.int8_tops:g}", "yes" if p.fp8_supported else "no",
                      f"{p.tdp_w:g} W", p.interconnect)
    _console().print(table)
    _console().print("Dense tensor figures from datasheets (FP16/BF16 with FP32 accumulate); "
                     "`opsctl profiles show NAME` gives sources and measured figures.")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name, e.g. rtx4090 (see `opsctl profiles list`).")],
    *,
    as_json: JsonFlag = False,
) -> None:
    """Show every field of one profile, with the source of its figures."""
    profile = _or_exit(get_profile, name)
    if as_json:
        print(json.dumps(profile.model_dump(mode="json"), indent=2))
        return
    _console().print(_fields_table(profile))


def _fields_table(profile: HardwareProfile) -> Table:
    table = Table(title=f"{profile.display_name} ({profile.name})", title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in profile.model_dump(mode="json").items():
        if key == "calibration" and profile.calibration is not None:
            for row in _calibration_rows(profile.calibration):
                table.add_row(*row)
            continue
        if key == "measured" and value:
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        elif value is None:
            value = "-"
        table.add_row(key, str(value))
    return table


def _calibration_rows(calibration: Calibration) -> list[tuple[str, str]]:
    """The calibration block as a headline row, then one indented row per figure with the runs it came
    from (read like the other fields, not a Python dict with its Nones and quotes in one cell)."""
    units = {"usable_memory_gib": " GiB"}
    present = [f for f in CALIBRATION_SOURCES if getattr(calibration, f) is not None]
    missing = [f for f in CALIBRATION_SOURCES if f not in present]
    head = "from committed runs (python -m toolkit.calibrate)"
    if missing:
        # Say which are absent: the planner then takes a default from other cards or the roofline.
        head += f"; not calibrated: {', '.join(missing)}"
    rows = [("calibration", head)]
    for figure in present:
        source = getattr(calibration, CALIBRATION_SOURCES[figure])
        rows.append((f"  {figure}", f"{getattr(calibration, figure):g}{units.get(figure, '')}: {source}"))
    return rows


def _or_exit(function, *args):
    """Call `function`; a ProfileError becomes one line on stderr and exit status 2."""
    try:
        return function(*args)
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)  # piped: do not fold the table at 80 columns
    return console
