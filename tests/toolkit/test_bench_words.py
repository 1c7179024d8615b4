"""The bench's own figures and words: --slo and --goodput, the console table, exit codes, the
recorded command, ratios with their direction, and card limits from the hardware profiles.

--slo names are METRIC_STAT_ms and gate a statistic of the whole run (pass or fail, exit code 1);
--goodput (vLLM's) holds each request to its limits and counts the good ones per second. Bad input
is exit code 2 and one `error:` line everywhere; only the SLO run starts a server (the fake one).
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import toolkit
from tests.toolkit.fake_openai_server import FakeOpenAIServer
from toolkit.bench import roofline
from toolkit.bench.metrics import (LimitError, RequestRecord, check_slo, goodput, parse_goodput, parse_slo,
                                   slo_failed, summarize)
from toolkit.bench.report_table import print_runs
from toolkit.cli import app
from toolkit.report import words
from toolkit.report.schema import BenchResult, Run
from toolkit.system_info import command_line

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- --slo and --goodput names

def test_slo_names_parse_to_limits():
    assert parse_slo("ttft_p99_ms=500, tpot_mean_ms=50,e2e_max_ms=2000,itl_p90_ms=12.5,") == {
        "ttft_p99_ms": 500.0, "tpot_mean_ms": 50.0, "e2e_max_ms": 2000.0, "itl_p90_ms": 12.5}
    assert parse_slo(None) == {} and parse_slo("") == {}


@pytest.mark.parametrize("text, says", [
    ("ttft_p99_msx=500", "'ttft_p99_msx' is not an SLO name"),
    ("ttfp_p99_ms=5", "unknown metric 'ttfp'"),
    ("ttft_p77_ms=5", "unknown statistic 'p77'"),
    ("ttft_ms=500", "'ttft_ms' is not an SLO name"),  # which statistic? the name must say
    ("ttft_p99_ms", "no limit"),
    ("ttft_p99_ms=fast", "'fast' is not a number"),
    ("ttft_p99_ms=0", "must be a positive number"),
    ("ttft_p99_ms=nan", "must be a positive number"),
    ("ttft_p99_ms=1,ttft_p99_ms=2", "given twice"),
])
def test_a_bad_slo_is_an_error_not_an_ignored_limit(text, says):
    with pytest.raises(LimitError) as error:
        parse_slo(text)
    message = str(error.value)
    assert says in message and message.startswith("--slo ") and "\n" not in message


def test_a_typo_gets_a_suggestion():
    with pytest.raises(LimitError, match="did you mean ttft_p99_ms"):
        parse_slo("ttft_p99_msx=500")


def test_goodput_limits_parse_as_vllm_writes_them():
    assert parse_goodput("ttft:500,tpot:50") == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput("ttft:500 tpot:50 e2el:1000") == {"ttft": 500.0, "tpot": 50.0, "e2e": 1000.0}
    for bad, says in (("ttfx:5", "unknown metric 'ttfx'"), ("ttft", "no limit"), ("ttft:0", "positive"),
                      ("ttft_p99_ms=5", "unknown metric"), ("ttft:1,ttft:2", "given twice")):
        with pytest.raises(LimitError, match=re.escape(says)):
            parse_goodput(bad)


# ---------------------------------------------------------------- run level against per request

def _records(ttfts_ms: list[float], output_tokens: int = 5, tpot_ms: float = 20.0) -> list[RequestRecord]:
    out = []
    for i, ttft in enumerate(ttfts_ms):
        e2e = ttft / 1000 + (output_tokens - 1) * tpot_ms / 1000
        out.append(RequestRecord(i, 0.1 * i, 10, output_tokens=output_tokens, ttft_s=ttft / 1000, e2e_s=e2e))
    return out


def test_slo_gates_the_runs_percentile_while_goodput_counts_requests():
    # 98 requests at 100 ms TTFT, 2 at 1000 ms. The run's p99 (numpy linear: rank 0.99 x 99 = 98.01,
    # between the two slow ones) is 1000 ms; its p95 (rank 94.05) is 100 ms.
    records = _records([100.0] * 98 + [1000.0] * 2)
    s = summarize(records, 10.0, slo_limits={"ttft_p99_ms": 500.0, "ttft_p95_ms": 500.0})
    checks = {c.name: c for c in s.slo_checks}
    assert checks["ttft_p99_ms"].measured_ms == pytest.approx(1000.0) and not checks["ttft_p99_ms"].passed
    assert checks["ttft_p95_ms"].measured_ms == pytest.approx(100.0) and checks["ttft_p95_ms"].passed
    assert slo_failed(s) and s.goodput is None  # no --goodput, no goodput figure
    # Per request, 98 of 100 meet TTFT <= 500 ms: goodput 9.8 req/s over 10 s; a figure, not a verdict.
    g = summarize(records, 10.0, parse_goodput("ttft:500"))
    assert g.goodput == pytest.approx(9.8) and g.slo_checks is None and not slo_failed(g)
    assert goodput(records, {"ttft": 500.0}, 10.0) == pytest.approx(9.8)


def test_a_limit_at_the_measured_value_passes_and_nothing_measured_fails():
    s = summarize(_records([200.0] * 4), 1.0)
    at_limit, = check_slo(s, {"ttft_max_ms": 200.0})
    assert at_limit.passed and at_limit.measured_ms == pytest.approx(200.0)
    one_token = summarize(_records([50.0] * 4, output_tokens=1), 1.0)  # no TPOT samples at all
    tpot, = check_slo(one_token, {"tpot_p99_ms": 1000.0})
    assert tpot.measured_ms is None and not tpot.passed
    assert "not measured" in words.slo_check_words(tpot)


# ---------------------------------------------------------------- the console table

def _rate_run(label: str, *, sent_every: float, done_every: float, saturated: bool = False) -> Run:
    """A Poisson rung at 10 req/s asked: requests sent every `sent_every` s, completed every `done_every` s."""
    records = [RequestRecord(i, sent_every * i, 10, output_tokens=4, ttft_s=0.05,
                             e2e_s=0.2 + i * (done_every - sent_every)) for i in range(40)]
    extra = {"warmup_requests": 2, "errors": {}, "client_saturated": saturated,
             "client_cpu": [{"role": "worker", "users": 64, "cpu_s": 9.0, "wall_s": 10.0, "busy": 0.97}]}
    summary = summarize(records, records[-1].start_s + records[-1].e2e_s, parse_goodput("ttft:100"), extra,
                        slo_limits=parse_slo("ttft_p99_ms=40"))
    return Run(label=label, target="http", model="m", workload={"dataset": "random"},
               load={"request_rate": 10.0, "concurrency": None}, summary=summary)


def _console_text(result: BenchResult) -> str:
    buffer = io.StringIO()
    print_runs(result, Console(file=buffer, width=220, color_system=None))
    return buffer.getvalue()


def test_console_shows_rates_goodput_slo_and_warnings_in_words():
    kept_up = _rate_run("rate=10", sent_every=0.1, done_every=0.1)
    behind = _rate_run("rate=10b", sent_every=0.1, done_every=0.2, saturated=True)
    text = _console_text(BenchResult(run_id="r", kind="http", device={"name": "gpu"}, runs=[kept_up, behind]))
    assert "req/s asked / sent / done" in text
    assert re.search(r"rate=10 .* 10 / 10\.0 / 10\.0 ", text) and re.search(r"rate=10b .* 10 / 10\.0 / 5\.0 ", text)
    assert "goodput req/s" in text and "each meeting TTFT ≤ 100 ms (per request, --goodput)" in text
    # TTFT is 50 ms everywhere: the p99 of the run misses 40 ms, in words, with the verdict.
    assert "SLO rate=10: ttft_p99_ms: TTFT p99 50.0 ms > 40 ms: failed" in text
    assert "SLO failed at rate=10, rate=10b" in text
    assert "rate=10b: the server completed 5.0 req/s of the 10.0 sent (asked 10): it was saturated" in text
    assert "rate=10: the server completed" not in text  # the one that kept up has no warning
    assert "rate=10b: the load generator's CPU was saturated (busiest process: worker, 64 users, 97% of a core)" in text
    assert "client's limit, not the server's" in text
    assert "{" not in text and "}" not in text, "a dict repr reached the console"


def test_offline_extras_read_as_words():
    result = BenchResult.read(REPO / "reports/examples/h100/peers-decode-b1/result.json")
    text = _console_text(result)
    assert "of the card's bandwidth 86.4%" in text and "{" not in text
    assert "headline: 180.8 output tok/s (86% of the card's bandwidth); 1.52x faster than transformers generate" in text


# ---------------------------------------------------------------- ratios with their direction

def test_ratios_name_their_direction():
    assert words.ratio_words(309.69, 23.97) == "12.9x faster"
    assert words.ratio_words(23.97, 309.69) == "12.9x slower"
    assert words.ratio_words(0.2067, 2.6701, lower_is_better=True) == "12.9x faster"  # seconds
    assert words.ratio_words(0.9106, 1.0) == "1.10x slower"
    assert words.ratio_words(1.001, 1.0) == "as fast as"
    assert words.times(12.920565814250494) == "12.9x"


# ---------------------------------------------------------------- exit codes

@pytest.mark.parametrize("args, says", [
    (["--slo", "ttft_p99_msx=500"], "error: --slo 'ttft_p99_msx' is not an SLO name"),
    (["--slo", "ttft_p77_ms=500"], "error: --slo 'ttft_p77_ms': unknown statistic 'p77'"),
    (["--goodput", "ttft=fast"], "error: --goodput 'ttft=fast'"),
    (["--concurrency", "two"], "error: --concurrency 'two' is not a number"),
    (["--endpoint", "embeddings"], "error: --endpoint 'embeddings'"),
    (["--num-requests", "0"], "error: --num-requests 0: must be >= 1"),
    (["--num-requests", "5", "--duration", "3"], "error: give --num-requests or --duration, not both"),
    (["--request-rate", "-2"], "error: --request-rate -2: must be > 0"),
    (["--input-len", "9:3"], "error: --input-len '9:3': need 1 <= MIN <= MAX"),
    (["--run-id", "../x"], "error: --run-id '../x' is not a folder name"),
    (["--request-rate", "4", "--think-time-ms", "10"], "error: --think-time-ms is a closed loop's wait"),
])
def test_bad_input_is_exit_code_2_and_one_line(args, says, tmp_path):
    # No server at this URL: every one of these must stop before it is asked anything.
    result = CliRunner().invoke(app, ["bench", "--url", "http://127.0.0.1:9", *args, "-o", str(tmp_path)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(says), lines
    assert not any(tmp_path.iterdir())


def test_offline_bad_input_is_exit_code_2_before_the_model_loads():
    for args, says in ((["--workload", "nope"], "error: --workload 'nope': unknown"),
                       (["--peer", "vllm"], "error: --peer 'vllm': unknown"),
                       (["--output-len", "x"], "error: --output-len 'x': use N or MIN:MAX")):
        result = CliRunner().invoke(app, ["bench", "offline", "preset:tiny-qwen3", *args])
        assert result.exit_code == 2 and result.output.strip().startswith(says), result.output


def test_a_missed_slo_is_exit_code_1_with_the_result_kept(tmp_path):
    with FakeOpenAIServer(first_token_s=0.1, inter_token_s=0.01) as fake:
        proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--url", fake.url, "--num-requests", "4",
                               "--concurrency", "2", "--input-len", "8", "--output-len", "4", "--no-report",
                               "--slo", "ttft_p99_ms=50,tpot_p99_ms=1000", "--goodput", "ttft:1000",
                               "-o", str(tmp_path), "--run-id", "slo"],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"SLO c=2: ttft_p99_ms: TTFT p99 1\d\d\.\d ms > 50 ms: failed", proc.stdout)
    assert "SLO c=2: tpot_p99_ms: TPOT p99" in proc.stdout and "SLO failed at c=2" in proc.stdout
    result = BenchResult.read(tmp_path / "slo" / "result.json")
    s = result.runs[0].summary
    assert [(c.name, c.passed) for c in s.slo_checks] == [("ttft_p99_ms", False), ("tpot_p99_ms", True)]
    assert s.goodput == pytest.approx(s.request_throughput)  # every request within 1000 ms TTFT
    # The recorded command can be pasted: opsctl, not __main__.py.
    assert result.command.startswith("opsctl bench --url http://127.0.0.1:")
    assert "--slo ttft_p99_ms=50,tpot_p99_ms=1000" in result.command


# ---------------------------------------------------------------- the recorded command

def test_recorded_command_can_be_pasted():
    main = str(Path(toolkit.__file__).parent / "__main__.py")
    assert command_line([main, "bench", "offline", "--run-id", "a b"]) == "opsctl bench offline --run-id 'a b'"
    assert command_line(["/venv/bin/opsctl", "report", "x"]) == "opsctl report x"
    module = str(Path(toolkit.__file__).parent / "bench" / "http_vs_offline.py")
    assert command_line([module, "--out", "o.json"]) == "python -m toolkit.bench.http_vs_offline --out o.json"
    assert command_line(["/venv/lib/locust/__main__.py", "-f", "f.py"]) == "python -m locust -f f.py"
    assert command_line(["/venv/bin/opsctl", "bench", "--api-key", "sk-1", "--api-key=sk-2"]) == \
        "opsctl bench --api-key REDACTED --api-key=REDACTED"


# ---------------------------------------------------------------- card limits: one table, the profiles

def test_card_limits_come_from_the_profiles(tmp_path, monkeypatch):
    h100 = roofline.device_limits("NVIDIA H100 80GB HBM3")
    assert (h100["bandwidth_gbs"], h100["bf16_tflops"]) == (3000.0, 790.0)  # the profile's measured figures
    assert h100["source"] == "measured (h100-sxm profile)"
    assert roofline.device_limits("NVIDIA H200")["bandwidth_gbs"] == 4800.0
    assert roofline.device_limits("NVIDIA A10G") is None  # A10 is not A10G, nor the A100
    assert roofline.device_limits("x86_64") is None
    # Change the profile and the bench's limits follow: there is no second table.
    for name in ("h100-sxm", "cpu"):
        data = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
        if name == "h100-sxm":
            data["measured"]["memory_bandwidth_gbs"] = 2500
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OPSCTL_PROFILES_DIR", str(tmp_path))  # read by toolkit.profiles
    costs = roofline.ModelCosts(decode_weight_bytes=10**9, kv_bytes_per_token=1000, flops_per_token=2 * 10**9,
                                attn_flops_per_token_pair=1000)
    figures = roofline.decode_figures(costs, tokens_per_s=1000.0, batch=1, avg_context=0,
                                      device_name="NVIDIA H100 80GB HBM3")
    assert figures["bandwidth_limit_gbs"] == 2500 and figures["fraction_of_bandwidth"] == pytest.approx(0.4)
    assert figures["limit_tokens_per_s"] == pytest.approx(2500.0)
    monkeypatch.setenv("OPSCTL_PROFILES_DIR", str(tmp_path / "nowhere"))
    assert roofline.prefill_figures(costs, 100, 1.0, "NVIDIA H100 80GB HBM3").keys() == {"prefill_tflop",
                                                                                        "achieved_tflops"}
