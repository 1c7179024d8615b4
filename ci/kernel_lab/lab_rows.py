"""A lab's rows: each variant checked against a reference, timed in a CUDA graph (engine/kernels/timing.py),
printed, and the JSON rewritten after every row (a killed lab keeps what it measured)."""
import json

import torch

from engine.kernels.timing import graph_time_ms


class LabRows:
    def __init__(self, out_path: str, tolerance: float):
        self.out_path, self.tolerance, self.rows = out_path, tolerance, []

    def record(self, fields: dict, name: str, fns, nbytes: int, check=None, ref=None) -> None:
        """fields: the row's coordinates (shape, rows of x ...); fns: closures timed round-robin; nbytes: the
        weight bytes a call must read (GB/s); check / ref: a call and the reference it must match first."""
        row = {**fields, "kernel": name}
        where = " ".join(f"{v}" for v in fields.values())
        try:
            if check is not None:
                y = check().float()
                row["rel_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
                if not row["rel_err"] < self.tolerance:
                    raise AssertionError(f"rel_err {row['rel_err']:.2e}")
            us = graph_time_ms(fns, 60) * 1e3
            row.update(us=us, gb_s=nbytes / us / 1e3)
            print(f"{where:14} {name:44} {us:8.2f} us {row['gb_s']:6.0f} GB/s", flush=True)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{where:14} {name:44} FAILED {row['error'][:200]}", flush=True)
        self.rows.append(row)
        with open(self.out_path, "w") as f:
            # engine.kernels.bench's shape, so `opsctl report` renders it (no copy bandwidth measured here)
            json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": None, "rows": self.rows}, f, indent=1)
