"""Models named by hub id (engine.models.hub): the Hugging Face cache layout, the hub's failures as one
line, and the commands that take a hub id (`opsctl plan`, `opsctl serve`).

No test reaches a real hub: huggingface_hub's endpoint points at a closed local port (or at a server
that never answers), and the one download test replaces the hub calls. Caches are built in tmp_path
in the layout huggingface_hub writes: models--Owner--Name/{refs/main, blobs/<hash>,
snapshots/<commit>/<file> -> ../../blobs/<hash>}.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import ModelLoadError
from engine.models import hub
from engine.models.hub import find_in_hf_cache, hf_hub_cache, looks_like_hub_id, resolve_hub_model
from engine.models.source import resolve_model

ROOT = Path(__file__).resolve().parents[2]
REPO = "Owner/Name"
MAIN = "9f3c" + "1" * 36  # the commit refs/main names
OLDER = "0a7e" + "2" * 36  # an older snapshot that sorts first: ignoring refs/main picks it


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF hub cache of this test's own (HF_HUB_CACHE), hub calls refused at once."""
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for subprocesses
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # read at import: this process needs it set here
    return root


def write_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, Path | bytes], *,
                   ref: str | None = "main") -> Path:
    """One snapshot of `repo_id` as huggingface_hub stores it; `ref` (if any) is made to name it.

    Every file is a relative symlink into blobs/. HF names a blob by its content hash; a Path given here
    becomes a blob that links to it (nothing reads blob names back, and 500 MB of weights stay uncopied).
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, Path):
            blob = repo / "blobs" / hashlib.sha256(str(content.resolve()).encode()).hexdigest()
            if not blob.exists():
                blob.symlink_to(content.resolve())
        else:
            blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
        if not (snapshot / name).exists():  # a second download into the snapshot adds files
            (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def _dir_files(directory: str | Path) -> dict[str, Path]:
    return {p.name: p for p in Path(directory).iterdir() if p.is_file()}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---- hub ids and the cache layout ------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("Qwen/Qwen2.5-7B-Instruct", True), ("meta-llama/Meta-Llama-3-8B", True),
    ("/abs/path", False), ("./rel/dir", False), ("a/b/c", False), ("gpt2", False),
    ("preset:qwen2.5-7b", False), ("~/models", False), ("bad--name/x", False),
])
def test_looks_like_hub_id(spec, expected):
    assert looks_like_hub_id(spec) is expected


def test_an_existing_path_is_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "Owner" / "Name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not looks_like_hub_id("Owner/Name")


def test_cache_dir_follows_huggingface_hub_variables(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hf_hub_cache() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hf_hub_cache() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_hub_cache() == tmp_path / "hub"


def test_find_in_cache_follows_refs_main(hf_cache):
    write_snapshot(hf_cache, REPO, OLDER, {"config.json": b'{"model_type": "qwen2"}'}, ref=None)
    main = write_snapshot(hf_cache, REPO, MAIN, {"config.json": b'{"model_type": "llama"}'})
    assert find_in_hf_cache(REPO) == main
    assert find_in_hf_cache(REPO, revision=OLDER) == main.parent / OLDER  # a commit is its own revision
    assert find_in_hf_cache(REPO, revision="v2") is None
    assert find_in_hf_cache("Owner/Other") is None
    assert find_in_hf_cache(REPO, cache_dir=hf_cache.parent / "elsewhere") is None


# ---- resolve_model("Owner/Name"): the same model as its directory ---------------------------------------


@pytest.mark.slow
def test_hub_id_loads_from_the_cache_and_generates_like_the_directory(hf_cache, default_model_dir, smol_engine):
    from engine.engine import LLMEngine

    from .helpers import greedy, run_alone

    write_snapshot(hf_cache, REPO, OLDER, {"config.json": b'{"model_type": "qwen2"}'}, ref=None)
    main = write_snapshot(hf_cache, REPO, MAIN, _dir_files(default_model_dir))
    assert (main / "model.safetensors").is_symlink()
    source = resolve_model(REPO)
    assert (source.kind, source.name) == ("hf", REPO)
    assert source.weights_path == source.tokenizer_path == str(main.resolve())
    assert source.hf_config.num_hidden_layers == 30
    engine = LLMEngine(source, smol_engine.config)
    prompt = smol_engine.tokenizer.encode("The sea and the wind")
    assert run_alone(engine, prompt, greedy(6)) == run_alone(smol_engine, prompt, greedy(6))


def test_config_only_snapshot_is_not_enough_to_load(hf_cache):
    write_snapshot(hf_cache, REPO, MAIN, {"config.json": b'{"model_type": "llama"}'})
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        resolve_model(REPO)
    message = _one_line(error)
    assert f"'{REPO}' is in the Hugging Face cache {hf_cache} without its safetensors weights" in message
    assert "no hub is reachable" in message and time.perf_counter() - start < 10


# ---- no hub: one line naming the cache, in seconds ------------------------------------------------------


def test_missing_repo_without_network_is_one_line(hf_cache):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        resolve_model("Owner/Missing")
    elapsed = time.perf_counter() - start
    message = _one_line(error)
    assert message.startswith(f"model not found: 'Owner/Missing' is not in the Hugging Face cache {hf_cache}")
    assert "no hub is reachable" in message and "HF_HUB_OFFLINE" in message
    assert elapsed < 10, elapsed


def test_hub_that_never_answers_times_out_in_seconds(hf_cache, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(ModelLoadError) as error:
            resolve_hub_model("Owner/Missing")
        elapsed = time.perf_counter() - start
    message = _one_line(error)
    assert str(hf_cache) in message and "Timeout" in message
    assert hub.DEFAULT_PROBE_TIMEOUT_S - 1 < elapsed < 10, elapsed


def test_offline_says_so_without_asking_the_hub(hf_cache, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("asked the hub while offline"))
    with pytest.raises(ModelLoadError) as error:
        resolve_hub_model("Owner/Missing")
    message = _one_line(error)
    assert str(hf_cache) in message and "HF_HUB_OFFLINE is set" in message


# ---- a reachable hub: what is downloaded (the hub calls replaced) ----------------------------------------


def test_download_asks_only_for_what_is_needed(hf_cache, monkeypatch, tiny_model_dirs):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, ignore_patterns, **kwargs):
        calls.append(allow_patterns)
        files = _dir_files(tiny_model_dirs["tiny-llama"])
        wanted = {name: path for name, path in files.items()
                  if any(Path(name).match(pattern) for pattern in allow_patterns)}
        return str(write_snapshot(Path(cache_dir), repo_id, MAIN, wanted))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    config_only = resolve_hub_model(REPO, need="config")
    assert calls == [["config.json"]] and sorted(p.name for p in config_only.iterdir()) == ["config.json"]
    assert resolve_hub_model(REPO, need="config") == config_only and len(calls) == 1  # cached: no hub call
    source = resolve_model(REPO)  # weights and tokenizer missing: downloaded into the same snapshot
    assert "*.safetensors" in calls[1] and "*.json" in calls[1] and "*.bin" not in calls[1]
    assert source.weights_path == str(config_only.resolve()) and (config_only / "model.safetensors").is_file()
    resolve_model(REPO)
    assert len(calls) == 2


def test_a_model_the_hub_does_not_have_is_one_line(hf_cache, monkeypatch):
    import http.server
    import threading

    from huggingface_hub import constants

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # what huggingface.co answers for a repo it does not have
            body = b'{"error":"Repository not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(ModelLoadError) as error:
            resolve_hub_model("Owner/Missing")
    finally:
        server.shutdown()
        server.server_close()
    message = _one_line(error)
    assert str(hf_cache) in message and "has no such model" in message and "HF_TOKEN" in message


# ---- the commands: `opsctl plan` needs only config.json, `opsctl serve` fails in one line -----------------


def test_plan_reads_a_cache_holding_only_config_json(hf_cache):
    from typer.testing import CliRunner

    from engine.models.presets import preset_config
    from toolkit.cli import app

    config = json.dumps(preset_config("qwen2.5-7b").to_dict()).encode()
    write_snapshot(hf_cache, "Qwen/Qwen2.5-7B-Instruct", MAIN, {"config.json": config})
    result = CliRunner().invoke(app, ["plan", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "rtx4090", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "Qwen/Qwen2.5-7B-Instruct" and data["params"]["total"] == 7_615_616_512
    bf16 = next(q for q in data["quants"] if q["quant"] == "bf16")
    assert next(kv["tokens"] for kv in bf16["kv"] if kv["cache_ratio"] == 0.8) == 117_063


def test_plan_of_a_missing_repo_is_one_line(hf_cache):
    from typer.testing import CliRunner

    from toolkit.cli import app

    result = CliRunner().invoke(app, ["plan", "Owner/Missing", "--gpu", "rtx4090"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model not found: 'Owner/Missing'")
    assert str(hf_cache) in lines[0]


def test_serve_of_a_missing_repo_exits_2_in_one_line(hf_cache):
    env = {**os.environ}
    env.pop("OPSCTL_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "toolkit", "serve", "Owner/Missing", "--server-port",
                           str(_closed_port()), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert lines[0].startswith(f"error: model not found: 'Owner/Missing' is not in the Hugging Face cache {hf_cache}")
    assert "no hub is reachable" in lines[0]
