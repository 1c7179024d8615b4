"""What `opsctl bench --url` is asked to do, and the rungs and Locust processes it plans from that.

HttpBenchOptions holds the command line's choices; plan_rungs makes one rung per --concurrency
(closed loop) or per --request-rate (Poisson, one --concurrency capping its users); BenchError is a
problem the user must fix, in one line.

Client processes. One gevent process spends ~30 us of CPU per streamed token, more with the
requests around them: at 64 users of a 7 ms-ITL server (9,100 token events/s) the H200 machine's
CPU was 48% busy, at 256 (36,500/s) saturated, and every latency then includes the client's own
queueing. A rung runs in W processes (a Locust master and W workers, --expect-workers W): the
first rung gets one per USERS_PER_PROCESS users (64: a server at 5 ms per token sends them
12,800 events/s); later rungs scale the CPU the previous rung actually used per user to the new
user count, for at most TARGET_BUSY of a core each; W is capped at the cores this process may use,
less one, and at the users. --client-processes N sets W. Whether a rung's processes were saturated
anyway is judged from what they measured (toolkit.bench.http_outcome).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .locust_process import RungOutcome

USERS_PER_PROCESS = 64  # first rung: one Locust process per this many users (see the docstring)
TARGET_BUSY = 0.5  # later rungs: processes so that each is predicted to use at most this much of a core
MAX_POISSON_USERS = 512  # users for a Poisson rung without --concurrency (see the locustfile)
DURATION_ITEMS = 1000  # distinct prompts per closed-loop rung in --duration mode (then they repeat)


class BenchError(Exception):
    """A problem the user must fix; its message is one line."""


@dataclass
class HttpBenchOptions:
    url: str
    model: str | None = None
    endpoint: str = "chat"  # chat | completions
    dataset: str = "random"
    input_len: tuple[int, int] = (1024, 1024)
    output_len: tuple[int, int] | None = None  # None: 128 (random, chat) or the dataset's answers (sharegpt)
    num_requests: int | None = 200
    duration_s: float | None = None
    concurrency: list[int] = field(default_factory=list)
    request_rate: list[float] = field(default_factory=list)
    warmup: int | None = None
    slo: dict[str, float] = field(default_factory=dict)  # run-level limits (--slo): each rung passes or fails
    goodput: dict[str, float] = field(default_factory=dict)  # per-request limits (--goodput) behind goodput
    seed: int = 0
    api_key: str | None = None
    run_id: str | None = None
    output_dir: Path = Path("reports")
    timeout_s: float = 600.0  # per request, sending it to the end of its stream (not per read)
    ignore_eos: bool = False
    temperature: float | None = None  # None: not sent, the server's default applies
    tokenizer: str | None = None
    client_processes: int | None = None  # Locust worker processes per rung; None: decided per rung
    think_time_ms: float = 0.0  # closed loop: each user waits uniform(0, this) ms after an answer before its next


@dataclass
class Rung:
    label: str
    concurrency: int | None  # closed loop (or the user cap of a Poisson rung)
    request_rate: float | None  # Poisson arrivals
    users: int
    warmup: int


def plan_rungs(opts: HttpBenchOptions) -> list[Rung]:
    """One rung per concurrency (closed loop) or per request rate (Poisson, --concurrency caps its users)."""
    if opts.request_rate:
        if len(opts.concurrency) > 1:
            raise BenchError("give a ladder of --concurrency or of --request-rate, not both "
                             "(with --request-rate, one --concurrency caps the users in flight)")
        cap = opts.concurrency[0] if opts.concurrency else None
        rungs = []
        for rate in opts.request_rate:
            if rate <= 0:
                raise BenchError(f"--request-rate {rate:g}: must be > 0")
            if math.isinf(rate) and opts.num_requests is None:
                raise BenchError("--request-rate inf (all requests at once) needs --num-requests")
            warmup = opts.warmup if opts.warmup is not None else min(4, math.ceil(min(rate, 4)))
            expected = (opts.num_requests + warmup if opts.num_requests is not None
                        else math.ceil(rate * opts.duration_s) + warmup)
            users = max(1, min(cap or MAX_POISSON_USERS, expected))
            rungs.append(Rung(f"rate={rate:g}", cap, rate, users, warmup))
        return rungs
    concurrency = opts.concurrency or [1]
    if any(c < 1 for c in concurrency):
        raise BenchError("--concurrency must be >= 1")
    return [Rung(f"c={c}", c, None, c, opts.warmup if opts.warmup is not None else min(c, 4)) for c in concurrency]


def items_per_rung(opts: HttpBenchOptions, rung: Rung) -> int:
    """Prompts a rung needs: warm-up + N, or enough for --duration (closed loop: DURATION_ITEMS, then they repeat)."""
    if opts.num_requests is not None:
        return opts.num_requests + rung.warmup
    if rung.request_rate:
        return min(math.ceil(rung.request_rate * opts.duration_s * 1.2) + rung.warmup + 8, 5 * DURATION_ITEMS)
    return DURATION_ITEMS


def client_processes(users: int, asked: int | None, previous: tuple[Rung, RungOutcome] | None = None,
                     cores: int | None = None) -> int:
    """Locust worker processes for a rung of `users` (1: one local process); see the module docstring.

    previous: the rung before and what it did (its processes' CPU per user), if any.
    """
    if asked:
        return max(1, min(asked, users))
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = [c["measured"]["busy"] for c in (previous[1].cpu if previous else [])
            if c.get("users") and c.get("measured")]
    if busy and previous[0].users:
        per_user = sum(busy) / previous[0].users  # cores per user at the previous rung
        wanted = math.ceil(per_user * users / TARGET_BUSY)
    else:
        wanted = math.ceil(users / USERS_PER_PROCESS)
    return max(1, min(wanted, users, max(1, cores - 1)))
