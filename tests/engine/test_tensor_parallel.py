"""Tensor parallelism on CPU with gloo: the same greedy tokens as tp=1, clear refusals, no orphaned workers.

tp=2 runs the tiny-qwen2-tp preset (6 query heads split, its one KV head replicated, a vocab that 2
does not divide) and tp=3 the embedded SmolLM2 (9 heads, 3 KV heads split one per rank, tied head).
fp32 all-reduces sum in another order than tp=1's matmuls, so logits differ in the last bits; the
greedy tokens of these prompts are the same for 32 tokens (the prompts were not picked: they are the
ones the other tests use).
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from engine import InvalidRequestError, pipeline
from engine.errors import EngineDeadError
from engine.layers.partition import check_tensor_parallel, kv_heads_part, vocab_part
from engine.prompt import chat_token_ids

from .helpers import greedy, run_alone
from .test_greedy_equality import CHAT_PROMPTS

NEW_TOKENS = 32
TINY = "preset:tiny-qwen2-tp"
SMALL = dict(device="cpu", dtype="float32", cache_max_entry_count=64, cache_block_seq_len=16, session_len=512)
RAW_PROMPTS = ["Hello there, how are you today?", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19",
               "The quick brown fox", "def f(x):"]


@pytest.fixture(scope="module")
def one_thread():
    """Every rank on one thread (workers take rank 0's count): the machine's two cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _worker_pids(pipe) -> list[int]:
    return [w.process.pid for w in pipe.engine.executor.workers]


def _greedy_ids(pipe, prompts, **kw) -> list[list[int]]:
    return [r.token_ids for r in pipe(prompts, greedy(NEW_TOKENS), **kw)]


# -- refused before anything loads ------------------------------------------------------------------
def test_tp_not_dividing_heads_is_refused_before_loading(default_model_dir, monkeypatch):
    """SmolLM2 has 9 heads: tp=2 fails in one line naming them, before the tokenizer or a weight is read."""
    from engine.models import source
    from engine.runner import model_runner

    def must_not_load(*_a, **_k):
        raise AssertionError("loaded something before refusing the tp")

    monkeypatch.setattr(model_runner, "build_model", must_not_load)
    monkeypatch.setattr(source.ModelSource, "load_tokenizer", must_not_load)
    started = time.monotonic()
    with pytest.raises(InvalidRequestError) as info:
        pipeline(default_model_dir, tp=2, **SMALL)
    message = str(info.value)
    assert "\n" not in message and "9 attention heads" in message and "1, 3, 9" in message
    assert info.value.param == "tp"
    assert time.monotonic() - started < 10


def test_partition_rules():
    """KV heads split while tp divides them and replicate past their count; vocab rows padded to equal."""
    assert [kv_heads_part(3, 3, r) for r in range(3)] == [(0, 1), (1, 1), (2, 1)]
    assert [kv_heads_part(2, 4, r) for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    assert [vocab_part(49155, 2, r) for r in range(2)] == [(0, 24578, 24578), (24578, 24578, 24577)]


def test_awq_and_kv_head_splits_are_refused_in_one_line():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=512, intermediate_size=1280, num_attention_heads=8, num_key_value_heads=3,
                      num_hidden_layers=1, vocab_size=1000)
    with pytest.raises(InvalidRequestError, match="cannot split the 3 KV heads"):
        check_tensor_parallel(cfg, 2)
    cfg.num_key_value_heads = 2
    check_tensor_parallel(cfg, 4)  # 2 KV heads, each replicated on two ranks
    # AWQ: o_proj's 512 inputs split in 4 are 128 rows per rank, not whole groups of 256
    with pytest.raises(InvalidRequestError, match="o_proj input into 128 rows per rank.*group size 256"):
        check_tensor_parallel(cfg, 4, "awq", 256)
    check_tensor_parallel(cfg, 2, "awq", 128)
    # AWQ: an MLP of 1288 leaves 644 gate/up columns per rank at tp 2, not whole int32s of 8
    cfg.intermediate_size = 1288
    with pytest.raises(InvalidRequestError, match="multiple of 8"):
        check_tensor_parallel(cfg, 2, "awq", 8)


def test_where_the_ranks_meet(monkeypatch):
    """The torch.distributed environment when a launcher set it, else --nnodes/--node-rank; bad mixes refused."""
    from engine import EngineConfig
    from engine.distributed import holds_rank_zero, rendezvous

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    local = rendezvous(EngineConfig(tp=3))
    assert (local.addr, local.world_size, list(local.local_ranks), local.url.startswith("tcp://127.0.0.1:")) == \
        ("127.0.0.1", 3, [0, 1, 2], True)
    with pytest.raises(InvalidRequestError, match="MASTER_ADDR"):
        rendezvous(EngineConfig(tp=4, nnodes=2, node_rank=1))
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    second = rendezvous(EngineConfig(tp=4, nnodes=2, node_rank=1))
    assert list(second.local_ranks) == [2, 3] and not holds_rank_zero(EngineConfig(tp=4, nnodes=2, node_rank=1))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launched = rendezvous(EngineConfig(tp=2))
    assert (launched.launched, list(launched.local_ranks), launched.local_rank, launched.url) == (True, [1], 1, "env://")
    assert not holds_rank_zero(EngineConfig(tp=2)) and holds_rank_zero(EngineConfig())
    with pytest.raises(InvalidRequestError, match="WORLD_SIZE is 2 but --tp is 4"):
        rendezvous(EngineConfig(tp=4))


# -- tp=2: the tiny Qwen2 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_reference(one_thread):
    with pipeline(TINY, **SMALL) as pipe:
        return _greedy_ids(pipe, RAW_PROMPTS, do_preprocess=False)


@pytest.fixture(scope="module")
def tiny_tp2(one_thread):
    """tp=2 with overlap on (workers feed placeholder inputs from the broadcast sampled ids) and a prefill
    budget of 8 tokens, so prompts are split into chunks that run fused with other requests' decodes."""
    pipe = pipeline(TINY, tp=2, overlap="on", max_prefill_token_num=8, **SMALL)
    yield pipe
    pipe.close()


@pytest.mark.slow
def test_tp2_tiny_qwen2_greedy_equals_tp1(tiny_tp2, tiny_reference):
    got = _greedy_ids(tiny_tp2, RAW_PROMPTS, do_preprocess=False)
    assert all(len(ids) == NEW_TOKENS for ids in got)
    assert got == tiny_reference
    stats = tiny_tp2.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


@pytest.mark.slow
def test_tp2_reconfigure_rebuilds_every_ranks_cache(tiny_tp2, tiny_reference):
    engine = tiny_tp2.engine
    stats = engine.reconfigure({"cache_block_seq_len": 32, "cache_max_entry_count": 40})
    assert stats.num_blocks == 40 and engine.runner.kv_cache.shape[2:4] == (40, 32)
    assert _greedy_ids(tiny_tp2, RAW_PROMPTS[:2], do_preprocess=False) == tiny_reference[:2]


@pytest.mark.slow
def test_tp2_killed_worker_ends_the_engine_and_leaves_no_process(tiny_tp2):
    """A worker killed between steps: the next step raises EngineDeadError naming it; none is left."""
    pids = _worker_pids(tiny_tp2)
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(EngineDeadError, match="rank 1 .*killed by SIGKILL"):
        _greedy_ids(tiny_tp2, RAW_PROMPTS[:1], do_preprocess=False)
    assert not any(_alive(pid) for pid in pids)


@pytest.fixture
def tiny_tp2_closed(tiny_tp2):
    """One tensor-parallel engine per process: the tests below start their own, so the shared tp=2 engine
    must be gone first, whether or not the killed-worker test ran (a -k selection may leave it out)."""
    tiny_tp2.close()


@pytest.mark.slow
def test_tp2_int8_weights_equal_tp1(one_thread, tiny_tp2_closed):
    """int8 quantizes each whole checkpoint tensor before a rank keeps its part: a row-parallel rank's
    columns keep their whole row's scale, so tp=2 holds the very same quantized weights as tp=1. The int8
    LM head too: each rank quantizes its vocab rows (the last rank's padding rows among them), row by row."""
    with pipeline(TINY, model_format="int8", lm_head_int8="on", **SMALL) as pipe:
        expected = _greedy_ids(pipe, RAW_PROMPTS[:2], do_preprocess=False)
    with pipeline(TINY, tp=2, model_format="int8", lm_head_int8="on", **SMALL) as pipe:
        pids = _worker_pids(pipe)
        assert _greedy_ids(pipe, RAW_PROMPTS[:2], do_preprocess=False) == expected
    assert not any(_alive(pid) for pid in pids)  # close() stopped them


@pytest.mark.slow
def test_tp2_prefix_caching_reuses_blocks_and_keeps_tokens(one_thread, tiny_tp2_closed):
    """Rank 0's prefix cache hands the ranks block tables that point at blocks an earlier request filled:
    every rank must hold its heads' part of those blocks, so the tokens stay tp=1's."""
    prompts = ["Once upon a time, in a land far away, there lived a " + p for p in RAW_PROMPTS]
    with pipeline(TINY, **SMALL) as pipe:
        expected = _greedy_ids(pipe, prompts, do_preprocess=False)
    with pipeline(TINY, tp=2, enable_prefix_caching=True, **SMALL) as pipe:
        first = _greedy_ids(pipe, prompts[:1], do_preprocess=False)
        again = _greedy_ids(pipe, prompts, do_preprocess=False)
        stats = pipe.engine.stats()
    assert first == expected[:1] and again == expected
    assert stats.prefix_cache_hits > 0 and stats.num_free_blocks == stats.num_blocks


# -- tp=3: the embedded SmolLM2 ---------------------------------------------------------------------
@pytest.mark.slow
def test_tp3_smollm2_greedy_equals_tp1(smol_engine, default_model_dir, one_thread, tiny_tp2_closed):
    ids = [chat_token_ids(smol_engine.tokenizer, [{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    expected = [run_alone(smol_engine, prompt, greedy(NEW_TOKENS)) for prompt in ids]
    with pipeline(default_model_dir, tp=3, **SMALL) as pipe:
        assert pipe.engine.runner.num_kv_heads == 1 and pipe.engine.runner.model.lm_head.weight.shape[0] == 49152 // 3
        got = [r.token_ids for r in pipe(CHAT_PROMPTS, greedy(NEW_TOKENS))]
    assert got == expected
