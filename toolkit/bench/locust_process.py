"""One rung of `opsctl bench --url` in Locust processes: the plan file, the processes, following their records.

Locust monkey-patches with gevent at import, so it never runs in the runner's process: each rung is
`python -m locust -f locustfile.py --headless` in its own process, or a Locust master and W workers
(toolkit.bench.http_plan decides W), handed a JSON plan (prompts, load shape, records and CPU
paths; the API key travels in the environment, not in a file). The locustfile appends one JSON line
per request to raw/records-<i>.jsonl (per worker raw/records-<i>.w<k>.jsonl, merged into the first
when the rung ends); this side follows those files for the progress bar and keeps the lines parsed
(RungOutcome.raw), with each process's CPU use (raw/cpu-<i>*.json).

Each process runs in its own session: a Ctrl-C reaches the runner only, which stops Locust with
SIGTERM (its handler writes Locust's stats) and keeps the records written so far. A Locust process
that dies, or a rung with no record for --timeout + _STALL_GRACE_S (a backstop: the locustfile ends
every request at its deadline), stops the rung with a note; the records so far are kept.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from ..telemetry import GpuSampler
from .http_plan import BenchError, HttpBenchOptions, Rung

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
PLAN_ENV = "OPSCTL_BENCH_PLAN"  # same names as in the locustfile, which imports nothing from toolkit
ROLE_ENV = "OPSCTL_BENCH_ROLE"
API_KEY_ENV = "OPSCTL_BENCH_API_KEY"
_WORKERS_WAIT_S = 60  # --expect-workers-max-wait: the workers connect within seconds
# No record for timeout + this while Locust runs: give up on the rung. Only a backstop: the locustfile
# ends every request at its --timeout deadline, so this fires only if Locust itself hangs.
_STALL_GRACE_S = 60.0


@dataclass
class RungOutcome:
    """What a rung's Locust processes did: their records (parsed JSON lines), the span on the telemetry
    clock, how they ended, notes for the result, and each process's CPU file."""

    raw: list[dict]
    window_s: list[float]
    returncode: int | None
    interrupted: bool = False
    stalled: bool = False
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # Locust processes with users (workers, or the one local process)
    cpu: list[dict] = field(default_factory=list)  # what each Locust process wrote to raw/cpu-<i>*.json


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _locust_commands(rung: Rung, base: str, raw_dir: Path, i: int, processes: int) -> list[tuple[list[str], str]]:
    """(command, role) per Locust process: one local process, or a master and `processes` workers."""
    head = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", "--host", base]
    # -r users: every user starts at once (the locustfile's gate holds the measured requests until then,
    # and its dispatcher spreads the users' first measured sends).
    main = head + ["--headless", "-u", str(rung.users), "-r", str(rung.users), "--csv", str(raw_dir / f"locust-{i}"),
                   "--only-summary", "--exit-code-on-error", "0"]
    if processes == 1:
        return [(main, "local")]
    port = _free_port()
    master = main + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                     "--expect-workers", str(processes), "--expect-workers-max-wait", str(_WORKERS_WAIT_S)]
    workers = [(head + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                f"worker {k} {processes}") for k in range(processes)]
    return [(master, f"master {processes}")] + workers


def run_rung(i: int, rung: Rung, items, opts: HttpBenchOptions, base: str, model: str, out_dir: Path,
             progress: Progress, sampler: GpuSampler, processes: int = 1) -> RungOutcome:
    """Rung i's requests (items: its prompts, warm-ups first) in `processes` Locust workers (1: one local
    process), a progress bar meanwhile; BenchError when Locust ended without a single request."""
    raw_dir = out_dir / "raw"
    records_path = raw_dir / f"records-{i}.jsonl"
    records_path.write_text("")
    for old in [*raw_dir.glob(f"records-{i}.w*.jsonl"), *raw_dir.glob(f"cpu-{i}*.json")]:
        old.unlink()
    plan = {"endpoint": opts.endpoint, "model": model, "items": [it.to_json() for it in items],
            "num_requests": opts.num_requests, "duration_s": opts.duration_s, "warmup": rung.warmup,
            "request_rate": rung.request_rate, "seed": opts.seed + i, "records_path": str(records_path.resolve()),
            "cpu_path": str((raw_dir / f"cpu-{i}.json").resolve()), "origin": time.monotonic(),
            "timeout_s": opts.timeout_s, "ignore_eos": opts.ignore_eos, "temperature": opts.temperature,
            "think_time_ms": opts.think_time_ms}
    plan_path = raw_dir / f"plan-{i}.json"
    plan_path.write_text(json.dumps(plan))
    env = {**os.environ, PLAN_ENV: str(plan_path.resolve())}
    env.pop(API_KEY_ENV, None)
    if opts.api_key:
        env[API_KEY_ENV] = opts.api_key
    total = (opts.num_requests + rung.warmup) if opts.num_requests is not None else None
    how = f"{processes} Locust workers" if processes > 1 else "Locust"
    task = progress.add_task(rung.label, total=total or opts.duration_s, status=f"starting {how}")
    tail = _Tail(records_path if processes == 1 else [raw_dir / f"records-{i}.w{k}.jsonl" for k in range(processes)])
    log_path = raw_dir / f"locust-{i}.log"
    outcome = RungOutcome(raw=[], window_s=[round(sampler.now(), 3)], returncode=None, processes=processes)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for cmd, role in _locust_commands(rung, base, raw_dir, i, processes):
            kind, *rest = role.split()
            log = open(log_path if kind in ("local", "master") else raw_dir / f"locust-{i}.w{rest[0]}.log", "w")
            logs.append(log)
            # Own session: a Ctrl-C reaches this process only, which then stops Locust with SIGTERM (its
            # handler writes Locust's stats) and keeps the records written so far.
            procs.append(subprocess.Popen(cmd, env={**env, ROLE_ENV: role}, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        main = procs[0]
        started, last_record = time.monotonic(), time.monotonic()
        limit = (opts.duration_s + opts.timeout_s + _STALL_GRACE_S) if opts.duration_s is not None else None
        try:
            while main.poll() is None:
                time.sleep(0.2)
                if tail.poll():
                    last_record = time.monotonic()
                _advance(progress, task, tail, total, opts.duration_s, started)
                now = time.monotonic()
                stalled = now - last_record > opts.timeout_s + _STALL_GRACE_S
                # A worker that quit cleanly was told to by the master, which ends in a moment too.
                dead = next((k for k, p in enumerate(procs[1:]) if p.poll() not in (None, 0)), None)
                if stalled or (limit and now - started > limit) or dead is not None:
                    outcome.stalled = True
                    if dead is not None:
                        why = (f"Locust worker {dead} ended early (exit {procs[dead + 1].returncode}): "
                               f"{_last_line(raw_dir / f'locust-{i}.w{dead}.log')}")
                    elif stalled:
                        why = f"no request finished for {now - last_record:.0f} s"
                    else:
                        why = f"still running {now - started:.0f} s after the start of a {opts.duration_s:g} s run"
                    outcome.notes.append(f"{rung.label}: {why}; stopped Locust (partial results)")
                    break
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            _stop(main)  # the master first: it tells its workers to quit (they write their records and CPU)
            for p in procs[1:]:
                _stop(p, grace_s=5.0)
        outcome.returncode = main.returncode
    finally:
        for log in logs:
            log.close()
    tail.poll()
    _advance(progress, task, tail, total, opts.duration_s, started)
    outcome.raw = tail.records
    if processes > 1:  # one records file per rung, as with one process
        records_path.write_text("".join(json.dumps(r) + "\n" for r in sorted(tail.records, key=lambda r: r["index"])))
        for path in raw_dir.glob(f"records-{i}.w*.jsonl"):
            path.unlink()
    outcome.cpu = _read_cpu(raw_dir, i)
    outcome.window_s.append(round(sampler.now(), 3))
    expected = total
    if not outcome.raw and not outcome.interrupted and not outcome.stalled:
        raise BenchError(f"Locust ended (exit {outcome.returncode}) without a single request: "
                         f"{_last_line(log_path)} (log: {log_path})")
    if (expected is not None and len(outcome.raw) < expected and not outcome.interrupted
            and not outcome.stalled):
        outcome.notes.append(f"{rung.label}: Locust ended after {len(outcome.raw)} of {expected} requests "
                             f"(exit {outcome.returncode}): {_last_line(log_path)}")
    return outcome


def _read_cpu(raw_dir: Path, i: int) -> list[dict]:
    out = []
    for path in sorted(raw_dir.glob(f"cpu-{i}.json")) + sorted(raw_dir.glob(f"cpu-{i}.*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _advance(progress: Progress, task, tail: "_Tail", total: int | None, duration_s: float | None,
             started: float) -> None:
    """Requests done of warm-up + N, or seconds of the duration; errors so far beside the bar."""
    completed = len(tail.records) if total is not None else min(time.monotonic() - started, duration_s or 0)
    progress.update(task, completed=completed, status=f"{tail.errors} errors" if tail.errors else "")


def _stop(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """After grace_s to end by itself, SIGTERM (Locust writes its stats and exits), then SIGKILL if it lingers."""
    if grace_s:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        proc.kill()
        proc.wait(timeout=5)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


class _Tail:
    """Follows JSON-lines files that other processes append to; keeps the complete lines parsed."""

    def __init__(self, paths: Path | list[Path]):
        self.paths = [paths] if isinstance(paths, Path) else list(paths)
        self.offsets, self._partial = [0] * len(self.paths), [b""] * len(self.paths)
        self.records, self.errors = [], 0

    def poll(self) -> int:
        return sum(self._poll(k) for k in range(len(self.paths)))

    def _poll(self, k: int) -> int:
        try:
            with open(self.paths[k], "rb") as f:
                f.seek(self.offsets[k])
                data = f.read()
        except OSError:
            return 0
        self.offsets[k] += len(data)
        data = self._partial[k] + data
        *lines, self._partial[k] = data.split(b"\n")
        new = 0
        for line in lines:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                self.records.append(record)
                self.errors += bool(record.get("error"))
                new += 1
        return new
