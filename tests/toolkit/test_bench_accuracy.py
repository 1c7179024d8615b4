"""`opsctl bench --url` reads what the server did: the fake server's own log is the ground truth.

toolkit.bench.fake_server (2 worker processes) logs every request it served: arrival, first and last
token on the machine's monotonic clock, tokens sent, and the X-Request-Id the bench sends
(opsctl-<process>-<index>), so the bench's measured requests are picked out of it exactly. On this
2-core machine, shared with other work, the server's timers run late by a few ms at times (its log
says by how much), so the bench is held to what the server actually did, within 5%:
  TTFT p50    the server's p50 of arrival -> first token, over the measured requests
  TPOT p50    the server's p50 of (last - first token) / (tokens - 1)
  output tok/s  users x tokens / the server's mean request time: the rate with no time lost between
              requests or outside the window, which is what the bench under-read by 23-26% (issue 11)

Values this machine takes (the server and the client share 2 cores with other work):
  64 streams, TTFT 100 ms, ITL 20 ms, 48-80 tokens (uniform), 320 requests: 3,200 token events/s,
  a quarter of a core for the client. Lengths vary so requests do not fall into lockstep (before the
  users' first sends were spread, 64 requests finishing and arriving together queued ~10 ms in the
  server's intake before its arrival stamp could see them: TTFT p50 59 ms against the server's
  50.5, the server's delay, not the client's). TTFT is 100 ms, not 50: a few ms of scheduling on
  this machine stay under 5%. Identical requests are tested for throughput alone (below), with the
  work spread over 2 Locust workers; test_bench_stagger checks that they do not run in lockstep.
A client starved on purpose (ITL 1 ms, 64 streams, one process: 64,000 events/s asked of one
core) must be flagged as saturated.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from toolkit.bench.fake_server import FakeConfig, FakeServer
from toolkit.bench.load_runner import (HttpBenchOptions, HttpRequestRecord, Rung, RungOutcome, client_processes,
                                       run_http_bench, steady_rates, steady_window, to_records)

WARMUP = 4
SERVER_WORKERS = 2


def _bench(fake: FakeServer, out: Path, **kw):
    opts = HttpBenchOptions(url=fake.url, input_len=(16, 16), warmup=WARMUP, output_dir=out, run_id="r1", **kw)
    result, out_dir = run_http_bench(opts, Console(stderr=True, quiet=True))
    return result, out_dir


def _measured(fake: FakeServer) -> list[dict]:
    """The server's log of the bench's measured requests (X-Request-Id opsctl-<process>-<index>)."""
    recs = fake.stats(requests=True)["request_list"]
    out = [r for r in recs if r.get("rid") and int(r["rid"].rsplit("-", 1)[1]) >= WARMUP]
    assert out and all(r["first"] is not None and not r["disconnected"] for r in out)
    return out


def _server_rate(reqs: list[dict], users: int) -> float:
    """Token events/s the server would stream with every user busy all the time, from its own request times."""
    return users * sum(r["tokens"] for r in reqs) / sum(r["ended"] - r["arrived"] for r in reqs)


def test_ttft_tpot_and_throughput_match_what_the_server_did(tmp_path):
    with FakeServer(FakeConfig(ttft_s=0.1, itl_s=0.02), workers=SERVER_WORKERS) as fake:
        result, _ = _bench(fake, tmp_path, output_len=(48, 80), num_requests=320, concurrency=[64],
                           client_processes=1)
        reqs = _measured(fake)
    s = result.runs[0].summary
    print(json.dumps(s.extra, indent=1))
    assert s.num_requests == 320 and s.num_errors == 0 and len(reqs) == 320
    ttft = statistics.median(r["first"] - r["arrived"] for r in reqs)
    itl = statistics.median((r["last"] - r["first"]) / (r["tokens"] - 1) for r in reqs)
    truth = _server_rate(reqs, 64)
    print(f"TTFT p50 {s.ttft.p50 * 1000:.1f} ms (server {ttft * 1000:.1f}), TPOT p50 {s.tpot.p50 * 1000:.2f} ms "
          f"(server {itl * 1000:.2f}), output {s.output_throughput:.0f} tok/s (server {truth:.0f}, "
          f"whole run {s.extra['whole_run']['output_throughput']:.0f})")
    assert s.ttft.p50 == pytest.approx(ttft, rel=0.05)
    assert s.tpot.p50 == pytest.approx(itl, rel=0.05)
    assert s.output_throughput == pytest.approx(truth, rel=0.05)
    # The server did roughly what it was told (else the comparison above says nothing about issue 11).
    assert ttft == pytest.approx(0.1, rel=0.25) and itl == pytest.approx(0.02, rel=0.1)
    # Every measured request is in the steady window's accounting; prompt tokens are the server's count.
    assert s.extra["throughput_window_s"][1] > s.extra["throughput_window_s"][0] > -1e-9
    assert s.extra["prompt_tokens_mean"] == pytest.approx(statistics.mean(r["prompt_tokens"] for r in reqs))
    assert s.extra["workload_prompt_tokens_mean"] == 16
    cpu = s.extra["client_cpu"]
    assert [c["users"] for c in cpu] == [64] and cpu[0]["busy"] > 0 and s.extra["client_processes"] == 1


def test_lockstep_throughput_over_two_locust_workers(tmp_path):
    """Identical requests at 64 users: exactly N of them start in a ramp (the first sends spread over one
    request time) and end in a drain (fewer and fewer in flight), which the whole-run figure counts and the
    steady window does not."""
    with FakeServer(FakeConfig(ttft_s=0.05, itl_s=0.02), workers=SERVER_WORKERS) as fake:
        result, out_dir = _bench(fake, tmp_path, output_len=(64, 64), num_requests=288, concurrency=[64],
                                 client_processes=2)
        reqs = _measured(fake)
    s = result.runs[0].summary
    truth = _server_rate(reqs, 64)
    whole = s.extra["whole_run"]["output_throughput"]
    print(f"output {s.output_throughput:.0f} tok/s, whole run {whole:.0f}, server {truth:.0f}; {s.extra['client_cpu']}")
    assert s.num_requests == 288 and s.num_errors == 0
    assert s.output_throughput == pytest.approx(truth, rel=0.05)
    assert whole < 0.95 * truth  # 4.5 request times each: the ramp and drain the old window counted (~0.82 here)
    # Two workers of 32 users each (and the master, which runs none), their records merged into one file.
    assert s.extra["client_processes"] == 2 and result.runs[0].load["client_processes"] == 2
    assert sorted(c["users"] for c in s.extra["client_cpu"]) == [0, 32, 32]
    raw = [json.loads(line) for line in (out_dir / "raw" / "records-0.jsonl").read_text().splitlines()]
    assert [r["index"] for r in raw] == list(range(288 + WARMUP))
    assert not list((out_dir / "raw").glob("records-0.w*.jsonl"))
    assert len({r["rid"].split("-")[1] for r in reqs}) == 2  # both workers' requests reached the server


def test_starved_client_is_flagged_as_saturated(tmp_path):
    with FakeServer(FakeConfig(ttft_s=0.01, itl_s=0.001), workers=SERVER_WORKERS) as fake:
        proc = subprocess.run([sys.executable, "-m", "toolkit", "bench", "--url", fake.url, "--concurrency", "64",
                               "--num-requests", "192", "--input-len", "8", "--output-len", "200",
                               "--client-processes", "1", "--no-report", "-o", str(tmp_path), "--run-id", "r1"],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0
    result = json.loads((tmp_path / "r1" / "result.json").read_text())
    extra = result["runs"][0]["summary"]["extra"]
    assert extra["client_saturated"] is True, extra["client_cpu"]
    assert max(extra["client_cpu"][0]["busy"], extra["client_cpu"][0]["runnable"] or 0) > 0.9
    assert any("the load generator was saturated" in n for n in result["notes"])
    assert "warning: c=64: the load generator was saturated" in " ".join(proc.stderr.split())


# -- the window and the process rule, on records made by hand -------------------------------------

def _rec(user, start, ttft, gaps, e2e, tokens=None, error=None):
    return HttpRequestRecord(index=0, start_s=start, prompt_tokens=10, output_tokens=tokens or len(gaps) + 1,
                             ttft_s=ttft, e2e_s=e2e, itl_s=gaps, error=error, user=user)


def test_steady_window_is_while_every_user_is_busy():
    # Two users; "a" starts at 0 and 1, "b" at 0.5 and 2: every user busy from 0.5 (b's first send)
    # to 2.0 (a's last finish).
    recs = [_rec("a", 0.0, 0.1, [0.1] * 9, 1.0), _rec("a", 1.0, 0.1, [0.1] * 9, 1.0),
            _rec("b", 0.5, 0.1, [0.1] * 9, 1.5), _rec("b", 2.0, 0.1, [0.1] * 9, 1.0)]
    assert steady_window(recs, users=2) == (0.5, 2.0)
    assert steady_window(recs, users=3) is None  # a user that sent nothing measured: never all busy
    rates = steady_rates(recs, 0.5, 2.0, None)
    # Tokens arrive at start + 0.1, 0.2 ... 1.0: a's first has 6 in [0.5, 2], a's second 10, b's first 9 and
    # b's second none: 25 tokens over 1.5 s.
    assert rates["output_throughput"] == pytest.approx(25 / 1.5)
    # Requests by their time inside: 0.5 + 1 + 1 + 0 over 1.5 s.
    assert rates["request_throughput"] == pytest.approx(2.5 / 1.5)
    assert rates["input_throughput"] == pytest.approx(25 / 1.5)
    # Several tokens per chunk (usage says 20 for 10 chunks): scaled.
    assert steady_rates([_rec("a", 0.0, 0.1, [0.1] * 9, 1.0, tokens=20)], 0.0, 1.0, None)["output_throughput"] == 20
    # A failed request counts for nothing.
    assert steady_rates([_rec("a", 0.0, 0.1, [0.1] * 9, 1.0, error="x")], 0.0, 1.0, None)["output_throughput"] == 0


def test_client_processes_rule():
    assert client_processes(64, None, cores=16) == 1
    assert client_processes(65, None, cores=16) == 2
    assert client_processes(256, None, cores=16) == 4
    assert client_processes(2048, None, cores=16) == 15  # at most the cores less one
    assert client_processes(256, None, cores=2) == 1
    assert client_processes(3, 8, cores=2) == 3  # asked: at most one per user, whatever the cores
    # After a rung: 64 users kept one process 60% busy (0.0094 of a core per user); 256 users want 2.4
    # cores, so 5 processes at half a core each.
    prev = RungOutcome(raw=[], window_s=[], returncode=0, processes=1,
                       cpu=[{"role": "local", "users": 64, "measured": {"busy": 0.6}}])
    assert client_processes(256, None, (Rung("c=64", 64, None, 64, 4), prev), cores=16) == 5
    # A slow server: the same 64 users kept it 5% busy; 1024 users fit in 2 processes.
    prev.cpu[0]["measured"]["busy"] = 0.05
    assert client_processes(1024, None, (Rung("c=64", 64, None, 64, 4), prev), cores=16) == 2


def test_records_keep_the_servers_prompt_count_and_the_workloads():
    raw = [{"index": 0, "warmup": False, "start_s": 1.0, "ttft_s": 0.1, "e2e_s": 0.3, "itl_us": [100000, 100000],
            "prompt_tokens": 94, "workload_prompt_tokens": 64, "output_tokens": 3, "usage": True, "user": "u:1"},
           {"index": 1, "warmup": False, "start_s": 1.5, "ttft_s": 0.1, "e2e_s": 0.3, "itl_us": [],
            "prompt_tokens": None, "workload_prompt_tokens": 64, "output_tokens": 1, "usage": False, "user": "u:1"}]
    a, b = to_records(raw)
    assert (a.prompt_tokens, a.workload_prompt_tokens) == (94, 64)  # the chat template's 30 tokens counted
    assert (b.prompt_tokens, b.workload_prompt_tokens) == (64, 64)  # no usage: the workload's count
    assert a.itl_s == [0.1, 0.1] and a.row()["workload_prompt_tokens"] == 64 and a.row()["user"] == "u:1"
