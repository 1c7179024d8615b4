"""Measured tiles (engine/kernels/quant_tiles.py): the sweep's choice per shape and M, written as a file
and obeyed by the launchers in the M bucket it was measured for, and nowhere else."""
from __future__ import annotations

import json

import pytest
import torch

from engine.kernels import quant_gemm, quant_tiles
from engine.kernels.quant_bench import tile_entries
from engine.kernels.quant_gemm import TileConfig, w4a16_linear, w4a16_linear_ref, w8a16_linear, w8a16_linear_ref
from engine.quant.int4_pack import pack_awq
from engine.quant.int8 import quantize_per_channel


@pytest.fixture
def tiles_file(tmp_path, monkeypatch):
    path = tmp_path / "tiles.json"
    monkeypatch.setenv(quant_tiles.ENV, str(path))
    quant_tiles._table.cache_clear()
    yield path
    quant_tiles._table.cache_clear()


def _entry(kind, n, k, g, m, path, config):
    return {"kind": kind, "n": n, "k": k, "group_size": g, "m": m, "path": path,
            "config": list(config) if config else None}


def test_lookup_serves_each_entry_in_its_m_bucket_only(tiles_file):
    gemv = TileConfig(1, 64, 16, 2, 2, 1, True)
    decode = TileConfig(16, 32, 32, 3, 4, 2, True)
    quant_tiles.write(tiles_file, [_entry("w4a16", 96, 256, 32, 1, "gemv", gemv),
                                   _entry("w4a16", 96, 256, 32, 8, "gemm", decode),
                                   _entry("w4a16", 96, 256, 32, 64, "dequant_cublas", None)], "test", "unit")
    cpu = torch.device("cpu")
    assert quant_tiles.lookup("w4a16", cpu, 1, 96, 256, 32) == ("gemv", gemv)
    # 2..8 take the entry measured at 8; 9..16 have none above them in their bucket; 17..64 the one at 64
    assert quant_tiles.lookup("w4a16", cpu, 2, 96, 256, 32) == ("gemm", decode)
    assert quant_tiles.lookup("w4a16", cpu, 8, 96, 256, 32) == ("gemm", decode)
    assert quant_tiles.lookup("w4a16", cpu, 9, 96, 256, 32) is None
    assert quant_tiles.lookup("w4a16", cpu, 17, 96, 256, 32) == ("dequant_cublas", None)
    assert quant_tiles.lookup("w4a16", cpu, 65, 96, 256, 32) is None
    # another shape, group size or format: no entry
    assert quant_tiles.lookup("w4a16", cpu, 1, 96, 256, 64) is None
    assert quant_tiles.lookup("w4a16", cpu, 1, 104, 256, 32) is None
    assert quant_tiles.lookup("w8a16", cpu, 1, 96, 256) is None


def test_write_merges_and_replaces_by_key(tiles_file):
    a = _entry("w8a16", 96, 256, 0, 1, "gemv", TileConfig(1, 16, 512, 2, 4, 1, True))
    b = _entry("w8a16", 96, 256, 0, 16, "gemm", TileConfig(16, 32, 64, 2, 4, 2, True))
    quant_tiles.write(tiles_file, [a, b], "test", "first")
    a2 = dict(a, config=list(TileConfig(1, 32, 1024, 3, 8, 1, True)))
    quant_tiles.write(tiles_file, [a2], "test", "second")
    data = json.loads(tiles_file.read_text())
    assert data["source"] == "second" and len(data["entries"]) == 2
    assert {tuple(e["config"]) for e in data["entries"]} == {tuple(a2["config"]), tuple(b["config"])}


def test_launchers_follow_the_file(tiles_file, monkeypatch, device):
    # The file sends M = 3 down the dense path (its default is the fused 'gemm') and M = 1 through a
    # one-split GEMV: the launchers obey, and the results are still right
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(96, 256, generator=gen) / 16
    qweight, qzeros, scales = (t.to(device) for t in pack_awq(w, 32))
    q8, s8 = (t.to(device) for t in quantize_per_channel(w))
    quant_tiles.write(tiles_file, [_entry("w4a16", 96, 256, 32, 4, "dequant_cublas", None),
                                   _entry("w8a16", 96, 256, 0, 4, "dequant_cublas", None),
                                   _entry("w4a16", 96, 256, 32, 1, "gemv", TileConfig(1, 32, 16, 1, 2, 1, True))],
                      "test", "unit")
    dense, launches = [], []
    real_dense, real_launch = quant_gemm._dense_product, quant_gemm._launch
    monkeypatch.setattr(quant_gemm, "_dense_product", lambda *a, **kw: dense.append(1) or real_dense(*a, **kw))
    monkeypatch.setattr(quant_gemm, "_launch", lambda *a, **kw: launches.append(a[6]) or real_launch(*a, **kw))
    x = torch.randn(3, 256, generator=gen).to(torch.bfloat16).to(device)
    torch.testing.assert_close(w4a16_linear(x, qweight, qzeros, scales, 32).float(),
                               w4a16_linear_ref(x.float(), qweight, qzeros, scales, 32).float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w8a16_linear(x, q8, s8).float(), w8a16_linear_ref(x.float(), q8, s8).float(),
                               rtol=2e-2, atol=2e-2)
    assert len(dense) == 2 and not launches
    w4a16_linear(x[:1], qweight, qzeros, scales, 32)
    assert launches == [TileConfig(1, 32, 16, 1, 2, 1, True)]
    # an explicit path or config still wins over the file
    w4a16_linear(x, qweight, qzeros, scales, 32, path="gemm")
    assert len(dense) == 2 and launches[-1].block_m == 16


def test_a_swapped_int8_entry_runs_the_swapped_kernel(tiles_file, monkeypatch, device):
    # An entry written with swap_ab (8 fields, as a sweep writes it) reaches the launcher whole: the
    # swapped-operand kernel runs, with the right result
    gen = torch.Generator().manual_seed(9)
    q8, s8 = (t.to(device) for t in quantize_per_channel(torch.randn(96, 256, generator=gen) / 16))
    swapped = TileConfig(16, 32, 64, 2, 4, 2, True, True)
    quant_tiles.write(tiles_file, [_entry("w8a16", 96, 256, 0, 8, "gemm", swapped)], "test", "unit")
    kernels = []
    real_launch = quant_gemm._launch
    monkeypatch.setattr(quant_gemm, "_launch", lambda *a, **kw: kernels.append(a[0]) or real_launch(*a, **kw))
    x = torch.randn(5, 256, generator=gen).to(torch.bfloat16).to(device)
    torch.testing.assert_close(w8a16_linear(x, q8, s8).float(), w8a16_linear_ref(x.float(), q8, s8).float(),
                               rtol=2e-2, atol=2e-2)
    assert kernels == [quant_gemm.qk._w8a16_gemm_swapped_kernel]


def test_tile_entries_take_the_fastest_checked_row():
    base = {"n": 96, "k": 256, "m": 1, "path": "gemv"}
    rows = [dict(base, kernel="bf16", us=5.0),
            dict(base, kernel="w4a16", us=4.0, rel_err=1e-3, tile=[1, 512, 32, 28, 4, 1, True], speedup_vs_bf16=1.25),
            dict(base, kernel="w4a16[gemv]", us=3.0, rel_err=1e-3, tile=[1, 256, 16, 9, 2, 1, True]),
            dict(base, kernel="w4a16[gemv]", us=1.0, rel_err=0.5, tile=[1, 1024, 16, 9, 2, 1, True]),  # wrong result
            dict(base, kernel="w4a16[gemv]", error="compile failed", tile=[1, 2048, 16, 9, 2, 1, True]),
            dict(base, kernel="w8a16", us=3.5, rel_err=1e-3, tile=[1, 16, 1024, 2, 4, 1, True])]
    entries = {e["kind"]: e for e in tile_entries(rows)}
    assert set(entries) == {"w4a16", "w8a16"}
    assert entries["w4a16"]["config"] == [1, 256, 16, 9, 2, 1, True] and entries["w4a16"]["group_size"] == 128
    assert entries["w8a16"]["group_size"] == 0


def test_device_file_names():
    assert quant_tiles.device_file("NVIDIA H200").name == "nvidia-h200.json"
    assert quant_tiles.device_file("NVIDIA GeForce RTX 4090").name == "nvidia-geforce-rtx-4090.json"


def test_committed_tile_files_are_valid():
    # every committed entry must be runnable as it stands: the launcher would raise on it at the first call
    files = sorted(quant_tiles.TILES_DIR.glob("*.json"))
    assert files, "the measured H200 tiles are committed"
    for path in files:
        entries = quant_tiles.read(path)
        assert entries, path
        for e in entries:
            assert e["path"] in quant_gemm.PATHS and e["kind"] in ("w4a16", "w8a16"), e
            if e["path"] == "dequant_cublas":
                assert e["config"] is None, e
                continue
            cfg = TileConfig(*e["config"])
            assert (cfg.block_m == 1) == (e["path"] == "gemv") and (e["path"] != "gemv" or e["m"] == 1), e
            if e["kind"] == "w4a16":
                assert e["group_size"] % cfg.block_k == 0 and e["k"] % e["group_size"] == 0, e
            assert any(lo <= e["m"] <= hi for lo, hi in quant_tiles.BUCKETS), e
