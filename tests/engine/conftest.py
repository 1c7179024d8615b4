"""Engine tests run with EngineConfig.debug_invariants on: every LLMEngine built while they run checks
its scheduler queues and KV block pool after every step, so a bookkeeping bug fails the test that hits
it (KVCacheInvariantError) instead of silently corrupting later requests' KV.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def engines_check_invariants():
    """Force debug_invariants=True on every LLMEngine, including ones built by fixtures.

    Session scope, not package scope: pytest builds session fixtures (tests/conftest.py's smol_engine)
    before package ones, so a narrower patch would miss the most used engine. Engines built by later
    tests of the session keep the check on too; it only ever raises on a real inconsistency.
    """
    from engine import EngineConfig
    from engine.engine import LLMEngine

    original = LLMEngine.__init__

    def init(self, model=None, config=None):
        original(self, model, (config or EngineConfig()).replace(debug_invariants=True))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LLMEngine, "__init__", init)
        yield
