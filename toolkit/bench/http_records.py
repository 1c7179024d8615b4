"""A rung's raw request records as RequestRecords, and the window its throughput is measured over.

Throughput is measured over the steady window of a closed-loop rung: from the moment every user has
sent its first measured request to the moment the first user finds nothing left to send, i.e. while
all C users are busy. Output tokens count by when each chunk arrived (a request streaming across
an edge counts only its tokens inside); requests and prompt tokens count by the fraction of each
request's time inside. A closed loop of exactly N requests ends in a drain, fewer and fewer requests
in flight, that the server did not slow down for: on this 2-core machine (the fake server at 32
users, 50 ms TTFT, 10 ms ITL, 64 tokens, 200 requests) first send to last finish read 0.885 of
the server's rate and the steady window 0.986, in the same run. The users' first sends are spread
over one request time (toolkit.bench.locust_dispatch), so the window opens about one request time
after the first measured send: the ramp, like the drain, is outside it. The whole span's figures
stay in summary.extra["whole_run"]; duration_s is the window the rates are over. Poisson rungs
(and a closed loop too short to have a steady window, N < C: noted) use the whole span.

Prompt tokens are the server's count (usage.prompt_tokens: a chat template adds ~30 tokens to a
64-token prompt) when it reports one; the workload's own count stays in workload_prompt_tokens.
"""
from __future__ import annotations

import math

from .metrics import RequestRecord, goodput


class HttpRequestRecord(RequestRecord):
    """A RequestRecord plus what only an HTTP run knows (for the per-request table)."""

    def __init__(self, *args, scheduled_s=None, status=None, usage=False, finish_reason=None, user=None,
                 workload_prompt_tokens=None, chunks=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduled_s, self.status, self.usage, self.finish_reason = scheduled_s, status, usage, finish_reason
        self.user, self.workload_prompt_tokens, self.chunks = user, workload_prompt_tokens, chunks

    def row(self) -> dict:
        return {**super().row(), "workload_prompt_tokens": self.workload_prompt_tokens,
                "scheduled_s": self.scheduled_s, "status": self.status, "usage_reported": self.usage,
                "finish_reason": self.finish_reason, "user": self.user}

    def chunk_times(self) -> list[float]:
        """When each content chunk arrived, seconds from the run's start."""
        if self.ttft_s is None:
            return []
        t = self.start_s + self.ttft_s
        out = [t]
        for gap in self.itl_s:
            t += gap
            out.append(t)
        return out


def to_records(raw: list[dict]) -> list[HttpRequestRecord]:
    """Measured (non-warm-up) requests in index order; start times from the first measured start."""
    measured = sorted((r for r in raw if not r.get("warmup") and r.get("start_s") is not None),
                      key=lambda r: r["index"])
    if not measured:
        return []
    t0 = min(r["start_s"] for r in measured)
    first = measured[0]["index"]
    out = []
    for r in measured:
        workload = r.get("workload_prompt_tokens")
        prompt = r.get("prompt_tokens")
        out.append(HttpRequestRecord(
            index=r["index"] - first, start_s=r["start_s"] - t0,
            prompt_tokens=int(prompt if prompt is not None else workload or 0),
            output_tokens=int(r.get("output_tokens") or 0), ttft_s=r.get("ttft_s"), e2e_s=r.get("e2e_s"),
            itl_s=[g / 1e6 for g in r["itl_us"]] if "itl_us" in r else list(r.get("itl_s") or []), error=r.get("error"),
            scheduled_s=(r["scheduled_s"] - t0) if r.get("scheduled_s") is not None else None,
            status=r.get("status"), usage=bool(r.get("usage")), finish_reason=r.get("finish_reason"),
            user=r.get("user"), workload_prompt_tokens=workload, chunks=r.get("chunks")))
    return out


def whole_span(records: list[HttpRequestRecord]) -> float:
    """Seconds from the first measured send to the last measured end (the records start at 0)."""
    ends = [r.start_s + r.e2e_s for r in records if r.e2e_s is not None]
    return max(ends) if ends else 0.0


def steady_window(records: list[HttpRequestRecord], users: int) -> tuple[float, float] | None:
    """(start, end) while every user of a closed loop was busy: from the last user's first measured send
    to the first user's last measured finish; None when there is no such span (a user sent no measured
    request, or the records carry no user ids)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in records:
        if r.user is None or r.e2e_s is None:
            return None
        first[r.user] = min(first.get(r.user, math.inf), r.start_s)
        last[r.user] = max(last.get(r.user, -math.inf), r.start_s + r.e2e_s)
    if len(first) < users or not first:
        return None
    start, end = max(first.values()), min(last.values())
    return (start, end) if end > start else None


def steady_rates(records: list[HttpRequestRecord], start: float, end: float, slo: dict | None) -> dict:
    """Throughputs over [start, end]: output tokens by chunk arrival, requests (completed ones, as in
    summarize) and their prompt tokens by the fraction of each request's time inside the window."""
    span = end - start
    requests = prompt = output = good = 0.0
    for r in records:
        if r.error or r.e2e_s is None:
            continue
        inside = max(0.0, min(end, r.start_s + r.e2e_s) - max(start, r.start_s))
        frac = inside / r.e2e_s if r.e2e_s > 0 else float(start <= r.start_s <= end)
        requests += frac
        prompt += frac * r.prompt_tokens
        times = r.chunk_times()
        if times:  # usage may count more tokens than chunks (several per chunk): scale
            output += sum(start <= t <= end for t in times) * r.output_tokens / len(times)
        if slo and goodput([r], slo, 1.0) == 1.0:
            good += frac
    return {"duration_s": span, "request_throughput": requests / span, "input_throughput": prompt / span,
            "output_throughput": output / span, "total_token_throughput": (prompt + output) / span,
            "goodput": good / span if slo else None}
