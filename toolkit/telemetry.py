"""GPU telemetry during runs: a pynvml sampler thread recording memory, utilisation and power per device.

    with GpuSampler(interval_s=0.5) as sampler:
        ...  # the run
    result.telemetry = sampler.samples
    result.notes += sampler.notes

Each sample: t (seconds since the sampler started, monotonic), index, name, memory_used_gib,
utilization_pct, power_w. Without an NVIDIA driver (NVML missing) nothing is recorded and `notes`
says "no NVIDIA GPU found (...)". `pynvml` is the nvidia-ml-py package. A sampler only makes sense
on the machine that runs the server, so callers start it when the server's host is local.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def is_local_url(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.startswith("127.")


class GpuSampler:
    """Samples every NVIDIA device every `interval_s` in a daemon thread while the context is open."""

    def __init__(self, interval_s: float = 0.5, enabled: bool = True):
        self.interval_s = interval_s
        self.enabled = enabled
        self.samples: list[dict] = []
        self.notes: list[str] = []
        self._nvml = None
        self._handles: list = []
        self._names: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()

    def now(self) -> float:
        """Seconds on the samples' clock (for marking when a run started and ended)."""
        return time.perf_counter() - self._t0

    def __enter__(self) -> "GpuSampler":
        self._t0 = time.perf_counter()
        if self.enabled and self._init_nvml():
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a library that already failed changes nothing
                pass

    def _init_nvml(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
        except ImportError:
            self.notes.append("no GPU telemetry: pynvml is not installed (pip install nvidia-ml-py)")
            return False
        except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.notes.append(f"no NVIDIA GPU found ({type(e).__name__}: {e})")
            return False
        if not handles:
            self.notes.append("no NVIDIA GPU found (NVML reports 0 devices)")
            pynvml.nvmlShutdown()
            return False
        self._nvml, self._handles, self._names = pynvml, handles, names
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def sample_once(self) -> None:
        nv, t = self._nvml, round(self.now(), 3)
        for i, (handle, name) in enumerate(zip(self._handles, self._names)):
            row = {"t": t, "index": i, "name": name, "memory_used_gib": None, "utilization_pct": None,
                   "power_w": None}
            try:
                row["memory_used_gib"] = round(nv.nvmlDeviceGetMemoryInfo(handle).used / 2**30, 3)
            except Exception:  # noqa: BLE001 - some readings are unsupported on some cards; keep the others
                pass
            try:
                row["utilization_pct"] = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:  # noqa: BLE001
                pass
            try:
                row["power_w"] = round(nv.nvmlDeviceGetPowerUsage(handle) / 1000, 1)
            except Exception:  # noqa: BLE001
                pass
            self.samples.append(row)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
