"""Shared fixtures: the embedded default model, tiny presets as HF directories, built engines.

Engines are expensive to build (weights, KV pool), so fixtures share them per session; tests that
need a special configuration build their own.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    """The converted SmolLM2-135M-Instruct directory (pulled into the cache on first use)."""
    from engine.models.default_model import pull_default_model

    return str(pull_default_model(progress=False))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """tiny-llama / tiny-qwen2 / tiny-qwen3 presets written as HF directories (fp32 random weights)."""
    from engine.models.presets import materialize_preset

    root = tmp_path_factory.mktemp("presets")
    return {name: str(materialize_preset(name, root / name, seed=0))
            for name in ("tiny-llama", "tiny-qwen2", "tiny-qwen3")}


@pytest.fixture(scope="session")
def smol_engine(default_model_dir):
    """A shared fp32 CPU engine on the default model, small pool, prefix caching off."""
    from engine import EngineConfig
    from engine.engine import LLMEngine

    return LLMEngine(default_model_dir, EngineConfig(device="cpu", dtype="float32", cache_max_entry_count=512,
                                                     cache_block_seq_len=16, max_batch_size=32,
                                                     session_len=2048))


@pytest.fixture(scope="session")
def hf_smol(default_model_dir):
    """transformers' own model on the same weights: the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def one_torch_thread_unless_slow(request):
    """Tiny models on one thread: a second thread only waits on the other's tiny ops, and when the
    machine's two cores are busy (other tests, other processes) it makes them 10x slower."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
