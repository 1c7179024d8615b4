"""GenerationConfig: sampling and stopping parameters of one request, validated on creation.

Names and defaults follow LMDeploy's GenerationConfig; presence/frequency penalties, min_p and
multi-token stop words work (LMDeploy accepts the penalties but ignores them). It also carries the
request's prefix-cache salt, so that reaches every path (pipeline, server) with the config.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import InvalidRequestError

# Bounds on stop strings, so one request cannot make stop matching costly (issue 9: a single
# 40,000-character stop string once cost 1.3 GB across the two processes). OpenAI allows 4 stop
# sequences and TGI's --max-stop-sequences defaults to 4; vLLM and LMDeploy set no bound. We allow
# more than OpenAI, so clients written for vLLM with longer stop lists (chat templates' end
# markers, agent frameworks' "Observation:"-style stops) keep working, and bound the length, which
# none of them does: matching then costs at most 32 x 4 KiB of tables per request.
MAX_STOP_WORDS = 32
MAX_STOP_WORD_CHARS = 1024
# bad_words must each be one token (checked against the tokenizer later); the bounds only keep a
# request from making that check tokenize megabytes.
MAX_BAD_WORDS = 1024
MAX_BAD_WORD_CHARS = MAX_STOP_WORD_CHARS
# cache_salt only has to be unique per tenant: a UUID or a hash is 32-64 characters.
MAX_CACHE_SALT_CHARS = 256


@dataclass(frozen=True)
class GenerationConfig:
    """How one request samples and when it stops.

    Sampling is greedy unless do_sample is set and temperature > 0. top_k <= 0 (or -1) turns top-k
    off, top_p 1.0 and min_p 0.0 turn theirs off. repetition_penalty (CTRL/HF style) applies to prompt
    and output tokens; presence and frequency penalties (OpenAI style) to output tokens only.
    logprobs: None for none, 0 for the chosen token's log-probability, k > 0 to add the top-k
    alternatives. random_seed makes sampling reproducible per request, whatever the batch holds.
    cache_salt (vLLM's name): requests share prefix-cache blocks only with requests of the same salt
    (or, without one, with other unsalted requests), so tenants cannot probe each other's prompts.
    prompt_logprobs: also score the prompt: the log-probability of each prompt token after the first,
    given the tokens before it (Request.prompt_logprobs; perplexity, `opsctl eval ppl`). Such a prompt
    is computed in full, never taken from the prefix cache.
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    random_seed: int | None = None
    stop_words: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    cache_salt: str | None = None
    prompt_logprobs: bool = False

    def __post_init__(self):
        # Accept lists for the sequence fields, store tuples so the config stays hashable and frozen.
        for name in ("stop_words", "stop_token_ids", "bad_words"):
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, (str, int)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def bad(name, why):
            raise InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", name)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.max_new_tokens) or self.max_new_tokens <= 0:
            bad("max_new_tokens", "must be a positive integer")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad("min_new_tokens", "must be an integer >= 0")
        if not is_num(self.temperature) or self.temperature < 0:
            bad("temperature", "must be a number >= 0")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not is_int(self.top_k) or self.top_k < -1:
            bad("top_k", "must be an integer >= -1 (0 or -1 turn it off)")
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be a number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_num(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                bad(name, "must be in [-2, 2]")
        if self.random_seed is not None and not is_int(self.random_seed):
            bad("random_seed", "must be an integer")
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            bad("logprobs", "must be an integer in [0, 20]")
        self._validate_strings("stop_words", MAX_STOP_WORDS, MAX_STOP_WORD_CHARS)
        self._validate_strings("bad_words", MAX_BAD_WORDS, MAX_BAD_WORD_CHARS)
        if self.cache_salt is not None and (not isinstance(self.cache_salt, str)
                                            or not 0 < len(self.cache_salt) <= MAX_CACHE_SALT_CHARS):
            raise InvalidRequestError(f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_CHARS} "
                                      f"characters, or left out, got {_describe(self.cache_salt)}", "cache_salt")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")

    def _validate_strings(self, name: str, max_count: int, max_chars: int) -> None:
        # The value itself is not echoed: it may be megabytes (the reason for these bounds).
        values = getattr(self, name)
        if len(values) > max_count:
            raise InvalidRequestError(f"{name} may hold at most {max_count} strings, got {len(values)}", name)
        for value in values:
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"{name} must be non-empty strings, got {_describe(value)}", name)
            if len(value) > max_chars:
                raise InvalidRequestError(f"{name} strings may be at most {max_chars} characters long, "
                                          f"got one of {len(value)}", name)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)


def _describe(value) -> str:
    """A value for an error message, cut short: the message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
