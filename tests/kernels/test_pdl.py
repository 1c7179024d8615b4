"""engine/kernels/pdl.py: when the Triton kernels feeding a CUDA W4A16 linear signal it to start early. The
signal must stay off wherever it cannot run (CPU tensors, the Triton interpreter of the CPU tests) and off
when switched off; on a 9.0+ GPU (tests/kernels/test_w4_mma.py's GPU test) the linear's result is checked."""
from __future__ import annotations

import pytest
import torch

from engine.kernels import pdl
from engine.kernels.activation import silu_and_mul
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
