"""Closed-loop users of `opsctl bench --url` start spread over one request time, not in lockstep.

Against a deterministic server (the fake: fixed TTFT, ITL and length) users that all send their first
request at once finish together and send again together for the whole run: with the gate alone, every
request of the run had ~C-1 others sent within +-5 ms of it, and the server's intake answered those
herds late (GuideLLM's mock server: TTFT 157 vs 120 ms under GuideLLM's drifting streams,
reports/examples/cpu/guidellm_compare.json). The locustfile's dispatcher spreads the first measured
sends over the warm-ups' mean duration, user k of n at k/n of it (processes interleaved), so the
users keep distinct phases; measured throughput must not drop for it (the steady window starts once
the last user has sent).

The schedule itself (toolkit.bench.locust_dispatch) is checked on gevent greenlets without Locust:
slots at k/n of the spread, a worker's slots shifted by its share of one slot, and a spread that the
first measured completion shows to be too long (a cold server's warm-ups) pulled in. A run whose first
sends could not be spread (no warm-up, or none succeeded) says so in a note.
"""
from __future__ import annotations

import bisect
import json
import statistics
import time

import gevent
import pytest
from rich.console import Console

from toolkit.bench.fake_server import FakeConfig, FakeServer
from toolkit.bench.load_runner import HttpBenchOptions, Rung, RungOutcome, make_run, run_http_bench
from toolkit.bench.locust_dispatch import Dispatcher, warmup_spread

USERS = 16
TOKENS = 64
WARMUP = 4


def _herd(starts: list[float], within_s: float = 0.005) -> float:
    """The fraction of requests with another request sent within +-within_s of it."""
    st = sorted(starts)
    return sum(bisect.bisect_right(st, t + within_s) - bisect.bisect_left(st, t - within_s) > 1 for t in st) / len(st)


def test_first_sends_are_spread_and_stay_apart(tmp_path):
    # 50 ms + 63 x 10 ms = 0.68 s a request: 16 users 42 ms apart. Users in lockstep: every request has
    # 15 others within +-5 ms (fraction 1.0); at random phases 1 - exp(-15 x 10 / 680) = 0.2 would.
    with FakeServer(FakeConfig(ttft_s=0.05, itl_s=0.01), workers=1) as fake:
        opts = HttpBenchOptions(url=fake.url, input_len=(16, 16), output_len=(TOKENS, TOKENS), num_requests=6 * USERS,
                                concurrency=[USERS], warmup=WARMUP, client_processes=2, output_dir=tmp_path,
                                run_id="r1")
        result, out_dir = run_http_bench(opts, Console(stderr=True, quiet=True))
        served = [r for r in fake.stats(requests=True)["request_list"] if int(r["rid"].rsplit("-", 1)[1]) >= WARMUP]
    s = result.runs[0].summary
    raw = [json.loads(line) for line in (out_dir / "raw" / "records-0.jsonl").read_text().splitlines()]
    measured = [r for r in raw if not r["warmup"]]
    assert s.num_requests == 6 * USERS and s.num_errors == 0 and s.extra["client_processes"] == 2
    herd = _herd([r["start_s"] for r in measured])
    first = sorted(min(r["start_s"] for r in measured if r["user"] == u) for u in {r["user"] for r in measured})
    warm = statistics.fmean(r["e2e_s"] for r in raw if r["warmup"])
    gaps = [b - a for a, b in zip(first, first[1:])]
    print(f"herd {herd:.2f}; first sends over {first[-1] - first[0]:.3f} s (warm-up e2e {warm:.3f} s), "
          f"gaps {min(gaps) * 1e3:.1f}..{max(gaps) * 1e3:.1f} ms; window {s.extra['throughput_window_s']}")
    assert herd < 0.35, herd
    # Both processes' users over one warm-up time, one slot (warm / 16) apart, the two processes interleaved.
    assert len(first) == USERS
    assert first[-1] - first[0] == pytest.approx(warm * (USERS - 1) / USERS, rel=0.15)
    assert statistics.median(gaps) == pytest.approx(warm / USERS, rel=0.25)
    # The steady window opens at the last user's first send; the rate over it is the server's own.
    assert s.extra["throughput_window_s"][0] == pytest.approx(first[-1] - first[0], abs=0.01)
    truth = USERS * sum(r["tokens"] for r in served) / sum(r["ended"] - r["arrived"] for r in served)
    assert s.output_throughput == pytest.approx(truth, rel=0.05)


def _think_gaps(out_dir) -> list[float]:
    """Per user, the time from each measured answer's end to the user's next send (seconds)."""
    raw = [json.loads(line) for line in (out_dir / "raw" / "records-0.jsonl").read_text().splitlines()]
    by_user: dict[str, list] = {}
    for r in raw:
        if not r["warmup"]:
            by_user.setdefault(r["user"], []).append((r["start_s"], r["start_s"] + r["e2e_s"]))
    gaps = []
    for reqs in by_user.values():
        reqs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(reqs, reqs[1:])]
    return gaps


def test_think_time_spaces_a_users_sends_by_a_random_wait(tmp_path):
    # --think-time-ms 40: after each measured answer a user waits uniform(0, 40 ms) (a batching server
    # that ends equal requests in one step would otherwise get their next sends together, forever);
    # without it the next send follows at once. 8 users x 8 requests of 16 tokens at 5 ms a token.
    gaps = {}
    with FakeServer(FakeConfig(ttft_s=0.02, itl_s=0.005), workers=1) as fake:
        for think in (0.0, 40.0):
            opts = HttpBenchOptions(url=fake.url, input_len=(16, 16), output_len=(16, 16), num_requests=64,
                                    concurrency=[8], warmup=2, output_dir=tmp_path, run_id=f"think-{think:g}",
                                    think_time_ms=think)
            result, out_dir = run_http_bench(opts, Console(stderr=True, quiet=True))
            assert result.runs[0].summary.num_errors == 0
            assert result.runs[0].config["think_time_ms"] == think
            gaps[think] = _think_gaps(out_dir)
    back_to_back, thinking = sorted(gaps[0.0]), sorted(gaps[40.0])
    print(f"gaps ms: none p50 {statistics.median(back_to_back) * 1e3:.1f} max {back_to_back[-1] * 1e3:.1f}; "
          f"40 ms: min {thinking[0] * 1e3:.1f} p50 {statistics.median(thinking) * 1e3:.1f} max {thinking[-1] * 1e3:.1f}")
    assert len(thinking) == 64 - 8 and statistics.median(back_to_back) < 0.003
    assert thinking[0] >= 0 and thinking[-1] < 0.040 + 0.015  # uniform(0, 40 ms), plus the client's own turn
    # spread over the range, not one fixed wait: a quarter below 12 ms and a quarter above 28 ms
    assert thinking[len(thinking) // 4] < 0.012 + 0.003 and thinking[3 * len(thinking) // 4] > 0.028


# -- the schedule, on greenlets ------------------------------------------------------------------

class _Meter:
    def __init__(self):
        self.marks = []

    def mark(self, name):
        self.marks.append(name)


def _dispatcher(worker=0, workers=1, **plan) -> Dispatcher:
    plan = {"warmup": 0, "num_requests": 100, "request_rate": None, **plan}
    return Dispatcher(plan, worker, workers, clock=_Clock(), cpu=_Meter(), flush=lambda: None)


class _Clock:
    """Seconds since the dispatcher was made (the locustfile's clock is seconds since the plan's origin)."""

    def __init__(self):
        self._t0 = time.monotonic()

    def __call__(self):
        return time.monotonic() - self._t0


def _first_sends(d: Dispatcher, users: int, spread_s: float, finish_first_after_s: float | None = None) -> list:
    """Open the gate for `users` greenlets; each records when its first send was let through."""
    sent = []

    def user():
        got = d.take(first_measured=True)
        sent.append(d.clock())
        if finish_first_after_s is not None and len(sent) == 1:
            gevent.sleep(finish_first_after_s)
            d.finished(got[0], e2e_s=finish_first_after_s)

    greenlets = [gevent.spawn(user) for _ in range(users)]
    gevent.sleep(0)
    d.open_gate(spread_s, users)
    gevent.joinall(greenlets, timeout=5)
    return sorted(t - d.gate_s for t in sent)


def test_slots_are_k_over_n_of_the_spread_and_workers_interleave():
    sends = _first_sends(_dispatcher(), 4, 0.2)
    assert sends == pytest.approx([0.0, 0.05, 0.1, 0.15], abs=0.01)
    # Worker 1 of 2: its 4 users half a slot after worker 0's.
    sends = _first_sends(_dispatcher(worker=1, workers=2), 4, 0.2)
    assert sends == pytest.approx([0.025, 0.075, 0.125, 0.175], abs=0.01)
    # Poisson arrivals keep their own schedule: no spread.
    assert _first_sends(_dispatcher(request_rate=10.0), 4, 0.2) == pytest.approx([0.0] * 4, abs=0.01)
    # A duration run spreads over at most a quarter of the duration.
    assert _first_sends(_dispatcher(num_requests=None, duration_s=0.4), 4, 10.0)[-1] == pytest.approx(0.075, abs=0.01)


def test_a_spread_longer_than_the_first_request_is_pulled_in():
    # Warm-ups of a cold server said 2 s; the first measured request took 0.1 s: the three users still
    # waiting go out 0.1 / 4 apart after it (its user sends again at once), not at 0.5, 1.0 and 1.5 s.
    d = _dispatcher()
    sends = _first_sends(d, 4, 2.0, finish_first_after_s=0.1)
    assert sends == pytest.approx([0.0, 0.125, 0.15, 0.175], abs=0.015)
    assert "ramped" in d.cpu.marks


def test_the_spread_is_the_mean_successful_warmup():
    assert warmup_spread([0.5, 0.7, None]) == pytest.approx(0.6)  # a failed warm-up times nothing
    assert warmup_spread([]) == 0.0 and warmup_spread([None]) == 0.0


def test_a_run_without_a_timed_warmup_says_its_users_started_together():
    def raw(index, user, warmup=False, error=None):
        return {"index": index, "warmup": warmup, "user": user, "start_s": 0.01 * index, "ttft_s": 0.05,
                "e2e_s": 0.1, "itl_us": [10000] * 5, "prompt_tokens": 8, "output_tokens": 6, "usage": True,
                "error": error}

    opts = HttpBenchOptions(url="http://127.0.0.1:9")
    measured = [raw(i, f"u:{i % 2}") for i in range(1, 5)]
    for rung, warmups, said in [(Rung("c=2", 2, None, 2, 0), [], "no warm-up ran (--warmup 0)"),
                                (Rung("c=2", 2, None, 2, 1), [raw(0, "u:0", True, "HTTP 500: x")], "no warm-up succeeded"),
                                (Rung("c=2", 2, None, 2, 1), [raw(0, "u:0", True)], None)]:
        outcome = RungOutcome(raw=warmups + measured, window_s=[0.0, 1.0], returncode=0)
        make_run(0, rung, outcome, {}, opts, opts.url, "m")
        notes = [n for n in outcome.notes if "went out together" in n]
        assert (notes[0].startswith(f"c=2: {said}") if said else not notes), outcome.notes
