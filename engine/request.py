"""Request: one generation's token state as the scheduler sees it (the runner sees a StepPlan, step_plan.py).

Every request has `num_computed_tokens` catching up to `num_tokens` (prompt + output): a prompt
being prefilled in chunks, a prefix-cache hit and a decode step are all the same rule.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .generation import GenerationConfig


# Stands in a token list for a token sampled by a step still running on the device: with overlapped
# scheduling the next step is planned (and its input fed from the device) before the host sees it.
PLACEHOLDER = -1


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
        self.num_computed_tokens = 0  # advanced when a step is scheduled (optimistically)
        self.num_placeholders = 0  # trailing PLACEHOLDER entries of token_ids, oldest resolved first
        self.sample_row = -1  # row of this request in the sampled ids of the step that made the last placeholder
        self.sampling_spec = None  # step_plan.SamplingSpec, made when the request first samples
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.block_ids: list[int] = []
        self.num_hashed_blocks = 0  # full blocks registered in the prefix cache
        self.block_hashes: list[bytes] = []  # prefix-cache key of each hashed block (kv_cache.block_key)
        self.cache_salt = gen.cache_salt  # only requests of the same salt share prefix-cache blocks
        self.num_preemptions = 0
        # Text: requests with stop words are detokenized by the engine as tokens arrive (the stop
        # check needs the text); others only when a consumer reads an output's text (lazy_text).
        self.detokenize_in_engine = bool(gen.stop_words)
        self.detok_pos = self.num_prompt_tokens  # token_ids before this index have given their text
        self.stopped_by_token = False  # the last token is a stop token id: it gives no text
        # Produced by the step, handed out by the next output and reset.
        self.pending_text = ""
        self.pending_logprobs: list[TokenLogprob] = []
        # gen.prompt_logprobs: log P(prompt[i + 1] | prompt[:i + 1]) at index i, filled by position (a
        # preempted request's recomputed prompt writes the same values again)
        self.prompt_logprobs: list[float | None] = [None] * (self.num_prompt_tokens - 1) if gen.prompt_logprobs else []
        self.arrival_time = time.perf_counter()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Output tokens known on the host (placeholders excluded)."""
        return len(self.token_ids) - self.num_prompt_tokens - self.num_placeholders

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:len(self.token_ids) - self.num_placeholders]

    @property
    def num_known_tokens(self) -> int:
        return len(self.token_ids) - self.num_placeholders

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_placeholder(self) -> int:
        """Reserve the slot of the token this step samples; returns its index."""
        self.token_ids.append(PLACEHOLDER)
        self.num_placeholders += 1
        return len(self.token_ids) - 1

    def resolve(self, index: int, token_id: int) -> None:
        """The sampled token arrived from the device: it replaces its placeholder."""
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.token_ids[index] = token_id
        self.num_placeholders -= 1

    def drop_placeholders(self) -> None:
        """A finished request's tokens sampled after its end are discarded."""
        if self.num_placeholders:
            del self.token_ids[-self.num_placeholders:]
            self.num_placeholders = 0

    def lazy_text(self, end: int, final: bool) -> str:
        """Text of the output tokens before index `end` not returned yet (all of it at the end).

        Called from whichever thread consumes the outputs, never from the engine's, for requests the
        engine does not detokenize itself; skipped outputs simply roll into the next one's text.
        """
        text = ""
        if end > self.detok_pos:
            text = self.detokenizer.step(self.token_ids[self.detok_pos:end]).text
            self.detok_pos = end
        if final:
            text += self.detokenizer.flush()
        return text

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.error = error
        self.finish_time = time.perf_counter()

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
                f"status={self.status.value})")
