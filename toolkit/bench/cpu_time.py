"""How much CPU a measured run got: this process's CPU time and the hypervisor's steal over its wall time.

On a shared VM a run is slowed by neighbours in two ways the wall clock cannot tell apart from a slow
engine: the hypervisor hands the vCPUs to someone else (steal, counted in /proc/stat), or another
process here competes for them. A bench records, per run, `cpu_s` (time.process_time: every thread of
this process, steal excluded), `output_tokens_per_cpu_s` and `steal_fraction` (steal over the run's
wall time x the CPUs), so a result shows whether its run had the machine. Linux only for steal.
On the 2-core CI VM (2026-12-02) steal stayed under 1% and both the engine and transformers used ~1.97
cores while their throughput moved by 25% between runs: the noise there is per-core speed (caches,
memory bandwidth, clocks), which the per-CPU-second ratio does not remove, so the gates stay on wall time.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _steal_s() -> float | None:
    """Seconds of steal summed over all CPUs since boot (/proc/stat's 8th field of "cpu"), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / _USER_HZ


@dataclass
class CpuAccount:
    """Started with `start()`, read with `figures(output_tokens)` after the run."""
    wall0: float
    cpu0: float
    steal0: float | None

    @classmethod
    def start(cls) -> "CpuAccount":
        return cls(time.perf_counter(), time.process_time(), _steal_s())

    def figures(self, output_tokens: int) -> dict:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        out = {"cpu_s": cpu}
        if cpu > 0:
            out["output_tokens_per_cpu_s"] = output_tokens / cpu
        steal1 = _steal_s()
        if self.steal0 is not None and steal1 is not None and wall > 0:
            out["steal_fraction"] = (steal1 - self.steal0) / (wall * (os.cpu_count() or 1))
        return out
