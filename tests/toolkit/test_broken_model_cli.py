"""A broken model file is one `error: ...` line and exit code 2 from every command that takes a model.

Real `python -m toolkit` processes (a traceback only shows there: CliRunner would hand it back as an
exception), each fed a file built here: a GGUF cut inside its header or its tensor data, random bytes
named .gguf, an HF directory whose config.json or model.safetensors is damaged. The model cache is a
fresh folder, so nothing the user has converted is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--device", "cpu", "--session-len", "256", "--cache-block-seq-len", "16"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One argument list per command that takes a model; the model path goes right after the command.
COMMANDS = {
    "chat": ["chat", "{model}", *SMALL],
    "bench-offline": ["bench", "offline", "{model}", "--num-requests", "1", "--no-report", "-o", "{tmp}/reports",
                      *SMALL],
    "plan": ["plan", "{model}", "--gpu", "h100-sxm"],
    "serve": ["serve", "{model}", "--server-port", "{port}", *SMALL],
}


def _write_gguf(path: Path) -> Path:
    """A small but real GGUF (llama metadata, a 2000-token vocabulary, one f32 tensor)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_token_list([f"token-{i}" for i in range(2000)])
    writer.add_tensor("token_embd.weight", np.ones((2000, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _truncated(source: Path, target: Path, size: int) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    whole = _write_gguf(root / "whole.gguf")
    size = whole.stat().st_size
    header_size = size - 2000 * 16 * 4  # the tensor data is the file's tail
    assert header_size > 20_000  # the vocabulary makes the header long: the cuts below land inside it
    models = {
        "gguf-cut-in-header": _truncated(whole, root / "cut-in-header.gguf", header_size // 2),
        "gguf-cut-in-data": _truncated(whole, root / "cut-in-data.gguf", header_size + 1000),
        "random-bytes-gguf": root / "random.gguf",
    }
    models["random-bytes-gguf"].write_bytes(np.random.default_rng(0).bytes(5000))
    bad_config = root / "bad-config"
    shutil.copytree(tiny_model_dirs["tiny-llama"], bad_config)
    (bad_config / "config.json").write_text('{"model_type": "llama", "hidden_size": 6')  # cut short
    models["hf-config-cut"] = bad_config
    not_object = root / "config-not-an-object"
    shutil.copytree(tiny_model_dirs["tiny-llama"], not_object)
    (not_object / "config.json").write_text(json.dumps(["llama"]))
    models["hf-config-a-list"] = not_object
    bad_weights = root / "bad-weights"
    shutil.copytree(tiny_model_dirs["tiny-llama"], bad_weights)
    weights = bad_weights / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download cut inside the safetensors header
    models["hf-safetensors-cut"] = bad_weights
    return models


def _run(command: str, model: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    args = [a.format(model=model, tmp=tmp_path, port=_free_port()) for a in COMMANDS[command]]
    env = {**os.environ, "OPSCTL_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    env.pop("OPSCTL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=REPO, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=300)


def _assert_one_error_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# plan reads the config only: damaged weights are not its business (it must still succeed on them).
# (More ways to cut a GGUF are checked in-process below, by test_gguf_check_accepts_a_whole_file_and_names_the_cut.)
CASES = [(command, kind) for command in COMMANDS for kind in (
    "gguf-cut-in-header", "gguf-cut-in-data", "random-bytes-gguf", "hf-config-cut", "hf-config-a-list",
    "hf-safetensors-cut") if not (command == "plan" and kind == "hf-safetensors-cut")]


@pytest.mark.slow
@pytest.mark.parametrize("command,kind", CASES)
def test_broken_model_is_one_line(command, kind, broken_models, tmp_path):
    model = broken_models[kind]
    named = model / "config.json" if kind.startswith("hf-config") else (
        model / "model.safetensors" if kind == "hf-safetensors-cut" else model)
    line = _assert_one_error_line(_run(command, model, tmp_path), str(named))
    assert any(fix in line for fix in ("download", "pass another model")), line  # says what to do
    if kind.endswith("gguf") or kind.startswith("gguf"):
        assert not list((tmp_path / "cache").rglob("*.safetensors"))  # refused before any conversion


def test_gguf_check_accepts_a_whole_file_and_names_the_cut(tmp_path):
    """The header walk itself: a whole file passes, every cut is refused with where it stopped."""
    from engine.errors import ModelLoadError
    from engine.models.gguf_header import check_gguf_file

    whole = _write_gguf(tmp_path / "whole.gguf")
    check_gguf_file(whole)
    data = whole.read_bytes()
    for size, words in ((0, "empty"), (3, "not a GGUF"), (10, "truncated inside its header"),
                        (5000, "truncated inside its header"), (len(data) - 1, "truncated inside its tensor data")):
        cut = _truncated(whole, tmp_path / f"cut-{size}.gguf", size)
        with pytest.raises(ModelLoadError) as error:
            check_gguf_file(cut)
        assert words in str(error.value) and str(cut) in str(error.value)
        assert len(str(error.value).splitlines()) == 1


def test_models_list_shows_a_broken_cached_model_as_a_row(tmp_path, tiny_model_dirs):
    """`models list` reads every cached config.json: a broken one is a row saying so, not a crash."""
    cache = tmp_path / "cache"
    broken = cache / "models" / "gguf" / "broken-model"
    shutil.copytree(tiny_model_dirs["tiny-llama"], broken)
    (broken / "config.json").write_text("[1, 2")
    odd = cache / "models" / "gguf" / "odd-model"
    shutil.copytree(tiny_model_dirs["tiny-llama"], odd)
    (odd / "config.json").write_text(json.dumps({"architectures": 5}))
    env = {**os.environ, "OPSCTL_CACHE_DIR": str(cache), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "toolkit", "models", "list", "--no-presets"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "unreadable config.json" in done.stdout and "unrecognised config.json" in done.stdout


def test_planner_refuses_config_values_of_the_wrong_type():
    """A config.json that parses but holds strings or fractions where sizes go: PlanError, not TypeError."""
    from toolkit.model_sizes import ModelShape, PlanError

    good = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100}
    ModelShape.from_config(good)
    for bad in ({"head_dim": "x"}, {"num_key_value_heads": 1.5}, {"num_experts": "8"}, {"hidden_size": 2},
                {"hidden_size": True}):
        with pytest.raises(PlanError):
            ModelShape.from_config({**good, **bad})
