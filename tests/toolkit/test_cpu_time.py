"""toolkit/bench/cpu_time.py: a run's CPU time counts this process's work, not its waiting, and steal is
read from /proc/stat as a fraction of the run's CPU capacity."""
from __future__ import annotations

import time

from toolkit.bench import cpu_time
from toolkit.bench.cpu_time import CpuAccount


def test_work_counts_and_waiting_does_not():
    account = CpuAccount.start()
    time.sleep(0.3)  # a slowed engine's fixed delay per step costs wall time only
    idle = account.figures(30)
    assert idle["cpu_s"] < 0.1
    account = CpuAccount.start()
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    busy = account.figures(30)
    assert 0.2 < busy["cpu_s"] < 1.0
    assert busy["output_tokens_per_cpu_s"] == 30 / busy["cpu_s"]


def test_steal_fraction_from_proc_stat(monkeypatch):
    # two readings of /proc/stat's steal, 0.5 s of it over a 1 s run on this machine's CPUs
    readings = iter([10.0, 10.5])
    monkeypatch.setattr(cpu_time, "_steal_s", lambda: next(readings))
    clock = iter([100.0, 101.0])
    monkeypatch.setattr(cpu_time.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(cpu_time.os, "cpu_count", lambda: 2)
    figures = CpuAccount.start().figures(10)
    assert abs(figures["steal_fraction"] - 0.25) < 1e-12


def test_no_proc_stat_means_no_steal_figure(monkeypatch):
    monkeypatch.setattr(cpu_time, "_steal_s", lambda: None)
    assert "steal_fraction" not in CpuAccount.start().figures(1)
