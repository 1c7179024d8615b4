"""Hardware profiles: every YAML validates, bad ones fail with one clear line, `--gpu auto` detection."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from toolkit import profiles as prof
from toolkit.cli import app
from toolkit.profiles import ProfileError

REPO = Path(__file__).resolve().parents[2]
CARDS = ("rtx4090", "rtx3090", "a10", "h100-sxm", "h200", "a100-80g", "l40s", "cpu")


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _bad_profile_dir(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "profiles" / "rtx4090.yaml").read_text())
    data.update(changes)
    (tmp_path / "rtx4090.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_every_profile_validates():
    profiles = prof.load_profiles()
    assert sorted(profiles) == sorted(CARDS)
    for name, p in profiles.items():
        assert p.name == name and p.source and p.memory_gib > 0 and p.memory_bandwidth_gbs > 0
    # Datasheet spot checks: GeForce BF16 is the FP32-accumulate figure (half the FP16-accumulate one).
    assert profiles["rtx4090"].bf16_tflops == 165.2 and profiles["rtx4090"].int8_tops == 660.6
    assert profiles["rtx3090"].bf16_tflops == 71 and "unconfirmed" in profiles["rtx3090"].source
    assert profiles["h100-sxm"].bandwidth() == (3000, "measured")
    assert profiles["h100-sxm"].tensor_tflops() == (790, "measured")
    assert profiles["h200"].bandwidth() == (4800, "datasheet")
    assert [p.memory_gib for p in map(profiles.get, ("rtx4090", "rtx3090", "a10"))] == [24, 24, 24]
    assert profiles["rtx4090"].memory_bytes == 24 * 2**30


def test_unknown_field_is_one_clear_line(tmp_path):
    root = _bad_profile_dir(tmp_path, memory_gb=24)
    with pytest.raises(ProfileError) as info:
        prof.load_profiles(root)
    message = str(info.value)
    assert "rtx4090.yaml" in message and "memory_gb: unknown field" in message and "\n" not in message


def test_negative_number_is_refused(tmp_path):
    root = _bad_profile_dir(tmp_path, memory_bandwidth_gbs=-1008)
    with pytest.raises(ProfileError, match=r"memory_bandwidth_gbs: Input should be greater than 0 \(got -1008\)"):
        prof.load_profiles(root)


def test_missing_field_and_env_override(tmp_path, monkeypatch):
    data = yaml.safe_load((REPO / "profiles" / "rtx4090.yaml").read_text())
    del data["source"]
    (tmp_path / "rtx4090.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv(prof.PROFILES_ENV, str(tmp_path))
    with pytest.raises(ProfileError, match="source: missing"):
        prof.load_profiles()
    shutil.copy(REPO / "profiles" / "a10.yaml", tmp_path / "rtx4090.yaml")
    with pytest.raises(ProfileError, match="differs from the file name"):
        prof.load_profiles()


def test_unknown_profile_lists_known_names():
    with pytest.raises(ProfileError) as info:
        prof.get_profile("rtx5090")
    assert isinstance(info.value, ValueError)
    assert "unknown GPU profile 'rtx5090'" in str(info.value)
    assert all(name in str(info.value) for name in CARDS)
    assert prof.get_profile("RTX4090").name == "rtx4090"


@pytest.mark.parametrize("device, expected", [
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA GeForce RTX 3090", "rtx3090"), ("NVIDIA A10", "a10"),
    ("NVIDIA A100-SXM4-80GB", "a100-80g"), ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H200", "h200"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA A10G", None), ("NVIDIA L40", None), ("NVIDIA H100 PCIe", None),
])
def test_profile_for_gpu_name(device, expected):
    found = prof.profile_for_gpu_name(device)
    assert (found.name if found else None) == expected


def test_auto_without_gpu_picks_cpu(monkeypatch):
    gpus, reason = prof.detect_local_gpus()
    if gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert reason.startswith("no NVIDIA GPU found (NVML: ")
    resolved = prof.resolve_gpu("auto")
    assert resolved.profile.name == "cpu"
    assert "no NVIDIA GPU found" in resolved.note and "'cpu' profile" in resolved.note


def test_auto_with_gpu(monkeypatch):
    monkeypatch.setattr(prof, "detect_local_gpus", lambda: ([(0, "NVIDIA GeForce RTX 4090", 23.99)], ""))
    resolved = prof.resolve_gpu("auto")
    assert resolved.profile.name == "rtx4090" and "NVIDIA GeForce RTX 4090" in resolved.note
    monkeypatch.setattr(prof, "detect_local_gpus", lambda: ([(0, "NVIDIA B200", 180.0)], ""))
    with pytest.raises(ProfileError, match=r"no profile matches GPU 0 \(NVIDIA B200, 180.0 GiB\): pass --gpu NAME"):
        prof.resolve_gpu("auto")


def test_nvml_error_is_a_reason(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    gpus, reason = prof.detect_local_gpus()
    assert gpus == [] and reason.startswith("no NVIDIA GPU found (NVML: ") and "\n" not in reason


def test_profiles_list_and_show():
    result = _invoke("profiles", "list")
    assert result.exit_code == 0, result.output
    for name in CARDS:
        assert name in result.output
    assert "165.2" in result.output and "1008 GB/s" in result.output
    shown = _invoke("profiles", "show", "h100-sxm")
    assert shown.exit_code == 0 and "measured" in shown.output and "790" in shown.output
    # The calibration block reads as rows of figures with their runs, not as a Python dict.
    assert "  gemm_efficiency" in shown.output and "0.516: the fraction" in shown.output and "{'" not in shown.output
    data = json.loads(_invoke("profiles", "show", "rtx3090", "--json").output)
    assert data["nvlink_gbs"] == 112.5 and data["arch"] == "sm_86"


def test_profiles_show_unknown_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "profiles", "show", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown GPU profile 'nope'"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
