"""What one Locust process of `opsctl bench --url` writes: its request records and its CPU use.

Loaded by the locustfile as a module beside it (Locust puts the locustfile's directory on sys.path
while it imports the file): only the standard library and gevent here, never toolkit. The runner
(toolkit.bench.locust_process) reads both files: records-<i>[.w<k>].jsonl, one JSON line per request
(the fields are in the locustfile's docstring), and cpu-<i>[.w<k>|.master].json.
"""
from __future__ import annotations

import json
import os
import resource
from typing import Callable

import gevent

# Records go to the file in batches from one greenlet, not from the user between two requests. The
# gaps are integer microseconds: json.dumps of a record with 255 float gaps took 216 us here, with
# ints 35 us (plus 26 us to make them from monotonic_ns stamps), so the 64 records of a closed loop
# finishing in lockstep hold the loop ~4 ms instead of ~14 ms.
_FLUSH_EVERY_S = 0.1
_MIN_STEADY_S = 0.25  # a shorter measured span is not a phase to measure CPU over


class Records:
    """The records file of this process, written in batches by one greenlet (and at the end)."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")
        self._pending: list[dict] = []
        self._writer = None

    def add(self, record: dict) -> None:
        self._pending.append(record)
        if self._writer is None:
            self._writer = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(_FLUSH_EVERY_S)
            self.flush()

    def flush(self) -> None:
        if self._pending:
            # Regular-file writes do not yield to other greenlets: the batch goes out whole.
            records, self._pending = self._pending, []
            self._file.write("".join(json.dumps(r) + "\n" for r in records))
            self._file.flush()


class CpuMeter:
    """This process's CPU at the marks the dispatcher sets; written as JSON at the end.

    busy: user+sys CPU seconds (every thread) over wall seconds. runnable: the fraction of the wall
    time the gevent loop's thread was on a CPU or waiting in the run queue for one (Linux
    /proc/thread-self/schedstat): on a machine shared with other work a process can be starved
    below 90% busy and still never idle, and its timestamps are late either way (a client asked for
    64,000 events/s on this 2-core machine: busy 0.40, runnable 0.995).
    """

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.marks: dict[str, tuple[float, float, float | None]] = {"start": self._read()}

    def _read(self) -> tuple[float, float, float | None]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open("/proc/thread-self/schedstat") as f:
                on_cpu, waiting = f.read().split()[:2]
            runnable = (int(on_cpu) + int(waiting)) / 1e9
        except (OSError, ValueError):
            runnable = None
        return self._clock(), r.ru_utime + r.ru_stime, runnable

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, self._read())

    def write(self, path: str, role: str, users: int) -> None:
        self.marks["end"] = self._read()

        def span(a: str, b: str) -> dict | None:
            if a not in self.marks or b not in self.marks or self.marks[b][0] <= self.marks[a][0]:
                return None
            (t0, c0, r0), (t1, c1, r1) = self.marks[a], self.marks[b]
            return {"from_s": t0, "to_s": t1, "cpu_s": c1 - c0, "busy": (c1 - c0) / (t1 - t0),
                    "runnable": (r1 - r0) / (t1 - t0) if r0 is not None and r1 is not None else None}

        # The measured phase: every user busy (closed loop: from the last user's first send, else from the
        # gate, to the first idle user), else gate to the last request's end (a Poisson rung, or users
        # outnumbering the requests: a user idle at once says nothing).
        steady = next((s for s in (span("ramped", "drain"), span("gate", "drain"))
                       if s is not None and s["to_s"] - s["from_s"] >= _MIN_STEADY_S), None)
        if steady is None:
            steady = span("gate", "done") or span("gate", "end")
        doc = {"role": role, "pid": os.getpid(), "users": users, "measured": steady, "whole": span("start", "end"),
               "marks": {k: v[0] for k, v in self.marks.items()}}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
