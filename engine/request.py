"""Request: one generation's token state as the scheduler and runner see it.

Every request has `num_computed_tokens` catching up to `num_tokens` (prompt + output): a prompt
being prefilled in chunks, a prefix-cache hit and a decode step are all the same rule.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .generation import GenerationConfig


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, stop token id or stop word
    LENGTH = "length"  # max_new_tokens or session_len
    ABORT = "abort"  # cancelled by the caller
    ERROR = "error"  # the engine failed on this request

    def __str__(self) -> str:  # pragma: no cover - shown to users
        return self.value


@dataclass
class TokenLogprob:
    """Log-probability of the chosen token and, if asked, the top alternatives (id -> logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


class Request:
    """A request's tokens, KV blocks and progress. Owned by the scheduler once added."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], gen: GenerationConfig,
                 eos_token_ids: frozenset[int], max_tokens: int, seed: int,
                 detokenizer=None, bad_token_ids: tuple[int, ...] = ()):
        self.request_id = request_id
        self.gen = gen
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # Stop the request at this many tokens (prompt + output): max_new_tokens capped by session_len.
        self.max_tokens = max_tokens
        self.stop_token_ids = frozenset(gen.stop_token_ids) | (frozenset() if gen.ignore_eos else eos_token_ids)
        self.bad_token_ids = bad_token_ids
        self.seed = seed
        self.detokenizer = detokenizer
        self.status = RequestStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.block_ids: list[int] = []
        self.num_hashed_blocks = 0  # full blocks registered in the prefix cache
        self.block_hashes: list[int] = []
        self.num_preemptions = 0
        # Produced by the step, handed out by the next output and reset.
        self.pending_text = ""
        self.pending_logprobs: list[TokenLogprob] = []
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.token_ids.append(token_id)

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.error = error
        self.finish_time = time.perf_counter()

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
                f"status={self.status.value})")
