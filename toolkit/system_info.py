"""What a result was measured on: device, library versions, git commit, command line.

Every result file carries this, so a number is never separated from the machine and code behind it.
"""
from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "triton", "transformers", "fastapi", "uvicorn", "locust", "pandas", "opsctl")


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Python's version and each installed package's ("not installed" where missing)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import torch

        out["cuda"] = torch.version.cuda or "none"
    except ImportError:
        pass
    return out


def git_commit() -> str:
    """HEAD's sha (+ "-dirty"); OPSCTL_GIT_COMMIT overrides it for copies of the tree without history."""
    if os.environ.get("OPSCTL_GIT_COMMIT"):
        return os.environ["OPSCTL_GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not re.fullmatch(r"[0-9a-f]{40}", sha):  # e.g. "HEAD" where the repository has no commits
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def device_info() -> dict:
    """The accelerator (name, memory, count) or the CPU when there is none."""
    info: dict = {"host": platform.node(), "cpu": platform.processor() or platform.machine()}
    try:
        info["cpu_count"] = os.cpu_count()
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(kind="cuda", name=props.name, count=torch.cuda.device_count(),
                        memory_gib=round(props.total_memory / 2**30, 1),
                        capability=f"{props.major}.{props.minor}")
            return info
    except ImportError:
        pass
    info.update(kind="cpu", name=info["cpu"], count=1, cpu_model=cpu_model())
    return info


def cpu_model() -> str:
    """The processor's marketing name ("AMD EPYC 9R14", or "AMD EPYC" in some VMs): what tells two CPU
    machines' absolute timings apart (platform.processor() says only "x86_64" on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The command that produced a result, as it can be pasted into a shell.

    `opsctl ...` however it was started (the console script, or `python -m toolkit`, whose argv[0]
    is toolkit/__main__.py); `python -m toolkit.x.y ...` for a module of this package run with -m
    (`python -m pkg` for another package's __main__.py); arguments quoted where the shell needs it.
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path("opsctl")
    package = Path(__file__).resolve().parent
    try:
        inside = program.resolve().relative_to(package)
    except (OSError, ValueError):
        inside = None
    if program.name == "opsctl" or inside == Path("__main__.py"):
        head = ["opsctl"]
    elif inside is not None and inside.suffix == ".py":
        module = ".".join((package.name, *inside.with_suffix("").parts))
        head = ["python", "-m", module.removesuffix(".__main__")]
    elif program.name == "__main__.py":  # another package run with -m
        head = ["python", "-m", program.parent.name]
    else:
        head = [program.name]
    return shlex.join(head + _redacted(argv[1:]))


_SECRET_OPTIONS = ("--api-key", "--api-keys")


def _redacted(args: list[str]) -> list[str]:
    """The arguments with the values of key options replaced: a result file is shared, a key is not."""
    out, hide_next = [], False
    for arg in args:
        if hide_next:
            out.append("REDACTED")
            hide_next = False
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(o + "=" for o in _SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=REDACTED")
        else:
            out.append(arg)
    return out
