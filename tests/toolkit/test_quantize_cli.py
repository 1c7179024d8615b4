"""`opsctl quantize awq` / `opsctl quantize rtn`: bad input is one `error:` line and exit code 2, found
before any weight is read (the weight readers are made to fail, so a late check would show); good input
writes the directory. In-process (CliRunner) on the tiny presets; one real process for the traceback-free
error path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli import app

REPO = Path(__file__).resolve().parents[2]
FAST = ["--calib-dataset", "random", "--calib-samples", "2", "--calib-seqlen", "32", "--w-group-size", "16"]


# Tiny models on one thread (tests/conftest.py says why); slow tests keep every thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread_unless_slow")


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Any weight read fails loudly: the checks under test must all come before one."""
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a weight was read before the input was checked")

    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["quantize", *map(str, args)], env={"COLUMNS": "200"})


def _one_error_line(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def quantized_tiny(tiny_model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "rtn"
    result = _invoke("rtn", tiny_model_dirs["tiny-llama"], "--work-dir", out, "--w-group-size", "16")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("command", ["awq", "rtn"])
def test_bad_options(no_weight_reads, tiny_model_dirs, tmp_path, command):
    model = tiny_model_dirs["tiny-llama"]
    extra = FAST if command == "awq" else ["--w-group-size", "16"]
    _one_error_line(_invoke(command, model), "--work-dir")
    _one_error_line(_invoke(command, model, "--work-dir", tmp_path / "o", *extra, "--w-bits", "8"), "--w-bits 8", "4")
    # tiny-llama's hidden size is 64: a group of 128 cannot fit; the line names a size that does
    _one_error_line(_invoke(command, model, "--work-dir", tmp_path / "o", "--w-group-size", "128"),
                    "--w-group-size 128", "64, 176", "e.g. 16")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    _one_error_line(_invoke(command, model, "--work-dir", tmp_path / "full", *extra), "not empty", "remove")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    _one_error_line(_invoke(command, tmp_path / "nowhere", "--work-dir", tmp_path / "o", *extra), "not found")
    _one_error_line(_invoke(command, "preset:tiny-llama", "--work-dir", tmp_path / "o", *extra), "random weights")
    assert not (tmp_path / "o").exists()


def test_bad_calibration_options(no_weight_reads, tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["tiny-llama"]
    out = ["--work-dir", tmp_path / "o"]
    _one_error_line(_invoke("awq", model, *out, "--calib-dataset", "wikitext2"), "unknown --calib-dataset", "builtin")
    _one_error_line(_invoke("awq", model, *out, "--calib-dataset", tmp_path / "no.jsonl"), "no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    _one_error_line(_invoke("awq", model, *out, "--calib-dataset", bad), "line 2")
    _one_error_line(_invoke("awq", model, *out, "--calib-samples", "0"), "--calib-samples 0")
    _one_error_line(_invoke("awq", model, *out, "--batch-size", "-1"), "--batch-size -1")


def test_broken_or_quantized_models(no_weight_reads, tiny_model_dirs, quantized_tiny, tmp_path):
    out = ["--work-dir", tmp_path / "o", *FAST]
    _one_error_line(_invoke("awq", quantized_tiny, *out), "already quantized", "awq")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dirs["tiny-llama"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    _one_error_line(_invoke("awq", broken, *out), "corrupt", "model.safetensors")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _one_error_line(_invoke("rtn", broken, "--work-dir", tmp_path / "o", "--w-group-size", "16"), "corrupt")
    (broken / "config.json").write_text('{"model_type": "llama",')
    _one_error_line(_invoke("awq", broken, *out), "config.json")
    assert not (tmp_path / "o").exists()


def test_awq_writes_a_loadable_directory(tiny_model_dirs, tmp_path):
    out = tmp_path / "awq"
    result = _invoke("awq", tiny_model_dirs["tiny-qwen2"], "--work-dir", out, *FAST, "--search-scale")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"written to {out}" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 16 and config["quantization_config"]["version"] == "gemm"
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    again = _invoke("awq", tiny_model_dirs["tiny-qwen2"], "--work-dir", out, *FAST)
    _one_error_line(again, "not empty")


def test_errors_are_one_line_in_a_real_process(tmp_path):
    """No traceback reaches the user from `python -m toolkit` either."""
    done = subprocess.run([sys.executable, "-m", "toolkit", "quantize", "awq", str(tmp_path / "missing"),
                           "--work-dir", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OPSCTL_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: model not found"), done.stderr


@pytest.mark.slow
def test_rtn_of_the_embedded_default_model(default_model_dir, tmp_path):
    """~30 s: MODEL left out is SmolLM2-135M-Instruct; its hidden size 576 takes group size 64, said once."""
    result = _invoke("rtn", "--work-dir", tmp_path / "rtn")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "group size 64" in result.stderr and "RTN 4-bit g64 model written" in result.stdout
    config = json.loads((tmp_path / "rtn" / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 64 and config["tie_word_embeddings"] is True
