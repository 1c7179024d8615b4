"""engine/kernels/pdl.py: early launch of the decode step's kernels. It must stay off wherever it cannot run (CPU
tensors, the Triton interpreter of the CPU tests) and when switched off (set_enabled, OPSCTL_PDL=0); on a 9.0+
GPU a chain of early-launched kernels in a CUDA graph, each reading what the one before wrote over NaN, must give
the eager result on every replay (a kernel that read before its wait would see the NaN), and the W4A16 linear
behind a norm likewise (tests/kernels/test_w4_mma.py); tests/engine/test_gpu_early_launch.py checks a whole
engine's tokens with and without it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from engine.kernels import pdl
from engine.kernels.activation import silu_and_mul
from engine.kernels.gemv import gemv
from engine.kernels.norm import rms_norm


def test_no_early_launch_on_the_cpu_or_under_the_interpreter(monkeypatch):
    assert not pdl.early_launch(torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if torch.cuda.is_available():
        assert not pdl.early_launch(torch.zeros(2, device="cuda"))


def test_switched_off_it_stays_off_on_any_device():
    try:
        pdl.set_enabled(False)
        assert not pdl.early_launch(torch.zeros(2))
        if torch.cuda.is_available():
            assert not pdl.early_launch(torch.zeros(2, device="cuda"))
    finally:
        pdl.set_enabled(True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the signal is compiled only for a GPU")
def test_the_feeding_kernels_compute_the_same_with_the_signal():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(5, 3584, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.rand(3584, device="cuda", generator=gen).to(torch.bfloat16)
    gu = torch.randn(5, 2 * 1024, device="cuda", generator=gen).to(torch.bfloat16)
    outs = {}
    for on in (False, True):
        pdl.set_enabled(on)
        outs[on] = (rms_norm(x, w, 1e-6), silu_and_mul(gu))
    pdl.set_enabled(True)
    assert all(torch.equal(a, b) for a, b in zip(outs[False], outs[True]))


def test_the_environment_switches_it_off():
    code = "import engine.kernels.pdl as p; print(p._enabled)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "OPSCTL_PDL": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def wrong_replays(chain, expected: torch.Tensor, replays: int) -> list[tuple[int, int, int]]:
    """chain() captured in a CUDA graph (run once outside the capture first, which compiles the early-launch
    variants) and replayed `replays` times: (replay, NaN outputs, wrong outputs) of each replay whose output is
    not `expected`."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    wrong = []
    for i in range(replays):
        graph.replay()
        torch.cuda.synchronize()
        if not torch.equal(out, expected):
            wrong.append((i, int(torch.isnan(out).sum()), int((out != expected).sum())))
    return wrong


def _chain(src, norm_w, w1, w2, bufs):
    """RMSNorm -> GEMV -> SiLU-and-mul -> GEMV into bufs, each reading what the one before wrote."""
    x, h, a, y = bufs
    rms_norm(src, norm_w, 1e-6, out=x)
    gemv(x, w1, out=h)
    silu_and_mul(h, out=a)
    gemv(a, w2, out=y)
    return y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="early launch needs a 9.0+ GPU")
def test_a_chain_of_early_launched_kernels_never_reads_before_the_kernel_before_it_is_done():
    gen = torch.Generator(device="cuda").manual_seed(0)
    k, inter = 3584, 18944
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    src = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
    norm_w = torch.rand(k, device="cuda", generator=gen).to(torch.bfloat16)
    w1 = (torch.randn(2 * inter, k, device="cuda", generator=gen) / k ** 0.5).to(torch.bfloat16)
    w2 = (torch.randn(k, inter, device="cuda", generator=gen) / inter ** 0.5).to(torch.bfloat16)
    bufs = [torch.empty(1, k, **bf16), torch.empty(1, 2 * inter, **bf16), torch.empty(1, inter, **bf16),
            torch.empty(1, k, **bf16)]
    try:
        pdl.set_enabled(False)
        expected = _chain(src, norm_w, w1, w2, bufs).clone()
        pdl.set_enabled(True)
        assert pdl.early_launch(bufs[0])

        def poisoned():
            for b in bufs:
                b.fill_(float("nan"))
            return _chain(src, norm_w, w1, w2, bufs)

        wrong = wrong_replays(poisoned, expected, 50)
        assert not wrong, f"replays (index, NaN outputs, wrong outputs) that read early: {wrong}"
    finally:
        pdl.set_enabled(True)
