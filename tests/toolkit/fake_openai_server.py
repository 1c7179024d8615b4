"""The fake OpenAI server of toolkit.bench.fake_server, in a thread of the test process, as the bench tests use it.

A thin wrapper: FakeOpenAIServer(first_token_s=..., inter_token_s=..., fail_every=..., stream_mode=...)
serves toolkit.bench.fake_server.FakeApp on a free 127.0.0.1 port with one worker in this process,
so its counters (num_requests, completion_tokens_sent, disconnects) are read directly and the
fault counts (fail_every, close_early_every) follow the server's one request count. Every request
answers exactly max_tokens tokens (one word each), so a correct client measures TTFT =
first_token_s and TPOT = inter_token_s. The misbehaviour modes are the module's (see its docstring).
For several worker processes and the per-request stats, use toolkit.bench.fake_server.FakeServer.
"""
from __future__ import annotations

from toolkit.bench.fake_server import MODEL, STREAM_MODES, FakeConfig, FakeServer

__all__ = ["MODEL", "FakeOpenAIServer"]


class FakeOpenAIServer(FakeServer):
    STREAM_MODES = STREAM_MODES

    def __init__(self, *, first_token_s: float = 0.2, inter_token_s: float = 0.05, fail_every: int = 0,
                 close_early_every: int = 0, model: str = MODEL, models_body: tuple[bytes, str] | None = None,
                 stream_mode: str = "normal", keepalive_s: float = 0.2, **config):
        super().__init__(FakeConfig(ttft_s=first_token_s, itl_s=inter_token_s, fail_every=fail_every,
                                    close_early_every=close_early_every, model=model, models_body=models_body,
                                    stream_mode=stream_mode, keepalive_s=keepalive_s, **config), workers=0)

    @property
    def num_requests(self) -> int:
        return self.app.num_requests if self.app else 0

    @property
    def completion_tokens_sent(self) -> int:
        return self.app.completion_tokens_sent if self.app else 0

    @property
    def disconnects(self) -> int:
        return self.app.disconnects if self.app else 0
