"""`opsctl report` on folders of runs: every committed example renders, charts group by workload,
headlines say what each workload is about, plotly.js is shared by the pages of a folder and inlined
only in a single-file export, and a saturated client is a warning on the page.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.bench.report_table import write_html_report
from toolkit.cli import app
from toolkit.report.render import ReportError, load_results, render_report

from .browser import check_page, open_in_browser
from .test_report import make_http_result

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "reports" / "examples"
PLOTLY_BANNER = re.compile(r"\* plotly\.js v\d")  # the first line of the bundle


def _example_files() -> list[Path]:
    """Committed results; a tune's folder (tune.json and its files) is the tuner's report's to read
    (tests/toolkit/test_tune_report.py), not `opsctl report`'s."""
    tunes = {t.parent for t in EXAMPLES.rglob("tune.json")}
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and not tunes & set(p.parents))


def _visible(page: str) -> str:
    """The page's text without tags and scripts (the chart data), roughly what a reader sees."""
    page = re.sub(r"<script.*?</script>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def _chart_strings(page: str, key: str) -> list[str]:
    """The one-string lists a chart's data holds under `key` ("y": bar labels, "text": their words)."""
    return [json.loads(x) for x in re.findall(rf'"{key}":\[("(?:[^"\\]|\\.)*")\]', page)]


# ---------------------------------------------------------------- every committed example

@pytest.mark.parametrize("path", [p for p in _example_files() if p.suffix == ".json"],
                         ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_committed_json_result_renders(path, tmp_path):
    page = render_report([path], tmp_path / "page.html", script_root=tmp_path)
    headlines = re.findall(r'<p class="headline">(.*?)</p>', page.read_text())
    assert len(headlines) == 1 and headlines[0].strip() not in ("", "–"), headlines


def test_every_committed_file_is_a_result_or_read_by_one():
    results, _ = load_results([EXAMPLES])
    read = {x.path.resolve() for x in results}
    for x in results:
        for run in x.result.runs:
            if run.requests_file:
                read.add((x.path.parent / run.requests_file).resolve())
    others = [p for p in _example_files() if p.resolve() not in read]
    # Only logs kept beside a run (e.g. the GPU test log of the torch-path run) and a folder's README.md
    # (what an experiment's files show) are neither.
    assert all(p.suffix == ".log" or p.name == "README.md" for p in others), others


def test_examples_folder_report_groups_workloads_and_says_what_each_is_about(tmp_path):
    page = render_report([EXAMPLES / "h100"], tmp_path / "h100")
    html = page.read_text()
    text = _visible(html)
    # Headlines: TTFT for ttft, the prefill speed-up for shared-prefix, tok/s for throughput, the
    # HTTP/offline ratio with its direction and goal.
    for expected in ("TTFT 22.8 ms (81% of the card's TFLOP/s)",
                     "prefill 12.9x faster with prefix caching (0.207 s), outputs identical",
                     "13,588 output tok/s",
                     "HTTP 1.10x slower than the offline engine (91% of its output tok/s; goal at least 90%: met)",
                     "HTTP 1.12x slower than the offline engine (89% of its output tok/s; goal at least 90%: missed)",
                     "18 kernel timings", "batch 1: 5.66 ms per step, 176.7 tok/s"):
        assert expected in text, expected
    assert not re.search(r"\b0\.\d+x\b", text), "a speed-up read as a fraction"
    # One group per workload; a chart's bars are the runs of its own group only.
    groups = re.findall(r'<div class="group" id="(group-\d+)">\s*<h3>(.*?) <span', html)
    titles = [t for _, t in groups]
    assert len(titles) == len(set(titles)) == 7, titles
    for div_id, title in groups:
        body = html[html.index(f'id="{div_id}"'):]
        body = body[:body.index('<div class="group"', 1)] if '<div class="group"' in body[1:] else body
        bars = _chart_strings(body[body.index("headline-"):body.index("</figure>")], "y")
        if title.startswith("Offline ttft"):
            assert bars == ["opsctl engine"], bars
        elif title.startswith("Offline shared-prefix"):
            assert len(bars) == 6 and all("prefix cache" in b for b in bars), bars
        elif title.startswith("HTTP against offline"):
            assert len(bars) == 9 and all(b.startswith("http_vs_offline") for b in bars), bars
        elif title.startswith("Offline decode-b1"):
            assert {b.split(" · ")[0] for b in bars} == {"decode-b1", "issue2-decode-b1"}, bars


def test_a_speedup_reads_as_faster_never_as_a_fraction(tmp_path):
    run = EXAMPLES / "h100" / "t-shared-prefix-deterministic"
    html = render_report([run], tmp_path / "p.html", script_root=tmp_path).read_text()
    assert "12.9x faster" in _visible(html)
    assert "0.207 s (12.9x faster with caching)" in _chart_strings(html, "text")  # the bar's label
    assert not re.search(r"\b0\.\d+x\b", html)
    peers = render_report([EXAMPLES / "h100" / "torch-path-decode-b1"], tmp_path / "q.html",
                          script_root=tmp_path).read_text()
    assert _chart_strings(peers, "text") == ["38.9 tok/s", "43.6 tok/s (engine 1.12x slower)"]


# ---------------------------------------------------------------- plotly.js: shared or inlined

def test_run_pages_share_one_plotly_file(tmp_path):
    reports = tmp_path / "reports"
    for name in ("t-ttft", "peers-decode-b1"):
        shutil.copytree(EXAMPLES / "h100" / name, reports / name)
    pages = [write_html_report(reports / name) for name in ("t-ttft", "peers-decode-b1")]
    script = reports / "plotly.min.js"
    assert script.is_file() and PLOTLY_BANNER.search(script.read_text()[:2000])
    first = script.stat()
    assert sorted(p.name for p in reports.rglob("plotly.min.js")) == ["plotly.min.js"]
    for page in pages:
        html = page.read_text()
        assert '<script src="../plotly.min.js"></script>' in html
        assert not PLOTLY_BANNER.search(html) and page.stat().st_size < 500_000
    write_html_report(reports / "t-ttft")  # a later page leaves the shared copy alone
    assert (script.stat().st_ino, script.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_folder_output_and_single_file_export(tmp_path):
    out = tmp_path / "out"
    runs = [str(EXAMPLES / "h100" / "t-ttft"), str(EXAMPLES / "h100" / "t-throughput")]
    result = CliRunner().invoke(app, ["report", *runs, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "plotly.min.js"]
    assert '<script src="plotly.min.js"></script>' in (out / "index.html").read_text()
    single = tmp_path / "one.html"
    result = CliRunner().invoke(app, ["report", str(EXAMPLES / "h100" / "t-ttft"), "-o", str(single)])
    assert result.exit_code == 0, result.output
    html = single.read_text()
    assert len(PLOTLY_BANNER.findall(html)) == 1 and not re.search(r"<script[^>]+src=", html)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.html", "out"]  # no script beside the export


def test_folder_report_draws_in_chromium(browser, tmp_path):
    page = render_report([EXAMPLES / "h100"], tmp_path / "h100")
    shot = tmp_path / "h100.png"
    seen = open_in_browser(browser, page, shot, min_charts=7)
    check_page(seen, shot, {f"headline-{i}" for i in range(1, 8)})
    assert "The charts need" not in seen["text"]  # plotly.min.js was found beside the page


# ---------------------------------------------------------------- folders as input

def test_a_folder_of_runs_is_every_result_below_it(tmp_path):
    root = tmp_path / "gpu-run"
    shutil.copytree(EXAMPLES / "h100" / "t-ttft", root / "ttft")
    shutil.copytree(EXAMPLES / "h100" / "t-throughput", root / "nested" / "throughput")
    shutil.copy(EXAMPLES / "h100" / "http_vs_offline.json", root)
    (root / "notes.json").write_text(json.dumps({"todo": 1}))
    (root / "ttft" / "raw").mkdir()
    (root / "ttft" / "raw" / "plan-0.json").write_text("{}")  # below a run: not looked at
    results, skipped = load_results([root])
    assert sorted(x.result.run_id for x in results) == ["http_vs_offline", "throughput", "ttft"]
    assert skipped == [f"{root / 'notes.json'}: not a result file, left out"]
    html = render_report([root], tmp_path / "r.html", script_root=tmp_path).read_text()
    assert "notes.json: not a result file, left out" in html

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no result files in that folder") as error:
        render_report([empty], tmp_path / "e.html")
    assert "\n" not in str(error.value) and not (tmp_path / "e.html").exists()
    result = CliRunner().invoke(app, ["report", str(empty), "-o", str(tmp_path / "e.html")])
    assert result.exit_code == 2 and result.output.startswith("error: ")


def test_an_unknown_json_named_directly_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps([1, 2]))
    with pytest.raises(ReportError, match="not a result file"):
        render_report([other], tmp_path / "p.html")


# ---------------------------------------------------------------- a saturated client

def test_a_saturated_client_is_a_warning_on_the_page(tmp_path):
    path = make_http_result(tmp_path / "busy", telemetry=False)
    data = json.loads(path.read_text())
    data["runs"][2]["summary"]["extra"].update(
        client_saturated=True, client_cpu=[{"role": "local", "users": 16, "cpu_s": 5.9, "wall_s": 6.0, "busy": 0.98}])
    path.write_text(json.dumps(data))
    html = render_report([path], tmp_path / "p.html", script_root=tmp_path).read_text()
    warnings = html[html.index('id="warnings"'):]
    warnings = _visible(warnings[:warnings.index("</div>")])
    assert ("c=16: the load generator's CPU was saturated (busiest process: local, 16 users, 98% of a core): "
            "these figures are the client's limit, not the server's") in warnings
    assert "c=4:" not in warnings
