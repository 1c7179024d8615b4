"""toolkit.bench.formats: every format's engine against the 16-bit one in one run. Here the KV comparison
alone (--kv-only), on a tiny random model on the CPU with the 256-request workload cut to 4 requests."""
from __future__ import annotations

import json

from toolkit.bench import formats


def test_kv_only_measures_the_16_bit_and_int8_cache_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "KV_WORKLOAD", ("throughput", 4))
    monkeypatch.setattr(formats, "OUTPUT_LEN", (3, 3))
    summary = formats.run("preset:tiny-qwen2", tmp_path, ["bf16", "int8", "awq"], kv=True, kv_only=True)
    assert list(summary) == ["throughput-4"]
    rows = summary["throughput-4"]
    assert list(rows) == ["bf16", "bf16 weights, int8 KV"]
    assert rows["bf16"]["ratio_to_bf16"] == 1.0
    kv8 = rows["bf16 weights, int8 KV"]
    assert kv8["ratio_to_bf16"] == kv8["output_tok_s"] / rows["bf16"]["output_tok_s"]
    # the int8 cache holds more blocks in the same memory
    assert kv8["num_kv_blocks"] > rows["bf16"]["num_kv_blocks"]
    result = json.loads((tmp_path / "throughput-4" / "result.json").read_text())
    labels = [run["label"] for run in result["runs"]]
    assert labels == ["opsctl engine, bf16", "opsctl engine, bf16 weights, int8 KV"]
    assert json.loads((tmp_path / "summary.json").read_text())["figures"] == summary


def test_common_settings_reach_every_engine_and_the_summary(tmp_path, monkeypatch):
    """--gpu-memory-gb / --max-batch-size (here the CPU's memory budget, its equivalent) apply to the 16-bit
    and the int8-cache engine alike, so the two differ in their cache format alone."""
    monkeypatch.setattr(formats, "KV_WORKLOAD", ("throughput", 4))
    monkeypatch.setattr(formats, "OUTPUT_LEN", (3, 3))
    wide = formats.run("preset:tiny-qwen2", tmp_path / "wide", ["bf16"], kv=True, kv_only=True)
    common = {"cpu_memory_gb": 0.5, "max_batch_size": 2}
    narrow = formats.run("preset:tiny-qwen2", tmp_path / "narrow", ["bf16"], kv=True, kv_only=True, common=common)
    for label in ("bf16", "bf16 weights, int8 KV"):
        blocks = narrow["throughput-4"][label]["num_kv_blocks"]  # an eighth of the default 4 GiB, rounded down
        assert 0 <= wide["throughput-4"][label]["num_kv_blocks"] - 8 * blocks < 8
    assert json.loads((tmp_path / "narrow" / "summary.json").read_text())["settings"] == common
