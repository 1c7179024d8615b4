"""Lab 8's race check: does an early-launched CUDA W4A16 linear read its input only after the kernel before it
has written it? (engine/kernels/pdl.py; the test is tests/kernels/test_w4_mma.py's early-launch test.)

In a CUDA graph: x poisoned with NaN, an RMSNorm writes x, the linear (w4_mma_linear) reads it; 20 replays each
against the eager result with early launch off. Each side switched separately (the linear's launch attribute,
the norm's early signal), so a failure says which pair races. Prints one line a case:

    python3 ci/kernel_lab/pdl_check.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from engine.kernels import pdl, w4_mma
from engine.kernels.norm import rms_norm

sys.path.insert(0, str(Path(__file__).parents[2] / "tests" / "kernels"))
from test_w4_mma import _awq  # noqa: E402


def switch(linear_attribute: bool, norm_signal: bool) -> None:
    pdl.set_enabled(norm_signal)
    w4_mma.extension().set_pdl(linear_attribute)


def check(m: int, linear_attribute: bool, norm_signal: bool, poison: bool = True, n: int = 4608,
          k: int = 3584) -> None:
    qw, qz, s = _awq(n, k, 128, m, torch.bfloat16, "cuda")
    packed, sz = w4_mma.repack(qw, qz, s, 128)
    gen = torch.Generator(device="cuda").manual_seed(m)
    src = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    weight = torch.rand(k, device="cuda", generator=gen).to(torch.bfloat16)
    x = torch.empty(m, k, device="cuda", dtype=torch.bfloat16)
    switch(False, False)
    expected = w4_mma.w4_mma_linear(rms_norm(src, weight, 1e-6, out=x), packed, sz, torch.bfloat16).clone()
    switch(linear_attribute, norm_signal)

    def chain():
        if poison:
            x.fill_(float("nan"))
        rms_norm(src, weight, 1e-6, out=x)
        return w4_mma.w4_mma_linear(x, packed, sz, torch.bfloat16)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = chain().clone()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    bad = []
    for i in range(20):
        graph.replay()
        torch.cuda.synchronize()
        if not torch.equal(out, expected):
            bad.append((i, int(torch.isnan(out).sum()), int((out != expected).sum())))
    print(f"m={m} linear_attribute={linear_attribute} norm_signal={norm_signal} poison={poison} "
          f"eager_equal={torch.equal(eager, expected)} bad_replays={len(bad)} (replay, NaN, differing) {bad[:3]}",
          flush=True)
    switch(True, True)


def main() -> int:
    for m in (1, 8):
        for linear_attribute, norm_signal in ((True, True), (True, False), (False, True), (False, False)):
            check(m, linear_attribute, norm_signal)
    check(1, True, True, poison=False)
    check(1, True, True, n=640, k=2048)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
