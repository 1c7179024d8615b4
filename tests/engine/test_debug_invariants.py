"""EngineConfig.debug_invariants: LLMEngine.step checks the scheduler and block pool after every step."""
from __future__ import annotations

import pytest

from engine import EngineConfig
from engine.kv_cache import KVCacheInvariantError

from .helpers import assert_all_blocks_free, greedy


def test_flag_is_off_by_default_and_on_in_the_engine_tests(smol_engine):
    assert EngineConfig().debug_invariants is False
    assert smol_engine.config.debug_invariants is True  # tests/engine/conftest.py


def test_a_corrupted_pool_fails_the_next_step_only_with_the_flag(smol_engine):
    engine = smol_engine  # shared: every corruption is undone before the test ends
    config = engine.config
    request = engine.make_request(engine.tokenize_prompt("The quick brown fox jumps over the lazy dog."), greedy(6))
    engine.add(request)
    engine.step()
    block = request.block_ids[0]
    try:
        engine.kv.ref_counts[block] += 1  # a reference nobody holds, as a sharing bug leaves behind
        with pytest.raises(KVCacheInvariantError, match=f"block {block} has ref count 2 but 1 live"):
            engine.step()
        engine.config = config.replace(debug_invariants=False)
        engine.step()  # unchecked: the same corruption goes unnoticed
        engine.config = config
        engine.kv.ref_counts[block] -= 1
        engine.step()  # consistent again: the check passes
    finally:
        engine.config = config
        engine.kv.ref_counts[block] = 1 if request.block_ids else 0
        engine.abort(request.request_id)
    assert_all_blocks_free(engine)


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_random_traffic_keeps_the_pool_consistent_at_every_step(monkeypatch, overlap):
    """Prefix caching, chunked prefill, preemption, aborts and (forced on CPU) overlapped scheduling
    together, on a tiny random-weight model, with the check after every step: no existing test runs
    overlap and prefix sharing at once."""
    import random

    from engine.engine import LLMEngine
    from engine.generation import GenerationConfig

    engine = LLMEngine("preset:tiny-llama", EngineConfig(
        device="cpu", cache_max_entry_count=12, cache_block_seq_len=4, session_len=48, enable_prefix_caching=True,
        max_prefill_token_num=16, max_batch_size=6, overlap=overlap))
    assert engine.config.debug_invariants and engine._overlap == (overlap == "on")
    rng = random.Random(0)
    prefixes = [[rng.randrange(10, 200) for _ in range(16)] for _ in range(3)]
    requests = []
    for _ in range(120):
        if rng.random() < 0.4:
            prompt = rng.choice(prefixes)[:rng.choice([3, 4, 8, 12, 16])] + [rng.randrange(10, 200) for _ in
                                                                            range(rng.randint(0, 5))]
            gen = GenerationConfig(max_new_tokens=rng.randint(1, 48 - len(prompt)), ignore_eos=True,
                                   repetition_penalty=1.2 if rng.random() < 0.1 else 1.0)
            requests.append(engine.make_request(prompt, gen))
            engine.add(requests[-1])
        if rng.random() < 0.05 and requests:
            engine.abort(rng.choice(requests).request_id)
        if engine.has_unfinished():
            engine.step()
    while engine.has_unfinished():
        engine.step()
    stats = engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert all(r.is_finished for r in requests)
    assert_all_blocks_free(engine)


def test_cli_flag_sets_the_config_field():
    import typer
    from typer.testing import CliRunner

    from toolkit.commands.engine_options import with_engine_flags

    seen = []
    app = typer.Typer()

    @app.command()
    @with_engine_flags()
    def show(engine_config):
        seen.append(engine_config.debug_invariants)

    runner = CliRunner()
    assert runner.invoke(app, []).exit_code == 0
    assert runner.invoke(app, ["--debug-invariants"]).exit_code == 0
    assert seen == [False, True]
