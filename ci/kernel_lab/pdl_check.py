"""Lab 8's race check: does an early-launched CUDA W4A16 linear read its input only after the kernel before it
has written it? (engine/kernels/pdl.py; tests/kernels/test_w4_mma.py's early-launch test runs the same check
with both sides on.)

x poisoned with NaN, an RMSNorm writes x, w4_mma_linear reads it, in a CUDA graph; 20 replays each against the
eager result with early launch off. Each side switched separately (the linear's launch attribute, the norm's
early signal), so a failure says which pair races. Prints one line a case:

    python3 ci/kernel_lab/pdl_check.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
from tests.kernels.test_w4_mma import poisoned_x_replays  # noqa: E402

CASES = [dict(m=m, linear_attribute=a, norm_signal=s) for m in (1, 8)
         for a, s in ((True, True), (True, False), (False, True), (False, False))]
CASES += [dict(m=1, poison=False), dict(m=1, n=640, k=2048)]


def main() -> int:
    for case in CASES:
        bad = poisoned_x_replays(**case)
        print(f"{case} bad_replays={len(bad)} (replay, NaN, differing) {bad[:3]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
