"""Kernel tests: Triton kernels against their torch references (engine/kernels/reference.py).

Without a CUDA device the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before
anything imports triton) on CPU tensors; with one, the same small odd-shape tests run natively on
the GPU, and the `gpu`-marked tests add realistic sizes (`python3 -m pytest -m gpu tests/kernels`).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _row_invariant_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    """tl.dot in the interpreter, one row of the tile at a time. The interpreter's own dot is one np.matmul,
    and numpy's OpenBLAS sums a row differently by where it sits in the tile on some CPUs (on a 2-core
    AVX-512 EPYC, 34 of 64 rows of a [64, 32] @ [32, 32] product changed bits with their position; the
    earlier machines these tests passed on did not), which a GPU's MMA does not do. The batch-invariance
    tests would then judge the host's BLAS, not the kernel: row by row, each output element is the same
    sum wherever its row sits."""
    from triton.runtime.interpreter import TensorHandle, _convert_float
    import numpy as np
    import triton.language as tl

    a_data, b_data = a.data, b.data
    if (a.dtype.primitive_bitwidth == 8 and a.dtype.is_floating()) or \
       (b.dtype.primitive_bitwidth == 8 and b.dtype.is_floating()):
        a_data = _convert_float(a_data, a.dtype, tl.float16, None).view(np.float16)
        b_data = _convert_float(b_data, b.dtype, tl.float16, None).view(np.float16)
    rows = [np.matmul(a_data[..., i:i + 1, :], b_data, dtype=d.data.dtype) for i in range(a_data.shape[-2])]
    return TensorHandle(np.concatenate(rows, axis=-2) + d.data, d.dtype.scalar)


if DEVICE == "cpu":
    from triton.runtime import interpreter

    interpreter.InterpreterBuilder.create_dot = _row_invariant_dot


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (native Triton)")
    for item in items:
        # This hook sees the whole session's items: touch only this directory's.
        if "gpu" in item.keywords and str(item.path).startswith(_HERE):
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where the small tests run: the GPU natively when there is one, else the CPU interpreter."""
    return DEVICE


@pytest.fixture
def paged_kv():
    """Factory: random paged caches and shuffled block tables for requests of the given lengths.

    Returns (k_cache, v_cache, block_tables [B, max_blocks] int32 padded with 0, seq_lens [B] int32).
    Blocks are handed out in a random order so a kernel that ignores the table cannot pass; one spare
    column of padding is added so kernels must not read past a request's own blocks.
    """
    def make(seq_lens: list[int], num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
             device: str, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        blocks_per_req = [-(-n // block_size) for n in seq_lens]
        num_blocks = sum(blocks_per_req) + 3
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        k_cache = torch.randn(shape, generator=gen).to(dtype).to(device)
        v_cache = torch.randn(shape, generator=gen).to(dtype).to(device)
        order = torch.randperm(num_blocks, generator=gen)
        max_blocks = max(blocks_per_req) + 1
        tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
        used = 0
        for i, n in enumerate(blocks_per_req):
            tables[i, :n] = order[used:used + n]
            used += n
        return (k_cache, v_cache, tables.to(device),
                torch.tensor(seq_lens, dtype=torch.int32, device=device))
    return make


def tolerance(dtype: torch.dtype) -> dict:
    """assert_close tolerances against an fp32 reference: tight for fp32, a few bf16/fp16 ulps otherwise."""
    if dtype == torch.float32:
        return {"atol": 2e-5, "rtol": 2e-5}
    return {"atol": 2e-2, "rtol": 2e-2}


def one_ulp(dtype: torch.dtype) -> dict:
    """Equal up to one unit in the last place of dtype: exact on the GPU, where casts round to nearest
    even, but Triton's interpreter truncates fp32 -> bf16/fp16 casts (triton 3.9)."""
    if DEVICE == "cuda" or dtype == torch.float32:
        return {"atol": 0, "rtol": 0}
    return {"atol": 0, "rtol": torch.finfo(dtype).eps}
