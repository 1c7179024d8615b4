"""`opsctl check-env`: library versions, the GPUs NVML sees with their memory, and the matching profile.

Exits 0 with or without a GPU: on a machine without one it says so plainly and names the cpu
profile, since opsctl runs there too (slowly).
"""
from __future__ import annotations

import json
import os
import platform
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..profiles import (
    CPU_PROFILE,
    ProfileError,
    detect_local_gpus,
    load_profiles,
    profile_for_gpu_name,
)
from ..system_info import versions

_PACKAGES = ("torch", "triton", "transformers", "opsctl")


def check_env(
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show Python, torch (and its CUDA build), triton, transformers and opsctl versions, and the GPUs."""
    with Console(stderr=True).status("importing torch and asking NVML for GPUs"):
        report = environment_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_report(report)


def environment_report() -> dict:
    """Versions, CUDA as torch sees it, host CPU and memory, NVML's GPUs with their profiles."""
    report: dict = {"versions": versions(_PACKAGES), "torch_cuda_build": None, "cuda_available": False,
                    "host": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                             "memory_gib": _host_memory_gib()}}
    try:
        import torch

        report["torch_cuda_build"] = torch.version.cuda
        report["cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:
        pass
    try:
        profiles = load_profiles()
        profile_error = None
    except ProfileError as e:
        profiles, profile_error = {}, str(e)
    gpus, reason = detect_local_gpus()
    report["gpus"] = []
    for index, name, memory_gib in gpus:
        profile = profile_for_gpu_name(name, profiles) if profiles else None
        report["gpus"].append({"index": index, "name": name, "memory_gib": round(memory_gib, 2),
                               "profile": profile.name if profile else None})
    report["no_gpu_reason"] = reason or None
    report["profile"] = (report["gpus"][0]["profile"] if gpus else (CPU_PROFILE if CPU_PROFILE in profiles else None))
    report["profile_error"] = profile_error
    return report


def _print_report(report: dict) -> None:
    console = Console(highlight=False)
    versions = dict(report["versions"])
    torch_line = versions.pop("torch")
    if report["torch_cuda_build"]:
        torch_line += f" (CUDA {report['torch_cuda_build']} build; CUDA available: " \
                      f"{'yes' if report['cuda_available'] else 'no'})"
    elif torch_line != "not installed":
        torch_line += " (CPU-only build)"
    table = Table(show_header=False, title="Environment", title_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    table.add_row("python", versions.pop("python"))
    table.add_row("torch", torch_line)
    for name, version in versions.items():
        table.add_row(name, version)
    host = report["host"]
    memory = f", {host['memory_gib']:.1f} GiB" if host["memory_gib"] else ""
    table.add_row("host", f"{host['cpu']}, {host['cpu_count']} cores{memory}")
    console.print(table)
    if report["gpus"]:
        gpus = Table(title="GPUs (NVML)", title_justify="left")
        for column in ("index", "name", "memory", "profile"):
            gpus.add_column(column)
        for gpu in report["gpus"]:
            gpus.add_row(str(gpu["index"]), gpu["name"], f"{gpu['memory_gib']:.1f} GiB",
                         gpu["profile"] or "none matches: pass --gpu NAME")
        console.print(gpus)
    else:
        console.print(f"{report['no_gpu_reason']}; opsctl runs on CPU (profile '{report['profile'] or CPU_PROFILE}')")
    if report["profile_error"]:
        console.print(f"profiles: {report['profile_error']}")


def _host_memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None
