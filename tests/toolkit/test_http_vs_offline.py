"""`python -m toolkit.bench.http_vs_offline` end to end on the CPU: the plain engine, then `opsctl serve` + the bench.

A tiny random-weight preset, a few short requests: what is checked is the plumbing (same prompts on
both paths, every token counted, the ratio from the two figures, the bench's folder, no server left
behind, also when the tool is stopped with SIGTERM), not the speed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from toolkit.bench.serve_subprocess import CpuSampler, alive
from toolkit.report.foreign import convert
from toolkit.report.schema import BenchResult
from toolkit.report.words import _http_vs_offline_headline

TINY = ["--model", "preset:tiny-qwen3", "--device", "cpu", "--concurrency", "2", "--input-len", "16",
        "--output-len", "8", "--cache-block-seq-len", "16", "--cache-max-entry-count", "32"]


def _tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.bench.http_vs_offline", *TINY, *args]


def test_plain_engine_and_serve_with_the_bench_on_the_same_prompts(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(_tool("--num-requests", "4", "--bench-run-id", "bench", "--out", str(out)),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "OPSCTL_GIT_COMMIT": "feedface"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "http_vs_offline" and data["goal"] == 0.95
    assert data["git_commit"] == "feedface" and data["device"] and data["versions"]["python"]
    config, plain, http = data["config"], data["plain_engine"], data["http"]
    assert (config["concurrency"], config["max_batch_size"], config["num_requests"], config["warmup"]) == (2, 2, 4, 2)

    # Every requested token on both paths, no errors. SSE events: one per token, except where a token
    # ends inside a UTF-8 character and waits for the next (random weights, batch-dependent rounding).
    assert plain["requests"] == http["requests"] == 4
    assert plain["num_errors"] == http["num_errors"] == 0
    assert plain["output_tokens"] == http["output_tokens"] == 4 * 8
    assert plain["engine"]["generation_tokens"] == 4 * 8
    assert 0 < http["sse_events"] <= 4 * 8 and http["one_event_per_token"] == (http["sse_events"] == 4 * 8)
    # Like for like: the plain engine's figure spans its whole run, and so does the HTTP one it is set
    # against (first send to last token); the steady window's ratio is kept beside it.
    whole = http["whole_run_output_tok_s"] or http["output_tok_s"]
    assert data["ratio_http_over_plain"] == round(whole / plain["output_tok_s"], 4)
    assert http["ratio_steady_window_over_plain"] == round(http["output_tok_s"] / plain["output_tok_s"], 4)
    assert data["ratio_http_over_offline"] == data["ratio_http_over_plain"] == http["ratio_http_over_plain"]

    # The bench's own folder: its result, and the prompts it sent are the ones the plain engine ran.
    bench = Path(http["bench_dir"])
    assert bench == tmp_path / "bench"
    result = BenchResult.read(bench / "result.json")
    assert result.kind == "http" and result.runs[0].load["concurrency"] == 2
    assert result.runs[0].summary.num_requests == 4 and result.runs[0].config["endpoint"] == "/v1/completions"
    plan = json.loads((bench / "raw" / "plan-0.json").read_text())
    assert len(plan["items"]) == 2 + 4 and plan["ignore_eos"] and plan["temperature"] == 0
    assert http["prompts_identical"] and http["requests_with_other_prompt_tokens"] == 0
    from engine.models.presets import TOKENIZER_DIR  # the preset's tokenizer: the server's, and the engine's
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    rows = pd.read_csv(bench / result.runs[0].requests_file)
    assert list(rows["prompt_tokens"]) == [len(tok(plan["items"][2 + i]["prompt"]).input_ids) for i in rows["index"]]

    # The client figures, and the server's processes: measured, then gone.
    assert isinstance(http["client_saturated"], bool) and http["client_cpu"] and http["client_process_cpu"] is not None
    server = http["server"]
    assert "--server-port 0" in server["command"] and "--max-batch-size 2" in server["command"]
    assert set(server["pids"]) == {"api", "engine"} and http["engine_process_cpu"] is not None
    assert (server["exit_code"], server["killed"], server["left_running"]) == (0, False, [])
    assert not any(alive(pid) for pid in server["pids"].values())
    assert "opsctl serve: stopped" in Path(server["log"]).read_text()

    # The report reads it: the HTTP run against the plain engine, with the goal.
    converted = convert(data, out.name)
    assert [r.label for r in converted.result.runs] == ["plain engine (all requests at once)",
                                                       "HTTP, engine in its own process"]
    assert "goal at least 95%" in _http_vs_offline_headline(converted.result.runs)


def test_sigterm_stops_the_server_it_started(tmp_path):
    # The signal follows the line naming the server's pids at once: the bench is then still starting
    # (its tokenizer, prompts and Locust take seconds), so it is stopped with the server running.
    proc = subprocess.Popen(_tool("--num-requests", "4", "--bench-run-id", "bench", "--out", str(tmp_path / "r.json")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    pids, lines = None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"http \(process\): http://\S+, pids (\{.*\})", line)
            if found:
                pids = json.loads(found.group(1).replace("'", '"'))
                break
        assert pids, "".join(lines[-30:])
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines[-30:]) + rest[-3000:]
    assert not (tmp_path / "r.json").exists()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids.values()), pids


def test_cpu_sampler_interpolates_between_samples():
    sampler = CpuSampler({"api": 1, "engine": 2})
    sampler.samples = [(10.0, {"api": 1.0, "engine": None}), (11.0, {"api": 1.5, "engine": 3.0}),
                       (13.0, {"api": 3.5, "engine": 5.0})]
    busy = sampler.busy(10.5, 12.0)
    assert busy["api"] == pytest.approx((2.5 - 1.25) / 1.5, abs=1e-3)  # rounded to 3 places
    assert busy["engine"] is None  # no sample of it before 11.0
    assert sampler.busy(11.0, 14.0) == {"api": None, "engine": None}  # past the last sample
