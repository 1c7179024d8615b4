"""Benchmark metrics pinned to their definitions on hand-made records with hand-computed answers.

Definitions (toolkit/bench/metrics.py, after vLLM's benchmarks): percentiles by numpy's default
"linear" method (computed by hand here, never with numpy); TPOT = (E2E - TTFT) / (output tokens - 1),
None for one-token outputs; ITL pooled over every gap of every request; goodput = requests meeting
every SLO per second of the run; failed requests counted but kept out of latency and throughput.
"""
from __future__ import annotations

import math

import pytest

from toolkit.bench.metrics import RequestRecord, goodput, latency_stats, summarize


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def linear_percentile(values, q):
    """numpy's default ("linear", Hyndman & Fan type 7): rank h = (n - 1) q / 100 into the sorted
    values, interpolated between its floor and ceiling neighbours."""
    xs = sorted(values)
    h = (len(xs) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def test_hand_percentile_helper_agrees_with_the_literal_answers():
    # The helper is itself checked against numbers worked out on paper: for 1..10, h = 9 q / 100.
    assert linear_percentile(range(1, 11), 90) == approx(9.1)  # h = 8.1: 9 + 0.1 * (10 - 9)
    assert linear_percentile(range(1, 11), 50) == approx(5.5)


def test_percentiles_are_numpys_linear_definition():
    # 1..10: h = 9q/100 -> p50 at 4.5 -> 5.5; p90 at 8.1 -> 9.1; p95 at 8.55 -> 9.55; p99 at 8.91 -> 9.91.
    # "lower"/"nearest" give 9 for p90 and "higher" 10, so any other method fails here.
    s = latency_stats([float(x) for x in range(1, 11)])
    assert s.count == 10
    assert (s.mean, s.max) == (approx(5.5), 10.0)
    assert (s.p50, s.p90, s.p95, s.p99) == (approx(5.5), approx(9.1), approx(9.55), approx(9.91))


def test_percentiles_of_unsorted_samples_with_missing_values():
    # None (a request without that metric) is skipped; the rest [7, 1, 3] sorts to [1, 3, 7]:
    # p50 at h = 1 -> 3; p90 at h = 1.8 -> 3 + 0.8 * 4 = 6.2; p99 at h = 1.98 -> 6.92.
    s = latency_stats([7.0, None, 1.0, 3.0])
    assert s.count == 3
    assert (s.p50, s.p90, s.p95, s.p99) == (approx(3.0), approx(6.2), approx(6.6), approx(6.92))
    assert s.mean == approx(11 / 3) and s.max == 7.0
    assert latency_stats([None, None]) is None and latency_stats([]) is None


def test_percentiles_match_the_hand_definition_on_irregular_samples():
    values = [0.013, 0.250, 0.011, 0.020, 0.900, 0.031, 0.017, 0.0125, 0.044, 0.019, 0.5, 0.021, 0.06]
    s = latency_stats(values)
    for q, got in ((50, s.p50), (90, s.p90), (95, s.p95), (99, s.p99)):
        assert got == approx(linear_percentile(values, q)), q


def test_tpot_excludes_the_first_token():
    # 5 tokens in 0.5 s, the first after 0.1 s: the 4 later tokens took 0.4 s -> 0.1 s each
    # (dividing by all 5 tokens would give 0.08).
    assert RequestRecord(0, 0.0, 10, output_tokens=5, ttft_s=0.1, e2e_s=0.5).tpot_s == approx(0.1)
    assert RequestRecord(0, 0.0, 10, output_tokens=2, ttft_s=0.25, e2e_s=0.75).tpot_s == approx(0.5)
    # One token: there is no time per *output* token after the first.
    assert RequestRecord(0, 0.0, 10, output_tokens=1, ttft_s=0.3, e2e_s=0.3).tpot_s is None
    assert RequestRecord(0, 0.0, 10, output_tokens=4, ttft_s=None, e2e_s=0.3).tpot_s is None
    assert RequestRecord(0, 0.0, 10, output_tokens=4, ttft_s=0.1, e2e_s=0.3, error="reset").tpot_s is None


def _records() -> list[RequestRecord]:
    """Six requests whose every metric is worked out by hand in the tests below."""
    return [
        # tpot (0.5 - 0.1) / 4 = 0.1
        RequestRecord(0, 0.0, prompt_tokens=10, output_tokens=5, ttft_s=0.1, e2e_s=0.5, itl_s=[0.1, 0.1, 0.1, 0.1]),
        # tpot (1.0 - 0.2) / 2 = 0.4
        RequestRecord(1, 0.1, prompt_tokens=20, output_tokens=3, ttft_s=0.2, e2e_s=1.0, itl_s=[0.3, 0.5]),
        # one token: tpot None
        RequestRecord(2, 0.2, prompt_tokens=5, output_tokens=1, ttft_s=0.3, e2e_s=0.3),
        # failed after two tokens: counted as an error, in no latency, throughput or goodput, although
        # its numbers would meet every SLO and change every statistic below
        RequestRecord(3, 0.3, prompt_tokens=7, output_tokens=2, ttft_s=0.05, e2e_s=0.1, itl_s=[0.05],
                      error="connection reset"),
        # tpot (0.6 - 0.4) / 2 = 0.1
        RequestRecord(4, 0.4, prompt_tokens=8, output_tokens=3, ttft_s=0.4, e2e_s=0.6, itl_s=[0.1, 0.1]),
        # one token: tpot None
        RequestRecord(5, 0.5, prompt_tokens=4, output_tokens=1, ttft_s=0.15, e2e_s=0.15),
    ]


def test_summary_counts_errors_but_keeps_them_out_of_latency_and_throughput():
    s = summarize(_records(), duration_s=2.0)
    assert (s.num_requests, s.num_completed, s.num_errors) == (6, 5, 1)
    # Throughput = completed work / duration: 5 requests, 10+20+5+8+4 = 47 prompt and
    # 5+3+1+3+1 = 13 output tokens in 2 s.
    assert s.request_throughput == approx(2.5)
    assert s.input_throughput == approx(23.5)
    assert s.output_throughput == approx(6.5)
    assert s.total_token_throughput == approx(30.0)
    # TTFT of the 5 completed: [0.1, 0.2, 0.3, 0.4, 0.15] -> sorted [0.1, 0.15, 0.2, 0.3, 0.4];
    # h = 4q/100: p50 at 2 -> 0.2; p90 at 3.6 -> 0.3 + 0.6 * 0.1 = 0.36; p99 at 3.96 -> 0.396.
    assert s.ttft.count == 5
    assert (s.ttft.mean, s.ttft.p50, s.ttft.p90, s.ttft.p99, s.ttft.max) == (
        approx(0.23), approx(0.2), approx(0.36), approx(0.396), 0.4)
    # E2E: [0.5, 1.0, 0.3, 0.6, 0.15] -> mean 2.55 / 5 = 0.51, max 1.0.
    assert (s.e2e.count, s.e2e.mean, s.e2e.max) == (5, approx(0.51), 1.0)
    assert s.e2e.p50 == approx(0.5)


def test_tpot_stats_skip_one_token_requests():
    # TPOT samples: 0.1, 0.4, 0.1 (the two one-token requests have none, the error is out).
    # sorted [0.1, 0.1, 0.4]: p50 0.1; p90 at h = 1.8 -> 0.1 + 0.8 * 0.3 = 0.34.
    s = summarize(_records(), duration_s=2.0)
    assert s.tpot.count == 3
    assert (s.tpot.mean, s.tpot.p50, s.tpot.p90, s.tpot.max) == (approx(0.2), approx(0.1), approx(0.34), 0.4)


def test_itl_pools_every_gap_of_every_request():
    # Pooled gaps of the completed requests: [0.1]*4 + [0.3, 0.5] + [0.1, 0.1] = 8 gaps, sum 1.4.
    # Averaging per request first would give 3 samples (0.1, 0.4, 0.1) and a mean of 0.2.
    s = summarize(_records(), duration_s=2.0)
    assert s.itl.count == 8
    assert s.itl.mean == approx(1.4 / 8)
    # sorted [0.1 x6, 0.3, 0.5]: h = 7q/100: p50 at 3.5 -> 0.1; p90 at 6.3 -> 0.3 + 0.3 * 0.2 = 0.36;
    # p99 at 6.93 -> 0.3 + 0.93 * 0.2 = 0.486.
    assert (s.itl.p50, s.itl.p90, s.itl.p99, s.itl.max) == (approx(0.1), approx(0.36), approx(0.486), 0.5)


@pytest.mark.parametrize("limits", [{"ttft": 250.0, "tpot": 200.0}, {"tpot": 200.0, "ttft": 250.0}])
def test_goodput_counts_only_requests_meeting_every_slo(limits):
    # Per request against TTFT <= 250 ms and TPOT <= 200 ms:
    #   0: ttft 100, tpot 100        -> good
    #   1: ttft 200, tpot 400        -> fails TPOT only
    #   2: ttft 300, one token       -> fails TTFT
    #   3: error                     -> never good, though its numbers meet both
    #   4: ttft 400, tpot 100        -> fails TTFT only
    #   5: ttft 150, one token       -> good: a one-token output has no TPOT to miss (vLLM counts its TPOT as 0)
    # Both orders of the limits: a check where only the last limit decides fails one of them.
    # (Per-request limits in ms, as vLLM's --goodput; a run-level --slo gate is another thing.)
    assert goodput(_records(), limits, duration_s=2.0) == approx(1.0)  # 2 good requests in 2 s
    assert summarize(_records(), 2.0, limits).goodput == approx(1.0)


def test_goodput_with_one_slo_and_e2e():
    records = _records()
    assert goodput(records, {"ttft": 1000.0}, 2.0) == approx(2.5)  # all 5 completed
    # E2E <= 500 ms: requests 0 (500, at the limit), 2, 5 -> 3 in 4 s.
    assert goodput(records, {"e2e": 500.0}, 4.0) == approx(0.75)
    assert summarize(records, duration_s=2.0).goodput is None  # no SLO, no goodput
