"""--w4-kernel / --w8-kernel auto (engine/runner/weight_kernels.py): the CUDA kernels on Hopper where they can
run, the Triton ones elsewhere, with the reason; an explicit choice that cannot run is an error; auto's CUDA
choice leaves a layer it cannot take on Triton instead of refusing it. The GPU facts (capability, nvcc, the
build) are stood in for, so the choice itself is pinned on the CPU."""
from __future__ import annotations

import logging

import pytest
import torch

from engine.config import EngineConfig
from engine.errors import InvalidRequestError
from engine.models.weight_format import WeightFormat
from engine.runner import weight_kernels

AWQ, INT8, HF = WeightFormat("awq", 128), WeightFormat("int8"), WeightFormat("hf")
GPU = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    """A GPU that could build and run the kernels, of the capability the test sets (default Hopper); `built`
    counts builds, `fail` makes the build raise."""
    # imported here, not at the top: a kernel module imported while the engine tests are collected, before
    # tests/kernels/conftest.py turns on Triton's interpreter, would break the CPU kernel tests
    from engine.kernels import w4_mma

    facts = {"capability": (9, 0), "fail": None, "built": 0}

    def build():
        facts["built"] += 1
        if facts["fail"]:
            raise RuntimeError(facts["fail"])

    monkeypatch.setattr(w4_mma, "unavailable_reason", lambda device: None)
    monkeypatch.setattr(w4_mma, "extension", build)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: facts["capability"])
    return facts


def choose(fmt, dtype="bfloat16", use_kernels=True, **config):
    return weight_kernels.choose(EngineConfig(**config), fmt, use_kernels=use_kernels, dtype=dtype, device=GPU)


def test_auto_takes_the_cuda_kernels_on_hopper_and_builds_them_first(gpu):
    assert EngineConfig().w4_kernel == EngineConfig().w8_kernel == "auto"
    chosen = choose(AWQ)
    assert (chosen.w4, chosen.w8, chosen.fallback) == ("cuda", "triton", True)
    assert gpu["built"] == 1
    chosen = choose(INT8)
    assert (chosen.w4, chosen.w8, chosen.fallback) == ("triton", "cuda", True)


def test_auto_stays_on_triton_where_the_cuda_kernels_are_not_measured_or_cannot_run(gpu, caplog):
    caplog.set_level(logging.INFO, logger=weight_kernels.__name__)
    gpu["capability"] = (8, 9)  # an RTX 4090: 33-64 rows would re-read the weights in 32-row launches
    assert choose(AWQ).w4 == "triton" and "the CUDA ones are measured level with Triton" in caplog.text
    assert gpu["built"] == 0  # nothing is compiled for a kernel that will not run
    gpu["capability"] = (9, 0)
    for fmt, dtype, words in ((AWQ, "float16", "runs bf16 models"), (WeightFormat("awq", 64), "bfloat16",
                                                                       "group size 128"),
                              (INT8, "float16", "runs bf16 models")):
        caplog.clear()
        chosen = choose(fmt, dtype)
        assert (chosen.w4, chosen.w8, chosen.fallback) == ("triton", "triton", False)
        assert words in caplog.text
    assert choose(AWQ, use_kernels=False).w4 == "triton"  # --no-kernels: the torch reference path
    assert choose(HF) == weight_kernels.WeightKernels("triton", "triton", False)
    assert gpu["built"] == 0


def test_auto_falls_back_to_triton_when_the_build_fails(gpu, caplog):
    caplog.set_level(logging.INFO, logger=weight_kernels.__name__)
    gpu["fail"] = "nvcc fatal   : Unsupported gpu architecture 'compute_90a'\nmore"
    assert choose(AWQ).w4 == "triton"
    assert "the CUDA ones could not be built (RuntimeError: nvcc fatal" in caplog.text and "more" not in caplog.text


def test_an_explicit_choice_is_kept_or_refused(gpu):
    gpu["capability"] = (8, 9)
    chosen = choose(AWQ, w4_kernel="cuda")  # asked for: runs where auto would not
    assert (chosen.w4, chosen.fallback) == ("cuda", False)
    assert choose(AWQ, w4_kernel="triton").w4 == "triton"
    with pytest.raises(InvalidRequestError, match="--w8-kernel cuda runs bf16 models"):
        choose(INT8, "float16", w8_kernel="cuda")
    with pytest.raises(InvalidRequestError, match="--w4-kernel cuda applies to AWQ weights"):
        choose(INT8, w4_kernel="cuda")
    with pytest.raises(InvalidRequestError, match="w4_kernel: must be auto, triton or cuda"):
        EngineConfig(w4_kernel="marlin")


@pytest.mark.parametrize("fmt, kernel, size", [("awq", "w4_kernel", 96), ("int8", "w8_kernel", 576)])
def test_a_layer_auto_cannot_put_on_the_cuda_kernels_runs_triton(fmt, kernel, size):
    """auto's choice is per model; a layer whose shape the kernels cannot take (N not a multiple of 64, K of 128)
    keeps its checkpoint layout and the Triton kernels, where an explicit choice refuses it."""
    from engine.layers.linear import Linear
    from engine.layers.options import LayerOptions

    def options(fallback):
        return LayerOptions(use_kernels=True, weight_format=fmt, device_type="cuda", kernel_fallback=fallback,
                            **{kernel: "cuda"})

    odd = (size, 128) if fmt == "awq" else (256, size)  # (N, K)
    layer = Linear(odd[1], odd[0], options=options(True))
    assert not layer.method.cuda and layer.qweight is not None
    assert Linear(1024, 4096, options=options(True)).method.cuda
    with pytest.raises(ValueError, match=f"--{kernel.replace('_', '-')} cuda: the CUDA"):
        Linear(odd[1], odd[0], options=options(False))
