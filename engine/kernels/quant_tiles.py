"""Measured tile configs for the quantized linears, per device: the table `quant_bench --sweep
--write-tiles` writes and quant_gemm's launchers read.

quant_gemm's config functions reason tiles from a roofline; a sweep on the device measures them. As vLLM
ships its fused-MoE kernel configs per device name, the fastest (path, TileConfig) per (format, N, K,
group size, M) goes into engine/kernels/tiles/<device>.json (committed for the devices we measured),
and a launcher called with neither path nor config takes the entry whose M bucket holds its M:
  M == 1 -> the entry measured at 1;  2..16 -> the smallest measured M in 2..16 at or above M;
  17..64 -> likewise in 17..64;  larger M, or no entry -> the reasoned defaults.
An entry is kept only where its kernel can run that M (the GEMV only at M == 1). $OPSCTL_QUANT_TILES
names another file (a sweep's output before it is committed). No file, no CUDA device or a device we
never measured: the defaults, silently, as before.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

TILES_DIR = Path(__file__).with_name("tiles")
ENV = "OPSCTL_QUANT_TILES"
BUCKETS = ((1, 1), (2, 16), (17, 64))  # M ranges an entry measured inside it serves


class Key(NamedTuple):
    kind: str  # "w4a16" or "w8a16"
    n: int
    k: int
    group_size: int  # 0 for w8a16 (per output channel)


def device_file(device_name: str) -> Path:
    """engine/kernels/tiles/<device name, lower case, non-alphanumerics as '-'>.json"""
    return TILES_DIR / (re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") + ".json")


def read(path: Path) -> list[dict]:
    """The entries of a tiles file: [{kind, n, k, group_size, m, path, config}]; a missing file is empty."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data.get("entries", []))


def write(path: Path, entries: list[dict], device_name: str, source: str) -> None:
    """Merge entries into the file at path: a new entry replaces the one with the same key and M."""
    merged = {(e["kind"], e["n"], e["k"], e["group_size"], e["m"]): e for e in read(path)}
    merged.update({(e["kind"], e["n"], e["k"], e["group_size"], e["m"]): e for e in entries})
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"device": device_name, "source": source, "entries": [merged[key] for key in sorted(merged)]}
    path.write_text(json.dumps(body, indent=1) + "\n")


@functools.lru_cache(maxsize=None)
def _table(file: str) -> dict[Key, list[tuple[int, str, tuple | None]]]:
    table: dict[Key, list[tuple[int, str, tuple | None]]] = {}
    for e in read(Path(file)):
        cfg = tuple(e["config"]) if e.get("config") is not None else None
        table.setdefault(Key(e["kind"], e["n"], e["k"], e["group_size"]), []).append((e["m"], e["path"], cfg))
    for entries in table.values():
        entries.sort()
    return table


@functools.lru_cache(maxsize=None)
def _device_file_of(index: int) -> str:
    import torch

    return str(device_file(torch.cuda.get_device_name(index)))


def _file_for(device) -> str | None:
    """The tiles file for a device: $OPSCTL_QUANT_TILES, else the device's own (CUDA, natively only).
    Called on every eager linear: the device's name and path are worked out once per device."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    import torch

    return _device_file_of(device.index if device.index is not None else torch.cuda.current_device())


def lookup(kind: str, device, m: int, n: int, k: int, group_size: int = 0):
    """(path, TileConfig or None) measured fastest for this call on this device, or None for the defaults."""
    from .quant_gemm import TileConfig

    bucket = next(((lo, hi) for lo, hi in BUCKETS if lo <= m <= hi), None)
    file = _file_for(device) if bucket is not None else None  # prefill sizes never ask for the file
    if file is None:
        return None
    for m_measured, path, cfg in _table(file).get(Key(kind, n, k, group_size), []):
        if m <= m_measured <= bucket[1] and m_measured >= bucket[0]:
            return path, (TileConfig(*cfg) if cfg is not None else None)
    return None
