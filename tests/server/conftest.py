"""Server fixtures: real uvicorn servers on 127.0.0.1 (real sockets) around one shared engine.

One engine on the embedded default model, in its own process as `opsctl serve` runs it
(ProcessEngine), serves three apps, each on its own uvicorn server in a background thread with its
own event loop: the plain one, one with API keys, one with --max-concurrent-requests 2. Tests read
the engine's stats as the engine process last reported them, so "every KV block is free" is checked
on the engine's own counters. Process-level behaviour of the server (SIGTERM, start-up failures) is
tested with `python -m toolkit serve` subprocesses in test_process.py.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

import pytest

MODEL_NAME = "SmolLM2-135M-Instruct"
API_KEYS = ("sk-test-one", "sk-test-two")
NUM_BLOCKS = 384  # 64 clients x (~40 prompt + 32 output tokens) in blocks of 16 fit with room to spare
SESSION_LEN = 1024


class UvicornThread:
    """A uvicorn server on a free 127.0.0.1 port, serving in a thread with its own event loop."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> "UvicornThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@dataclass
class ServerHandle:
    url: str
    app: object
    aengine: object

    @property
    def engine(self):
        """The AsyncEngine: stats() and the tokenizer, as the server sees them."""
        return self.aengine

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@pytest.fixture(scope="session")
def aengine():
    from engine import EngineConfig
    from engine.engine_process import ProcessEngine
    from engine.models.source import resolve_model

    # debug_invariants: the engine checks its block pool after every step; a violation fails the
    # step's requests with "engine step failed: KV-cache invariant violated ..." (a test failure).
    config = EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=SESSION_LEN,
                          max_batch_size=64, cache_max_entry_count=NUM_BLOCKS, debug_invariants=True)
    aeng = ProcessEngine.start(resolve_model(None), config)
    yield aeng

    async def stop():
        await aeng.shutdown(timeout=2)

    asyncio.run(stop())


def _serve(aengine, **kwargs):
    from engine.server import build_app

    app = build_app(aengine, **kwargs)
    thread = UvicornThread(app).start()
    return thread, ServerHandle(thread.url, app, aengine)


@pytest.fixture(scope="session")
def threaded_server():
    """A server whose engine steps in a thread of this process (ThreadedEngine), for tests that patch it."""
    from engine import EngineConfig
    from engine.async_engine import ThreadedEngine
    from engine.engine import LLMEngine

    engine = LLMEngine(None, EngineConfig(device="cpu", dtype="float32", cache_block_seq_len=16, session_len=SESSION_LEN,
                                          max_batch_size=8, cache_max_entry_count=128, debug_invariants=True))
    aeng = ThreadedEngine(engine)
    thread, handle = _serve(aeng)
    yield handle
    thread.stop()
    asyncio.run(aeng.shutdown(timeout=2))


@pytest.fixture(scope="session")
def server(aengine):
    thread, handle = _serve(aengine)
    yield handle
    thread.stop()


@pytest.fixture(scope="session")
def keyed_server(aengine):
    thread, handle = _serve(aengine, api_keys=list(API_KEYS))
    yield handle
    thread.stop()


@pytest.fixture(scope="session")
def limited_server(aengine):
    thread, handle = _serve(aengine, max_concurrent_requests=2)
    yield handle
    thread.stop()


@pytest.fixture
def client(server):
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def wait_all_blocks_free(engine, timeout: float = 10.0):
    """Poll the engine's stats until no request runs or waits and every KV block is free."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.num_free_blocks == stats.num_blocks:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: {stats.num_running} running, {stats.num_waiting} waiting, "
                                 f"{stats.num_blocks - stats.num_free_blocks} of {stats.num_blocks} blocks held")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
