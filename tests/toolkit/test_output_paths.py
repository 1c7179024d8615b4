"""Results stay in their folders: --run-id is one safe folder name under --output-dir, and a report
reads only files inside the folder of the result that names them (toolkit.report.paths)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.report.paths import UnsafePathError, check_run_id, file_in_result_dir, run_dir
from toolkit.report.render import ReportError, render_report
from toolkit.report.schema import BenchResult, Run, RunSummary

REPO = Path(__file__).resolve().parents[2]
BAD_IDS = ["../../x", "/abs/path", "a/b", "..", ".", "", ".hidden", "-rf", "a\\b", "a b", "x" * 129, "r1/"]
GOOD_IDS = ["r1", "offline-20260101-120000", "exp_1.bs32", "A", "x" * 128]


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_unsafe_run_ids_are_refused(run_id):
    with pytest.raises(UnsafePathError) as error:
        check_run_id(run_id)
    message = str(error.value)
    assert message.startswith("--run-id ") and "\n" not in message


@pytest.mark.parametrize("run_id", GOOD_IDS)
def test_folder_names_are_accepted(run_id, tmp_path):
    assert check_run_id(run_id) == run_id
    assert run_dir(tmp_path, run_id) == tmp_path / run_id


def test_run_dir_refuses_a_link_out_of_the_output_dir(tmp_path):
    reports, elsewhere = tmp_path / "reports", tmp_path / "elsewhere"
    reports.mkdir()
    elsewhere.mkdir()
    (reports / "evil").symlink_to(elsewhere)
    (reports / "inside").symlink_to(reports / "kept")  # a link that stays inside is fine
    with pytest.raises(UnsafePathError, match="outside"):
        run_dir(reports, "evil")
    assert run_dir(reports, "inside") == reports / "inside"


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _assert_refused(result, tmp_path: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --run-id "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("run_id", ["../../x", "ABS", "a/b", "..", "../escaped"])
def test_bench_offline_refuses_unsafe_run_ids_before_loading(run_id, tmp_path):
    out = tmp_path / "deep" / "reports"
    if run_id == "ABS":
        run_id = str(tmp_path / "abs" / "path")
    _assert_refused(_invoke("bench", "offline", "preset:tiny-qwen3", "--device", "cpu", "-o", str(out),
                            "--run-id", run_id, "--no-report"), tmp_path)
    written = [p for p in tmp_path.rglob("*")]
    assert written == [], written  # not even the output folder: refused before anything ran


@pytest.mark.parametrize("run_id", ["../../x", "/abs/path", "a/b", ".."])
def test_bench_http_refuses_unsafe_run_ids(run_id, tmp_path):
    _assert_refused(_invoke("bench", "--url", "http://127.0.0.1:9", "-o", str(tmp_path / "reports"),
                            "--run-id", run_id), tmp_path)


def test_bench_http_accepts_a_folder_name(tmp_path):
    # Port 9 (discard) is closed: the bench gets past the run id and fails on the server instead.
    result = _invoke("bench", "--url", "http://127.0.0.1:9", "-o", str(tmp_path), "--run-id", "ok.run_1")
    assert result.exit_code == 1 and "--run-id" not in result.output, result.output


def test_bench_offline_accepts_a_folder_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "offline", "preset:tiny-qwen3", "--device",
                           "cpu", "--num-requests", "2", "--input-len", "8", "--output-len", "2",
                           "--cache-max-entry-count", "32", "--cache-block-seq-len", "16", "--session-len", "128",
                           "-o", str(tmp_path), "--run-id", "my.run_1", "--no-report"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert BenchResult.read(tmp_path / "my.run_1" / "result.json").run_id == "my.run_1"


# ---------------------------------------------------------------- files a result names


def _result_dir(root: Path, requests_file: str) -> Path:
    folder = root / "run"
    folder.mkdir(parents=True)
    pd.DataFrame([{"index": 0, "ttft_s": 0.1, "e2e_s": 0.5, "output_tokens": 4, "error": None}]).to_csv(
        folder / "requests-0.csv", index=False)
    summary = RunSummary(num_requests=1, num_completed=1, num_errors=0, duration_s=0.5, request_throughput=2.0,
                         input_throughput=20.0, output_throughput=8.0, total_token_throughput=28.0)
    run = Run(label="engine", target="engine", model="m", workload={}, summary=summary, requests_file=requests_file)
    BenchResult(run_id="r1", kind="offline", runs=[run]).write(folder / "result.json")
    return folder


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "../outside.csv", "sub/../../outside.csv"])
def test_report_refuses_a_requests_file_outside_the_result(name, tmp_path):
    (tmp_path / "outside.csv").write_text("index,secret\n0,42\n")
    folder = _result_dir(tmp_path, name)
    with pytest.raises(ReportError) as error:
        render_report([folder], tmp_path / "page.html")
    message = str(error.value)
    assert "\n" not in message and "requests_file" in message and "outside the result's folder" in message
    assert str(folder / "result.json") in message
    assert not (tmp_path / "page.html").exists()
    cli = _invoke("report", str(folder), "-o", str(tmp_path / "page.html"))
    assert cli.exit_code == 2 and cli.output.startswith("error: ") and len(cli.output.strip().splitlines()) == 1


def test_report_refuses_a_link_out_of_the_result(tmp_path):
    (tmp_path / "outside.csv").write_text("index,secret\n0,42\n")
    folder = _result_dir(tmp_path, "linked.csv")
    (folder / "linked.csv").symlink_to(tmp_path / "outside.csv")
    with pytest.raises(ReportError, match="outside the result's folder"):
        render_report([folder], tmp_path / "page.html")


def test_report_reads_files_beside_the_result(tmp_path):
    folder = _result_dir(tmp_path, "requests-0.csv")
    assert file_in_result_dir(folder, "requests-0.csv", "requests_file") == (folder / "requests-0.csv").resolve()
    page = render_report([folder], tmp_path / "page.html")
    assert page.is_file() and "per-request file" not in page.read_text()
