"""Which request a Locust user of `opsctl bench --url` sends next, and when: the dispatcher of one process.

Loaded by the locustfile (toolkit/bench/locustfile.py) as a module beside it: Locust puts the
locustfile's directory on sys.path while it imports the file, so this imports only the standard
library and gevent, never toolkit. One Dispatcher per Locust process that runs users; it hands out
that process's request indices (worker K of W owns i % W == K), holds measured requests at the
gate, spaces the closed loop's first sends (below), times Poisson arrivals, and says when the
process is done. The phases are in the locustfile's docstring.

First sends. A closed loop whose users all send their first measured request at the gate runs in
lockstep on a deterministic server for the whole run: every user finishes and sends again within a
few ms of the others. Measured against GuideLLM's mock server (32 users, 100 ms TTFT, 10 ms ITL,
64 tokens), ~13 other requests went out within +-5 ms of each one (GuideLLM's drifting streams: ~1),
the mock's intake answered the herds late (its own TTFT 157 vs 120 ms) and TTFT read 15-33% above
GuideLLM's. So user k of this process's n waits (k + K/W) / n of `spread` after the gate before its
first measured request: n users one slot apart over one request time, the W processes' slots
interleaved, and each user's later requests keep that phase (a closed loop sends again as soon as
the previous answer ends).
- spread: the mean duration of the rung's successful warm-ups (warmup_spread), one request time
  measured on the server at hand, at the warm-up concurrency (min(C, 4) by default); a server
  slower under the full load than under the warm-ups only packs the phases into part of the cycle,
  still apart. No warm-up (or none succeeded): no measured time, the users go together as before.
- pulled in: warm-ups on a cold server (compiling, loading) can take many request times. When this
  process's first measured request succeeds while users still wait for their slots, the waiting
  ones are re-spaced from then at that request's time / n, so a wrong estimate costs at most one
  request time of ramp.
- capped at a quarter of --duration, so a short duration run still has most of its time with all
  users busy. Poisson arrivals keep their own schedule: no spread.
The steady window (toolkit.bench.http_records.steady_window) starts at the last user's first
measured send, so the ramp is outside the throughput; the CPU meter's measured phase starts there
too ("ramped").
"""
from __future__ import annotations

import random
from typing import Callable

import gevent
import gevent.event

_DURATION_SPREAD_SHARE = 0.25  # a --duration run ramps over at most this share of its duration


def warmup_spread(durations: list[float | None]) -> float:
    """Seconds to spread the first sends over: the mean of the successful warm-ups' durations (None: failed)."""
    ok = [d for d in durations if d is not None]
    return sum(ok) / len(ok) if ok else 0.0


class Dispatcher:
    """Hands this process's request indices (and Poisson arrival times) to its users; says when it is done.

    clock: seconds since the plan's origin; cpu: a CpuMeter (marks gate, ramped, drain, done); flush:
    writes the pending records (called once the process is done, before on_done).
    """

    def __init__(self, plan: dict, worker: int, workers: int, *, clock: Callable[[], float], cpu,
                 flush: Callable[[], None]):
        self.clock, self.cpu, self._flush = clock, cpu, flush
        self.warmup = plan["warmup"]
        self.total = (plan["num_requests"] + self.warmup) if plan.get("num_requests") is not None else None
        self.duration_s = plan.get("duration_s")
        self.rate = plan.get("request_rate")
        self.worker, self.stride = worker, workers
        self.next_index = worker
        self.share = len(range(worker, self.total, workers)) if self.total is not None else None
        self.warm_left = len(range(worker, self.warmup, workers))
        self.warmup_s: list[float | None] = []  # this process's warm-up durations (None: failed)
        self._rng = random.Random(plan.get("seed", 0))
        self._arrivals: list[float] = []
        self.gate = gevent.event.Event()
        self.gate_s: float | None = None
        self._due: list[float] = []  # per slot: when its user may send its first measured request
        self._slots = 0  # slots handed out (one per user past the gate)
        self._passed = 0  # users past their slot
        self._respaced = gevent.event.Event()  # set (and replaced) when the waiting slots are re-spaced
        self._pulled_in = False
        self.spawned = False
        self.ready = False
        self.in_flight = 0
        self.written = 0
        self.done = False
        self.on_ready = None  # set at init: opens the gate (one process) or tells the master
        self.on_done = None  # set at init: quits the runner (one process) or tells the master

    def _arrival(self, measured: int) -> float:
        """The measured-th arrival of the shared schedule, seconds after the gate (first at 0)."""
        while len(self._arrivals) <= measured:
            prev = self._arrivals[-1] + self._rng.expovariate(self.rate) if self._arrivals else 0.0
            self._arrivals.append(prev)
        return self._arrivals[measured]

    def take(self, first_measured: bool = False) -> tuple[int, float | None] | None:
        """(index, scheduled_s or None), or None when nothing is left. Measured ones wait for the gate, and
        the first measured one of a user (first_measured: it has taken none yet) for its slot."""
        if self.next_index >= self.warmup:
            self.gate.wait()
            if first_measured:
                self._wait_slot()
        if self.done:
            return None
        index = self.next_index
        if self.total is not None and index >= self.total:
            return self._nothing_left(deadline_passed=False)
        scheduled = None
        if index >= self.warmup:
            if self.rate:
                scheduled = self.gate_s + self._arrival(index - self.warmup)
            if self.duration_s is not None and (self.clock() >= self.gate_s + self.duration_s or (
                    scheduled is not None and scheduled >= self.gate_s + self.duration_s)):
                return self._nothing_left(deadline_passed=True)
        self.next_index += self.stride
        self.in_flight += 1
        return index, scheduled

    def _wait_slot(self) -> None:
        slot, self._slots = self._slots, self._slots + 1
        while slot < len(self._due):
            left = self._due[slot] - self.clock()
            if left <= 0:
                break
            self._respaced.wait(left)  # woken early when the slots are pulled in
        self._passed += 1
        if self._passed == len(self._due) and not self.rate:
            self.cpu.mark("ramped")  # every user of this process has sent: all busy from here

    def _nothing_left(self, deadline_passed: bool) -> None:
        if not self.rate:
            self.cpu.mark("drain")  # the first user left idle: the end of the steady, all-users-busy phase
        self._maybe_done(deadline_passed)
        return None

    def finished(self, index: int, e2e_s: float | None = None) -> None:
        """A request ended; e2e_s: its duration if it succeeded, else None."""
        self.in_flight -= 1
        self.written += 1
        if index < self.warmup:
            self.warmup_s.append(e2e_s)
            self.warm_left -= 1
            self.maybe_ready()
        elif e2e_s is not None and not self._pulled_in:
            self._pull_in(e2e_s)
        self._maybe_done(self.duration_s is not None and self.gate_s is not None
                         and self.clock() >= self.gate_s + self.duration_s)

    def _pull_in(self, request_s: float) -> None:
        """The first measured request took request_s: slots still waiting go out request_s / n apart from now."""
        self._pulled_in = True
        t = self.clock()
        waiting = [k for k, due in enumerate(self._due) if due > t]
        if not waiting:
            return  # the usual case: the estimate was about right and every user has sent
        step = request_s / len(self._due)
        for i, k in enumerate(waiting):
            self._due[k] = min(self._due[k], t + (i + 1) * step)
        self._respaced, woken = gevent.event.Event(), self._respaced
        woken.set()

    def maybe_ready(self) -> None:
        if self.spawned and self.warm_left <= 0 and not self.ready:
            self.ready = True
            self.on_ready()

    def open_gate(self, spread_s: float, users: int) -> None:
        """Let measured requests go: `users` first sends spread over spread_s (closed loop), see the docstring."""
        if self.gate.is_set():
            return
        self.gate_s = self.clock()
        if self.rate:
            spread_s = 0.0
        elif self.duration_s is not None:
            spread_s = min(spread_s, _DURATION_SPREAD_SHARE * self.duration_s)
        offset = self.worker / self.stride  # this process's share of a slot: the processes interleave
        self._due = [self.gate_s + (k + offset) / users * spread_s for k in range(max(users, 1))]
        self.cpu.mark("gate")
        self.gate.set()

    def _maybe_done(self, deadline_passed: bool) -> None:
        done = ((self.share is not None and self.written >= self.share)
                or (deadline_passed and self.in_flight == 0))
        if done and not self.done:
            self.done = True
            self.cpu.mark("done")
            self._flush()
            # In its own greenlet: quitting kills the users, and this may run in one of them.
            gevent.spawn(self.on_done)
