"""`opsctl bench --url`: Locust load against a fake server of known timing and against our real server.

The fake (fake_openai_server.py) streams tokens at a fixed rate, so TTFT and TPOT have known
values; it can also fail every k-th request or drop the connection mid-stream. The real server is
the embedded SmolLM2 model on CPU behind our app on uvicorn in a thread of this process; the bench
itself runs as `python -m toolkit bench` (and Locust in its own process below that), as users run it.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.toolkit.fake_openai_server import FakeOpenAIServer
from toolkit.bench.load_runner import _Tail, to_records
from toolkit.bench.workloads import (ASSET_TOKENIZER, WorkloadError, load_tokenizer, parse_range, random_prompts,
                                     sharegpt_prompts)
from toolkit.report.schema import BenchResult

from .browser import check_page, open_in_browser
from .sigint import default_sigint


def _bench(out: Path, url: str, *args: str, run_id: str = "r1", timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--url", url, *args, "-o", str(out),
                           "--run-id", run_id], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _result(out: Path, run_id: str = "r1") -> BenchResult:
    return BenchResult.read(out / run_id / "result.json")


def _rows(out: Path, result: BenchResult, i: int = 0, run_id: str = "r1") -> pd.DataFrame:
    return pd.read_csv(out / run_id / result.runs[i].requests_file)


def _raw(out: Path, i: int = 0, run_id: str = "r1") -> list[dict]:
    lines = (out / run_id / "raw" / f"records-{i}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _one_error_line(proc: subprocess.CompletedProcess, starts: str, code: int = 1) -> None:
    """One `error:` line, no traceback; exit code 1 (nothing measured) or 2 (bad input)."""
    assert proc.returncode == code, proc.returncode
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(starts), lines
    assert sum(ln.startswith("error:") for ln in lines) == 1


# -- against the fake server of known timing -----------------------------------------------------

def test_ttft_and_tpot_match_the_fake_servers_known_rate(tmp_path):
    with FakeOpenAIServer(first_token_s=0.2, inter_token_s=0.05) as fake:
        proc = _bench(tmp_path, fake.url, "--num-requests", "10", "--concurrency", "2", "--input-len", "16",
                      "--output-len", "20", "--slo", "ttft_p99_ms=500,tpot_p99_ms=100", "--goodput", "ttft:500,tpot:100",
                      "--no-report")
    assert proc.returncode == 0
    result = _result(tmp_path)
    assert result.kind == "http" and len(result.runs) == 1
    run = result.runs[0]
    s = run.summary
    assert run.label == "c=2" and run.load["concurrency"] == 2 and run.model == "fake-model"
    assert s.num_requests == 10 and s.num_errors == 0 and run.summary.extra["warmup_requests"] == 2
    assert fake.num_requests == 12  # 2 warm-up + 10 measured, not one more
    assert s.ttft.p50 == pytest.approx(0.2, rel=0.1), s.ttft
    assert s.tpot.p50 == pytest.approx(0.05, rel=0.1), s.tpot
    assert s.itl.p50 == pytest.approx(0.05, rel=0.1), s.itl
    assert s.goodput == pytest.approx(s.request_throughput)  # every request within the --goodput limits
    assert [(c.name, c.passed) for c in s.slo_checks] == [("ttft_p99_ms", True), ("tpot_p99_ms", True)]
    rows = _rows(tmp_path, result)
    assert len(rows) == 10 and (rows["output_tokens"] == 20).all() and rows["usage_reported"].all()
    assert (rows["ttft_s"] < rows["e2e_s"]).all()
    # Locust's own CSV is rewritten on a timer, not at exit: the pause before quitting lets it hold every request
    stats = pd.read_csv(tmp_path / "r1" / "raw" / "locust-0_stats.csv").set_index("Name")
    assert stats.loc["TTFT", "Request Count"] == 10 and stats.loc["TTFT (warmup)", "Request Count"] == 2
    assert any("no NVIDIA GPU found" in n or "telemetry" in n for n in result.notes)


def test_errors_counted_and_partial_results_kept(tmp_path):
    # Server count n: 1-2 are the warm-ups; 500 on n = 3, 6, 9, 12; dropped streams on n = 4, 8.
    with FakeOpenAIServer(first_token_s=0.02, inter_token_s=0.01, fail_every=3, close_early_every=4) as fake:
        proc = _bench(tmp_path, fake.url, "--num-requests", "12", "--concurrency", "2", "--input-len", "8",
                      "--output-len", "6", "--no-report")
    assert proc.returncode == 0
    assert "warning: 6 of 12 requests failed" in proc.stdout
    s = _result(tmp_path).runs[0].summary
    assert (s.num_requests, s.num_completed, s.num_errors) == (12, 6, 6)
    assert s.extra["errors"]["HTTP 500"] == 4
    assert sum(n for k, n in s.extra["errors"].items() if k.startswith("stream")) == 2
    rows = _rows(tmp_path, _result(tmp_path))
    assert len(rows) == 12 and rows["error"].notna().sum() == 6
    assert rows["error"].str.contains("injected failure").sum() == 4
    assert s.output_throughput > 0 and s.ttft.count == 6


def test_all_requests_failing_exits_non_zero_with_results(tmp_path):
    with FakeOpenAIServer(first_token_s=0.01, inter_token_s=0.01, fail_every=1) as fake:
        proc = _bench(tmp_path, fake.url, "--num-requests", "3", "--concurrency", "1", "--input-len", "8",
                      "--output-len", "4", "--no-report")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    s = _result(tmp_path).runs[0].summary
    assert s.num_requests == 3 and s.num_errors == 3 and s.ttft is None


def test_ladder_duration_and_report_hook(tmp_path):
    with FakeOpenAIServer(first_token_s=0.02, inter_token_s=0.005) as fake:
        proc = _bench(tmp_path, fake.url, "--num-requests", "4", "--concurrency", "1,2", "--input-len", "8",
                      "--output-len", "4", "--dataset", "chat", "--endpoint", "completions")
        assert proc.returncode == 0
        result = _result(tmp_path)
        assert [r.label for r in result.runs] == ["c=1", "c=2"]
        assert [r.summary.num_requests for r in result.runs] == [4, 4]
        assert [r.summary.extra["warmup_requests"] for r in result.runs] == [1, 2]
        assert result.runs[0].config["endpoint"] == "/v1/completions"
        assert (tmp_path / "r1" / "report.html").is_file() or "HTML report skipped" in proc.stdout

        proc = _bench(tmp_path, fake.url, "--duration", "2", "--concurrency", "2", "--input-len", "8",
                      "--output-len", "4", "--no-report", run_id="d1")
    assert proc.returncode == 0
    s = _result(tmp_path, "d1").runs[0].summary
    assert s.num_requests > 10 and s.num_errors == 0
    assert 1.5 < s.duration_s < 4


def test_ctrl_c_keeps_what_was_measured(tmp_path):
    with FakeOpenAIServer(first_token_s=0.05, inter_token_s=0.02) as fake:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", "bench", "--url", fake.url, "--num-requests", "500",
                                 "--concurrency", "2", "--input-len", "8", "--output-len", "5", "--no-report",
                                 "-o", str(tmp_path), "--run-id", "r1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)
        records = tmp_path / "r1" / "raw" / "records-0.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if records.is_file() and len(records.read_text().splitlines()) >= 8:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    print(out, err)
    assert proc.returncode == 130 and "Traceback" not in err
    result = _result(tmp_path)
    s = result.runs[0].summary
    assert 6 <= s.num_requests < 500 and s.extra.get("interrupted")
    assert any("interrupted" in n for n in result.notes)


# -- bad input -----------------------------------------------------------------------------------

def test_unreachable_url_is_one_line(tmp_path):
    from tests.server.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    proc = _bench(tmp_path, url, "--num-requests", "2", timeout=60)
    _one_error_line(proc, f"error: cannot reach {url}")
    assert not (tmp_path / "r1").exists()


def test_malformed_sharegpt_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"conversations": [')
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"conversations": "nope"}, 3, {"conversations": [{"from": "gpt", "value": "x"}]}]))
    with FakeOpenAIServer() as fake:
        proc = _bench(tmp_path, fake.url, "--dataset", f"sharegpt:{bad}", "--num-requests", "2", timeout=60)
        _one_error_line(proc, f"error: ShareGPT file {bad} is not JSON", code=2)
        proc = _bench(tmp_path, fake.url, "--dataset", f"sharegpt:{empty}", "--num-requests", "2", timeout=60)
        _one_error_line(proc, f"error: ShareGPT file {empty} has no usable conversation", code=2)
        assert fake.num_requests == 0


# -- workloads and records (no processes) --------------------------------------------------------

def test_random_prompts_have_the_asked_token_lengths():
    tok = load_tokenizer(ASSET_TOKENIZER)
    items = random_prompts(tok, 12, (20, 60), (4, 8), seed=3)
    assert items == random_prompts(tok, 12, (20, 60), (4, 8), seed=3)
    for it in items:
        assert 20 <= it.prompt_tokens <= 60 and len(tok.encode(it.prompt)) == it.prompt_tokens
        assert 4 <= it.max_tokens <= 8
    assert len({it.prompt for it in items}) == 12
    assert max(it.prompt_tokens for it in items) - min(it.prompt_tokens for it in items) > 10
    with pytest.raises(WorkloadError):
        parse_range("9:3", "--input-len")


def test_sharegpt_skips_malformed_entries(tmp_path):
    tok = load_tokenizer(ASSET_TOKENIZER)
    good = {"conversations": [{"from": "human", "value": "Tell me about the history of Rome, briefly."},
                              {"from": "gpt", "value": "Rome was founded, grew into an empire, and then fell."}]}
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([good, {"conversations": None}, "text", {"no": 1},
                                {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]}]))
    items = sharegpt_prompts(path, tok, 3)
    assert len(items) == 3 and all(it.prompt == good["conversations"][0]["value"] for it in items)
    assert items[0].max_tokens == len(tok.encode(good["conversations"][1]["value"]))
    assert sharegpt_prompts(path, tok, 2, output_len=(7, 7))[0].max_tokens == 7


def test_records_exclude_warmup_and_tail_reads_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"index": 0, "warmup": true, "start_s": 0.0}\n{"index": 1, "warmup": false, "start_s": 0.5, '
                     b'"ttft_s": 0.1, "e2e_s": 0.3, "output_tokens": 3, "usage": true}\n{"index": 2, "war')
    tail = _Tail(path)
    assert tail.poll() == 2
    with open(path, "ab") as f:
        f.write(b'mup": false, "start_s": 0.7, "error": "HTTP 500: x"}\n')
    assert tail.poll() == 1 and len(tail.records) == 3
    records = to_records(tail.records)
    assert [r.index for r in records] == [0, 1] and records[0].start_s == 0 and records[1].start_s == pytest.approx(0.2)
    assert records[0].tpot_s == pytest.approx(0.1) and records[1].error


def test_gpu_sampler_without_a_driver_notes_it():
    from toolkit.telemetry import GpuSampler, is_local_url

    assert is_local_url("http://127.0.0.1:8000") and is_local_url("http://localhost") and is_local_url("http://[::1]:1")
    assert not is_local_url("http://10.0.0.2:8000")
    with GpuSampler(interval_s=0.05) as sampler:
        time.sleep(0.1)
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        assert sampler.samples
    except Exception:  # noqa: BLE001 - no driver here
        assert sampler.samples == [] and any("no NVIDIA GPU found" in n for n in sampler.notes)


# -- against our real server (embedded model, CPU) -----------------------------------------------

@pytest.fixture(scope="module")
def real_server():
    import asyncio

    from engine import EngineConfig
    from engine.async_engine import ThreadedEngine
    from engine.engine import LLMEngine
    from engine.server import build_app
    from tests.server.conftest import UvicornThread

    engine = LLMEngine(None, EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=512,
                                          max_batch_size=16, cache_max_entry_count=128))
    aengine = ThreadedEngine(engine)
    thread = UvicornThread(build_app(aengine)).start()
    yield thread.url
    thread.stop()
    asyncio.run(aengine.shutdown(timeout=2))


def _generated_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(re.search(r"^opsctl:generation_tokens_total(?:\{[^}]*\})?\s+(\S+)", text, re.M).group(1))


def test_real_server_exactly_n_requests(tmp_path, real_server, browser):
    before = _generated_tokens(real_server)
    proc = _bench(tmp_path, real_server, "--num-requests", "40", "--concurrency", "4", "--input-len", "16",
                  "--output-len", "8")
    assert proc.returncode == 0
    result = _result(tmp_path)
    run = result.runs[0]
    assert run.model == "SmolLM2-135M-Instruct" and run.summary.num_requests == 40 and run.summary.num_errors == 0
    rows = _rows(tmp_path, result)
    assert len(rows) == 40 and list(rows["index"]) == list(range(40))
    assert (rows["ttft_s"] < rows["e2e_s"]).all()
    assert rows["usage_reported"].all() and (rows["output_tokens"] >= 1).all() and (rows["output_tokens"] <= 8).all()
    raw = _raw(tmp_path)
    assert len(raw) == 44 and sum(r["warmup"] for r in raw) == 4
    # Output tokens are the server's usage: together they are what the engine counted as generated.
    assert sum(r["output_tokens"] for r in raw) == _generated_tokens(real_server) - before
    assert run.summary.tpot is not None and run.summary.output_throughput > 0
    # The report bench wrote by default renders in headless Chromium: charts drawn, no console errors.
    shot = tmp_path / "report.png"
    seen = open_in_browser(browser, tmp_path / result.run_id / "report.html", shot, min_charts=3)
    check_page(seen, shot, {"headline-1", "throughput-latency-1", "latency-distributions-1"})


def test_real_server_poisson_arrivals(tmp_path, real_server):
    proc = _bench(tmp_path, real_server, "--request-rate", "4", "--num-requests", "6", "--warmup", "1",
                  "--input-len", "8", "--output-len", "4", "--endpoint", "completions", "--no-report")
    assert proc.returncode == 0
    run = _result(tmp_path).runs[0]
    assert run.label == "rate=4" and run.load["request_rate"] == 4 and run.load["arrivals"] == "poisson"
    assert run.summary.num_requests == 6 and run.summary.num_errors == 0
    rows = _rows(tmp_path, _result(tmp_path))
    assert rows["scheduled_s"].is_monotonic_increasing
    assert (rows["start_s"] >= rows["scheduled_s"] - 1e-3).all()
    assert (rows["start_s"] - rows["scheduled_s"]).max() < 0.25
