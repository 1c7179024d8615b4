"""`opsctl report`: the HTML page, checked as text and in headless Chromium (folders of runs, the
shared plotly.min.js, headlines and the committed examples: test_report_folder.py).

The browser tests open the page from file:// with playwright driving the system chromium
(Debian's package; `playwright install` is never needed), fail on console errors, page errors or
any http(s) request (the page must work offline), count the drawn plotly charts and keep a
screenshot. Without chromium or playwright they skip locally and fail in CI (CI=true).
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from toolkit.cli import app

from .browser import check_page, open_in_browser
from toolkit.report.render import ReportError, render_report
from toolkit.report.schema import BenchResult, LatencyStats, Run, RunSummary

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "reports" / "examples" / "h100"
T0 = 1_764_000_000.0  # telemetry clock: wall-clock seconds, as pynvml sampling records them
HOSTILE_NOTE = '<img src="x" onerror="alert(1)"> and </script><script>alert(2)</script>'


# ---------------------------------------------------------------- synthetic HTTP result

def _stats(values: list[float]) -> LatencyStats:
    s = pd.Series(values)
    return LatencyStats(count=len(s), mean=s.mean(), p50=s.quantile(0.5), p90=s.quantile(0.9),
                        p95=s.quantile(0.95), p99=s.quantile(0.99), max=s.max())


def make_http_result(out_dir: Path, *, labels: tuple[str, ...] = ("c=1", "c=4", "c=16"),
                     telemetry: bool = True, notes: list[str] | None = None) -> Path:
    """A bench-over-HTTP result: one run per concurrency rung, per-request CSVs, two GPUs sampled."""
    rng = random.Random(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, (label, concurrency) in enumerate(zip(labels, (1, 4, 16))):
        rows = []
        for k in range(30):
            ttft = 0.02 * concurrency ** 0.5 * rng.uniform(0.7, 1.6)
            tpot = 0.006 * (1 + concurrency / 8) * rng.uniform(0.9, 1.2)
            out = rng.randint(64, 256)
            e2e = ttft + tpot * (out - 1)
            error = "HTTP 503" if (i == 2 and k == 7) else None
            rows.append(dict(index=k, start_s=k * 0.1, prompt_tokens=rng.randint(100, 1000), output_tokens=out,
                             ttft_s=None if error else ttft, tpot_s=None if error else tpot,
                             e2e_s=None if error else e2e, itl_mean_s=None if error else tpot,
                             itl_max_s=None if error else tpot * 3, error=error))
        frame = pd.DataFrame(rows)
        ok = frame[frame["error"].isna()]
        frame.to_csv(out_dir / f"requests-{i}.csv", index=False)
        duration = float(ok["e2e_s"].sum()) / concurrency
        summary = RunSummary(
            num_requests=30, num_completed=len(ok), num_errors=30 - len(ok), duration_s=duration,
            request_throughput=len(ok) / duration, input_throughput=ok["prompt_tokens"].sum() / duration,
            output_throughput=ok["output_tokens"].sum() / duration,
            total_token_throughput=(ok["prompt_tokens"].sum() + ok["output_tokens"].sum()) / duration,
            ttft=_stats(ok["ttft_s"].tolist()), tpot=_stats(ok["tpot_s"].tolist()),
            itl=_stats(ok["itl_mean_s"].tolist()), e2e=_stats(ok["e2e_s"].tolist()),
            goodput=len(ok) / duration * 0.9, slo={"ttft_ms": 200.0, "tpot_ms": 50.0})
        runs.append(Run(label=label, target="http", model="qwen2.5-7b", workload={"name": "sharegpt-like"},
                        load={"concurrency": concurrency, "num_requests": 30},
                        config={"url": "http://127.0.0.1:23333/v1", "stream": True}, summary=summary,
                        requests_file=f"requests-{i}.csv", window_s=[T0 + 6.5 * i, T0 + 6.5 * i + 6]))
    samples = []
    if telemetry:
        for step in range(40):
            for gpu in (0, 1):
                samples.append(dict(t=T0 + step * 0.5, index=gpu, name="NVIDIA H100 80GB HBM3",
                                    memory_used_gib=60 + gpu + step * 0.1, utilization_pct=min(100, step * 4),
                                    power_w=150 + step * 10 + gpu * 5))
    result = BenchResult(run_id=out_dir.name, kind="http", command="opsctl bench http --concurrency 1,4,16",
                         git_commit="0123abc", device={"name": "NVIDIA H100 80GB HBM3", "count": 2},
                         versions={"python": "3.12", "opsctl": "0.1.0"}, runs=runs, telemetry=samples,
                         notes=notes or [])
    return result.write(out_dir / "result.json")


# ---------------------------------------------------------------- headless Chromium

def test_offline_examples_render_in_chromium(browser, tmp_path):
    out = render_report([EXAMPLES / "t-throughput", EXAMPLES / "peers-decode-b1"], tmp_path / "offline.html")
    shot = tmp_path / "offline.png"
    seen = open_in_browser(browser, out, shot, min_charts=3)
    # Two workloads, two groups: throughput (256 requests) and batch-1 decode never share an axis.
    check_page(seen, shot, {"headline-1", "headline-2", "latency-distributions-2"})
    assert not any(c["id"].startswith(("gpu-telemetry", "throughput-latency")) for c in seen["charts"])
    assert "no GPU telemetry was recorded" in seen["text"]
    decode = json.loads((EXAMPLES / "peers-decode-b1" / "result.json").read_text())
    fraction = decode["runs"][0]["summary"]["extra"]["fraction_of_bandwidth"]
    for expected in ("t-throughput", "peers-decode-b1", "transformers generate (static cache)",
                     "NVIDIA H100 80GB HBM3", "fraction_of_bandwidth", f"{fraction:.1%}",
                     "engine 4.5x faster"):
        assert expected in seen["text"], expected


def test_http_ladder_renders_in_chromium(browser, tmp_path):
    result = make_http_result(tmp_path / "bench-http-test", notes=[HOSTILE_NOTE])
    out = render_report([result], tmp_path / "http.html")
    shot = tmp_path / "http.png"
    seen = open_in_browser(browser, out, shot, min_charts=4)
    check_page(seen, shot, {"headline-1", "throughput-latency-1", "latency-distributions-1", "gpu-telemetry-1"})
    assert HOSTILE_NOTE in seen["text"]  # shown as text, not run
    for expected in ("c=16", "29/30", "Goodput req/s", "GPU telemetry over time", "TTFT ≤ 200 ms and TPOT ≤ 50 ms"):
        assert expected in seen["text"], expected


# ---------------------------------------------------------------- the page as text

def test_report_is_self_contained(tmp_path):
    out = render_report([make_http_result(tmp_path / "r1")], tmp_path / "r.html")
    html = out.read_text()
    assert html.count("<script>") >= 5  # plotly.js once, then one small script per chart
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1, "plotly.js must be inlined exactly once"
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"https?:", html), "no CDN"
    runs_table = html[html.index('<table class="runs">'):]
    runs_table = runs_table[:runs_table.index("</table>")]
    cells = re.findall(r'<tr><td class="text">(.*?)</td><td class="text">(.*?)</td><td class="text">(.*?)</td>'
                       r'<td>(.*?)</td><td>(.*?)</td>', runs_table)
    assert [(run, load, requests, errors) for run, load, _, requests, errors in cells] == [
        ("c=1", "c=1", "30/30", "0"), ("c=4", "c=4", "30/30", "0"), ("c=16", "c=16", "29/30", "1")]
    assert all(headline.split()[1:3] == ["output", "tok/s,"] for _, _, headline, _, _ in cells), cells


def test_missing_csv_uses_summaries_with_a_note(tmp_path):
    run_dir = tmp_path / "peers-decode-b1"
    shutil.copytree(EXAMPLES / "peers-decode-b1", run_dir)
    (run_dir / "requests-1.csv").unlink()
    html = render_report([run_dir], tmp_path / "r.html").read_text()
    assert "transformers generate: per-request file requests-1.csv is missing" in html
    assert 'id="headline-1"' in html and 'id="latency-distributions-1"' in html

    for csv in run_dir.glob("*.csv"):
        csv.unlink()
    html = render_report([run_dir], tmp_path / "r2.html").read_text()
    assert 'id="headline-1"' in html
    assert 'id="latency-distributions-1"' not in html
    assert "Latency distributions: no per-request rows could be read." in html


def test_label_and_notes_are_escaped(tmp_path):
    label = "<script>alert('pwned')</script>"
    path = make_http_result(tmp_path / "evil", labels=(label, "c=4", "c=16"), notes=[HOSTILE_NOTE])
    data = json.loads(path.read_text())
    data["device"]["name"] = "<b>card</b>"
    path.write_text(json.dumps(data))
    html = render_report([path], tmp_path / "r.html").read_text()
    assert "<script>alert" not in html and "<img src" not in html and "<b>card</b>" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=&#34;x&#34; onerror=&#34;alert(1)&#34;&gt;" in html


def test_run_ids_and_directories_resolve(tmp_path):
    out = render_report(["t-throughput", EXAMPLES / "peers-decode-b1" / "result.json"], tmp_path / "r.html",
                        reports_dir=EXAMPLES)
    html = out.read_text()
    assert "t-throughput" in html and "peers-decode-b1" in html
    same = render_report([EXAMPLES / "t-long-context", EXAMPLES / "t-long-context"], tmp_path / "twice.html")
    run_id = json.loads((EXAMPLES / "t-long-context" / "result.json").read_text())["run_id"]
    assert f"{run_id} (2)" in same.read_text()


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read it as a result file"),
    ('{"run_id": "x"}', "not a valid result file (kind: Field required)"),
])
def test_bad_result_file_is_one_line(tmp_path, content, message):
    bad = tmp_path / "bad" / "result.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(ReportError) as e:
        render_report([bad.parent], tmp_path / "r.html")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "sub" / "cmp.html"
    result = CliRunner().invoke(app, ["report", str(EXAMPLES / "t-ttft"), str(EXAMPLES / "t-prefix-q3"),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and out.stat().st_size > 1_000_000


def test_unknown_run_is_one_line_without_traceback(tmp_path):
    out = tmp_path / "x.html"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "report", "nope", "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no run 'nope'"), proc.stderr
    assert not out.exists()


def test_a_mixed_step_profile_says_its_weights_and_prompt():
    """toolkit.bench.profile_step --prefill-tokens: each row says the weights profiled and the prompt every
    step prefilled, and the reconstructed command carries the options that reproduce it."""
    from toolkit.report.foreign import convert

    entry = {"model": "preset:qwen2.5-7b", "model_format": "awq", "w4_kernel": "cuda", "batch": 16, "context": 512,
             "prefill_tokens": 512, "steps": 16, "device": "NVIDIA H200", "wall_ms_per_step": 19.53,
             "tokens_per_s": 27035.3, "gpu_kernel_ms_per_step": 16.29, "host_phases_ms": {"schedule": 0.04},
             "top_kernels_ms_per_step": {"w4_dequant_kernel": 4.38}}
    decode = {**entry, "model_format": "hf", "w4_kernel": None, "prefill_tokens": 0, "batch": 1}
    converted = convert([entry, decode], "prefill")
    assert converted.headline.startswith("awq (cuda kernel), batch 16 + a 512-token prompt: 19.53 ms per step")
    assert "; hf, batch 1: 19.53 ms per step" in converted.headline
    steps = converted.tables[0]
    assert steps.rows[0][:3] == ["awq (cuda kernel)", "16", "512"] and steps.rows[1][:3] == ["hf", "1", "0"]
    assert converted.tables[1].title == "Batch 16 + a 512-token prompt: GPU kernels, ms per step"
    command = converted.result.command
    assert "--model-format awq --w4-kernel cuda --prefill-tokens 512" in command
    int8 = convert([{**entry, "model_format": "int8", "w4_kernel": None, "w8_kernel": "cuda"}], "int8")
    assert int8.headline.startswith("int8 (cuda kernel), batch 16")
    assert "--model-format int8 --w8-kernel cuda" in int8.result.command
