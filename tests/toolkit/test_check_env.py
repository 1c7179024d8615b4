"""`opsctl check-env`: versions, and a plain "no NVIDIA GPU" on machines without one (exit 0 either way)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.commands import check_env as check_env_cmd
from toolkit.profiles import detect_local_gpus

REPO = Path(__file__).resolve().parents[2]


def test_check_env_without_gpu_says_so():
    if detect_local_gpus()[0]:
        pytest.skip("this machine has an NVIDIA GPU")
    proc = subprocess.run([sys.executable, "-m", "toolkit", "check-env"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "no NVIDIA GPU found (NVML: " in proc.stdout and "opsctl runs on CPU (profile 'cpu')" in proc.stdout
    for name in ("python", "torch", "triton", "transformers", "opsctl"):
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_env_json(monkeypatch):
    monkeypatch.setattr(check_env_cmd, "detect_local_gpus",
                        lambda: ([], "no NVIDIA GPU found (NVML: NVML Shared Library Not Found)"))
    result = CliRunner().invoke(app, ["check-env", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["versions"]) == {"python", "torch", "triton", "transformers", "opsctl", "cuda"}
    assert data["gpus"] == [] and data["profile"] == "cpu" and data["no_gpu_reason"].startswith("no NVIDIA GPU")
    assert data["host"]["cpu_count"] >= 1


def test_check_env_lists_gpus_with_their_profiles(monkeypatch):
    monkeypatch.setattr(check_env_cmd, "detect_local_gpus", lambda: (
        [(0, "NVIDIA H100 80GB HBM3", 79.65), (1, "NVIDIA B200", 178.0)], ""))
    result = CliRunner().invoke(app, ["check-env"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "NVIDIA H100 80GB HBM3" in result.output and "h100-sxm" in result.output and "79.7 GiB" in result.output
    assert "none matches: pass --gpu NAME" in result.output
    assert "no NVIDIA GPU" not in result.output
