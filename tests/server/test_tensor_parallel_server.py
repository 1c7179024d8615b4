"""`opsctl serve --tp N` as a real process on CPU (gloo): the same greedy text as tp=1, a killed worker
ends the server with 503 instead of a hang, and no worker process outlives it.

Two servers, one per case: tp=2 on the tiny-qwen2-tp preset and tp=3 on the embedded SmolLM2. The
engine process is rank 0 and the parent of the other ranks' workers: the server's grandchildren.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from engine import EngineConfig, GenerationConfig
from engine.engine import LLMEngine

from .serve_process import ROOT, ServeProcess, alive, children

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
PROMPTS = ["Hello there, how are you today?", "The capital of France is", "def fibonacci(n):"]
CASES = {"tiny-tp2": ("preset:tiny-qwen2-tp", 2), "smollm2-tp3": (None, 3)}


def _reference_texts(engine, prompts_ids) -> list[tuple[str, int]]:
    """tp=1 in this process: the text the server's detokenizer gives for the same greedy tokens."""
    out = []
    for ids in prompts_ids:
        request = engine.make_request(ids, GenerationConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS))
        engine.add(request)
        text = ""
        while engine.has_unfinished():
            text += "".join(o.text for o in engine.step())
        out.append((text, request.num_output_tokens))
    return out


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def tp_server(request, tmp_path_factory):
    model, tp = CASES[request.param]
    args = ["--tp", str(tp)] + (["--model-name", "m", model] if model else ["--model-name", "m"])
    # One torch thread per rank (the workers take rank 0's): the machine's two cores are shared.
    server = ServeProcess(tmp_path_factory.mktemp("tp") / "serve.log", *args, env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait_healthy()
        server.model = model
        server.tp = tp
        yield server
    finally:
        server.stop()


def _workers(server) -> list[int]:
    return [p for p in children(server.engine_pid) if alive(p) and b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]


def test_greedy_text_equals_tp1(tp_server, request):
    assert len(_workers(tp_server)) == tp_server.tp - 1
    ids = []
    for prompt in PROMPTS:
        r = httpx.post(tp_server.url + "/tokenize", json={"prompt": prompt}, timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.json()["tokens"])

    def complete(prompt_ids):
        r = httpx.post(tp_server.url + "/v1/completions", timeout=120,
                       json={"model": "m", "prompt": prompt_ids, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS,
                             "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["choices"][0]["text"], body["usage"]["completion_tokens"]

    with ThreadPoolExecutor(len(ids)) as pool:  # batched by the server, as a client mix is
        got = list(pool.map(complete, ids))
    if tp_server.model is None:
        reference = request.getfixturevalue("smol_engine")
    else:
        reference = LLMEngine(tp_server.model, EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16,
                                                            session_len=1024, cache_max_entry_count=128))
    assert got == _reference_texts(reference, ids)


def test_tp_not_dividing_heads_is_one_line_before_loading():
    """SmolLM2 has 9 attention heads: --tp 2 exits 2 with one line, without starting an engine."""
    done = subprocess.run([sys.executable, "-m", "toolkit", "serve", "--tp", "2", "--server-port", "0",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "9 attention heads" in lines[0] and "Traceback" not in done.stdout, done.stderr
    assert "tensor parallelism:" not in done.stdout  # no rank was started


def test_killed_worker_is_503_and_the_server_exits_leaving_no_process(tp_server):
    workers = _workers(tp_server)
    engine = tp_server.engine_pid
    answer: dict = {}

    def long_request():
        answer["response"] = httpx.post(tp_server.url + "/v1/completions", timeout=120, json={
            "model": "m", "prompt": "Tell me a long story", "max_tokens": 1000, "min_tokens": 1000,
            "ignore_eos": True})

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 60
    while not _running(tp_server):  # the request is in the engine
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(workers[-1], signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the request hung after its worker died"
    response = answer["response"]
    assert response.status_code in (500, 503) and response.json()["error"]["code"] == "engine_dead", response.text
    assert f"rank {tp_server.tp - 1}" in response.json()["error"]["message"]
    assert tp_server.proc.wait(60) == 1  # the server exits for its supervisor to restart it
    deadline = time.monotonic() + 30
    while any(alive(p) for p in [engine, *workers]):
        assert time.monotonic() < deadline, [p for p in [engine, *workers] if alive(p)]
        time.sleep(0.2)


def _running(server) -> bool:
    """/metrics says a request is in the running batch."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return any(line.startswith("opsctl:num_requests_running") and float(line.split()[-1]) > 0
               for line in text.splitlines())  # the name is followed by its labels: {model_name="m"}
