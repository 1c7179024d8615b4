"""An app that has served requests does not keep its engine alive once the caller lets both go
(the GPU memory of one engine must be free before another loads, as in http_vs_offline)."""
from __future__ import annotations

import asyncio
import gc
import weakref

import httpx

from .conftest import UvicornThread


def test_served_app_releases_its_engine():
    from engine import EngineConfig
    from engine.async_engine import ThreadedEngine
    from engine.engine import LLMEngine
    from engine.server import build_app

    engine = LLMEngine(None, EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=256,
                                          max_batch_size=4, cache_max_entry_count=32))
    engine_ref = weakref.ref(engine)
    aengine = ThreadedEngine(engine)
    thread = UvicornThread(build_app(aengine)).start()
    r = httpx.post(thread.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
    assert httpx.get(thread.url + "/health", timeout=10).status_code == 200
    thread.stop()
    asyncio.run(aengine.shutdown(timeout=2))
    del engine, aengine, thread, r
    gc.collect()
    assert engine_ref() is None, [type(o).__name__ for o in gc.get_referrers(engine_ref())]
