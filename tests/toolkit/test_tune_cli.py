"""`opsctl tune` end to end on the CPU: a short tune of the embedded default with three trials (one
made to fail: a cache smaller than a session; the later ones reconfigure the first one's server), its report in a browser, its launch.sh really serving
a chat request, and --resume after a tune killed midway re-running no finished trial and leaving no
server behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from toolkit.tune.schema import TuneResult
from toolkit.tune.search import beats

from .browser import check_page, open_in_browser

ROOT = Path(__file__).resolve().parents[2]
# Three trials: the default, --max-batch-size 2, and a 2-block cache (128 tokens < one session).
SHORT = ["--gpu", "cpu", "--axis", "max_batch_size=2", "--axis", "cache_max_entry_count=2",
         "--axis", "max_prefill_token_num=8192", "--axis", "enable_prefix_caching=off",
         "--max-streams", "2", "--min-requests", "4", "--initial-streams", "1", "--session-len", "1024",
         # generous limits: this test is about the mechanics on a shared 2-core machine, not the verdicts
         "--slo", "ttft_p99_ms=60000,tpot_p99_ms=5000"]


def _env() -> dict:
    # launch.sh calls `opsctl`: the venv's bin must be on PATH as it is for a user of the venv
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1"}


def _tune(tmp_path: Path, *args: str, run_id: str = "t1") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", "tune", *SHORT, "-o", str(tmp_path), "--run-id", run_id,
                           *args], capture_output=True, text=True, timeout=1200, cwd=ROOT, env=_env())


def _servers_of(folder: Path) -> list[int]:
    """Live processes writing into this tune's servers/ logs: its `opsctl serve` and engine processes."""
    logs = str(folder / "servers")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            target = os.readlink(proc / "fd" / "1")
        except OSError:
            continue
        if state != "Z" and target.startswith(logs):
            pids.append(int(proc.name))
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def short_tune(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    proc = _tune(out)
    return out / "t1", proc


def test_short_tune_records_three_trials_one_failed_and_chooses(short_tune):
    folder, proc = short_tune
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = TuneResult.read(folder / "tune.json")
    assert len(result.trials) == 3
    default, small_batch, tiny_cache = result.trials
    assert default.is_default and default.flags == ["--session-len", "1024"]
    assert small_batch.flags == ["--max-batch-size", "2", "--session-len", "1024"]
    assert tiny_cache.status == "failed" and "less than one session" in tiny_cache.reason, tiny_cache.reason
    # the first trial starts the server; the next changes only runtime settings: reconfigured in place
    assert default.setup_kind == "restart" and small_batch.setup_kind == "reconfigure"
    assert small_batch.setup_s < default.setup_s / 4
    for t in (default, small_batch):
        assert t.status == "ok" and t.points
        assert all(p.requests >= 4 and p.output_tok_s > 0 for p in t.points)
        for p in t.points:  # each point's verdict is its attainment against the target
            assert p.meets_slo == (p.slo_fraction >= result.slo.attainment)
            assert (folder / p.bench_dir / "result.json").is_file()
    assert result.chosen in (default.trial_id, small_batch.trial_id)
    chosen = result.trial(result.chosen)
    assert chosen.best is not None and chosen.best.meets_slo
    # the search's one rule: the default stays unless the other beats it by more than the noise margin
    assert result.chosen == (small_batch.trial_id if beats(small_batch, default) else default.trial_id)
    assert result.search.trials_run == 3 and "less than one session" in (folder / "trials.csv").read_text()
    # the start says the grid's axes, each with the default's own value (rich wraps: compare words)
    assert ("axes: max_batch_size default, 2; cache_max_entry_count 0.8, 2.0; max_prefill_token_num 8192; "
            "enable_prefix_caching off") in " ".join(proc.stdout.split())
    assert not _servers_of(folder)


def test_short_tune_report_renders(short_tune, browser, tmp_path):
    folder, _ = short_tune
    shot = tmp_path / "tune.png"
    seen = open_in_browser(browser, folder / "report.html", shot, min_charts=2)
    check_page(seen, shot, {"tune-throughput-latency", "tune-ladder"})
    assert "less than one session" in seen["text"] and "launch.sh" in seen["text"]


def test_resume_with_another_space_card_or_search_refuses_and_keeps_the_stored_tune(short_tune):
    folder, proc = short_tune
    assert proc.returncode == 0
    stored = (folder / "tune.json").read_text()
    other_axis = [a if a != "max_batch_size=2" else "max_batch_size=2,3" for a in SHORT]
    for args, words in ((other_axis, "search space: max_batch_size [2, 3] (stored: [2])"),
                        ([*SHORT, "--gpu", "rtx4090"], "--gpu rtx4090 (stored: cpu)"),
                        ([*SHORT, "--search", "grid"], "--search grid (stored: coordinate)")):
        refused = subprocess.run([sys.executable, "-m", "toolkit", "tune", *args, "-o", str(folder.parent),
                                  "--resume", folder.name], capture_output=True, text=True, timeout=600, cwd=ROOT,
                                 env=_env())
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 2 and words in said, said
        assert "Resume with the stored command's options: opsctl tune --gpu cpu" in said and "trial t" not in said
    assert (folder / "tune.json").read_text() == stored


def test_launch_sh_serves_a_chat_request(short_tune, tmp_path):
    folder, _ = short_tune
    launch = folder / "launch.sh"
    assert os.access(launch, os.X_OK)
    port = _free_port()
    log = open(tmp_path / "launch.log", "w")
    proc = subprocess.Popen(["bash", str(launch), "--server-name", "127.0.0.1", "--server-port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "launch.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "launch.log").read_text()
            time.sleep(0.5)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()


def test_resume_after_kill_reruns_no_finished_trial(tmp_path):
    cmd = [sys.executable, "-m", "toolkit", "tune", *SHORT, "-o", str(tmp_path), "--run-id", "r1"]
    tune = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env())
    store = tmp_path / "r1" / "tune.json"
    deadline = time.monotonic() + 600
    while True:  # kill it outright once the first trial is stored and the second has begun
        assert tune.poll() is None, "the tune ended before it could be killed"
        if store.exists() and len(json.loads(store.read_text())["trials"]) == 1 and _servers_of(tmp_path / "r1"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    tune.kill()
    tune.wait()
    first = TuneResult.read(store).trials[0]
    deadline = time.monotonic() + 60
    while _servers_of(tmp_path / "r1"):  # the orphaned server follows its tune (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "a server outlived the killed tune"
        time.sleep(0.5)
    proc = subprocess.run(cmd[:-2] + ["--resume", "r1"], capture_output=True, text=True, timeout=1200, cwd=ROOT,
                          env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = TuneResult.read(store)
    assert len(result.trials) == 3
    assert result.trials[0] == first  # kept as stored, not re-run
    assert "1 trial(s) done, none re-run" in proc.stdout
    assert not _servers_of(tmp_path / "r1")
